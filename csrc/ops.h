// The ops' bodies, device-neutral: each takes the Device that its registration hands it
// (cpu/ops_cpu.cpp, cuda/ops_cuda.cpp), then the arguments of its schema (ops.cpp).
#pragma once

#include <ATen/ATen.h>
#include <torch/library.h>

#include <optional>
#include <tuple>
#include <utility>

#include "device.h"

namespace obd_fast {

using Tensors2 = std::tuple<at::Tensor, at::Tensor>;
using Tensors3 = std::tuple<at::Tensor, at::Tensor, at::Tensor>;
using Tensors4 = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>;
using Tensors5 = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

// (theta_T, thetas, records, ck_thetas, ck_bufs): theta_T and the tape unroll_backward reads.
Tensors5 unroll_forward_op(const Device& device, const at::Tensor& theta0, const at::Tensor& syn_obs,
                           const at::Tensor& syn_act, const std::optional<at::Tensor>& noise, int64_t obs_dim,
                           int64_t act_dim, at::IntArrayRef hidden, c10::string_view head, double max_action,
                           int64_t steps, double lr, double momentum, double weight_decay,
                           std::optional<int64_t> checkpoint_every, c10::string_view precision,
                           c10::string_view step_kernel, int64_t grid_blocks, bool grid_profile,
                           c10::string_view bf16_records);

// (grad_theta0, grad_syn_obs, grad_syn_act) of <grad_theta_T, theta_T>.
Tensors3 unroll_backward_op(const Device& device, const at::Tensor& grad_theta_T, const at::Tensor& thetas,
                            const at::Tensor& records, const at::Tensor& ck_thetas, const at::Tensor& ck_bufs,
                            const at::Tensor& syn_obs, const at::Tensor& syn_act,
                            const std::optional<at::Tensor>& noise, int64_t obs_dim, int64_t act_dim,
                            at::IntArrayRef hidden, c10::string_view head, double max_action, int64_t steps,
                            double lr, double momentum, double weight_decay, std::optional<int64_t> checkpoint_every,
                            c10::string_view precision, c10::string_view step_kernel, int64_t grid_blocks,
                            bool grid_profile, c10::string_view bf16_records);

// (loss, grad_theta, grad_obs, grad_target, grad_weight); a gradient not asked for is empty.
Tensors5 weighted_loss_op(const Device& device, const at::Tensor& theta, const at::Tensor& obs,
                          const at::Tensor& target, const std::optional<at::Tensor>& weight,
                          const std::optional<at::Tensor>& noise, int64_t obs_dim, int64_t act_dim,
                          at::IntArrayRef hidden, c10::string_view head, double max_action, bool grad_obs,
                          bool grad_target, bool grad_weight, c10::string_view precision);

// (loss, grad_syn_obs, grad_syn_act, grad_theta0) of the outer loss after the unroll.
Tensors4 meta_gradient_op(const Device& device, const at::Tensor& theta0, const at::Tensor& syn_obs,
                          const at::Tensor& syn_act, const std::optional<at::Tensor>& inner_noise,
                          const at::Tensor& obs, const at::Tensor& target, const std::optional<at::Tensor>& weight,
                          const std::optional<at::Tensor>& outer_noise, int64_t obs_dim, int64_t act_dim,
                          at::IntArrayRef hidden, c10::string_view head, double max_action, int64_t steps, double lr,
                          double momentum, double weight_decay, std::optional<int64_t> checkpoint_every,
                          c10::string_view precision, c10::string_view step_kernel, int64_t grid_blocks,
                          bool grid_profile, c10::string_view bf16_records);

// The policy's actions.
at::Tensor policy_forward_op(const Device& device, const at::Tensor& theta, const at::Tensor& obs,
                             const std::optional<at::Tensor>& noise, int64_t obs_dim, int64_t act_dim,
                             at::IntArrayRef hidden, c10::string_view head, double max_action);

// Bind<device, body>::call is the kernel a registration hands the dispatcher: the body with the
// Device bound, taking exactly the schema's arguments.
template <const Device& (*GetDevice)(), auto Body>
struct Bind;

template <const Device& (*GetDevice)(), typename R, typename... Args, R (*Body)(const Device&, Args...)>
struct Bind<GetDevice, Body> {
  static R call(Args... args) { return Body(GetDevice(), std::forward<Args>(args)...); }
};

// Every op's kernel for one dispatch key (inside its TORCH_LIBRARY_IMPL), with its Device bound.
template <const Device& (*GetDevice)()>
void register_device_kernels(torch::Library& m) {
  m.impl("unroll_forward", &Bind<GetDevice, &unroll_forward_op>::call);
  m.impl("unroll_backward", &Bind<GetDevice, &unroll_backward_op>::call);
  m.impl("weighted_loss", &Bind<GetDevice, &weighted_loss_op>::call);
  m.impl("meta_gradient", &Bind<GetDevice, &meta_gradient_op>::call);
  m.impl("policy_forward", &Bind<GetDevice, &policy_forward_op>::call);
}

}  // namespace obd_fast
