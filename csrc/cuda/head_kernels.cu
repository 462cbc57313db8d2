// CUDA kernels of the fused elementwise passes: one thread per (row, action) element for the
// head, one per parameter for the SGD step. The math is head_math.h's and sgd_math.h's, shared with
// the CPU.
#include <cuda_runtime.h>

#include "kernels.h"

namespace obd_fast {
namespace cuda_kernels {

namespace {

constexpr int kThreads = 256;

inline unsigned blocks_for(int64_t n) { return static_cast<unsigned>((n + kThreads - 1) / kThreads); }

template <typename T>
__global__ void head_grad_kernel(const head::HeadArgs<T> a, const head::GradOut<T> o) {
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx < a.n * a.act_dim) head::head_grad_element(a, o, idx);
}

template <typename T>
__global__ void head_hvp_kernel(const head::HeadArgs<T> a, const head::HvpArgs<T> h, const head::HvpOut<T> o) {
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx < a.n * a.act_dim) head::head_hvp_element(a, h, o, idx);
}

template <typename T>
__global__ void head_action_kernel(const head::HeadArgs<T> a, T* actions) {
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx < a.n * a.act_dim) actions[idx] = head::head_action(a, idx / a.act_dim, idx % a.act_dim);
}

template <typename T>
__global__ void sgd_kernel(const T* theta, const T* grad, T* buf, T* theta_next, T lr, T momentum, T weight_decay,
                           int64_t n) {
  const int64_t k = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (k < n) sgd::update_element(theta, grad, buf, theta_next, lr, momentum, weight_decay, k);
}

template <typename T>
__global__ void adjoint_kernel(T* a, const T* hu, T* u, T lr, T momentum, T weight_decay, int64_t n) {
  const int64_t k = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (k < n) sgd::adjoint_element(a, hu, u, lr, momentum, weight_decay, k);
}

}  // namespace

template <typename T>
cudaError_t launch_head_grad(const head::HeadArgs<T>& a, const head::GradOut<T>& o, cudaStream_t stream) {
  const int64_t n = a.n * a.act_dim;
  if (n == 0) return cudaSuccess;
  head_grad_kernel<T><<<blocks_for(n), kThreads, 0, stream>>>(a, o);
  return cudaGetLastError();
}

template <typename T>
cudaError_t launch_head_hvp(const head::HeadArgs<T>& a, const head::HvpArgs<T>& h, const head::HvpOut<T>& o,
                            cudaStream_t stream) {
  const int64_t n = a.n * a.act_dim;
  if (n == 0) return cudaSuccess;
  head_hvp_kernel<T><<<blocks_for(n), kThreads, 0, stream>>>(a, h, o);
  return cudaGetLastError();
}

template <typename T>
cudaError_t launch_head_action(const head::HeadArgs<T>& a, T* actions, cudaStream_t stream) {
  const int64_t n = a.n * a.act_dim;
  if (n == 0) return cudaSuccess;
  head_action_kernel<T><<<blocks_for(n), kThreads, 0, stream>>>(a, actions);
  return cudaGetLastError();
}

template <typename T>
cudaError_t launch_sgd(const T* theta, const T* grad, T* buf, T* theta_next, T lr, T momentum, T weight_decay,
                       int64_t n, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  sgd_kernel<T><<<blocks_for(n), kThreads, 0, stream>>>(theta, grad, buf, theta_next, lr, momentum, weight_decay, n);
  return cudaGetLastError();
}

template <typename T>
cudaError_t launch_adjoint(T* a, const T* hu, T* u, T lr, T momentum, T weight_decay, int64_t n, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  adjoint_kernel<T><<<blocks_for(n), kThreads, 0, stream>>>(a, hu, u, lr, momentum, weight_decay, n);
  return cudaGetLastError();
}

#define OBD_INSTANTIATE(T)                                                                                          \
  template cudaError_t launch_head_grad<T>(const head::HeadArgs<T>&, const head::GradOut<T>&, cudaStream_t);       \
  template cudaError_t launch_head_hvp<T>(const head::HeadArgs<T>&, const head::HvpArgs<T>&,                       \
                                          const head::HvpOut<T>&, cudaStream_t);                                   \
  template cudaError_t launch_head_action<T>(const head::HeadArgs<T>&, T*, cudaStream_t);                          \
  template cudaError_t launch_sgd<T>(const T*, const T*, T*, T*, T, T, T, int64_t, cudaStream_t);                  \
  template cudaError_t launch_adjoint<T>(T*, const T*, T*, T, T, T, int64_t, cudaStream_t);

OBD_INSTANTIATE(float)
OBD_INSTANTIATE(double)
#undef OBD_INSTANTIATE

}  // namespace cuda_kernels
}  // namespace obd_fast
