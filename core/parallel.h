// Thread count for every OpenMP region and Eigen GEMM in vidgrad.
#pragma once

#include <cstdint>

namespace vidgrad {

// Loops over fewer elements than this run on one thread: waking a team costs more.
inline constexpr std::int64_t kMinParallelWork = 1 << 15;

// Sets the number of threads CPU kernels use (OpenMP and Eigen). n >= 1.
void set_num_threads(int n);
int get_num_threads();

}  // namespace vidgrad
