// Tensor: a refcounted, strided view of a Storage with a dtype, a device and autograd state.
//
// Logical shape convention is PyTorch's: video activations are (N, C, T, H, W), conv
// weights (O, C/groups, kT, kH, kW). See docs/design.md for memory layout, ownership and
// how backward is attached. Copying a Tensor copies a handle, never the data.
#pragma once

#include <cstdint>
#include <memory>
#include <ostream>
#include <vector>

#include "vidgrad/core/device.h"
#include "vidgrad/core/dtype.h"
#include "vidgrad/core/error.h"
#include "vidgrad/core/random.h"
#include "vidgrad/core/shape.h"
#include "vidgrad/core/storage.h"

namespace vidgrad {

namespace autograd {
struct Node;
}

struct TensorImpl;

class Tensor {
 public:
  Tensor() = default;  // an undefined tensor: "no gradient", "no bias"
  explicit Tensor(std::shared_ptr<TensorImpl> impl) : impl_(std::move(impl)) {}

  // ---- factories (contiguous, CPU unless a device is given) ----
  static Tensor empty(const Shape& shape, DType dtype = DType::kFloat32, Device device = {});
  static Tensor zeros(const Shape& shape, DType dtype = DType::kFloat32, Device device = {});
  static Tensor ones(const Shape& shape, DType dtype = DType::kFloat32, Device device = {});
  static Tensor full(const Shape& shape, double value, DType dtype = DType::kFloat32, Device device = {});
  static Tensor scalar(double value, DType dtype = DType::kFloat32);
  static Tensor randn(const Shape& shape, Generator& gen, DType dtype = DType::kFloat32);
  static Tensor rand(const Shape& shape, Generator& gen, double lo = 0.0, double hi = 1.0,
                     DType dtype = DType::kFloat32);
  // Copies `values` (row-major) into a new tensor; values.size() must equal numel(shape).
  template <typename T>
  static Tensor from_vector(const std::vector<T>& values, const Shape& shape);

  // ---- metadata ----
  bool defined() const { return impl_ != nullptr; }
  const Shape& shape() const;
  const Shape& strides() const;
  std::int64_t offset() const;
  int dim() const { return static_cast<int>(shape().size()); }
  std::int64_t size(std::int64_t dim) const;
  std::int64_t numel() const;
  DType dtype() const;
  Device device() const;
  bool is_contiguous() const;
  const std::shared_ptr<Storage>& storage() const;

  // ---- element access ----
  // Pointer to the first element (offset applied). Throws if T does not match dtype() or
  // the tensor is not on the CPU.
  template <typename T>
  T* data() const;
  // The same pointer on any device, for kernels (a CUDA pointer must not be dereferenced
  // on the host). Throws if T does not match dtype().
  template <typename T>
  T* device_data() const;
  // Value of a one-element tensor, converted to double (copied to the host if needed).
  double item() const;
  // Elements in logical row-major order, converted to T.
  template <typename T>
  std::vector<T> to_vector() const;

  // ---- views and copies; differentiable (defined in ops/shape.cpp) ----
  Tensor reshape(const Shape& shape) const;  // a view when contiguous, else a copy; one -1 allowed
  Tensor permute(const std::vector<int>& dims) const;
  Tensor narrow(std::int64_t dim, std::int64_t start, std::int64_t length) const;
  Tensor contiguous() const;  // itself if already contiguous
  Tensor clone() const;       // always a fresh contiguous copy
  Tensor to(DType dtype) const;
  // A copy on `device` (itself if already there); gradients flow back to this device.
  // non_blocking host -> CUDA copies go through pinned memory, are queued on the device's
  // stream and return at once (see core/cuda/memory.h).
  Tensor to(Device device, bool non_blocking = false) const;

  // ---- raw mutation, outside autograd (optimizers, initialisers, loaders) ----
  Tensor& fill_(double value);
  Tensor& copy_(const Tensor& src, bool non_blocking = false);  // same shape; any devices; converts dtype
  Tensor& add_(const Tensor& src);  // same shape, dtype and device
  // A new handle on the same data with no autograd history.
  Tensor detach() const;

  // ---- autograd ----
  bool requires_grad() const;
  Tensor& set_requires_grad(bool value = true);  // leaves only
  bool is_leaf() const;
  Tensor grad() const;  // undefined until a backward pass reaches this leaf
  void set_grad(const Tensor& grad) const;
  const std::shared_ptr<autograd::Node>& grad_fn() const;
  void set_grad_fn(std::shared_ptr<autograd::Node> fn) const;
  // Reverse-mode pass from this tensor; defined in autograd/engine.cpp. A scalar root
  // may omit `grad` (it is taken as 1).
  void backward(const Tensor& grad = {}, bool retain_graph = false) const;

  TensorImpl* impl() const { return impl_.get(); }
  const std::shared_ptr<TensorImpl>& shared_impl() const { return impl_; }
  bool is_same(const Tensor& other) const { return impl_ == other.impl_; }

 private:
  void check_defined(const char* what) const;
  std::shared_ptr<TensorImpl> impl_;
};

struct TensorImpl {
  std::shared_ptr<Storage> storage;
  Shape shape;
  Shape strides;  // in elements
  std::int64_t offset = 0;  // in elements
  DType dtype = DType::kFloat32;
  bool requires_grad = false;
  Tensor grad;
  std::shared_ptr<autograd::Node> grad_fn;
};

// A view sharing `base`'s storage with new geometry (no autograd; used by view ops).
Tensor make_view(const Tensor& base, const Shape& shape, const Shape& strides, std::int64_t offset);

std::ostream& operator<<(std::ostream& os, const Tensor& t);

// ---- template definitions ----

template <typename T>
Tensor Tensor::from_vector(const std::vector<T>& values, const Shape& shape) {
  const std::int64_t n = shape_numel(shape);
  VG_CHECK(static_cast<std::int64_t>(values.size()) == n,
           "Tensor::from_vector: " << values.size() << " values do not fill shape " << shape_str(shape)
                                   << " of " << n << " elements");
  Tensor t = empty(shape, dtype_of<T>::value);
  T* p = t.data<T>();
  for (std::int64_t i = 0; i < n; ++i) p[i] = values[i];
  return t;
}

template <typename T>
T* Tensor::data() const {
  check_defined("data");
  VG_CHECK(impl_->dtype == dtype_of<T>::value, "Tensor::data: tensor has dtype " << dtype_name(impl_->dtype)
                                                   << ", asked for " << dtype_name(dtype_of<T>::value));
  VG_CHECK(impl_->storage->device().is_cpu(),
           "Tensor::data: tensor is on " << impl_->storage->device() << ", host access needs cpu");
  return static_cast<T*>(impl_->storage->data()) + impl_->offset;
}

template <typename T>
T* Tensor::device_data() const {
  check_defined("device_data");
  VG_CHECK(impl_->dtype == dtype_of<T>::value, "Tensor::device_data: tensor has dtype "
                                                   << dtype_name(impl_->dtype) << ", asked for "
                                                   << dtype_name(dtype_of<T>::value));
  return static_cast<T*>(impl_->storage->data()) + impl_->offset;
}

template <typename T>
std::vector<T> Tensor::to_vector() const {
  const Tensor c = detach().to(Device::cpu()).contiguous();
  std::vector<T> out(static_cast<std::size_t>(c.numel()));
  switch (c.dtype()) {
    case DType::kFloat32: for (std::size_t i = 0; i < out.size(); ++i) out[i] = static_cast<T>(c.data<float>()[i]); break;
    case DType::kFloat64: for (std::size_t i = 0; i < out.size(); ++i) out[i] = static_cast<T>(c.data<double>()[i]); break;
    case DType::kInt64: for (std::size_t i = 0; i < out.size(); ++i) out[i] = static_cast<T>(c.data<std::int64_t>()[i]); break;
  }
  return out;
}

}  // namespace vidgrad
