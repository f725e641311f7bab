// The CUDA entry points of a build without the CUDA backend: queries answer "no device",
// anything that would touch a device throws a message saying so.
#include "vidgrad/core/cuda/context.h"
#include "vidgrad/core/cuda/memory.h"
#include "vidgrad/core/cuda/tensor_kernels.h"
#include "vidgrad/core/error.h"

#include <string>

namespace vidgrad::cuda {

namespace {
[[noreturn]] void no_backend(const char* what) {
  VG_THROW(what << ": this build of vidgrad has no CUDA backend (configure with nvcc, the CUDA toolkit and "
                   "cuDNN present, or -DVIDGRAD_CUDA=ON to require them)");
}
}  // namespace

bool built_with_cuda() { return false; }
int device_count() { return 0; }
bool is_available() { return false; }
std::string unavailable_reason() { return "this build of vidgrad has no CUDA backend"; }
std::string device_name(int) { no_backend("device_name"); }
void synchronize(int) { no_backend("synchronize"); }
void set_allow_tf32(bool) {}
bool allow_tf32() { return false; }
void set_host_emulation(bool) {}
bool host_emulation() { return false; }
MemoryStats memory_stats(int) { no_backend("memory_stats"); }
void reset_peak_memory(int) { no_backend("reset_peak_memory"); }
void empty_cache(int) { no_backend("empty_cache"); }

void* device_alloc(std::size_t nbytes, int device) {
  no_backend(("storage: cannot allocate " + std::to_string(nbytes) + " bytes on cuda:" + std::to_string(device)).c_str());
}
void device_free(void*, int) {}
void copy_to_device(void*, const void*, std::size_t, int, bool) { no_backend("copy to cuda"); }
void copy_to_host(void*, const void*, std::size_t, int) { no_backend("copy from cuda"); }
void copy_device_to_device(void*, int, const void*, int, std::size_t) { no_backend("copy on cuda"); }
void memset_zero(void*, std::size_t, int) { no_backend("zeros on cuda"); }
void copy_strided(void*, DType, const void*, DType, const StridedPair&, std::int64_t, int) {
  no_backend("copy on cuda");
}
void fill_strided(void*, DType, double, const StridedPair&, std::int64_t, int) { no_backend("fill on cuda"); }
void add_strided(void*, const void*, DType, const StridedPair&, std::int64_t, int) { no_backend("add on cuda"); }

}  // namespace vidgrad::cuda
