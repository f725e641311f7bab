// Note [CPU block cache]: inference and training allocate the same activation sizes in
// the same order every step. Through malloc, every block above glibc's mmap threshold
// (at most 32 MiB) is a fresh mapping, so each step page-faults and zeroes all of its
// activation memory again: at batch 4, 16x224x224 SEVNet-G8 inference that was about
// 465,000 faults (1.8 GB) per step and a third of the process's CPU time in the kernel.
//
// So blocks of 128 KiB and more (Note [scratch blocks]) come from segments we mmap and
// keep: a request takes the smallest free block that holds it (sizes are multiples of 64
// KiB), splitting off the rest as a free block; a released block merges with free
// neighbours in its segment. Activation sizes fall by powers of two through the network,
// and splitting lets the stem's large blocks serve the later stages' smaller ones, which
// per-size free lists could not (they held 1.6x the peak in use). A miss maps a new
// segment, first unmapping wholly free segments, oldest first, while the mapped total
// would pass the peak in use so far plus 1/4: peak resident memory stays near what malloc
// would have reached. With no slack at all, a few segments were unmapped and mapped again
// every training step; with 1/8, still about 800 pages a step at batch 4, 8x112x112
// SEVNet-G8 training (perf stat, 24 steps against 4), most of them in the buffer of the
// stage-2 downsampling conv's input gradient, which then took 7-9.7 ms instead of 2.3
// (--profile); with 1/4, 90 pages a step, and peak RSS 468 -> 493 MB there, 820 -> 878 MB
// at batch 1, 16x224x224. Memory freed after a transient peak stays mapped until a segment
// needs the room or empty_cache() is called, as with a GPU caching allocator.
//
// Note [recently freed first]: among free blocks of the best-fitting size the one freed
// last is handed out (it was the lowest address): the memory a step's fresh tensors are
// written into (each conv's input gradient above all, the size of one just released) is
// then more likely still in L2 or L3, and a store to it needs no read from memory first.
// Training steps alternated step by step in one process (2 threads, ABBA order,
// the AMD EPYC VM, 2026-11-25): batch 1 16x224 SEVNet-G8, recently-freed first faster in
// 10 of 12, 15 of 24 and 13 of 24 pairs of steps, mean step 0.4360 -> 0.4304, 0.4121 ->
// 0.4095 and 0.4104 -> 0.4075 s; batch 4 8x112 even (15 and 14 of 30 pairs, 0.2132 ->
// 0.2130 and 0.2141 -> 0.2139 s).
//
// Note [scratch blocks]: until 2026-11-24 the cache took blocks of 1 MiB and more, and the
// kernels' scratch (AlignedVector: PackedA's per-call weight panels, 64 KiB to 1 MiB) came
// from operator new. glibc serves a block above its mmap threshold (128 KiB at first,
// raised as mapped blocks are freed) from a fresh mapping, and gives the top of its heaps
// back once more than twice that is free, so tensors and scratch under 1 MiB were mapped
// or faulted in again each step: perf stat -e page-faults over 12 steps against 2, per
// step (AMD EPYC VM, 2 threads), 622 at batch 4 8x112x112 SEVNet-G8 inference (stage 5's
// 512 KiB tensors), 1118 at batch 1 8x112, 585 at batch 1 16x224, 233 and 245 in training
// at batch 4 and 1 8x112 (PackedA's panels, perf record -e page-faults). Tensors from 128
// KiB (glibc's first mmap threshold) and AlignedVector's buffers from their own cache
// (scratch_cache(), so that a thread_local buffer never keeps a tensor segment from being
// unmapped) took that to 12, 3, 0, 82 and 36 (the same order; the tensor cache still
// remaps a segment now and then in training). With the cache off (VIDGRAD_CPU_CACHE=0)
// every block, scratch included, comes from the C library on its own: inside a cached
// segment an overrun would reach the next block unseen by AddressSanitizer, which found
// one in a kernel's scratch before.
#include "vidgrad/core/cpu_memory.h"

#include <sys/mman.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <initializer_list>
#include <mutex>
#include <set>
#include <unordered_map>
#include <vector>

#include "vidgrad/core/error.h"
#include "vidgrad/core/storage.h"

namespace vidgrad::cpu_memory {

namespace {

constexpr std::size_t kLargeBlock = std::size_t{1} << 17;  // glibc's first mmap threshold
constexpr std::size_t kGrain = std::size_t{1} << 16;

struct Segment;

struct Block {
  char* p;
  std::size_t bytes;
  bool free;
  Block* prev;  // neighbours by address inside the segment
  Block* next;
  Segment* seg;
  std::uint64_t freed = 0;  // when it last entered the free set (Note [recently freed first])
};

struct Segment {
  char* base;
  std::size_t bytes;
  std::uint64_t tick;  // when it last became wholly free; the oldest is unmapped first
};

// Smallest first; of one size, the most recently freed first (Note [recently freed first]).
struct BySize {
  bool operator()(const Block* a, const Block* b) const {
    if (a->bytes != b->bytes) return a->bytes < b->bytes;
    return a->freed != b->freed ? a->freed > b->freed : a->p < b->p;
  }
};

struct Cache {
  std::mutex mu;
  std::set<Block*, BySize> free;
  std::unordered_map<void*, Block*> used;
  std::vector<Segment*> segments;
  std::size_t mapped = 0;
  Stats stats;
  std::uint64_t tick = 0;
  std::uint64_t frees = 0;  // releases so far: the blocks' `freed` stamps
  bool caching = [] {
    const char* v = std::getenv("VIDGRAD_CPU_CACHE");
    return !(v && v[0] == '0');
  }();

  static bool whole(const Block* b) { return b->prev == nullptr && b->next == nullptr; }

  void unmap(Segment* s, Block* b) {
    free.erase(b);
    delete b;
    munmap(s->base, s->bytes);
    mapped -= s->bytes;
    segments.erase(std::find(segments.begin(), segments.end(), s));
    delete s;
  }

  // Unmaps the wholly free segment that became free first; false if there is none.
  bool unmap_oldest() {
    Block* victim = nullptr;
    for (Block* b : free)
      if (whole(b) && (victim == nullptr || b->seg->tick < victim->seg->tick)) victim = b;
    if (victim == nullptr) return false;
    unmap(victim->seg, victim);
    return true;
  }

  // Hands out the first `bytes` of free block b, returning the rest to the free set.
  void* take(Block* b, std::size_t bytes) {
    free.erase(b);
    if (b->bytes > bytes) {
      Block* rest = new Block{b->p + bytes, b->bytes - bytes, true, b, b->next, b->seg, b->freed};
      if (b->next) b->next->prev = rest;
      b->next = rest;
      b->bytes = bytes;
      free.insert(rest);
    }
    b->free = false;
    used.emplace(b->p, b);
    stats.live_bytes += bytes;
    stats.peak_live_bytes = std::max(stats.peak_live_bytes, stats.live_bytes);
    return b->p;
  }

  // Merges block b into its predecessor (both free; either may be in the free set, the
  // merged block is not); returns the merged block.
  Block* merge_into_prev(Block* b) {
    Block* prev = b->prev;
    free.erase(b);
    free.erase(prev);
    prev->bytes += b->bytes;
    prev->next = b->next;
    if (b->next) b->next->prev = prev;
    delete b;
    return prev;
  }
};

Cache& cache() {
  static Cache* c = new Cache;  // never destroyed: tensors may be freed during static destruction
  return *c;
}

// The kernels' scratch (Note [scratch blocks]) in segments of its own: a thread's kept
// buffer never pins a segment that tensors would free.
Cache& scratch_cache() {
  static Cache* c = new Cache;  // never destroyed: thread-local buffers outlive main
  return *c;
}

std::size_t segment_size(std::size_t n) {  // n rounded up to 2^floor(log2 n) / 8: at most 1/8 more
  std::size_t unit = kGrain;
  while (unit * 16 <= n) unit <<= 1;
  return (n + unit - 1) / unit * unit;
}

void* c_library_block(std::size_t nbytes) {
  const std::size_t rounded = (nbytes + kCpuAlignment - 1) / kCpuAlignment * kCpuAlignment;
  void* p = std::aligned_alloc(kCpuAlignment, rounded == 0 ? kCpuAlignment : rounded);
  VG_CHECK(p != nullptr, "storage: out of memory allocating " << nbytes << " bytes on cpu");
  return p;
}

// With the cache off (set_caching(false), VIDGRAD_CPU_CACHE=0) every block comes from the
// C library, so that memory checkers (AddressSanitizer, valgrind) see each one on its own.
void* allocate_in(Cache& c, std::size_t nbytes) {
  if (nbytes < kLargeBlock) return c_library_block(nbytes);
  const std::size_t bytes = (nbytes + kGrain - 1) / kGrain * kGrain;
  std::unique_lock<std::mutex> lock(c.mu);
  if (!c.caching) {
    lock.unlock();
    return c_library_block(nbytes);
  }
  // Ahead of every free block of this size (its `freed` the largest): lower_bound finds the
  // smallest size that holds the request and, of that size, the block freed last.
  Block key{nullptr, bytes, true, nullptr, nullptr, nullptr, UINT64_MAX};
  if (auto it = c.free.lower_bound(&key); it != c.free.end()) {
    ++c.stats.hits;
    return c.take(*it, bytes);
  }
  const std::size_t seg_bytes = segment_size(bytes);
  const std::size_t limit =
      std::max(c.stats.peak_live_bytes + c.stats.peak_live_bytes / 4, c.stats.live_bytes + seg_bytes);
  while (c.mapped + seg_bytes > limit && c.unmap_oldest()) {
  }
  void* p = mmap(nullptr, seg_bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) {  // what the cache holds may be what is missing
    while (c.unmap_oldest()) {
    }
    p = mmap(nullptr, seg_bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  }
  VG_CHECK(p != MAP_FAILED, "storage: out of memory allocating " << nbytes << " bytes on cpu");
  auto* seg = new Segment{static_cast<char*>(p), seg_bytes, 0};
  c.segments.push_back(seg);
  c.mapped += seg_bytes;
  ++c.stats.maps;
  auto* b = new Block{seg->base, seg_bytes, true, nullptr, nullptr, seg};
  c.free.insert(b);
  return c.take(b, bytes);
}

void release_in(Cache& c, void* p, std::size_t nbytes) {
  if (nbytes < kLargeBlock) {
    std::free(p);
    return;
  }
  std::unique_lock<std::mutex> lock(c.mu);
  const auto it = c.used.find(p);
  if (it == c.used.end()) {  // from the C library: allocated while the cache was off
    lock.unlock();
    std::free(p);
    return;
  }
  Block* b = it->second;
  c.used.erase(it);
  c.stats.live_bytes -= b->bytes;
  b->free = true;
  if (b->next && b->next->free) b = c.merge_into_prev(b->next);
  if (b->prev && b->prev->free) b = c.merge_into_prev(b);
  b->freed = ++c.frees;
  c.free.insert(b);
  if (Cache::whole(b)) {
    b->seg->tick = ++c.tick;
    if (!c.caching) c.unmap(b->seg, b);  // a block handed out before the cache was turned off
  }
}

}  // namespace

void* allocate(std::size_t nbytes) { return allocate_in(cache(), nbytes); }
void release(void* p, std::size_t nbytes) { release_in(cache(), p, nbytes); }
void* allocate_scratch(std::size_t nbytes) { return allocate_in(scratch_cache(), nbytes); }
void release_scratch(void* p, std::size_t nbytes) { release_in(scratch_cache(), p, nbytes); }

Stats stats() {
  Cache& c = cache();
  std::lock_guard<std::mutex> lock(c.mu);
  Stats s = c.stats;
  s.cached_bytes = c.mapped - s.live_bytes;
  return s;
}

void empty_cache() {
  for (Cache* c : {&cache(), &scratch_cache()}) {
    std::lock_guard<std::mutex> lock(c->mu);
    while (c->unmap_oldest()) {
    }
  }
}

void set_caching(bool on) {
  for (Cache* c : {&cache(), &scratch_cache()}) {
    std::lock_guard<std::mutex> lock(c->mu);
    c->caching = on;
    if (!on)
      while (c->unmap_oldest()) {
      }
  }
}

}  // namespace vidgrad::cpu_memory
