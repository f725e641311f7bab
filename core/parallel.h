// Thread count for every OpenMP region and Eigen GEMM in vidgrad, and the work-stealing
// ranges the CPU kernels split their units with.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>

namespace vidgrad {

// Loops over fewer elements than this run on one thread: waking a team costs more.
inline constexpr std::int64_t kMinParallelWork = 1 << 15;

// Sets the number of threads CPU kernels use (OpenMP and Eigen). n >= 1.
void set_num_threads(int n);
int get_num_threads();

// Note [stealing ranges]: a kernel that splits work units evenly between threads finishes
// when its slowest thread does, and the two vCPUs of the development VM ran the same FMA
// loop up to 1.9x apart (docs/performance.md, twelfth session); a team waiting on one
// thread spins in libgomp, 3-5% of a training step's perf samples. StealingRanges keeps the
// even split, so that a thread still walks its own units in order (and knows its next
// one, to prefetch and to reuse what it packed), but a thread whose range is empty takes
// units from the back of the range with the most left. Each range is one 64-bit atomic,
// front and back, changed by compare-and-swap, so an owner and a thief never take the same
// unit. Used by the Winograd temporal conv (units of panel blocks and channel chunks) and
// the row GEMM (blocks of panels). On 2026-11-22 (Intel VM, `vmstat` steal time 5-66%, the
// FMA loop's two threads 1.0x to 90x apart from one second to the next), `vidgrad bench
// --model sevnet_g8 --batch 4 --frames 8 --size 112 --threads 2 --profile`, alternating
// binaries: the 1x1x1 and 3x1x1 forwards and input gradients over their weight gradients
// (which this does not change) went 1.589 / 1.558 / 1.589 -> 1.470 / 1.508 / 1.471 in one
// set of three runs and 1.539 / 1.513 / 1.551 -> 1.527 / 1.518 in another; step medians
// 0.425 / 0.463 / 0.455 -> 0.421 / 0.454 / 0.412 s and 0.442 / 0.441 -> 0.416 / 0.422 s.
class StealingRanges {
 public:
  // Thread t of `threads` owns units [total * t / threads, total * (t + 1) / threads);
  // total < 2^32.
  StealingRanges(std::int64_t total, int threads) : threads_(threads), slots_(new Slot[threads]) {
    for (int t = 0; t < threads; ++t)
      slots_[t].range.store(pack(total * t / threads, total * (t + 1) / threads), std::memory_order_relaxed);
  }

  // The next unit for thread t, or -1 when none is left anywhere: the front of its own
  // range, else the back of the fullest other range (`stolen` is then set). A team smaller
  // than `threads` leaves whole ranges to be stolen; a thread past `threads` only steals.
  std::int64_t next(int t, bool* stolen = nullptr) {
    if (stolen) *stolen = false;
    if (t < threads_)
      if (const std::int64_t u = take(t, false); u >= 0) return u;
    for (;;) {
      int victim = -1;
      std::int64_t most = 0;
      for (int v = 0; v < threads_; ++v) {
        const std::uint64_t r = slots_[v].range.load(std::memory_order_relaxed);
        if (back(r) - front(r) > most) most = back(r) - front(r), victim = v;
      }
      if (victim < 0) return -1;
      if (const std::int64_t u = take(victim, true); u >= 0) {
        if (stolen) *stolen = true;
        return u;
      }
    }
  }

  // The unit thread t would take next from its own range, or -1 (for prefetching: a thief
  // may take it first).
  std::int64_t peek(int t) const {
    if (t >= threads_) return -1;
    const std::uint64_t r = slots_[t].range.load(std::memory_order_relaxed);
    return front(r) < back(r) ? front(r) : -1;
  }

 private:
  struct alignas(64) Slot {
    std::atomic<std::uint64_t> range{0};
  };
  static std::uint64_t pack(std::int64_t f, std::int64_t b) {
    return (static_cast<std::uint64_t>(f) << 32) | static_cast<std::uint64_t>(b);
  }
  static std::int64_t front(std::uint64_t r) { return static_cast<std::int64_t>(r >> 32); }
  static std::int64_t back(std::uint64_t r) { return static_cast<std::int64_t>(r & 0xffffffffu); }
  // From the front (the owner) or the back (a thief) of range v; -1 if it is empty.
  std::int64_t take(int v, bool from_back) {
    std::uint64_t r = slots_[v].range.load(std::memory_order_relaxed);
    for (;;) {
      const std::int64_t f = front(r), b = back(r);
      if (f >= b) return -1;
      const std::uint64_t taken = from_back ? pack(f, b - 1) : pack(f + 1, b);
      if (slots_[v].range.compare_exchange_weak(r, taken, std::memory_order_relaxed)) return from_back ? b - 1 : f;
    }
  }

  int threads_;
  std::unique_ptr<Slot[]> slots_;
};

}  // namespace vidgrad
