// Strided copy / fill / accumulate on a CUDA device: one thread per element.
//
// nvcc does not allow a __device__ lambda inside a generic lambda, so dtype dispatch here
// (and in every .cu file) is a switch calling a function template.
#include "vidgrad/core/cuda/kernel_util.cuh"

namespace vidgrad::cuda {

namespace {

template <typename D, typename S>
void copy_impl(void* dst, const void* src, const StridedPair& p, std::int64_t numel, int device) {
  D* d = static_cast<D*>(dst);
  const S* s = static_cast<const S*>(src);
  for_each_index(numel, device, "copy", [=] __host__ __device__(std::int64_t i) {
    std::int64_t a, b;
    strided_offsets(p, i, a, b);
    d[a] = static_cast<D>(s[b]);
  });
}

template <typename D>
void copy_from(void* dst, const void* src, DType src_type, const StridedPair& p, std::int64_t numel, int device) {
  switch (src_type) {
    case DType::kFloat32: copy_impl<D, float>(dst, src, p, numel, device); return;
    case DType::kFloat64: copy_impl<D, double>(dst, src, p, numel, device); return;
    case DType::kInt64: copy_impl<D, std::int64_t>(dst, src, p, numel, device); return;
  }
}

template <typename D>
void fill_impl(void* dst, double value, const StridedPair& p, std::int64_t numel, int device) {
  D* d = static_cast<D*>(dst);
  const D v = static_cast<D>(value);
  for_each_index(numel, device, "fill", [=] __host__ __device__(std::int64_t i) {
    std::int64_t a, b;
    strided_offsets(p, i, a, b);
    d[a] = v;
  });
}

template <typename D>
void add_impl(void* dst, const void* src, const StridedPair& p, std::int64_t numel, int device) {
  D* d = static_cast<D*>(dst);
  const D* s = static_cast<const D*>(src);
  for_each_index(numel, device, "add_", [=] __host__ __device__(std::int64_t i) {
    std::int64_t a, b;
    strided_offsets(p, i, a, b);
    d[a] += s[b];
  });
}

}  // namespace

void copy_strided(void* dst, DType dst_type, const void* src, DType src_type, const StridedPair& layout,
                  std::int64_t numel, int device) {
  switch (dst_type) {
    case DType::kFloat32: copy_from<float>(dst, src, src_type, layout, numel, device); return;
    case DType::kFloat64: copy_from<double>(dst, src, src_type, layout, numel, device); return;
    case DType::kInt64: copy_from<std::int64_t>(dst, src, src_type, layout, numel, device); return;
  }
}

void fill_strided(void* dst, DType type, double value, const StridedPair& layout, std::int64_t numel, int device) {
  switch (type) {
    case DType::kFloat32: fill_impl<float>(dst, value, layout, numel, device); return;
    case DType::kFloat64: fill_impl<double>(dst, value, layout, numel, device); return;
    case DType::kInt64: fill_impl<std::int64_t>(dst, value, layout, numel, device); return;
  }
}

void add_strided(void* dst, const void* src, DType type, const StridedPair& layout, std::int64_t numel, int device) {
  switch (type) {
    case DType::kFloat32: add_impl<float>(dst, src, layout, numel, device); return;
    case DType::kFloat64: add_impl<double>(dst, src, layout, numel, device); return;
    case DType::kInt64: add_impl<std::int64_t>(dst, src, layout, numel, device); return;
  }
}

}  // namespace vidgrad::cuda
