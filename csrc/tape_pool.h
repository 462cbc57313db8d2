// Host memory reused by the tapes of successive meta_gradient calls.
//
// At the paper setting the tape is ~200 MB. Allocated fresh, the kernel would map and zero it
// page by page on every call; a pooled buffer is written over in place instead. The outer loss's
// record comes from here too. CUDA needs none of this: its caching allocator already reuses
// memory.
#pragma once

#include <ATen/ATen.h>

namespace obd_fast {

// A buffer of at least `numel` elements of `opts`' dtype, from the pool when one fits, returned
// to the pool when the lease ends. Views of it must not outlive the lease.
class TapeLease {
 public:
  TapeLease(int64_t numel, const at::TensorOptions& opts);
  ~TapeLease();
  TapeLease(const TapeLease&) = delete;
  TapeLease& operator=(const TapeLease&) = delete;
  const at::Tensor& buffer() const { return buffer_; }  // 1-D, exactly numel elements

 private:
  at::Tensor bytes_;   // the pooled allocation (uint8)
  at::Tensor buffer_;  // its typed prefix
};

// Bytes held by idle pooled buffers (what release_tape_pool would free).
int64_t tape_pool_bytes();
void release_tape_pool();

}  // namespace obd_fast
