// Times SEVNet training or inference steps on synthetic input: the engine behind
// `vidgrad bench` and bench/sevnet_bench (the same loop, so their numbers compare).
// Header-only so that sevnet_bench builds without the video pipeline (GPU machines).
#pragma once

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <numeric>
#include <string>
#include <vector>

#include "vidgrad/autograd/grad_mode.h"
#include "vidgrad/core/cuda/context.h"
#include "vidgrad/core/parallel.h"
#include "vidgrad/core/profile.h"
#include "vidgrad/models/sevnet.h"
#include "vidgrad/ops/cpu/conv3d_cpu.h"
#include "vidgrad/ops/ops.h"
#include "vidgrad/optim/sgd.h"

namespace vidgrad::bench {

struct StepBenchOptions {
  std::string model = "sevnet_g8";
  std::int64_t batch = 1, frames = 16, size = 224, classes = 174;
  int threads = 0, steps = 5, warmup = 2;
  bool inference = false;
  std::string device = "cpu";
  bool tf32 = false;
  bool profile = false;  // print where the timed steps' time went, per op (core/profile.h)
  bool winograd = true;  // CPU 3x1x1 convs by Winograd F(4, 3) (Note [Winograd temporal conv])
};

struct StepBenchResult {
  double median_s = 0;
  double fastest_s = 0, slowest_s = 0;  // of the timed steps: how steady the machine was
  double clips_per_s = 0;
  std::size_t peak_device_bytes = 0;  // CUDA only: the caching allocator's peak
};

// The profiler's table: per op (and conv shape), time per step, share of the timed steps,
// calls per step. Exclusive times; what no scope covers (module code, allocation between
// ops, the loss's scalar) is the "(outside ops)" row.
inline void print_profile(int steps, double total_s) {
  const std::vector<profile::Entry> entries = profile::entries();
  double covered = 0;
  for (const auto& e : entries) covered += e.seconds;
  std::printf("%-52s %10s %7s %8s\n", "op (host wall time, exclusive)", "ms/step", "share", "calls");
  auto row = [&](const std::string& name, double s, double calls) {
    std::printf("%-52s %10.2f %6.1f%% %8.0f\n", name.c_str(), 1e3 * s / steps, 100.0 * s / total_s, calls / steps);
  };
  for (const auto& e : entries) row(e.name, e.seconds, static_cast<double>(e.calls));
  row("(outside ops)", total_s - covered, 0);
}

inline StepBenchResult run_step_benchmark(const StepBenchOptions& a) {
  if (a.threads > 0) set_num_threads(a.threads);
  const Device device = parse_device(a.device);
  cuda::set_allow_tf32(a.tf32);
  cpu::set_winograd_temporal(a.winograd);
  models::SevNetConfig base;
  base.num_classes = a.classes;
  auto net = models::make_model(a.model, base);
  net->to(device);
  optim::Sgd sgd(net->named_parameters(), {.lr = 1e-4, .momentum = 0.9, .weight_decay = 1e-4});
  Generator gen(0);
  const Tensor x = Tensor::randn({a.batch, 3, a.frames, a.size, a.size}, gen).to(device);
  std::vector<std::int64_t> yv(static_cast<std::size_t>(a.batch));
  for (auto& v : yv) v = static_cast<std::int64_t>(gen.next_u64() % static_cast<std::uint64_t>(a.classes));
  const Tensor y = Tensor::from_vector(yv, {a.batch}).to(device);
  if (a.inference) net->eval();
  auto sync = [&] {
    if (device.is_cuda()) cuda::synchronize(device.index);
  };
  std::vector<double> times;
  for (int i = 0; i < a.warmup + a.steps; ++i) {
    if (device.is_cuda() && i == a.warmup) cuda::reset_peak_memory(device.index);
    if (a.profile && i == a.warmup) {
      profile::reset();
      profile::set_enabled(true);
    }
    sync();
    const auto t = std::chrono::steady_clock::now();
    if (a.inference) {
      autograd::NoGradGuard no_grad;
      net->forward(x);
    } else {
      Tensor loss = cross_entropy(net->forward(x), y);
      net->zero_grad();
      loss.backward();
      sgd.step();
    }
    sync();
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count();
    if (i >= a.warmup) times.push_back(s);
  }
  std::sort(times.begin(), times.end());
  StepBenchResult r;
  r.median_s = times[times.size() / 2];
  r.fastest_s = times.front();
  r.slowest_s = times.back();
  r.clips_per_s = static_cast<double>(a.batch) / r.median_s;
  if (device.is_cuda()) r.peak_device_bytes = cuda::memory_stats(device.index).peak_allocated;
  std::printf("%s %s on %s, batch %lld, %lldx%lldx%lld, %d threads: median %.4f s/step over %d steps (%.4f-%.4f), "
              "%.3f clips/s",
              a.model.c_str(), a.inference ? "inference" : "training", a.device.c_str(),
              static_cast<long long>(a.batch), static_cast<long long>(a.frames), static_cast<long long>(a.size),
              static_cast<long long>(a.size), get_num_threads(), r.median_s, a.steps, r.fastest_s, r.slowest_s,
              r.clips_per_s);
  if (device.is_cuda())
    std::printf(", peak device memory %.0f MiB", static_cast<double>(r.peak_device_bytes) / (1 << 20));
  std::printf("\n");
  if (a.profile) {
    profile::set_enabled(false);
    print_profile(a.steps, std::accumulate(times.begin(), times.end(), 0.0));
  }
  return r;
}

}  // namespace vidgrad::bench
