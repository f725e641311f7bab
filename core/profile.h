// Host-side op profiler: where a step's time goes, per op, for `vidgrad bench --profile`.
//
//   profile::set_enabled(true);
//   ... run steps ...
//   for (const auto& e : profile::entries()) print(e.name, e.seconds, e.calls);
//
// Ops open a Scope around their work (forward in the op, backward in the autograd
// engine). Times are exclusive: a scope's time excludes the scopes opened inside it
// (conv3d's backward calling relu_grad counts the mask once, under relu_grad). Only the
// thread that opens the scopes is timed, with the wall clock: OpenMP work inside an op
// counts once, as its elapsed time. CUDA ops return before the device finishes, so on a
// GPU this measures launch cost, not kernel time. Off by default; a disabled Scope reads
// no clock.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace vidgrad::profile {

void set_enabled(bool on);
bool enabled();
// Clears the accumulated times.
void reset();

struct Entry {
  std::string name;
  double seconds = 0;  // exclusive wall time, summed over calls
  std::int64_t calls = 0;
};
// Accumulated entries, largest time first.
std::vector<Entry> entries();

class Scope {
 public:
  explicit Scope(const char* name) {
    if (enabled()) open(name);
  }
  // `detail` is appended after a space ("conv3d" "1x3x3 g8"): pass it only when enabled()
  // if building it costs anything.
  Scope(const char* name, const std::string& detail) {
    if (enabled()) open(detail.empty() ? std::string(name) : std::string(name) + " " + detail);
  }
  ~Scope() {
    if (active_) close();
  }
  Scope(const Scope&) = delete;
  Scope& operator=(const Scope&) = delete;

 private:
  void open(std::string name);
  void close();
  bool active_ = false;
  std::string name_;
  std::int64_t start_ns_ = 0;
  std::int64_t children_ns_ = 0;
  Scope* parent_ = nullptr;
};

}  // namespace vidgrad::profile
