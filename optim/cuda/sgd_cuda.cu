// One thread per parameter element; see optim/sgd.cpp for the rule.
#include "vidgrad/core/cuda/kernel_util.cuh"
#include "vidgrad/optim/cuda/sgd_cuda.h"

namespace vidgrad::cuda {

void sgd_update(float* p, const float* g, float* buf, std::int64_t n, float lr, float mom, float damp, float wd,
                bool first, bool nesterov, int device) {
  for_each_index(n, device, "sgd step", [=] __host__ __device__(std::int64_t i) {
    float d = g[i] + wd * p[i];
    if (buf != nullptr) {
      buf[i] = first ? d : mom * buf[i] + damp * d;
      d = nesterov ? d + mom * buf[i] : buf[i];
    }
    p[i] -= lr * d;
  });
}

}  // namespace vidgrad::cuda
