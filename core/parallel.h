// Thread count for every OpenMP region and Eigen GEMM in vidgrad.
#pragma once

namespace vidgrad {

// Sets the number of threads CPU kernels use (OpenMP and Eigen). n >= 1.
void set_num_threads(int n);
int get_num_threads();

}  // namespace vidgrad
