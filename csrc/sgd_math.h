// Per-element math of the inner optimizer: one SGD step (as torch.optim.SGD) and one step of the
// reverse phase's adjoint recursion through it. Shared by the CPU loops, the CUDA kernels and the
// grid program. No torch, no CUDA runtime: plain inline functions.
#pragma once

#include <cstdint>

#include "host_device.h"

namespace obd_fast {
namespace sgd {

// One SGD step as torch.optim.SGD (no dampening, no Nesterov): g = grad + wd * theta,
// buf = momentum * buf + g (buf starts at zero), theta_next = theta - lr * buf. Returns
// theta_next; buf_k (null without momentum) is updated.
template <typename T>
OBD_HD T update(T theta, T grad, T* buf_k, T lr, T momentum, T weight_decay) {
  T g = grad + weight_decay * theta;
  if (buf_k != nullptr) {
    g = momentum * *buf_k + g;
    *buf_k = g;
  }
  return theta - lr * g;
}

template <typename T>
OBD_HD void update_element(const T* theta, const T* grad, T* buf, T* theta_next, T lr, T momentum, T weight_decay,
                           int64_t k) {
  theta_next[k] = update(theta[k], grad[k], buf != nullptr ? buf + k : nullptr, lr, momentum, weight_decay);
}

// One step of the reverse phase's adjoint recursion, fused: with u = u_t (the adjoint of step t's
// update direction) and hu = H_t u_t, a_t = a_{t+1} + hu + weight_decay * u, then the next
// direction u_{t-1} = momentum * u_t - lr * a_t. Updates *a_k, returns u_{t-1}.
template <typename T>
OBD_HD T adjoint_update(T* a_k, T hu, T u, T lr, T momentum, T weight_decay) {
  const T a_new = *a_k + hu + weight_decay * u;
  *a_k = a_new;
  return momentum * u - lr * a_new;
}

template <typename T>
OBD_HD void adjoint_element(T* a, const T* hu, T* u, T lr, T momentum, T weight_decay, int64_t k) {
  u[k] = adjoint_update(a + k, hu[k], u[k], lr, momentum, weight_decay);
}

}  // namespace sgd
}  // namespace obd_fast
