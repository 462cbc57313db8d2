// Device dispatch of the fused elementwise passes.
#include "elementwise.h"

namespace obd_fast {

namespace {
bool on_cuda(const at::Tensor& t) {
  if (!t.is_cuda()) return false;
#ifdef OBD_FAST_WITH_CUDA
  return true;
#else
  TORCH_CHECK(false, "obd_fast was built without CUDA support; rebuild with a CUDA build of torch and nvcc");
#endif
}
}  // namespace

#ifdef OBD_FAST_WITH_CUDA
#define OBD_DISPATCH(name, first, ...) \
  if (on_cuda(first)) return cuda::name(__VA_ARGS__); \
  return cpu::name(__VA_ARGS__)
#else
#define OBD_DISPATCH(name, first, ...) \
  on_cuda(first); \
  return cpu::name(__VA_ARGS__)
#endif

void head_grad(const HeadInputs& in, const at::Tensor& grad_z, const at::Tensor& partials, const at::Tensor& d_target,
               const at::Tensor& sq) {
  OBD_DISPATCH(head_grad, in.z, in, grad_z, partials, d_target, sq);
}

void head_hvp(const HeadInputs& in, const at::Tensor& zdot, const at::Tensor& dir_scalars, const at::Tensor& q,
              const at::Tensor& partials, const at::Tensor& d_target) {
  OBD_DISPATCH(head_hvp, in.z, in, zdot, dir_scalars, q, partials, d_target);
}

void head_action(const HeadInputs& in, const at::Tensor& actions) { OBD_DISPATCH(head_action, in.z, in, actions); }

void sgd_step(const at::Tensor& theta, const at::Tensor& grad, const at::Tensor& buf, const at::Tensor& theta_next,
              double lr, double momentum, double weight_decay) {
  OBD_DISPATCH(sgd_step, theta, theta, grad, buf, theta_next, lr, momentum, weight_decay);
}

void adjoint_step(const at::Tensor& a, const at::Tensor& hu, const at::Tensor& u, double lr, double momentum,
                  double weight_decay) {
  OBD_DISPATCH(adjoint_step, a, a, hu, u, lr, momentum, weight_decay);
}

}  // namespace obd_fast
