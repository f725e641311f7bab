// Where a tensor's storage lives. Every op dispatches on this with a visible switch.
#pragma once

#include <cstdint>
#include <ostream>
#include <string>

namespace vidgrad {

enum class DeviceType : std::uint8_t { kCPU, kCUDA };

struct Device {
  DeviceType type = DeviceType::kCPU;
  int index = 0;

  static Device cpu() { return {DeviceType::kCPU, 0}; }
  static Device cuda(int i = 0) { return {DeviceType::kCUDA, i}; }
  bool is_cpu() const { return type == DeviceType::kCPU; }
  bool is_cuda() const { return type == DeviceType::kCUDA; }
  bool operator==(const Device&) const = default;
};

// "cpu", "cuda" (= cuda:0) or "cuda:N"; anything else throws naming the text.
Device parse_device(const std::string& text);

inline std::ostream& operator<<(std::ostream& os, const Device& d) {
  if (d.type == DeviceType::kCPU) return os << "cpu";
  return os << "cuda:" << d.index;
}

}  // namespace vidgrad
