// conv3d at the SEVNet-G8 layer shapes (paper Table 1), by default for one 16x224x224
// clip (--batch, --frames, --size choose another input): the stem and, per stage, the
// downsampling module's 1x1x1 and stride-2 grouped 1x3x3 (C/2 channels, at the stage's
// input size), then the 1x1x1 C->C, the 1x3x3 with group width 8 and the 3x1x1 C->C convs.
// Each shape is timed for the forward, the input gradient and the weight gradient and
// reported in GFLOP/s (2 x multiply-accumulates per second; the counter prints as
// "GFLOP=<n>/s").
//
//   build/bench/conv3d_bench [--benchmark_filter=stage2] [--threads=N] [--batch=4 --frames=8 --size=112]
//                            [--winograd=off | --winograd=C] [--cold] [--channels-last]
// --winograd=off times the 3x1x1 convs on the direct row GEMM, --winograd=C takes the
// Winograd path from C channels on (default 32; Note [Winograd temporal conv]). --cold
// writes twice the last-level cache (at least 64 MiB), from every thread, before each timed
// pass, untimed, so the conv reads its operands from memory as it does in a training step,
// where other layers' tensors pass through the caches between a layer's forward and its
// gradients; without it, a layer's operands stay cached from one iteration to the next.
// Cold passes run a fixed 15 iterations (evicting 1 GB takes longer than most passes)
// after one untimed pass (the first would time page faults on fresh memory).
// --channels-last stores the input and the output gradient channels-last (core/layout.h):
// the 1x1x1 convs then run the channels-last kernels (ops/cpu/channels_last.h); the other
// convs read the input through a conversion to NCDHW, timed with them.
//
// On the 2-vCPU Intel VM (480 MiB L3 reported) the 64 MiB written until 2026-11-23 left
// the operands cached. 4 x 8x112, 2 threads, forward ms, warm / --cold then / --cold now:
// stage-2 downsampling 1x1x1 0.95-0.96 / 0.94 / 1.45-1.48, stage-5 3x1x1 1.42-1.45 / - /
// 2.20-2.38; inside a training step (--profile, with the step's statistics and prologue)
// 1.59-1.67 and 2.09.
#include <benchmark/benchmark.h>

#include <omp.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <algorithm>
#include <cstring>
#include <string>
#include <vector>

#include "input_flags.h"
#include "vidgrad/ops/cpu/conv3d_cpu.h"
#include "vidgrad/ops/ops.h"

namespace {

using namespace vidgrad;

struct LayerShape {
  std::string name;
  std::int64_t N, C, O, T, H, W;
  std::array<std::int64_t, 3> kernel;
  Conv3dOptions opts;
};

// N clips of T frames at size x size: the stem halves the size, then each stage's first
// module halves it again (rounding up, as the stride-2, pad-1 convs do).
std::vector<LayerShape> sevnet_g8_layers(std::int64_t N, std::int64_t T, std::int64_t size) {
  constexpr std::int64_t G = 8;
  auto half = [](std::int64_t s) { return (s + 1) / 2; };
  const std::int64_t s1 = half(size);
  std::vector<LayerShape> layers{
      {"stem_1x7x7_3to32", N, 3, 4 * G, T, size, size, {1, 7, 7}, {.stride = {1, 2, 2}, .padding = {0, 3, 3}}},
      {"stem_3x1x1_32", N, 4 * G, 4 * G, T, s1, s1, {3, 1, 1}, {.padding = {1, 0, 0}}},
  };
  const std::int64_t widths[4] = {8 * G, 16 * G, 32 * G, 64 * G};
  std::int64_t in = s1;
  for (int s = 0; s < 4; ++s) {
    const std::int64_t C = widths[s], S = half(in);
    const std::string stage = "stage" + std::to_string(s + 2) + "_C" + std::to_string(C);
    // The stage's first (downsampling) module: its branch starts with a 1x1x1 conv of C/2
    // channels at the input size, then its grouped conv has C/2 channels, stride 2.
    layers.push_back({stage + "_down_1x1x1", N, C / 2, C / 2, T, in, in, {1, 1, 1}, {}});
    layers.push_back({stage + "_down_1x3x3_gw8_s2", N, C / 2, C / 2, T, in, in, {1, 3, 3},
                      {.stride = {1, 2, 2}, .padding = {0, 1, 1}, .groups = C / 2 / G}});
    layers.push_back({stage + "_1x1x1", N, C, C, T, S, S, {1, 1, 1}, {}});
    layers.push_back({stage + "_1x3x3_gw8", N, C, C, T, S, S, {1, 3, 3}, {.padding = {0, 1, 1}, .groups = C / G}});
    layers.push_back({stage + "_3x1x1", N, C, C, T, S, S, {3, 1, 1}, {.padding = {1, 0, 0}}});
    in = S;
  }
  return layers;
}

double conv_flops(const LayerShape& l, const Tensor& y) {
  const double k = static_cast<double>(l.C / l.opts.groups * l.kernel[0] * l.kernel[1] * l.kernel[2]);
  return 2.0 * static_cast<double>(y.numel()) * k;
}

enum class Pass { kForward, kInputGrad, kWeightGrad };

bool cold = false;           // --cold
bool channels_last = false;  // --channels-last

// Writes a buffer twice the size of the last-level cache, evicting the conv's operands,
// each thread a share (a thread left waiting would sleep and wake late for the pass).
void evict_caches() {
  static std::vector<char> buf = [] {
    // sysconf gives 0 or -1 where the size is unknown: then the 64 MiB floor.
    const long llc = std::max({sysconf(_SC_LEVEL3_CACHE_SIZE), sysconf(_SC_LEVEL2_CACHE_SIZE), 0L});
    return std::vector<char>(std::max<std::size_t>(std::size_t{64} << 20, 2 * static_cast<std::size_t>(llc)));
  }();
  static char v = 0;
  ++v;
#pragma omp parallel
  {
    const std::size_t parts = static_cast<std::size_t>(omp_get_num_threads());
    const std::size_t i = static_cast<std::size_t>(omp_get_thread_num()), share = buf.size() / parts;
    std::memset(buf.data() + i * share, v, i + 1 == parts ? buf.size() - i * share : share);
  }
  benchmark::DoNotOptimize(buf.data());
}

void run(benchmark::State& state, const LayerShape& l, Pass pass) {
  Generator gen(1);
  Tensor x = Tensor::randn({l.N, l.C, l.T, l.H, l.W}, gen);
  if (channels_last) x = to_channels_last(x);  // before requires_grad: x stays a leaf
  Tensor w = Tensor::randn({l.O, l.C / l.opts.groups, l.kernel[0], l.kernel[1], l.kernel[2]}, gen);
  if (pass == Pass::kInputGrad) x.set_requires_grad(true);
  if (pass == Pass::kWeightGrad) w.set_requires_grad(true);
  Tensor y;
  {
    autograd::NoGradGuard no_grad;
    y = conv3d(x, w, {}, l.opts);
  }
  Tensor gy = Tensor::randn(y.shape(), gen);
  if (channels_last) gy = to_channels_last(gy);
  if (cold) {  // untimed: the eviction buffer's and the pass's first touches of their memory
    evict_caches();
    Tensor out = conv3d(x, w, {}, l.opts);
    if (pass != Pass::kForward) {
      out.backward(gy);
      x.set_grad(Tensor());
      w.set_grad(Tensor());
    }
  }
  for (auto _ : state) {
    if (pass == Pass::kForward) {
      if (cold) {
        state.PauseTiming();
        evict_caches();
        state.ResumeTiming();
      }
      autograd::NoGradGuard no_grad;
      benchmark::DoNotOptimize(conv3d(x, w, {}, l.opts).data<float>());
    } else {
      state.PauseTiming();
      Tensor out = conv3d(x, w, {}, l.opts);  // forward not timed
      if (cold) evict_caches();
      state.ResumeTiming();
      out.backward(gy);
      benchmark::DoNotOptimize((pass == Pass::kInputGrad ? x : w).grad().data<float>());
      state.PauseTiming();
      x.set_grad(Tensor());
      w.set_grad(Tensor());
      state.ResumeTiming();
    }
  }
  state.counters["GFLOP"] =
      benchmark::Counter(conv_flops(l, y) / 1e9, benchmark::Counter::kIsIterationInvariantRate);
}

}  // namespace

int main(int argc, char** argv) {
  // --threads=N sets vidgrad's thread count (default: OpenMP's, i.e. all cores);
  // --batch, --frames and --size the input (default 1 clip of 16x224x224).
  std::vector<char*> args;
  vidgrad::bench::InputFlags in{1, 16, 224};
  for (int i = 0; i < argc; ++i) {
    const auto value = [&](const char* flag) -> const char* {
      const std::size_t n = std::strlen(flag);
      return std::strncmp(argv[i], flag, n) == 0 ? argv[i] + n : nullptr;
    };
    if (vidgrad::bench::take_input_flag(argv[i], in)) continue;
    if (const char* v = value("--winograd=")) {
      if (std::strcmp(v, "off") == 0)
        vidgrad::cpu::set_winograd_temporal(false);
      else
        vidgrad::cpu::set_winograd_temporal(true, std::max<long long>(1, std::atoll(v)));
    } else if (std::strcmp(argv[i], "--cold") == 0) {
      cold = true;
    } else if (std::strcmp(argv[i], "--channels-last") == 0) {
      channels_last = true;
    } else {
      args.push_back(argv[i]);
    }
  }
  const std::int64_t batch = in.batch, frames = in.frames, size = in.size;
  if (batch < 1 || frames < 1 || size < 32) {
    std::fprintf(stderr, "conv3d_bench: need --batch >= 1, --frames >= 1, --size >= 32; got %lld, %lld, %lld\n",
                 static_cast<long long>(batch), static_cast<long long>(frames), static_cast<long long>(size));
    return 2;
  }
  int n = static_cast<int>(args.size());
  for (const LayerShape& l : sevnet_g8_layers(batch, frames, size)) {
    const std::pair<const char*, Pass> passes[] = {
        {"forward", Pass::kForward}, {"input_grad", Pass::kInputGrad}, {"weight_grad", Pass::kWeightGrad}};
    for (auto [pname, pass] : passes) {
      auto* b = benchmark::RegisterBenchmark(("conv3d/" + l.name + "/" + pname).c_str(),
                                             [l, pass = pass](benchmark::State& s) { run(s, l, pass); })
          ->Unit(benchmark::kMillisecond)
          ->UseRealTime();
      if (cold)
        b->Iterations(15);
      else
        b->MinTime(0.5);
    }
  }
  benchmark::Initialize(&n, args.data());
  benchmark::AddCustomContext("threads", std::to_string(vidgrad::get_num_threads()));
  benchmark::AddCustomContext("layout", channels_last ? "channels-last" : "NCDHW");
  benchmark::AddCustomContext("input", std::to_string(batch) + " x " + std::to_string(frames) + "x" +
                                           std::to_string(size) + "x" + std::to_string(size));
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
