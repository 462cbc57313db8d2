// Launchers of the CUDA elementwise kernels. Raw pointers and a stream only: this header and the
// .cu files that implement it need the CUDA runtime, head_math.h and sgd_math.h, never torch.
#pragma once

#include <cuda_runtime_api.h>

#include "../head_math.h"
#include "../sgd_math.h"

namespace obd_fast {
namespace cuda_kernels {

template <typename T>
cudaError_t launch_head_grad(const head::HeadArgs<T>& a, const head::GradOut<T>& o, cudaStream_t stream);

template <typename T>
cudaError_t launch_head_hvp(const head::HeadArgs<T>& a, const head::HvpArgs<T>& h, const head::HvpOut<T>& o,
                            cudaStream_t stream);

template <typename T>
cudaError_t launch_head_action(const head::HeadArgs<T>& a, T* actions, cudaStream_t stream);

template <typename T>
cudaError_t launch_sgd(const T* theta, const T* grad, T* buf, T* theta_next, T lr, T momentum, T weight_decay,
                       int64_t n, cudaStream_t stream);

template <typename T>
cudaError_t launch_adjoint(T* a, const T* hu, T* u, T lr, T momentum, T weight_decay, int64_t n, cudaStream_t stream);

}  // namespace cuda_kernels
}  // namespace obd_fast
