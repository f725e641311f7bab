// One knob for OpenMP and Eigen threads.
#include "vidgrad/core/parallel.h"

#include <Eigen/Core>
#include <omp.h>

#include "vidgrad/core/error.h"

namespace vidgrad {

void set_num_threads(int n) {
  VG_CHECK(n >= 1, "set_num_threads: need at least 1 thread, got " << n);
  omp_set_num_threads(n);
  Eigen::setNbThreads(n);
}

int get_num_threads() { return omp_get_max_threads(); }

}  // namespace vidgrad
