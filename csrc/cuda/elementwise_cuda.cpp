// ATen-facing glue of the CUDA kernels: takes tensors, launches on the current stream.
// Compiled only when the extension is built with CUDA (OBD_FAST_WITH_CUDA).
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "../head_args.h"
#include "kernels.h"

namespace obd_fast {
namespace cuda {

void head_grad(const HeadInputs& in, const at::Tensor& grad_z, const at::Tensor& partials, const at::Tensor& d_target,
               const at::Tensor& sq) {
  const c10::cuda::CUDAGuard guard(in.z.device());
  AT_DISPATCH_FLOATING_TYPES(in.z.scalar_type(), "obd_fast_head_grad_cuda", [&] {
    const head::GradOut<scalar_t> o{grad_z.data_ptr<scalar_t>(), partials.data_ptr<scalar_t>(),
                                    mut_ptr_or_null<scalar_t>(d_target), mut_ptr_or_null<scalar_t>(sq)};
    C10_CUDA_CHECK(cuda_kernels::launch_head_grad(make_head_args<scalar_t>(in), o, c10::cuda::getCurrentCUDAStream()));
  });
}

void head_hvp(const HeadInputs& in, const at::Tensor& zdot, const at::Tensor& dir_scalars, const at::Tensor& q,
              const at::Tensor& partials, const at::Tensor& d_target) {
  const c10::cuda::CUDAGuard guard(in.z.device());
  AT_DISPATCH_FLOATING_TYPES(in.z.scalar_type(), "obd_fast_head_hvp_cuda", [&] {
    const head::HvpArgs<scalar_t> h{zdot.data_ptr<scalar_t>(), ptr_or_null<scalar_t>(dir_scalars)};
    const head::HvpOut<scalar_t> o{q.data_ptr<scalar_t>(), partials.data_ptr<scalar_t>(),
                                   mut_ptr_or_null<scalar_t>(d_target)};
    C10_CUDA_CHECK(
        cuda_kernels::launch_head_hvp(make_head_args<scalar_t>(in), h, o, c10::cuda::getCurrentCUDAStream()));
  });
}

void head_action(const HeadInputs& in, const at::Tensor& actions) {
  const c10::cuda::CUDAGuard guard(in.z.device());
  AT_DISPATCH_FLOATING_TYPES(in.z.scalar_type(), "obd_fast_head_action_cuda", [&] {
    C10_CUDA_CHECK(cuda_kernels::launch_head_action(make_head_args<scalar_t>(in), actions.data_ptr<scalar_t>(),
                                                    c10::cuda::getCurrentCUDAStream()));
  });
}

void sgd_step(const at::Tensor& theta, const at::Tensor& grad, const at::Tensor& buf, const at::Tensor& theta_next,
              double lr, double momentum, double weight_decay) {
  const c10::cuda::CUDAGuard guard(theta.device());
  AT_DISPATCH_FLOATING_TYPES(theta.scalar_type(), "obd_fast_sgd_cuda", [&] {
    C10_CUDA_CHECK(cuda_kernels::launch_sgd(theta.data_ptr<scalar_t>(), grad.data_ptr<scalar_t>(),
                                            mut_ptr_or_null<scalar_t>(buf), theta_next.data_ptr<scalar_t>(),
                                            static_cast<scalar_t>(lr), static_cast<scalar_t>(momentum),
                                            static_cast<scalar_t>(weight_decay), theta.numel(),
                                            c10::cuda::getCurrentCUDAStream()));
  });
}

void adjoint_step(const at::Tensor& a, const at::Tensor& hu, const at::Tensor& u, double lr, double momentum,
                  double weight_decay) {
  const c10::cuda::CUDAGuard guard(a.device());
  AT_DISPATCH_FLOATING_TYPES(a.scalar_type(), "obd_fast_adjoint_cuda", [&] {
    C10_CUDA_CHECK(cuda_kernels::launch_adjoint(a.data_ptr<scalar_t>(), hu.data_ptr<scalar_t>(),
                                                u.data_ptr<scalar_t>(), static_cast<scalar_t>(lr),
                                                static_cast<scalar_t>(momentum), static_cast<scalar_t>(weight_decay),
                                                a.numel(), c10::cuda::getCurrentCUDAStream()));
  });
}

}  // namespace cuda
}  // namespace obd_fast
