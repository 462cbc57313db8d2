// The ops on CUDA tensors: the CUDA Device (the kernels' glue of elementwise_cuda.cpp and
// grid_cuda.cpp, the call's device and TF32 setting, no host reads while a graph is captured) and
// the registration of every op for the CUDA dispatch key. Compiled only when the extension is
// built with CUDA (OBD_FAST_WITH_CUDA).
#include <ATen/Context.h>
#include <c10/cuda/CUDAGraphsC10Utils.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/version.h>

#include "../grid_step.h"
#include "../ops.h"

namespace obd_fast {

namespace {

// One op call on a CUDA device: that device is current, and with precision="tf32" cuBLAS may use
// TF32 tensor-core kernels for the float32 products. ATen takes that choice from torch's global
// matmul setting only, so the call turns it on where it is not on already and restores it at the
// end (a CUDA graph captured during the call keeps the kernels chosen then; replays need nothing).
class CudaCall {
 public:
  CudaCall(const at::Tensor& like, bool tf32) : guard_(like.device()) {
    if (!tf32) return;
    auto& ctx = at::globalContext();
#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 9)
    // torch >= 2.9 refuses a mix of this setting with the legacy allow_tf32 flag.
    previous_ = ctx.float32Precision(at::Float32Backend::CUDA, at::Float32Op::MATMUL);
    if (previous_ != at::Float32Precision::TF32) {
      ctx.setFloat32Precision(at::Float32Backend::CUDA, at::Float32Op::MATMUL, at::Float32Precision::TF32);
      restore_ = true;
    }
#else
    if (!ctx.allowTF32CuBLAS()) {
      ctx.setAllowTF32CuBLAS(true);
      restore_ = true;
    }
#endif
  }
  ~CudaCall() {
    if (!restore_) return;
#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 9)
    at::globalContext().setFloat32Precision(at::Float32Backend::CUDA, at::Float32Op::MATMUL, previous_);
#else
    at::globalContext().setAllowTF32CuBLAS(false);
#endif
  }
  CudaCall(const CudaCall&) = delete;
  CudaCall& operator=(const CudaCall&) = delete;

 private:
  c10::cuda::CUDAGuard guard_;
  bool restore_ = false;
#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 9)
  at::Float32Precision previous_ = at::Float32Precision::NONE;
#endif
};

const Device& cuda_device() {
  static const Device device = [] {
    Device d;
    d.host = false;
    d.tf32 = true;
    d.head_grad = &cuda::head_grad;
    d.head_hvp = &cuda::head_hvp;
    d.head_action = &cuda::head_action;
    d.sgd_step = &cuda::sgd_step;
    d.adjoint_step = &cuda::adjoint_step;
    d.grid_forward_float = &cuda::grid_forward<float>;
    d.grid_forward_double = &cuda::grid_forward<double>;
    d.grid_reverse_float = &cuda::grid_reverse<float>;
    d.grid_reverse_double = &cuda::grid_reverse<double>;
    d.begin_call = [](const at::Tensor& like, bool tf32) -> std::shared_ptr<void> {
      return std::make_shared<CudaCall>(like, tf32);
    };
    d.may_read_values = [] {
      return c10::cuda::currentStreamCaptureStatusMayInitCtx() == c10::cuda::CaptureStatus::None;
    };
    return d;
  }();
  return device;
}

}  // namespace

TORCH_LIBRARY_IMPL(obd_fast, CUDA, m) { register_device_kernels<cuda_device>(m); }

}  // namespace obd_fast
