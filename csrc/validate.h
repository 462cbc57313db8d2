// Validation of the ops' arguments, once per call, before any work: each failure is a
// c10::ValueError (Python: ValueError) that names the argument and says what was expected.
// obd_fast/checks.py states the same rules in the same words for the reference backend;
// tests/test_properties_ops.py checks that both backends give the same message.
#pragma once

#include <ATen/ATen.h>

#include <optional>
#include <utility>
#include <vector>

#include "unroll.h"

namespace obd_fast {

// The policy network of PolicySpec(obs_dim, act_dim, hidden, head, max_action).
Mlp make_policy_net(int64_t obs_dim, int64_t act_dim, at::IntArrayRef hidden, c10::string_view head,
                    double max_action);

Precision parse_precision(c10::string_view precision);

// The inner problem's settings: steps, lr, momentum, weight_decay, checkpoint_every (None: keep
// every step), the products' precision and the kernel choices.
struct InnerArgs {
  int64_t steps;
  double lr, momentum, weight_decay;
  std::optional<int64_t> checkpoint_every;
  c10::string_view precision, step_kernel;
  int64_t grid_blocks;
  bool grid_profile;
  c10::string_view bf16_records;
};

// Checks theta (P,; theta0 of the unroll, or the gradient of its result), syn_obs (N, obs_dim),
// syn_act (N, act_dim), the settings and the noise (steps, N, act_dim) of an unroll, and returns
// the settings as an InnerConfig.
InnerConfig check_inner_problem(const Device& device, const Mlp& mlp, const at::Tensor& theta, const char* theta_name,
                                const at::Tensor& syn_obs, const at::Tensor& syn_act, const at::Tensor& noise,
                                const char* noise_name, const InnerArgs& args);

// The tape of an unroll with this config on N rows, as unroll_forward returns it (unused parts
// are empty).
void check_tape(const Mlp& mlp, const InnerConfig& cfg, int64_t n, const at::Tensor& thetas, const at::Tensor& records,
                const at::Tensor& ck_thetas, const at::Tensor& ck_bufs, const at::Tensor& like);

// Checks obs (B, obs_dim), target (B, act_dim; undefined for a policy evaluation), weight (B,)
// and noise (B, act_dim) of a loss or policy evaluated at theta (named theta_name; already
// checked).
void check_loss_batch(const Mlp& mlp, const at::Tensor& theta, const char* theta_name, const at::Tensor& obs,
                      const at::Tensor& target, const at::Tensor& weight, const at::Tensor& noise,
                      const char* noise_name);

// Checks theta (P,) of a policy evaluation.
void check_theta(const Mlp& mlp, const at::Tensor& theta, const char* name);

// precision for tensors like `like` on this device: bf16 and tf32 need float32, tf32 CUDA.
void check_precision(const Device& device, Precision precision, c10::string_view name, const at::Tensor& like);

// No NaN or Inf in the named tensors (undefined ones are skipped), checked in order. Reads the
// values on the host, so it is skipped where the device says that is not allowed now (while a
// CUDA graph is being captured).
void check_finite(const Device& device, const std::vector<std::pair<const char*, at::Tensor>>& tensors);

}  // namespace obd_fast
