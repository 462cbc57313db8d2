// The device side of an op call. Each device's registration of the ops (cpu/ops_cpu.cpp, and
// cuda/ops_cuda.cpp in CUDA builds) hands the device-neutral op bodies (ops.cpp) its Device; they
// reach device code only through it: the elementwise passes, the grid program's executor, the
// per-call setup, and what only host memory allows.
#pragma once

#include <ATen/ATen.h>

#include <memory>
#include <type_traits>

#include "elementwise.h"

namespace obd_fast {

namespace grid {
template <typename T>
struct ForwardArgs;
template <typename T>
struct ReverseArgs;
}  // namespace grid

// How the grid program's kernels are launched (the CPU's serial executor ignores both).
struct GridLaunch {
  int blocks = 0;        // co-resident thread blocks; 0: one per multiprocessor
  bool profile = false;  // stamp every phase and print each phase's mean time (eager launches only)
};

template <typename T>
using GridForward = void (*)(const grid::ForwardArgs<T>&, const GridLaunch&, const at::Device&);
template <typename T>
using GridReverse = void (*)(const grid::ReverseArgs<T>&, const GridLaunch&, const at::Device&);

struct Device {
  // Host memory: the CPU loops of cpu/ (product epilogues, compact bf16 records) and pooled tapes.
  bool host = false;
  // precision="tf32" (tensor-core float32 products) exists here.
  bool tf32 = false;
  void (*head_grad)(const HeadInputs&, const at::Tensor& grad_z, const at::Tensor& partials, const at::Tensor& d_target,
                    const at::Tensor& sq) = nullptr;
  void (*head_hvp)(const HeadInputs&, const at::Tensor& zdot, const at::Tensor& dir_scalars, const at::Tensor& q,
                   const at::Tensor& partials, const at::Tensor& d_target) = nullptr;
  void (*head_action)(const HeadInputs&, const at::Tensor& actions) = nullptr;
  void (*sgd_step)(const at::Tensor& theta, const at::Tensor& grad, const at::Tensor& buf,
                   const at::Tensor& theta_next, double lr, double momentum, double weight_decay) = nullptr;
  void (*adjoint_step)(const at::Tensor& a, const at::Tensor& hu, const at::Tensor& u, double lr, double momentum,
                       double weight_decay) = nullptr;
  GridForward<float> grid_forward_float = nullptr;
  GridForward<double> grid_forward_double = nullptr;
  GridReverse<float> grid_reverse_float = nullptr;
  GridReverse<double> grid_reverse_double = nullptr;
  // Sets up one op call on `like`'s device (CUDA: the current device, and TF32 products when
  // tf32 is true) until the returned handle dies; may return an empty handle.
  std::shared_ptr<void> (*begin_call)(const at::Tensor& like, bool tf32) = nullptr;
  // Whether reading input values on the host is allowed now (the finite checks): not while a
  // CUDA graph is being captured, where it would synchronize the stream.
  bool (*may_read_values)() = nullptr;
};

template <typename T>
GridForward<T> forward_executor(const Device& d) {
  if constexpr (std::is_same_v<T, float>) {
    return d.grid_forward_float;
  } else {
    return d.grid_forward_double;
  }
}

template <typename T>
GridReverse<T> reverse_executor(const Device& d) {
  if constexpr (std::is_same_v<T, float>) {
    return d.grid_reverse_float;
  } else {
    return d.grid_reverse_double;
  }
}

}  // namespace obd_fast
