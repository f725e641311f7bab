#include "vidgrad/core/profile.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <mutex>
#include <unordered_map>

namespace vidgrad::profile {

namespace {

struct Totals {
  std::int64_t ns = 0;
  std::int64_t calls = 0;
};

std::atomic<bool> g_enabled{false};
std::mutex g_mu;
std::unordered_map<std::string, Totals>& table() {
  static auto* t = new std::unordered_map<std::string, Totals>;
  return *t;
}
thread_local Scope* t_current = nullptr;  // innermost open scope of this thread

std::int64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

}  // namespace

void set_enabled(bool on) { g_enabled.store(on, std::memory_order_relaxed); }
bool enabled() { return g_enabled.load(std::memory_order_relaxed); }

void reset() {
  std::lock_guard<std::mutex> lock(g_mu);
  table().clear();
}

std::vector<Entry> entries() {
  std::vector<Entry> out;
  {
    std::lock_guard<std::mutex> lock(g_mu);
    for (const auto& [name, t] : table()) out.push_back({name, static_cast<double>(t.ns) * 1e-9, t.calls});
  }
  std::sort(out.begin(), out.end(), [](const Entry& a, const Entry& b) {
    return a.seconds != b.seconds ? a.seconds > b.seconds : a.name < b.name;
  });
  return out;
}

void Scope::open(std::string name) {
  active_ = true;
  name_ = std::move(name);
  parent_ = t_current;
  t_current = this;
  start_ns_ = now_ns();
}

void Scope::close() {
  const std::int64_t elapsed = now_ns() - start_ns_;
  t_current = parent_;
  if (parent_ != nullptr) parent_->children_ns_ += elapsed;
  std::lock_guard<std::mutex> lock(g_mu);
  Totals& t = table()[name_];
  t.ns += elapsed - children_ns_;
  ++t.calls;
}

}  // namespace vidgrad::profile
