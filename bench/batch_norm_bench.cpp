// batch_norm at the SEVNet-G8 stage shapes, NCDHW against channels-last (core/layout.h):
// the training forward as the network runs it (statistics given by the conv before, the
// ReLU fused: one normalising pass) and its backward (sums, then the input gradient), by
// default for 4 clips of 8x112x112 (--batch, --frames, --size choose another input).
// Operands from memory: 1 GiB is written before each timed pass (bench/evict_caches.h).
//
//   build/bench/batch_norm_bench [--threads=N] [--batch=4 --frames=8 --size=112] [--benchmark_filter=...]
#include <benchmark/benchmark.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "evict_caches.h"
#include "input_flags.h"
#include "vidgrad/core/layout.h"
#include "vidgrad/core/parallel.h"
#include "vidgrad/ops/ops.h"

namespace {

using namespace vidgrad;

void run(benchmark::State& state, Shape shape, bool channels_last, bool backward) {
  Generator gen(1);
  const std::int64_t C = shape[1];
  Tensor x = Tensor::randn(shape, gen);
  const Tensor gy0 = Tensor::randn(shape, gen);
  const Tensor gy = channels_last ? to_channels_last(gy0) : gy0;
  if (channels_last) x = to_channels_last(x);
  Tensor w = Tensor::ones({C}), b = Tensor::zeros({C});
  if (backward) x.set_requires_grad(true);
  ChannelStatistics st;  // the statistics the conv before would give
  st.mean.assign(static_cast<std::size_t>(C), 0.0);
  st.var.assign(static_cast<std::size_t>(C), 1.0);
  const BatchNormOptions o{.training = true, .relu = true};
  for (auto _ : state) {
    state.PauseTiming();
    Tensor y;
    if (backward) y = batch_norm(x, w, b, {}, {}, o, &st);
    vidgrad::bench::evict_caches();
    state.ResumeTiming();
    if (backward) {
      y.backward(gy);
      benchmark::DoNotOptimize(x.grad().data<float>());
      state.PauseTiming();
      x.set_grad(Tensor());
      state.ResumeTiming();
    } else {
      autograd::NoGradGuard no_grad;
      benchmark::DoNotOptimize(batch_norm(x, w, b, {}, {}, o, &st).data<float>());
    }
  }
  state.SetBytesProcessed(state.iterations() * x.numel() * 4 * (backward ? 5 : 2));
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<char*> args;
  vidgrad::bench::InputFlags in{4, 8, 112};
  for (int i = 0; i < argc; ++i)
    if (!vidgrad::bench::take_input_flag(argv[i], in)) args.push_back(argv[i]);
  const std::int64_t batch = in.batch, frames = in.frames, size = in.size;
  if (batch < 1 || frames < 1 || size < 32) {
    std::fprintf(stderr, "batch_norm_bench: need --batch >= 1, --frames >= 1, --size >= 32; got %lld, %lld, %lld\n",
                 static_cast<long long>(batch), static_cast<long long>(frames), static_cast<long long>(size));
    return 2;
  }
  // The stages' activations: 32 channels at half the input size, then 64 to 512 channels,
  // halving the size each stage (rounding up, as the stride-2 convs do).
  std::int64_t s = (size + 1) / 2;
  std::vector<std::pair<std::string, Shape>> shapes{{"stem_C32", {batch, 32, frames, s, s}}};
  for (int k = 0; k < 4; ++k) {
    s = (s + 1) / 2;
    const std::int64_t C = 64 << k;
    shapes.push_back({"stage" + std::to_string(k + 2) + "_C" + std::to_string(C), {batch, C, frames, s, s}});
  }
  int n = static_cast<int>(args.size());
  for (const auto& [name, shape] : shapes)
    for (bool backward : {false, true})
      for (bool cl : {false, true})
        benchmark::RegisterBenchmark(
            ("batch_norm_relu/" + name + (backward ? "/backward/" : "/forward/") + (cl ? "channels_last" : "ncdhw"))
                .c_str(),
            [shape = shape, cl, backward](benchmark::State& st) { run(st, shape, cl, backward); })
            ->Unit(benchmark::kMillisecond)
            ->UseRealTime()
            ->Iterations(15);
  benchmark::Initialize(&n, args.data());
  benchmark::AddCustomContext("threads", std::to_string(vidgrad::get_num_threads()));
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
