// Device memory for Storage and Tensor: the caching allocator and the copies between host
// and device. Host-side declarations only; defined in allocator.cpp / context.cpp, or by
// stub.cpp (which throws) in a build without CUDA.
#pragma once

#include <cstddef>

namespace vidgrad::cuda {

// A block of at least `nbytes` on `device`, from the allocator's cache when one fits;
// cudaMalloc only on a miss (after freeing the cache once if the device is full). Blocks
// are used in the order of the device's compute stream, so a freed block can be handed out
// again at once. Throws with the sizes when the device has no room.
void* device_alloc(std::size_t nbytes, int device);
void device_free(void* ptr, int device);

// Host -> device. With non_blocking, the bytes are staged in a pinned host buffer and the
// copy is queued on the compute stream (Note [non-blocking uploads] in context.cpp): the
// call returns at once, the caller may reuse `src`, and later work sees the bytes.
void copy_to_device(void* dst, const void* src, std::size_t nbytes, int device, bool non_blocking);
// Device -> host, after the work queued before it (synchronous).
void copy_to_host(void* dst, const void* src, std::size_t nbytes, int device);
void copy_device_to_device(void* dst, int dst_device, const void* src, int src_device, std::size_t nbytes);
void memset_zero(void* ptr, std::size_t nbytes, int device);

}  // namespace vidgrad::cuda
