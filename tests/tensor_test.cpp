// Tensor storage, views, copies, the random generator, and the shape ops' gradients.
#include "test_util.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <random>
#include <thread>

#include "vidgrad/core/aligned_vector.h"
#include "vidgrad/core/cpu_memory.h"
#include "vidgrad/core/parallel.h"
#include "vidgrad/core/cuda/context.h"
#include "vidgrad/ops/cpu/conv3d_internal.h"

namespace vidgrad {
namespace {

using testing::param;
using testing::randn;

TEST(Tensor, FactoriesFillShapeAndDtype) {
  Tensor z = Tensor::zeros({2, 3, 4, 5, 6});
  EXPECT_EQ(z.dim(), 5);
  EXPECT_EQ(z.numel(), 720);
  EXPECT_EQ(z.dtype(), DType::kFloat32);
  EXPECT_EQ(z.strides(), (Shape{360, 120, 30, 6, 1}));
  for (float v : z.to_vector<float>()) EXPECT_EQ(v, 0.0f);
  Tensor f = Tensor::full({3}, 2.5, DType::kFloat64);
  EXPECT_EQ(f.to_vector<double>(), (std::vector<double>{2.5, 2.5, 2.5}));
  Tensor labels = Tensor::from_vector<std::int64_t>({3, 1, 4}, {3});
  EXPECT_EQ(labels.dtype(), DType::kInt64);
  EXPECT_EQ(Tensor::scalar(4.0).item(), 4.0);
}

TEST(Tensor, CpuStorageIs64ByteAligned) {
  for (std::int64_t n : {1, 3, 17, 1000}) {
    Tensor t = Tensor::empty({n});
    EXPECT_EQ(reinterpret_cast<std::uintptr_t>(t.data<float>()) % 64, 0u) << n;
  }
}

// The kernels' scratch (Note [scratch alignment] in core/aligned_vector.h): sizes from a
// few values to above glibc's mmap threshold (a plain std::vector<float> of those sizes
// starts 16 or 48 bytes into a cache line); and the packed GEMM panels and conv scratch
// that use it (with std::vector again, col_buffer's checks failed at offset 48).
TEST(Tensor, KernelScratchIs64ByteAligned) {
  auto offset = [](const void* p) { return reinterpret_cast<std::uintptr_t>(p) % 64; };
  for (std::size_t n : {std::size_t{1}, std::size_t{17}, std::size_t{40000}, std::size_t{200000}, std::size_t{3} << 20}) {
    AlignedVector<float> f(n);
    AlignedVector<double> d(n);
    EXPECT_EQ(offset(f.data()), 0u) << n;
    EXPECT_EQ(offset(d.data()), 0u) << n;
    f.resize(2 * n + 5);  // a reallocation keeps it
    EXPECT_EQ(offset(f.data()), 0u) << n;
  }
  const cpu::PackedA<float> a(200, 300, [](std::int64_t m, std::int64_t k) { return float(m - k); });
  EXPECT_EQ(offset(a.data.data()), 0u);
  EXPECT_EQ(offset(cpu::col_buffer<float>(300000)), 0u);
  EXPECT_EQ(offset(cpu::col_buffer<double>(300000)), 0u);
}

// PackedA's buffer is not zeroed when allocated (UninitAlignedVector): the packing writes
// every value, the rows past M of the last panel as zeros. A freed block of sevens, larger
// than the packed buffer, leaves its values where glibc then carves that buffer (without
// the zeros written by the packing, the check below sees 7s in the padding rows).
TEST(Tensor, PackedAWritesItsPaddingRowsAsZeros) {
  {
    UninitAlignedVector<float> dirty(static_cast<std::size_t>(4096));
    std::fill(dirty.begin(), dirty.end(), 7.0f);  // leaves non-zero bytes behind in the heap
  }
  const std::int64_t M = 13, K = 37, mr = cpu::kRowGemmMr;
  const cpu::PackedA<float> a(M, K, [](std::int64_t m, std::int64_t k) { return float(100 * m + k + 1); });
  ASSERT_EQ(a.data.size(), static_cast<std::size_t>(2 * K * mr));
  for (std::int64_t p = 0; p < 2; ++p)
    for (std::int64_t k = 0; k < K; ++k)
      for (std::int64_t i = 0; i < mr; ++i) {
        const std::int64_t m = p * mr + i;
        EXPECT_EQ(a.data[static_cast<std::size_t>((p * K + k) * mr + i)], m < M ? float(100 * m + k + 1) : 0.0f)
            << "panel " << p << " k " << k << " row " << i;
      }
}

TEST(Tensor, ReshapeOfContiguousIsAViewAndInfersMinusOne) {
  Tensor x = Tensor::from_vector<float>({0, 1, 2, 3, 4, 5}, {2, 3});
  Tensor y = x.reshape({3, -1});
  EXPECT_EQ(y.shape(), (Shape{3, 2}));
  EXPECT_EQ(y.storage(), x.storage());
  y.fill_(7);
  EXPECT_EQ(x.to_vector<float>()[5], 7.0f);
}

TEST(Tensor, PermuteNarrowAndContiguousMoveTheRightElements) {
  std::vector<float> v(24);
  for (int i = 0; i < 24; ++i) v[i] = static_cast<float>(i);
  Tensor x = Tensor::from_vector(v, {2, 3, 4});
  Tensor p = x.permute({2, 0, 1});
  EXPECT_FALSE(p.is_contiguous());
  EXPECT_EQ(p.shape(), (Shape{4, 2, 3}));
  const std::vector<float> pv = p.contiguous().to_vector<float>();
  for (int a = 0; a < 4; ++a)
    for (int b = 0; b < 2; ++b)
      for (int c = 0; c < 3; ++c) EXPECT_EQ(pv[(a * 2 + b) * 3 + c], v[(b * 3 + c) * 4 + a]);
  Tensor n = x.narrow(2, 1, 2);
  EXPECT_EQ(n.shape(), (Shape{2, 3, 2}));
  const std::vector<float> nv = n.to_vector<float>();
  EXPECT_EQ(nv[0], 1.0f);
  EXPECT_EQ(nv[1], 2.0f);
  EXPECT_EQ(nv[2], 5.0f);
  // Reshaping a non-contiguous view copies rather than reinterpreting memory.
  EXPECT_EQ(p.reshape({24}).to_vector<float>(), p.contiguous().to_vector<float>());
}

TEST(Tensor, CopyConvertsDtypeAndHandlesStrides) {
  Tensor src = Tensor::from_vector<double>({1.5, -2.5, 3.25, 4.0}, {2, 2});
  Tensor dst = Tensor::zeros({2, 2}, DType::kFloat32);
  dst.copy_(src.permute({1, 0}));
  EXPECT_EQ(dst.to_vector<float>(), (std::vector<float>{1.5f, 3.25f, -2.5f, 4.0f}));
  EXPECT_EQ(src.to(DType::kInt64).to_vector<std::int64_t>(), (std::vector<std::int64_t>{1, -2, 3, 4}));
}

TEST(Tensor, MisuseThrowsWithOpAndValues) {
  Tensor x = Tensor::zeros({2, 3});
  EXPECT_THROW_MSG(x.reshape({4, 2}), "reshape", "[2, 3]", "[4, 2]");
  EXPECT_THROW_MSG(x.reshape({-1, -1}), "reshape", "only one dim may be -1");
  EXPECT_THROW_MSG(x.narrow(1, 2, 2), "narrow", "[2, 4)", "size 3");
  EXPECT_THROW_MSG(x.narrow(5, 0, 1), "narrow", "dim 5", "rank 2");
  EXPECT_THROW_MSG(x.permute({0, 0}), "permute", "appears twice");
  EXPECT_THROW_MSG(x.data<double>(), "data", "float32", "float64");
  EXPECT_THROW_MSG(x.item(), "item", "[2, 3]");
  EXPECT_THROW_MSG(Tensor::from_vector<float>({1, 2, 3}, {2, 2}), "from_vector", "3 values", "[2, 2]");
  EXPECT_THROW_MSG(Tensor::zeros({2}, DType::kInt64).set_requires_grad(true), "int64");
  EXPECT_THROW_MSG(Tensor::empty({2, -1}), "non-negative", "[2, -1]");
  EXPECT_THROW_MSG(Tensor().shape(), "undefined");
  if (!cuda::is_available())
    EXPECT_THROW_MSG(Tensor::empty({2}, DType::kFloat32, Device::cuda()), "cuda:0",
                     cuda::built_with_cuda() ? "no CUDA device is visible" : "no CUDA backend");
}

TEST(Generator, SameSeedSameStreamAndStateRoundTrips) {
  Generator a(42), b(42);
  for (int i = 0; i < 5; ++i) EXPECT_EQ(a.normal(), b.normal());
  const std::string state = a.state();
  const double next = a.normal();
  const double after = a.uniform();
  b.set_state(state);
  EXPECT_EQ(b.normal(), next);
  EXPECT_EQ(b.uniform(), after);
  EXPECT_THROW_MSG(b.set_state("garbage"), "set_state");
}

// ---- gradients of the shape ops ----

TEST(ShapeOps, ReshapeGradMatchesFiniteDifference) {
  EXPECT_GRADCHECK([](const std::vector<Tensor>& in) { return mul(in[0].reshape({3, -1}), in[1]); },
                   (std::vector<Tensor>{param({2, 3, 2}, 1), param({3, 4}, 2)}));
}

TEST(ShapeOps, PermuteGradMatchesFiniteDifference) {
  EXPECT_GRADCHECK([](const std::vector<Tensor>& in) { return mul(in[0].permute({2, 0, 1}), in[1]); },
                   (std::vector<Tensor>{param({2, 3, 4}, 3), param({4, 2, 3}, 4)}));
}

TEST(ShapeOps, NarrowGradMatchesFiniteDifference) {
  EXPECT_GRADCHECK([](const std::vector<Tensor>& in) { return mul(in[0].narrow(1, 1, 3), in[1]); },
                   (std::vector<Tensor>{param({2, 5, 3}, 5), param({2, 3, 3}, 6)}));
}

TEST(ShapeOps, ContiguousAndCloneGradMatchesFiniteDifference) {
  EXPECT_GRADCHECK(
      [](const std::vector<Tensor>& in) { return mul(in[0].permute({1, 0}).contiguous(), in[0].permute({1, 0}).clone()); },
      (std::vector<Tensor>{param({3, 4}, 7)}));
}

TEST(ShapeOps, ConcatGradMatchesFiniteDifference) {
  for (int dim : {0, 1, 4}) {
    Shape a{2, 3, 2, 3, 2}, b = a;
    b[dim] = 1;
    EXPECT_GRADCHECK([dim](const std::vector<Tensor>& in) { return mul(concat({in[0], in[1]}, dim), in[2]); },
                     (std::vector<Tensor>{param(a, 8), param(b, 9), param([&] {
                                            Shape c = a;
                                            c[dim] += 1;
                                            return c;
                                          }(), 10)}));
  }
}

TEST(ShapeOps, ConcatForwardPlacesInputsInOrderAndChecksShapes) {
  Tensor a = Tensor::from_vector<float>({1, 2, 3, 4}, {2, 2});
  Tensor b = Tensor::from_vector<float>({5, 6}, {2, 1});
  EXPECT_EQ(concat({a, b}, 1).to_vector<float>(), (std::vector<float>{1, 2, 5, 3, 4, 6}));
  EXPECT_THROW_MSG(concat({a, b}, 0), "concat", "tensors[1]", "[2, 1]");
  EXPECT_THROW_MSG(concat({a, b.to(DType::kFloat64)}, 1), "concat", "float64");
  EXPECT_THROW_MSG(concat({}, 0), "concat", "at least one");
}

}  // namespace
}  // namespace vidgrad

// Note [CPU block cache]: blocks handed out never overlap, whatever the order of
// allocation and release (splits and merges); released memory is reused rather than
// mapped again; the mapped total stays within the peak in use (plus 1/8); a wholly free
// cache can be emptied.
TEST(CpuMemory, BlockCacheReusesSplitsAndMergesWithoutOverlap) {
  namespace cm = vidgrad::cpu_memory;
  cm::set_caching(true);  // whatever VIDGRAD_CPU_CACHE says: this tests the cache
  cm::empty_cache();
  const std::size_t MiB = std::size_t{1} << 20;
  std::mt19937 rng(3);
  struct Live {
    unsigned char* p;
    std::size_t n;
    unsigned char tag;
  };
  std::vector<Live> live;
  auto check = [&](const Live& l) {
    for (std::size_t i = 0; i < l.n; i += 4096) ASSERT_EQ(l.p[i], l.tag) << "block overwritten";
    ASSERT_EQ(l.p[l.n - 1], l.tag);
  };
  for (int round = 0; round < 3; ++round) {
    // A network-like pattern: sizes halving, then growing back, with some held over.
    for (std::size_t mb : {64, 64, 32, 48, 16, 8, 3, 1, 2, 24, 64, 5}) {
      const std::size_t n = mb * MiB + (rng() % 4096);
      auto* p = static_cast<unsigned char*>(cm::allocate(n));
      ASSERT_EQ(reinterpret_cast<std::uintptr_t>(p) % 64, 0u);
      const auto tag = static_cast<unsigned char>(rng());
      for (std::size_t i = 0; i < n; i += 4096) p[i] = tag;
      p[n - 1] = tag;
      live.push_back({p, n, tag});
      if (live.size() > 4) {  // release a random earlier block
        const std::size_t k = rng() % live.size();
        check(live[k]);
        cm::release(live[k].p, live[k].n);
        live.erase(live.begin() + static_cast<std::ptrdiff_t>(k));
      }
    }
    for (const Live& l : live) check(l);
    const cm::Stats s = cm::stats();
    EXPECT_LE(s.live_bytes + s.cached_bytes, s.peak_live_bytes + s.peak_live_bytes / 4 + 128 * MiB);
    for (const Live& l : live) cm::release(l.p, l.n);
    live.clear();
  }
  const cm::Stats before = cm::stats();
  void* again = cm::allocate(40 * MiB);  // carved out of a cached segment: no new mapping
  EXPECT_EQ(cm::stats().maps, before.maps);
  EXPECT_GT(cm::stats().hits, before.hits);
  cm::release(again, 40 * MiB);
  cm::empty_cache();
  EXPECT_EQ(cm::stats().cached_bytes, 0u);
  void* small = cm::allocate(1000);  // below 128 KiB: the C library's
  cm::release(small, 1000);
}

// Note [recently freed first]: of free blocks of the size asked for, the one released last
// is handed out, not the one at the lowest address; a larger free block is not taken
// while one of the right size is free.
TEST(CpuMemory, TheBlockFreedLastIsHandedOutFirst) {
  namespace cm = vidgrad::cpu_memory;
  cm::set_caching(true);
  cm::empty_cache();
  const std::size_t MiB = std::size_t{1} << 20;
  std::vector<void*> blocks;
  for (int i = 0; i < 3; ++i) blocks.push_back(cm::allocate(2 * MiB));  // a segment each
  void* larger = cm::allocate(4 * MiB);
  std::sort(blocks.begin(), blocks.end());
  // Lowest address first, so that the lowest-address rule would give a different block.
  for (void* p : blocks) cm::release(p, 2 * MiB);
  cm::release(larger, 4 * MiB);
  void* again = cm::allocate(2 * MiB);
  EXPECT_EQ(again, blocks.back());
  void* next = cm::allocate(2 * MiB);
  EXPECT_EQ(next, blocks[1]);
  cm::release(again, 2 * MiB);  // now the most recent again
  EXPECT_EQ(cm::allocate(2 * MiB), again);
  cm::release(again, 2 * MiB);
  cm::release(next, 2 * MiB);
  cm::empty_cache();
}

// Note [scratch blocks]: tensors from 128 KiB come from the cache, the kernels' scratch
// (AlignedVector) from a cache of its own that tensor statistics do not count, and with
// the cache off every block comes from the C library (memory checkers see each).
TEST(CpuMemory, ScratchHasItsOwnCacheAndCacheOffUsesTheCLibrary) {
  namespace cm = vidgrad::cpu_memory;
  cm::set_caching(true);
  const std::size_t KiB = 1024;
  const cm::Stats s0 = cm::stats();
  void* t = cm::allocate(200 * KiB);  // a stage-5 sized tensor: from the cache now
  const cm::Stats s1 = cm::stats();
  EXPECT_EQ(s1.live_bytes, s0.live_bytes + 256 * KiB);  // 64 KiB multiples
  EXPECT_EQ(s1.hits + s1.maps, s0.hits + s0.maps + 1);
  {
    vidgrad::AlignedVector<float> scratch(1 << 20);  // 4 MiB of kernel scratch
    EXPECT_EQ(reinterpret_cast<std::uintptr_t>(scratch.data()) % 64, 0u);
    scratch.back() = 1.0f;
    EXPECT_EQ(cm::stats().live_bytes, s1.live_bytes);  // not a tensor block
    EXPECT_EQ(cm::stats().maps, s1.maps);
  }
  cm::release(t, 200 * KiB);
  EXPECT_EQ(cm::stats().live_bytes, s0.live_bytes);

  cm::set_caching(false);
  const cm::Stats off = cm::stats();
  void* big = cm::allocate(3 << 20);
  static_cast<char*>(big)[(3 << 20) - 1] = 1;
  EXPECT_EQ(reinterpret_cast<std::uintptr_t>(big) % 64, 0u);
  EXPECT_EQ(cm::stats().live_bytes, off.live_bytes);  // not from the cache
  EXPECT_EQ(cm::stats().maps, off.maps);
  vidgrad::AlignedVector<float> scratch(1 << 20);
  cm::set_caching(true);
  cm::release(big, 3 << 20);  // still freed by the C library after the cache is back on
  EXPECT_EQ(cm::stats().live_bytes, off.live_bytes);
}

// Note [stealing ranges]: every unit is handed out exactly once and owners walk their own
// ranges in order; a thread that has not started has its units taken by the others, from
// the back (thread 0 waits until a thief has robbed it, thieves then until thread 0 has
// taken a unit), and ranges with no thread of their own (a team of 2 for 4) are emptied.
TEST(StealingRanges, EveryUnitOnceOwnersInOrderIdleRangesRobbed) {
  for (const int team : {4, 2}) {
    const std::int64_t total = 1000;
    vidgrad::StealingRanges ranges(total, 4);
    std::vector<std::atomic<int>> taken(total);
    std::atomic<int> out_of_order{0}, robbed{0}, owner0_started{0};
    std::atomic<std::int64_t> last_owned0{-1}, first_stolen0{total};  // range 0's, owner / thieves
    auto worker = [&](int t) {
      auto wait_for = [](const std::atomic<int>& flag) {
        const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
        while (flag.load() == 0 && std::chrono::steady_clock::now() < deadline) std::this_thread::yield();
      };
      if (t == 0 && team == 4) wait_for(robbed);  // starts once another thread has taken one of its units
      std::int64_t last_own = -1;
      bool stolen = false;
      for (std::int64_t u = ranges.next(t, &stolen); u >= 0; u = ranges.next(t, &stolen)) {
        ++taken[u];
        if (!stolen) {
          if (u <= last_own || u < total * t / 4 || u >= total * (t + 1) / 4) ++out_of_order;
          last_own = u;
          if (t == 0) last_owned0 = u, owner0_started = 1;
        } else if (u < total / 4) {
          for (std::int64_t f = first_stolen0.load(); u < f && !first_stolen0.compare_exchange_weak(f, u);) {
          }
          ++robbed;
          if (team == 4) wait_for(owner0_started);
        }
      }
    };
    std::vector<std::thread> threads;
    for (int t = 0; t < team; ++t) threads.emplace_back(worker, t);
    for (auto& t : threads) t.join();
    for (std::int64_t u = 0; u < total; ++u) ASSERT_EQ(taken[u].load(), 1) << "unit " << u << ", team " << team;
    EXPECT_EQ(out_of_order.load(), 0) << "team " << team;
    if (team == 4) {
      EXPECT_GT(robbed.load(), 0) << "thread 0 waited; its units should have been stolen";
      EXPECT_LT(last_owned0.load(), first_stolen0.load()) << "thieves take from the back";
    }
    EXPECT_EQ(ranges.next(0), -1);
    EXPECT_EQ(ranges.peek(1), -1);
  }
}

// The loader's threads allocate batch tensors while the training thread allocates
// activations: concurrent use of the block cache must hand out disjoint blocks.
TEST(CpuMemory, ConcurrentThreadsGetDisjointBlocks) {
  namespace cm = vidgrad::cpu_memory;
  const std::size_t MiB = std::size_t{1} << 20;
  std::atomic<int> failures{0};
  auto worker = [&](unsigned seed) {
    std::mt19937 rng(seed);
    std::vector<std::pair<unsigned char*, std::size_t>> live;
    for (int i = 0; i < 200; ++i) {
      const std::size_t n = (1 + rng() % 6) * MiB + rng() % 5000;
      auto* p = static_cast<unsigned char*>(cm::allocate(n));
      const auto tag = static_cast<unsigned char>(seed * 31 + i);
      for (std::size_t k = 0; k < n; k += 4096) p[k] = tag;
      p[n - 1] = tag;
      live.emplace_back(p, n);
      if (live.size() > 3) {
        const std::size_t k = rng() % live.size();
        auto [q, m] = live[k];
        const unsigned char t = q[0];
        for (std::size_t j = 0; j < m; j += 4096)
          if (q[j] != t) ++failures;
        if (q[m - 1] != t) ++failures;
        cm::release(q, m);
        live.erase(live.begin() + static_cast<std::ptrdiff_t>(k));
      }
    }
    for (auto [q, m] : live) cm::release(q, m);
  };
  std::vector<std::thread> threads;
  for (unsigned t = 1; t <= 4; ++t) threads.emplace_back(worker, t);
  for (auto& t : threads) t.join();
  EXPECT_EQ(failures.load(), 0) << "a block was written by another thread";
}
