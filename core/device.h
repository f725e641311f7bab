// Where a tensor's storage lives. Every op dispatches on this with a visible switch.
#pragma once

#include <cstdint>
#include <ostream>

namespace vidgrad {

enum class DeviceType : std::uint8_t { kCPU, kCUDA };

struct Device {
  DeviceType type = DeviceType::kCPU;
  int index = 0;

  static Device cpu() { return {DeviceType::kCPU, 0}; }
  static Device cuda(int i = 0) { return {DeviceType::kCUDA, i}; }
  bool is_cpu() const { return type == DeviceType::kCPU; }
  bool operator==(const Device&) const = default;
};

inline std::ostream& operator<<(std::ostream& os, const Device& d) {
  if (d.type == DeviceType::kCPU) return os << "cpu";
  return os << "cuda:" << d.index;
}

}  // namespace vidgrad
