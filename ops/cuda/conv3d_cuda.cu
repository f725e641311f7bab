// conv3d on CUDA: cuDNN for every shape, and direct kernels that compete with it for
// grouped convolutions (cuDNN's grouped / depthwise 3-D kernels, the backward ones most,
// are known to be slow).
//
// Note [conv plans]
// The first call with a new shape (geometry, dtype, TF32 setting) makes a plan: cuDNN
// descriptors, and per pass (forward, input gradient, weight gradient) the implementation
// to use. cuDNN's choice comes from its Find*AlgorithmEx search, run on the real buffers
// with a workspace of up to kSearchWorkspace bytes. For groups > 1 the direct kernel is then
// timed against cuDNN's best on the same buffers (best of kTimingRuns each) and the faster
// is kept. Later calls only look the plan up. When a chosen algorithm's workspace cannot be
// allocated, the call falls back to the best algorithm found that needs no workspace.
#include <cudnn.h>

#include <cfloat>
#include <map>
#include <memory>
#include <mutex>
#include <tuple>
#include <vector>

#include "vidgrad/core/cuda/context.h"
#include "vidgrad/core/cuda/kernel_util.cuh"
#include "vidgrad/core/cuda/memory.h"
#include "vidgrad/ops/cuda/kernels.h"

#define VG_CUDNN_CHECK(expr)                                                                        \
  do {                                                                                              \
    const cudnnStatus_t vg_status_ = (expr);                                                        \
    VG_CHECK(vg_status_ == CUDNN_STATUS_SUCCESS,                                                    \
             "cuDNN call " #expr " failed: " << cudnnGetErrorString(vg_status_));                   \
  } while (0)

namespace vidgrad::cuda {

namespace {

using cpu::Conv3dGeometry;

constexpr std::size_t kSearchWorkspace = std::size_t{1} << 30;
constexpr int kTimingRuns = 3;

enum class ConvPass { kForward, kBackwardInput, kBackwardWeight };

int g_policy = 0;  // 0 automatic, 1 cuDNN only, 2 direct for grouped convs

cudnnHandle_t cudnn_handle(int device) {
  static std::once_flag once[64];
  static cudnnHandle_t handles[64];
  check_device(device, "cuDNN");
  std::call_once(once[device], [&] {
    DeviceGuard guard(device);
    VG_CUDNN_CHECK(cudnnCreate(&handles[device]));
    VG_CUDNN_CHECK(cudnnSetStream(handles[device], compute_stream(device)));
  });
  return handles[device];
}

// ---------------------------------------------------------------------------------------
// Direct kernels, any kernel size, stride, padding and dilation. One thread per output
// (forward) or input (input gradient) element, one block per weight (weight gradient),
// all written as lambdas that tests also run under host emulation.

// Output index along one axis that tap k reads input index i from, or -1.
__host__ __device__ inline std::int64_t source_out(std::int64_t i, std::int64_t k, std::int64_t stride,
                                                   std::int64_t pad, std::int64_t dil, std::int64_t out) {
  const std::int64_t num = i + pad - k * dil;
  if (num < 0 || num % stride != 0) return -1;
  const std::int64_t o = num / stride;
  return o < out ? o : -1;
}

template <typename T>
void direct_forward(const Conv3dGeometry& g, const T* x, const T* w, const T* b, T* y, int device) {
  const std::int64_t Cg = g.Cg(), Og = g.Og();
  for_each_index(g.N * g.O * g.L(), device, "conv3d direct forward", [=] __host__ __device__(std::int64_t i) {
    const std::int64_t wo = i % g.Wo, ho = (i / g.Wo) % g.Ho, to = (i / (g.Wo * g.Ho)) % g.To;
    const std::int64_t o = (i / (g.Wo * g.Ho * g.To)) % g.O, n = i / (g.Wo * g.Ho * g.To * g.O);
    const std::int64_t c0 = (o / Og) * Cg;
    T acc = b ? b[o] : T(0);
    for (std::int64_t c = 0; c < Cg; ++c) {
      const T* xc = x + ((n * g.C + c0 + c) * g.T) * g.H * g.W;
      const T* wc = w + (o * Cg + c) * g.kT * g.kH * g.kW;
      for (std::int64_t kt = 0; kt < g.kT; ++kt) {
        const std::int64_t t = to * g.sT - g.pT + kt * g.dT;
        if (t < 0 || t >= g.T) continue;
        for (std::int64_t kh = 0; kh < g.kH; ++kh) {
          const std::int64_t h = ho * g.sH - g.pH + kh * g.dH;
          if (h < 0 || h >= g.H) continue;
          for (std::int64_t kw = 0; kw < g.kW; ++kw) {
            const std::int64_t ww = wo * g.sW - g.pW + kw * g.dW;
            if (ww < 0 || ww >= g.W) continue;
            acc += xc[(t * g.H + h) * g.W + ww] * wc[(kt * g.kH + kh) * g.kW + kw];
          }
        }
      }
    }
    y[i] = acc;
  });
}

// One thread per input element, visiting the outputs that read it (no atomics).
template <typename T>
void direct_backward_input(const Conv3dGeometry& g, const T* gy, const T* w, T* gx, int device) {
  const std::int64_t Cg = g.Cg(), Og = g.Og();
  for_each_index(g.N * g.C * g.in_volume(), device, "conv3d direct input gradient",
                 [=] __host__ __device__(std::int64_t i) {
                   const std::int64_t wi = i % g.W, hi = (i / g.W) % g.H, ti = (i / (g.W * g.H)) % g.T;
                   const std::int64_t ci = (i / (g.W * g.H * g.T)) % g.C, n = i / (g.W * g.H * g.T * g.C);
                   const std::int64_t grp = ci / Cg, c = ci % Cg;
                   T acc = 0;
                   for (std::int64_t kt = 0; kt < g.kT; ++kt) {
                     const std::int64_t to = source_out(ti, kt, g.sT, g.pT, g.dT, g.To);
                     if (to < 0) continue;
                     for (std::int64_t kh = 0; kh < g.kH; ++kh) {
                       const std::int64_t ho = source_out(hi, kh, g.sH, g.pH, g.dH, g.Ho);
                       if (ho < 0) continue;
                       for (std::int64_t kw = 0; kw < g.kW; ++kw) {
                         const std::int64_t wo = source_out(wi, kw, g.sW, g.pW, g.dW, g.Wo);
                         if (wo < 0) continue;
                         for (std::int64_t oo = 0; oo < Og; ++oo) {
                           const std::int64_t o = grp * Og + oo;
                           acc += gy[(((n * g.O + o) * g.To + to) * g.Ho + ho) * g.Wo + wo] *
                                  w[(((o * Cg + c) * g.kT + kt) * g.kH + kh) * g.kW + kw];
                         }
                       }
                     }
                   }
                   gx[i] = acc;
                 });
}

// One block per weight element, reducing over (n, output position).
template <typename T>
void direct_backward_weight(const Conv3dGeometry& g, const T* gy, const T* x, T* gw, int device) {
  const std::int64_t Cg = g.Cg(), Og = g.Og(), taps = g.kT * g.kH * g.kW, L = g.L();
  reduce_each(
      g.O * Cg * taps, g.N * L, device, "conv3d direct weight gradient",
      [=] __host__ __device__(std::int64_t wi, std::int64_t j) {
        const std::int64_t kw = wi % g.kW, kh = (wi / g.kW) % g.kH, kt = (wi / (g.kW * g.kH)) % g.kT;
        const std::int64_t c = (wi / taps) % Cg, o = wi / (taps * Cg);
        const std::int64_t ci = (o / Og) * Cg + c;
        const std::int64_t n = j / L, l = j % L;
        const std::int64_t wo = l % g.Wo, ho = (l / g.Wo) % g.Ho, to = l / (g.Wo * g.Ho);
        const std::int64_t t = to * g.sT - g.pT + kt * g.dT, h = ho * g.sH - g.pH + kh * g.dH,
                           ww = wo * g.sW - g.pW + kw * g.dW;
        if (t < 0 || t >= g.T || h < 0 || h >= g.H || ww < 0 || ww >= g.W) return T(0);
        return gy[(n * g.O + o) * L + l] * x[(((n * g.C + ci) * g.T + t) * g.H + h) * g.W + ww];
      },
      [=] __host__ __device__(std::int64_t wi, double acc) { gw[wi] = static_cast<T>(acc); });
}

// ---------------------------------------------------------------------------------------
// cuDNN plans (Note [conv plans]).

struct PassChoice {
  bool searched = false;
  bool direct = false;
  int algo = 0;                 // cudnnConvolution{Fwd,BwdData,BwdFilter}Algo_t
  cudnnMathType_t math = CUDNN_DEFAULT_MATH;
  std::size_t workspace = 0;
  int fallback_algo = 0;        // best found with no workspace
  cudnnMathType_t fallback_math = CUDNN_DEFAULT_MATH;
};

struct Plan {
  cudnnTensorDescriptor_t x = nullptr, y = nullptr;
  cudnnFilterDescriptor_t w = nullptr;
  cudnnConvolutionDescriptor_t conv = nullptr;
  PassChoice pass[3];
};

using PlanKey = std::tuple<std::vector<std::int64_t>, bool, bool, int>;

PlanKey plan_key(const Conv3dGeometry& g, bool is_double, int device) {
  return {{g.N, g.C, g.T, g.H, g.W, g.O, g.kT, g.kH, g.kW, g.sT, g.sH, g.sW, g.pT, g.pH, g.pW, g.dT, g.dH, g.dW,
           g.groups},
          is_double, !is_double && allow_tf32(), device};
}

std::mutex g_plans_mu;
std::map<PlanKey, std::unique_ptr<Plan>>& plans() {
  static auto* m = new std::map<PlanKey, std::unique_ptr<Plan>>();
  return *m;
}

cudnnMathType_t default_math(bool is_double) {
  if (is_double) return CUDNN_DEFAULT_MATH;
  return allow_tf32() ? CUDNN_TENSOR_OP_MATH : CUDNN_FMA_MATH;
}

Plan& plan_for(const Conv3dGeometry& g, bool is_double, int device) {
  std::lock_guard<std::mutex> lock(g_plans_mu);
  auto& slot = plans()[plan_key(g, is_double, device)];
  if (slot) return *slot;
  auto p = std::make_unique<Plan>();
  const cudnnDataType_t dt = is_double ? CUDNN_DATA_DOUBLE : CUDNN_DATA_FLOAT;
  auto tensor = [&](cudnnTensorDescriptor_t* d, std::int64_t C, std::int64_t T, std::int64_t H, std::int64_t W) {
    VG_CUDNN_CHECK(cudnnCreateTensorDescriptor(d));
    const int dims[5] = {static_cast<int>(g.N), static_cast<int>(C), static_cast<int>(T), static_cast<int>(H),
                         static_cast<int>(W)};
    const int strides[5] = {dims[1] * dims[2] * dims[3] * dims[4], dims[2] * dims[3] * dims[4], dims[3] * dims[4],
                            dims[4], 1};
    VG_CUDNN_CHECK(cudnnSetTensorNdDescriptor(*d, dt, 5, dims, strides));
  };
  tensor(&p->x, g.C, g.T, g.H, g.W);
  tensor(&p->y, g.O, g.To, g.Ho, g.Wo);
  VG_CUDNN_CHECK(cudnnCreateFilterDescriptor(&p->w));
  const int wdims[5] = {static_cast<int>(g.O), static_cast<int>(g.Cg()), static_cast<int>(g.kT),
                        static_cast<int>(g.kH), static_cast<int>(g.kW)};
  VG_CUDNN_CHECK(cudnnSetFilterNdDescriptor(p->w, dt, CUDNN_TENSOR_NCHW, 5, wdims));
  VG_CUDNN_CHECK(cudnnCreateConvolutionDescriptor(&p->conv));
  const int pad[3] = {static_cast<int>(g.pT), static_cast<int>(g.pH), static_cast<int>(g.pW)};
  const int stride[3] = {static_cast<int>(g.sT), static_cast<int>(g.sH), static_cast<int>(g.sW)};
  const int dil[3] = {static_cast<int>(g.dT), static_cast<int>(g.dH), static_cast<int>(g.dW)};
  VG_CUDNN_CHECK(cudnnSetConvolutionNdDescriptor(p->conv, 3, pad, stride, dil, CUDNN_CROSS_CORRELATION, dt));
  VG_CUDNN_CHECK(cudnnSetConvolutionGroupCount(p->conv, static_cast<int>(g.groups)));
  VG_CUDNN_CHECK(cudnnSetConvolutionMathType(p->conv, default_math(is_double)));
  slot = std::move(p);
  return *slot;
}

// A device buffer for a cuDNN workspace: from the caching allocator, or none if it does
// not fit (the caller then falls back).
struct Workspace {
  void* ptr = nullptr;
  int device = 0;
  Workspace(std::size_t n, int dev) : device(dev) {
    if (n == 0) return;
    try {
      ptr = device_alloc(n, dev);
    } catch (const Error&) {
      ptr = nullptr;
    }
  }
  ~Workspace() { device_free(ptr, device); }
  Workspace(const Workspace&) = delete;
  Workspace& operator=(const Workspace&) = delete;
};

// The search workspace comes straight from cudaMalloc (once per shape), so the caching
// allocator does not keep a 1 GiB block around afterwards.
struct SearchWorkspace {
  void* ptr = nullptr;
  std::size_t size = 0;
  SearchWorkspace() {
    std::size_t free_bytes = 0, total = 0;
    if (cudaMemGetInfo(&free_bytes, &total) != cudaSuccess) return;
    size = std::min(kSearchWorkspace, free_bytes / 2);
    if (cudaMalloc(&ptr, size) != cudaSuccess) {
      cudaGetLastError();
      ptr = nullptr;
      size = 0;
    }
  }
  ~SearchWorkspace() {
    if (ptr) cudaFree(ptr);
  }
};

// Fills `choice` from a perf list sorted fastest first.
template <typename Perf>
void choose(PassChoice& choice, const Perf* perf, int count, const char* pass) {
  bool found = false, found_fallback = false;
  for (int i = 0; i < count; ++i) {
    if (perf[i].status != CUDNN_STATUS_SUCCESS) continue;
    if (!found) {
      found = true;
      choice.algo = static_cast<int>(perf[i].algo);
      choice.math = perf[i].mathType;
      choice.workspace = perf[i].memory;
    }
    if (!found_fallback && perf[i].memory == 0) {
      found_fallback = true;
      choice.fallback_algo = static_cast<int>(perf[i].algo);
      choice.fallback_math = perf[i].mathType;
    }
  }
  VG_CHECK(found, "conv3d: cuDNN found no working algorithm for the " << pass << " pass");
  if (!found_fallback) {
    choice.fallback_algo = choice.algo;
    choice.fallback_math = choice.math;
  }
}

template <typename T>
struct Scalars {
  T one = 1, zero = 0;
};

// Runs the chosen cuDNN algorithm for one pass (fallback when the workspace is missing).
template <typename T>
void run_cudnn(Plan& p, ConvPass pass, const T* a, const T* b, T* out, int device) {
  cudnnHandle_t h = cudnn_handle(device);
  PassChoice& c = p.pass[static_cast<int>(pass)];
  Workspace ws(c.workspace, device);
  const bool fallback = c.workspace > 0 && ws.ptr == nullptr;
  const int algo = fallback ? c.fallback_algo : c.algo;
  VG_CUDNN_CHECK(cudnnSetConvolutionMathType(p.conv, fallback ? c.fallback_math : c.math));
  const std::size_t ws_size = fallback ? 0 : c.workspace;
  Scalars<T> s;
  switch (pass) {
    case ConvPass::kForward:  // a = x, b = w
      VG_CUDNN_CHECK(cudnnConvolutionForward(h, &s.one, p.x, a, p.w, b, p.conv,
                                             static_cast<cudnnConvolutionFwdAlgo_t>(algo), ws.ptr, ws_size, &s.zero,
                                             p.y, out));
      break;
    case ConvPass::kBackwardInput:  // a = gy, b = w
      VG_CUDNN_CHECK(cudnnConvolutionBackwardData(h, &s.one, p.w, b, p.y, a, p.conv,
                                                  static_cast<cudnnConvolutionBwdDataAlgo_t>(algo), ws.ptr, ws_size,
                                                  &s.zero, p.x, out));
      break;
    case ConvPass::kBackwardWeight:  // a = gy, b = x
      VG_CUDNN_CHECK(cudnnConvolutionBackwardFilter(h, &s.one, p.x, b, p.y, a, p.conv,
                                                    static_cast<cudnnConvolutionBwdFilterAlgo_t>(algo), ws.ptr,
                                                    ws_size, &s.zero, p.w, out));
      break;
  }
}

template <typename T>
void run_direct(const Conv3dGeometry& g, ConvPass pass, const T* a, const T* b, T* out, int device) {
  switch (pass) {
    case ConvPass::kForward: direct_forward<T>(g, a, b, nullptr, out, device); break;
    case ConvPass::kBackwardInput: direct_backward_input<T>(g, a, b, out, device); break;
    case ConvPass::kBackwardWeight: direct_backward_weight<T>(g, a, b, out, device); break;
  }
}

// cuDNN's search for one pass, on the real buffers.
template <typename T>
void search_cudnn(Plan& p, ConvPass pass, const T* a, const T* b, T* out, int device) {
  cudnnHandle_t h = cudnn_handle(device);
  PassChoice& c = p.pass[static_cast<int>(pass)];
  SearchWorkspace ws;
  int returned = 0;
  switch (pass) {
    case ConvPass::kForward: {
      cudnnConvolutionFwdAlgoPerf_t perf[CUDNN_CONVOLUTION_FWD_ALGO_COUNT];
      VG_CUDNN_CHECK(cudnnFindConvolutionForwardAlgorithmEx(h, p.x, a, p.w, b, p.conv, p.y, out,
                                                            CUDNN_CONVOLUTION_FWD_ALGO_COUNT, &returned, perf,
                                                            ws.ptr, ws.size));
      choose(c, perf, returned, "forward");
      break;
    }
    case ConvPass::kBackwardInput: {
      cudnnConvolutionBwdDataAlgoPerf_t perf[CUDNN_CONVOLUTION_BWD_DATA_ALGO_COUNT];
      VG_CUDNN_CHECK(cudnnFindConvolutionBackwardDataAlgorithmEx(h, p.w, b, p.y, a, p.conv, p.x, out,
                                                                 CUDNN_CONVOLUTION_BWD_DATA_ALGO_COUNT, &returned,
                                                                 perf, ws.ptr, ws.size));
      choose(c, perf, returned, "input-gradient");
      break;
    }
    case ConvPass::kBackwardWeight: {
      cudnnConvolutionBwdFilterAlgoPerf_t perf[CUDNN_CONVOLUTION_BWD_FILTER_ALGO_COUNT];
      VG_CUDNN_CHECK(cudnnFindConvolutionBackwardFilterAlgorithmEx(h, p.x, b, p.y, a, p.conv, p.w, out,
                                                                   CUDNN_CONVOLUTION_BWD_FILTER_ALGO_COUNT, &returned,
                                                                   perf, ws.ptr, ws.size));
      choose(c, perf, returned, "weight-gradient");
      break;
    }
  }
}

// Best of kTimingRuns, in milliseconds, of f() on the compute stream.
template <typename F>
float time_ms(int device, F&& f) {
  cudaStream_t s = compute_stream(device);
  cudaEvent_t start, stop;
  VG_CUDA_CHECK(cudaEventCreate(&start));
  VG_CUDA_CHECK(cudaEventCreate(&stop));
  float best = FLT_MAX;
  for (int r = 0; r < kTimingRuns; ++r) {
    VG_CUDA_CHECK(cudaEventRecord(start, s));
    f();
    VG_CUDA_CHECK(cudaEventRecord(stop, s));
    VG_CUDA_CHECK(cudaEventSynchronize(stop));
    float ms = 0;
    VG_CUDA_CHECK(cudaEventElapsedTime(&ms, start, stop));
    best = std::min(best, ms);
  }
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  return best;
}

// One pass of conv3d: plan lookup (searching the first time), then the chosen kernel.
template <typename T>
void run_pass(const Conv3dGeometry& g, ConvPass pass, const T* a, const T* b, T* out, int device) {
  const bool is_double = std::is_same_v<T, double>;
  const bool grouped = g.groups > 1;
  if (grouped && g_policy == 2) return run_direct<T>(g, pass, a, b, out, device);
  DeviceGuard guard(device);
  Plan& p = plan_for(g, is_double, device);
  PassChoice& c = p.pass[static_cast<int>(pass)];
  if (!c.searched) {
    try {
      search_cudnn<T>(p, pass, a, b, out, device);
    } catch (const Error&) {
      if (g_policy == 1) throw;
      // cuDNN has no algorithm for this shape and dtype (some float64 3-D passes): the
      // direct kernels handle every shape.
      c.direct = true;
      c.searched = true;
      return run_direct<T>(g, pass, a, b, out, device);
    }
    if (grouped && g_policy == 0) {
      const float cudnn_ms = time_ms(device, [&] { run_cudnn<T>(p, pass, a, b, out, device); });
      const float direct_ms = time_ms(device, [&] { run_direct<T>(g, pass, a, b, out, device); });
      c.direct = direct_ms < cudnn_ms;
    }
    c.searched = true;
  }
  if (c.direct && g_policy != 1)
    run_direct<T>(g, pass, a, b, out, device);
  else
    run_cudnn<T>(p, pass, a, b, out, device);
}

}  // namespace

template <typename T>
void conv3d_forward(const Conv3dGeometry& g, const T* x, const T* w, const T* b, T* y, int device) {
  run_pass<T>(g, ConvPass::kForward, x, w, y, device);
  if (b != nullptr) {
    const std::int64_t L = g.L(), O = g.O;
    for_each_index(g.N * O * L, device, "conv3d bias", [=] __host__ __device__(std::int64_t i) { y[i] += b[(i / L) % O]; });
  }
}

template <typename T>
void conv3d_backward_input(const Conv3dGeometry& g, const T* gy, const T* w, T* gx, int device) {
  run_pass<T>(g, ConvPass::kBackwardInput, gy, w, gx, device);
}

template <typename T>
void conv3d_backward_weight(const Conv3dGeometry& g, const T* gy, const T* x, T* gw, int device) {
  run_pass<T>(g, ConvPass::kBackwardWeight, gy, x, gw, device);
}

template <typename T>
void conv3d_backward_bias(const Conv3dGeometry& g, const T* gy, T* gb, int device) {
  const std::int64_t L = g.L(), O = g.O;
  reduce_each(
      O, g.N * L, device, "conv3d bias gradient",
      [=] __host__ __device__(std::int64_t o, std::int64_t j) { return gy[((j / L) * O + o) * L + j % L]; },
      [=] __host__ __device__(std::int64_t o, double acc) { gb[o] = static_cast<T>(acc); });
}

void set_conv3d_policy(int policy) {
  VG_CHECK(policy >= 0 && policy <= 2, "set_conv3d_policy: policy must be 0, 1 or 2, got " << policy);
  g_policy = policy;
}

#define VIDGRAD_INSTANTIATE(T)                                                                       \
  template void conv3d_forward<T>(const Conv3dGeometry&, const T*, const T*, const T*, T*, int);     \
  template void conv3d_backward_input<T>(const Conv3dGeometry&, const T*, const T*, T*, int);        \
  template void conv3d_backward_weight<T>(const Conv3dGeometry&, const T*, const T*, T*, int);       \
  template void conv3d_backward_bias<T>(const Conv3dGeometry&, const T*, T*, int);
VIDGRAD_INSTANTIATE(float)
VIDGRAD_INSTANTIATE(double)
#undef VIDGRAD_INSTANTIATE

}  // namespace vidgrad::cuda
