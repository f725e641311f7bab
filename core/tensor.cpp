// Tensor factories, metadata, raw copies and printing. Differentiable views live in
// ops/shape.cpp and backward() in autograd/engine.cpp.
#include "vidgrad/core/tensor.h"

#include <algorithm>
#include <cstring>
#include <numeric>

#include "vidgrad/core/cuda/memory.h"
#include "vidgrad/core/cuda/tensor_kernels.h"
#include "vidgrad/core/layout.h"
#include "vidgrad/core/parallel.h"
#include "vidgrad/core/strided.h"

namespace vidgrad {

namespace {

std::shared_ptr<TensorImpl> new_impl(const Shape& shape, DType dtype, Device device) {
  auto impl = std::make_shared<TensorImpl>();
  const std::int64_t n = shape_numel(shape);
  impl->storage = std::make_shared<Storage>(static_cast<std::size_t>(n) * dtype_size(dtype), device);
  impl->shape = shape;
  impl->strides = contiguous_strides(shape);
  impl->dtype = dtype;
  return impl;
}

// f(off, n, step) over runs of a two-operand walk, spread over threads when large: dims
// are collapsed first; a walk that collapses to one long run is cut into chunks.
template <typename F>
void parallel_walk2(const Shape& shape, const Shape& strides_a, const Shape& strides_b, F&& f) {
  Shape sh = shape;
  std::array<Shape, 2> st{strides_a, strides_b};
  if (strides_a == strides_b) {
    // Two operands laid out alike (both channels-last, say) walk in memory order, so their
    // dims collapse into long runs whatever the order of the logical dims.
    std::vector<std::size_t> order(sh.size());
    std::iota(order.begin(), order.end(), std::size_t{0});
    std::stable_sort(order.begin(), order.end(),
                     [&](std::size_t a, std::size_t b) { return strides_a[a] > strides_a[b]; });
    for (std::size_t i = 0; i < order.size(); ++i) {
      sh[i] = shape[order[i]];
      st[0][i] = st[1][i] = strides_a[order[i]];
    }
  }
  collapse_dims<2>(sh, st);
  if (sh.size() == 1 && sh[0] >= 2 * kMinParallelWork) {
    constexpr std::int64_t kChunk = 1 << 14;
    const std::int64_t n = sh[0], chunks = (n + kChunk - 1) / kChunk;
    const std::array<std::int64_t, 2> step{st[0][0], st[1][0]};
#pragma omp parallel for schedule(static)
    for (std::int64_t c = 0; c < chunks; ++c) {
      const std::array<std::int64_t, 2> off{c * kChunk * step[0], c * kChunk * step[1]};
      f(off, std::min(kChunk, n - c * kChunk), step);
    }
    return;
  }
  parallel_for_each_run<2>(sh, st, kMinParallelWork, f);
}

template <typename Dst, typename Src>
void strided_copy(const Shape& shape, Dst* dst, const Shape& dst_strides, const Src* src,
                  const Shape& src_strides) {
  parallel_walk2(shape, dst_strides, src_strides,
                  [&](const std::array<std::int64_t, 2>& off, std::int64_t n,
                      const std::array<std::int64_t, 2>& step) {
                    Dst* d = dst + off[0];
                    const Src* s = src + off[1];
                    if (step[0] == 1 && step[1] == 1) {
                      for (std::int64_t i = 0; i < n; ++i) d[i] = static_cast<Dst>(s[i]);
                    } else {
                      for (std::int64_t i = 0; i < n; ++i) d[i * step[0]] = static_cast<Dst>(s[i * step[1]]);
                    }
                  });
}

// Calls f.template operator()<T>() for any dtype, int64 included.
template <typename F>
void dispatch_all(DType t, F&& f) {
  switch (t) {
    case DType::kFloat32: f.template operator()<float>(); return;
    case DType::kFloat64: f.template operator()<double>(); return;
    case DType::kInt64: f.template operator()<std::int64_t>(); return;
  }
}

// The first element's address on any device (the view's offset applied).
void* first_byte(const Tensor& t) {
  return static_cast<char*>(t.storage()->data()) + t.offset() * static_cast<std::int64_t>(dtype_size(t.dtype()));
}

}  // namespace

Tensor Tensor::empty(const Shape& shape, DType dtype, Device device) {
  return Tensor(new_impl(shape, dtype, device));
}

Tensor Tensor::zeros(const Shape& shape, DType dtype, Device device) {
  Tensor t = empty(shape, dtype, device);
  // All-zero bits are 0 for every dtype.
  switch (device.type) {
    case DeviceType::kCPU: std::memset(t.storage()->data(), 0, t.storage()->nbytes()); break;
    case DeviceType::kCUDA: cuda::memset_zero(t.storage()->data(), t.storage()->nbytes(), device.index); break;
  }
  return t;
}

Tensor Tensor::ones(const Shape& shape, DType dtype, Device device) { return full(shape, 1.0, dtype, device); }

Tensor Tensor::full(const Shape& shape, double value, DType dtype, Device device) {
  Tensor t = empty(shape, dtype, device);
  t.fill_(value);
  return t;
}

Tensor Tensor::scalar(double value, DType dtype) { return full({}, value, dtype); }

Tensor Tensor::randn(const Shape& shape, Generator& gen, DType dtype) {
  Tensor t = empty(shape, dtype);
  dispatch_floating(dtype, "randn", [&]<typename T>() {
    T* p = t.data<T>();
    for (std::int64_t i = 0, n = t.numel(); i < n; ++i) p[i] = static_cast<T>(gen.normal());
  });
  return t;
}

Tensor Tensor::rand(const Shape& shape, Generator& gen, double lo, double hi, DType dtype) {
  Tensor t = empty(shape, dtype);
  dispatch_floating(dtype, "rand", [&]<typename T>() {
    T* p = t.data<T>();
    for (std::int64_t i = 0, n = t.numel(); i < n; ++i) p[i] = static_cast<T>(lo + (hi - lo) * gen.uniform());
  });
  return t;
}

void Tensor::check_defined(const char* what) const {
  VG_CHECK(impl_ != nullptr, "Tensor::" << what << ": called on an undefined tensor");
}

const Shape& Tensor::shape() const { check_defined("shape"); return impl_->shape; }
const Shape& Tensor::strides() const { check_defined("strides"); return impl_->strides; }
std::int64_t Tensor::offset() const { check_defined("offset"); return impl_->offset; }
DType Tensor::dtype() const { check_defined("dtype"); return impl_->dtype; }
Device Tensor::device() const { check_defined("device"); return impl_->storage->device(); }
const std::shared_ptr<Storage>& Tensor::storage() const { check_defined("storage"); return impl_->storage; }
std::int64_t Tensor::numel() const { return shape_numel(shape()); }

std::int64_t Tensor::size(std::int64_t dim) const {
  return shape()[normalize_dim(dim, this->dim(), "Tensor::size")];
}

bool Tensor::is_contiguous() const {
  const Shape& sh = shape();
  std::int64_t expected = 1;
  for (int i = dim() - 1; i >= 0; --i) {
    if (sh[i] == 1) continue;  // the stride of a size-1 dim never matters
    if (impl_->strides[i] != expected) return false;
    expected *= sh[i];
  }
  return true;
}

double Tensor::item() const {
  VG_CHECK(numel() == 1, "Tensor::item: needs a one-element tensor, got shape " << shape_str(shape()));
  if (!device().is_cpu()) return detach().to(Device::cpu()).item();
  double v = 0.0;
  dispatch_all(dtype(), [&]<typename T>() { v = static_cast<double>(*data<T>()); });
  return v;
}

Tensor& Tensor::fill_(double value) {
  check_defined("fill_");
  if (device().is_cuda()) {
    const cuda::StridedPair layout = cuda::make_strided_pair("Tensor::fill_", shape(), strides(), strides());
    cuda::fill_strided(first_byte(*this), dtype(), value, layout, numel(), device().index);
    return *this;
  }
  dispatch_all(dtype(), [&]<typename T>() {
    const T v = static_cast<T>(value);
    T* base = data<T>();
    const Shape& st = impl_->strides;
    for_each_run<1>(shape(), {&st}, [&](const std::array<std::int64_t, 1>& off, std::int64_t n,
                                        const std::array<std::int64_t, 1>& step) {
      for (std::int64_t i = 0; i < n; ++i) base[off[0] + i * step[0]] = v;
    });
  });
  return *this;
}

Tensor& Tensor::copy_(const Tensor& src, bool non_blocking) {
  check_defined("copy_");
  VG_CHECK(src.defined(), "Tensor::copy_: source tensor is undefined");
  VG_CHECK(src.shape() == shape(), "Tensor::copy_: source shape " << shape_str(src.shape())
                                       << " differs from destination shape " << shape_str(shape()));
  if (numel() == 0) return *this;
  if (device() != src.device()) {
    // Across devices the bytes move contiguous and in the source dtype; conversion and
    // the destination's strides are then handled on the destination device.
    Tensor s = src.detach();
    if (!s.is_contiguous()) s = Tensor::empty(shape(), src.dtype(), src.device()).copy_(src);
    const bool direct = is_contiguous() && dtype() == src.dtype();
    const Tensor staged = direct ? *this : Tensor::empty(shape(), src.dtype(), device());
    void* dst_ptr = first_byte(staged);
    const void* src_ptr = first_byte(s);
    const std::size_t nbytes = static_cast<std::size_t>(numel()) * dtype_size(src.dtype());
    if (s.device().is_cpu())
      cuda::copy_to_device(dst_ptr, src_ptr, nbytes, device().index, non_blocking);
    else if (device().is_cpu())
      cuda::copy_to_host(dst_ptr, src_ptr, nbytes, s.device().index);
    else
      cuda::copy_device_to_device(dst_ptr, device().index, src_ptr, s.device().index, nbytes);
    if (!direct) copy_(staged);
    return *this;
  }
  if (device().is_cuda()) {
    const cuda::StridedPair layout = cuda::make_strided_pair("Tensor::copy_", shape(), strides(), src.strides());
    cuda::copy_strided(first_byte(*this), dtype(), first_byte(src), src.dtype(), layout, numel(), device().index);
    return *this;
  }
  if (dtype() == src.dtype() && dim() == 5 && is_contiguous() != src.is_contiguous()) {
    // Between NCDHW and channels-last: a transpose per sample, in blocks that stay in L1.
    const Shape& s = shape();
    const std::int64_t N = s[0], C = s[1], S = s[2] * s[3] * s[4];
    const bool to_last = is_channels_last(*this) && src.is_contiguous();
    if (to_last || (is_contiguous() && is_channels_last(src))) {
      dispatch_all(dtype(), [&]<typename T>() {
        if (to_last)
          cpu::to_channels_last<T>(N, C, S, src.data<T>(), data<T>());
        else
          cpu::from_channels_last<T>(N, C, S, src.data<T>(), data<T>());
      });
      return *this;
    }
  }
  dispatch_all(dtype(), [&]<typename D>() {
    dispatch_all(src.dtype(), [&]<typename S>() {
      strided_copy(shape(), data<D>(), strides(), src.data<S>(), src.strides());
    });
  });
  return *this;
}

Tensor& Tensor::add_(const Tensor& src) {
  check_defined("add_");
  VG_CHECK(src.defined() && src.shape() == shape() && src.dtype() == dtype() && src.device() == device(),
           "Tensor::add_: source must match the destination's shape " << shape_str(shape()) << ", dtype "
                                                                       << dtype_name(dtype()) << " and device "
                                                                       << device());
  if (device().is_cuda()) {
    const cuda::StridedPair layout = cuda::make_strided_pair("Tensor::add_", shape(), strides(), src.strides());
    cuda::add_strided(first_byte(*this), first_byte(src), dtype(), layout, numel(), device().index);
    return *this;
  }
  dispatch_all(dtype(), [&]<typename T>() {
    T* d = data<T>();
    const T* s = src.data<T>();
    parallel_walk2(shape(), strides(), src.strides(),
                   [&](const std::array<std::int64_t, 2>& off, std::int64_t n,
                       const std::array<std::int64_t, 2>& step) {
                     T* dd = d + off[0];
                     const T* ss = s + off[1];
                     if (step[0] == 1 && step[1] == 1) {
                       for (std::int64_t i = 0; i < n; ++i) dd[i] += ss[i];
                     } else {
                       for (std::int64_t i = 0; i < n; ++i) dd[i * step[0]] += ss[i * step[1]];
                     }
                   });
  });
  return *this;
}

Tensor Tensor::detach() const {
  check_defined("detach");
  return make_view(*this, shape(), strides(), offset());
}

bool Tensor::requires_grad() const { return impl_ != nullptr && impl_->requires_grad; }

Tensor& Tensor::set_requires_grad(bool value) {
  check_defined("set_requires_grad");
  VG_CHECK(impl_->grad_fn == nullptr,
           "Tensor::set_requires_grad: only leaf tensors can be marked; this one was produced by an op "
           "(use detach() first)");
  VG_CHECK(!value || is_floating(impl_->dtype),
           "Tensor::set_requires_grad: only float tensors can require gradients, got " << dtype_name(impl_->dtype));
  impl_->requires_grad = value;
  return *this;
}

bool Tensor::is_leaf() const { return impl_ == nullptr || impl_->grad_fn == nullptr; }
Tensor Tensor::grad() const { check_defined("grad"); return impl_->grad; }
void Tensor::set_grad(const Tensor& grad) const { check_defined("set_grad"); impl_->grad = grad; }
const std::shared_ptr<autograd::Node>& Tensor::grad_fn() const { check_defined("grad_fn"); return impl_->grad_fn; }

void Tensor::set_grad_fn(std::shared_ptr<autograd::Node> fn) const {
  check_defined("set_grad_fn");
  impl_->grad_fn = std::move(fn);
  impl_->requires_grad = impl_->grad_fn != nullptr;
}

Device parse_device(const std::string& text) {
  if (text == "cpu") return Device::cpu();
  if (text == "cuda") return Device::cuda(0);
  if (text.rfind("cuda:", 0) == 0 && text.size() > 5 &&
      text.find_first_not_of("0123456789", 5) == std::string::npos && text.size() < 9)
    return Device::cuda(std::stoi(text.substr(5)));
  VG_THROW("device: '" << text << "' is not a device; expected cpu, cuda or cuda:N");
}

Tensor make_view(const Tensor& base, const Shape& shape, const Shape& strides, std::int64_t offset) {
  auto impl = std::make_shared<TensorImpl>();
  impl->storage = base.storage();
  impl->shape = shape;
  impl->strides = strides;
  impl->offset = offset;
  impl->dtype = base.dtype();
  return Tensor(std::move(impl));
}

std::ostream& operator<<(std::ostream& os, const Tensor& t) {
  if (!t.defined()) return os << "Tensor(undefined)";
  os << "Tensor(shape=" << shape_str(t.shape()) << ", dtype=" << dtype_name(t.dtype()) << ", device=" << t.device();
  {  // values of a CUDA tensor are copied to the host for printing
    const std::vector<double> v = t.to_vector<double>();
    os << ", values=[";
    const std::size_t shown = std::min<std::size_t>(v.size(), 8);
    for (std::size_t i = 0; i < shown; ++i) os << (i ? ", " : "") << v[i];
    if (v.size() > shown) os << ", ...";
    os << ']';
  }
  return os << ')';
}

}  // namespace vidgrad
