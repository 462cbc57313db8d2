// The ops: their schemas (TORCH_LIBRARY(obd_fast)), their device-neutral bodies, and the
// Autograd kernels of the ones that are not differentiable. Each device registers the bodies for
// its dispatch key with its Device (cpu/ops_cpu.cpp, cuda/ops_cuda.cpp); obd_fast/fused.py
// registers the fake (meta) implementations and the autograd of unroll_forward and weighted_loss.
#include "ops.h"

#include <Python.h>
#include <torch/csrc/autograd/autograd_not_implemented_fallback.h>
#include <torch/library.h>
#include <torch/version.h>

#include <string>

#include "tape_pool.h"
#include "unroll.h"
#include "validate.h"

extern "C" {
// The module is imported only to load the shared library, which registers the ops.
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}

namespace obd_fast {

namespace {

at::Tensor value_or_undefined(const std::optional<at::Tensor>& t) { return t.has_value() ? *t : at::Tensor(); }

at::Tensor contiguous_or_undefined(const at::Tensor& t) { return t.defined() ? t.contiguous() : t; }

at::Tensor defined_or_empty(const at::Tensor& t, const at::TensorOptions& opts) {
  return t.defined() ? t : at::empty({0}, opts);
}

// The unroll's hyper-parameters and kernel choices, as the schemas list them.
InnerArgs inner_args(int64_t steps, double lr, double momentum, double weight_decay,
                     std::optional<int64_t> checkpoint_every, c10::string_view precision,
                     c10::string_view step_kernel, int64_t grid_blocks, bool grid_profile,
                     c10::string_view bf16_records) {
  return InnerArgs{steps, lr, momentum, weight_decay, checkpoint_every, precision, step_kernel, grid_blocks,
                   grid_profile, bf16_records};
}

}  // namespace

Tensors5 unroll_forward_op(const Device& device, const at::Tensor& theta0, const at::Tensor& syn_obs,
                           const at::Tensor& syn_act, const std::optional<at::Tensor>& noise_arg, int64_t obs_dim,
                           int64_t act_dim, at::IntArrayRef hidden, c10::string_view head, double max_action,
                           int64_t steps, double lr, double momentum, double weight_decay,
                           std::optional<int64_t> checkpoint_every, c10::string_view precision,
                           c10::string_view step_kernel, int64_t grid_blocks, bool grid_profile,
                           c10::string_view bf16_records) {
  const Mlp mlp = make_policy_net(obs_dim, act_dim, hidden, head, max_action);
  const at::Tensor noise = value_or_undefined(noise_arg);
  const InnerConfig cfg =
      check_inner_problem(device, mlp, theta0, "theta0", syn_obs, syn_act, noise, "noise",
                          inner_args(steps, lr, momentum, weight_decay, checkpoint_every, precision, step_kernel,
                                     grid_blocks, grid_profile, bf16_records));
  check_finite(device, {{"theta0", theta0}, {"syn_obs", syn_obs}, {"syn_act", syn_act}, {"noise", noise}});
  const auto call = device.begin_call(theta0, cfg.precision == Precision::kTF32);
  const UnrollTape tape = unroll_forward(device, mlp, cfg, theta0.contiguous(), syn_obs.contiguous(),
                                         syn_act.contiguous(), contiguous_or_undefined(noise));
  const auto opts = theta0.options();
  // A keep-all tape's theta_T is the last row of thetas: return a copy (an op's outputs must not
  // alias one another).
  return {cfg.keep_all() ? tape.theta_T.clone() : tape.theta_T, defined_or_empty(tape.thetas, opts),
          defined_or_empty(tape.records, opts), defined_or_empty(tape.ck_thetas, opts),
          defined_or_empty(tape.ck_bufs, opts)};
}

Tensors3 unroll_backward_op(const Device& device, const at::Tensor& grad_theta_T, const at::Tensor& thetas,
                            const at::Tensor& records, const at::Tensor& ck_thetas, const at::Tensor& ck_bufs,
                            const at::Tensor& syn_obs, const at::Tensor& syn_act,
                            const std::optional<at::Tensor>& noise_arg, int64_t obs_dim, int64_t act_dim,
                            at::IntArrayRef hidden, c10::string_view head, double max_action, int64_t steps,
                            double lr, double momentum, double weight_decay, std::optional<int64_t> checkpoint_every,
                            c10::string_view precision, c10::string_view step_kernel, int64_t grid_blocks,
                            bool grid_profile, c10::string_view bf16_records) {
  const Mlp mlp = make_policy_net(obs_dim, act_dim, hidden, head, max_action);
  const at::Tensor noise = value_or_undefined(noise_arg);
  const InnerConfig cfg =
      check_inner_problem(device, mlp, grad_theta_T, "grad_theta_T", syn_obs, syn_act, noise, "noise",
                          inner_args(steps, lr, momentum, weight_decay, checkpoint_every, precision, step_kernel,
                                     grid_blocks, grid_profile, bf16_records));
  check_tape(mlp, cfg, syn_obs.size(0), thetas, records, ck_thetas, ck_bufs, grad_theta_T);
  const auto call = device.begin_call(grad_theta_T, cfg.precision == Precision::kTF32);
  auto used = [](const at::Tensor& t) { return t.numel() > 0 ? t.contiguous() : at::Tensor(); };
  const UnrollTape tape{at::Tensor(), used(thetas), used(records), used(ck_thetas), used(ck_bufs)};
  auto [d_theta0, d_obs, d_act] = unroll_backward(device, mlp, cfg, tape, syn_obs.contiguous(), syn_act.contiguous(),
                                                  contiguous_or_undefined(noise), grad_theta_T.contiguous());
  return {d_theta0, d_obs, d_act};
}

Tensors5 weighted_loss_op(const Device& device, const at::Tensor& theta_in, const at::Tensor& obs_in,
                          const at::Tensor& target_in, const std::optional<at::Tensor>& weight_arg,
                          const std::optional<at::Tensor>& noise_arg, int64_t obs_dim, int64_t act_dim,
                          at::IntArrayRef hidden, c10::string_view head, double max_action, bool grad_obs,
                          bool grad_target, bool grad_weight, c10::string_view precision_name) {
  const Mlp mlp = make_policy_net(obs_dim, act_dim, hidden, head, max_action);
  const at::Tensor weight = value_or_undefined(weight_arg), noise = value_or_undefined(noise_arg);
  check_theta(mlp, theta_in, "theta");
  check_loss_batch(mlp, theta_in, "theta", obs_in, target_in, weight, noise, "noise");
  const Precision precision = parse_precision(precision_name);
  check_precision(device, precision, precision_name, theta_in);
  check_finite(device, {{"theta", theta_in}, {"obs", obs_in}, {"target", target_in}, {"weight", weight},
                        {"noise", noise}});
  const auto call = device.begin_call(theta_in, precision == Precision::kTF32);
  const at::Tensor theta = theta_in.contiguous(), obs = obs_in.contiguous(), target = target_in.contiguous();
  const auto opts = theta.options();
  const int64_t n = obs.size(0);
  const LossBatch batch{obs, target, contiguous_or_undefined(noise), contiguous_or_undefined(weight)};
  Workspace ws(device, mlp, n, opts);
  at::Tensor slot = at::empty({mlp.record_size(n)}, opts);
  at::Tensor grad = at::empty({mlp.num_params}, opts);
  at::Tensor d_obs = grad_obs ? at::empty_like(obs) : at::Tensor();
  at::Tensor d_target = grad_target ? at::empty_like(target) : at::Tensor();
  at::Tensor sq = grad_weight && batch.weight.defined() ? at::empty_like(target) : at::Tensor();
  loss_grad(mlp, Gemm{precision, device.host}, theta, batch, record_views(mlp, slot, n), grad, ws, d_obs, d_target,
            sq);
  return {ws.partials.select(0, 0).sum(), grad, defined_or_empty(d_obs, opts), defined_or_empty(d_target, opts),
          sq.defined() ? sq.sum(1) : at::empty({0}, opts)};
}

Tensors4 meta_gradient_op(const Device& device, const at::Tensor& theta0, const at::Tensor& syn_obs_in,
                          const at::Tensor& syn_act_in, const std::optional<at::Tensor>& inner_noise_arg,
                          const at::Tensor& obs, const at::Tensor& target, const std::optional<at::Tensor>& weight_arg,
                          const std::optional<at::Tensor>& outer_noise_arg, int64_t obs_dim, int64_t act_dim,
                          at::IntArrayRef hidden, c10::string_view head, double max_action, int64_t steps, double lr,
                          double momentum, double weight_decay, std::optional<int64_t> checkpoint_every,
                          c10::string_view precision, c10::string_view step_kernel, int64_t grid_blocks,
                          bool grid_profile, c10::string_view bf16_records) {
  const Mlp mlp = make_policy_net(obs_dim, act_dim, hidden, head, max_action);
  const at::Tensor inner_noise = value_or_undefined(inner_noise_arg), weight = value_or_undefined(weight_arg),
                   outer_noise = value_or_undefined(outer_noise_arg);
  const InnerConfig cfg =
      check_inner_problem(device, mlp, theta0, "theta0", syn_obs_in, syn_act_in, inner_noise, "inner_noise",
                          inner_args(steps, lr, momentum, weight_decay, checkpoint_every, precision, step_kernel,
                                     grid_blocks, grid_profile, bf16_records));
  check_loss_batch(mlp, theta0, "theta0", obs, target, weight, outer_noise, "outer_noise");
  check_finite(device, {{"theta0", theta0}, {"syn_obs", syn_obs_in}, {"syn_act", syn_act_in},
                        {"inner_noise", inner_noise}, {"obs", obs}, {"target", target}, {"weight", weight},
                        {"outer_noise", outer_noise}});
  const auto call = device.begin_call(theta0, cfg.precision == Precision::kTF32);
  const at::Tensor syn_obs = syn_obs_in.contiguous(), syn_act = syn_act_in.contiguous();
  const at::Tensor noise = contiguous_or_undefined(inner_noise);
  // The tape dies with this call, so in host memory it can be pooled (tape_pool.h).
  std::optional<TapeLease> lease;
  if (device.host && cfg.keep_all()) lease.emplace(tape_numel(mlp, cfg, syn_obs.size(0)), theta0.options());
  const UnrollTape tape = unroll_forward(device, mlp, cfg, theta0.contiguous(), syn_obs, syn_act, noise,
                                         lease ? lease->buffer() : at::Tensor(), /*keep_last_segment=*/true);
  // Outer loss and v = dH/dtheta_T.
  const auto opts = theta0.options();
  const int64_t b = obs.size(0);
  const LossBatch batch{obs.contiguous(), target.contiguous(), contiguous_or_undefined(outer_noise),
                        contiguous_or_undefined(weight)};
  Workspace ws(device, mlp, b, opts);
  // A compact record here too (bf16 on the CPU): the products read bf16 operands, which are then
  // stored as such instead of in float32 and converted for the next product. Pooled in host
  // memory like the tape, so successive calls reuse its pages.
  const int64_t slot_numel = mlp.record_size(b, cfg.compact_records);
  std::optional<TapeLease> slot_lease;
  if (device.host) slot_lease.emplace(slot_numel, opts);
  const at::Tensor slot = slot_lease ? slot_lease->buffer() : at::empty({slot_numel}, opts);
  at::Tensor v = at::empty({mlp.num_params}, opts);
  loss_grad(mlp, Gemm{cfg.precision, device.host}, tape.theta_T, batch,
            record_views(mlp, slot, b, cfg.compact_records), v, ws);
  at::Tensor loss = ws.partials.select(0, 0).sum();
  auto [d_theta0, d_obs, d_act] = unroll_backward(device, mlp, cfg, tape, syn_obs, syn_act, noise, v);
  return {loss, d_obs, d_act, d_theta0};
}

at::Tensor policy_forward_op(const Device& device, const at::Tensor& theta_in, const at::Tensor& obs,
                             const std::optional<at::Tensor>& noise_arg, int64_t obs_dim, int64_t act_dim,
                             at::IntArrayRef hidden, c10::string_view head, double max_action) {
  const Mlp mlp = make_policy_net(obs_dim, act_dim, hidden, head, max_action);
  const at::Tensor noise = value_or_undefined(noise_arg);
  check_theta(mlp, theta_in, "theta");
  check_loss_batch(mlp, theta_in, "theta", obs, at::Tensor(), at::Tensor(), noise, "noise");
  check_finite(device, {{"theta", theta_in}, {"obs", obs}, {"noise", noise}});
  const auto call = device.begin_call(theta_in, /*tf32=*/false);
  const at::Tensor theta = theta_in.contiguous();
  at::Tensor x = obs.contiguous();
  for (int64_t l = 0; l < mlp.layers(); ++l) {
    x = at::addmm(mlp.bias(theta, l), x, mlp.weight(theta, l).t());
    if (l < mlp.layers() - 1) x.relu_();
  }
  const LossBatch batch{obs, at::Tensor(), contiguous_or_undefined(noise), at::Tensor()};
  at::Tensor actions = at::empty({x.size(0), mlp.act_dim}, theta.options());
  device.head_action(head_inputs(mlp, theta, batch, x), actions);
  return actions;
}

namespace {

std::string op_build_info() {
#ifdef OBD_FAST_WITH_CUDA
  return "cpu+cuda";
#else
  return "cpu";
#endif
}

// The Autograd kernel of an op that is not differentiable (it returns gradients, or actions for
// evaluation): the device kernel runs below autograd and its outputs are plain tensors.
// torch.library.register_autograd cannot express that; this is the registration torch's opcheck
// asks of such ops.
void not_differentiable(const c10::OperatorHandle& op, c10::DispatchKeySet keys, torch::jit::Stack* stack) {
  at::AutoDispatchBelowADInplaceOrView guard;
  op.redispatchBoxed(keys & c10::after_ADInplaceOrView_keyset, stack);
}

}  // namespace

// The inner problem's arguments after the tensors, shared by unroll_forward, unroll_backward and
// meta_gradient: the policy (PolicySpec's fields), SGD's hyper-parameters, checkpoint_every (None:
// keep every step for the reverse pass), the products' precision ("native", "bf16", "tf32") and
// the kernel choices: step_kernel ("auto", "grid", "library"), grid_blocks (0: one per
// multiprocessor), grid_profile, bf16_records ("compact", "float": the layout of bf16 records on
// the CPU).
#define OBD_FAST_POLICY_ARGS "int obs_dim, int act_dim, int[] hidden, str head, float max_action"
#define OBD_FAST_INNER_ARGS                                                                              \
  OBD_FAST_POLICY_ARGS ", int steps, float lr, float momentum=0., float weight_decay=0., "               \
                       "int? checkpoint_every=None, str precision='native', str step_kernel='auto', "    \
                       "int grid_blocks=0, bool grid_profile=False, str bf16_records='compact'"

TORCH_LIBRARY(obd_fast, m) {
#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 5)
  m.set_python_module("obd_fast.fused");  // where the fake implementations and autograd live
#else
  m.impl_abstract_pystub("obd_fast.fused");
#endif
  m.def("unroll_forward(Tensor theta0, Tensor syn_obs, Tensor syn_act, Tensor? noise, *, " OBD_FAST_INNER_ARGS
        ") -> (Tensor theta_T, Tensor thetas, Tensor records, Tensor ck_thetas, Tensor ck_bufs)");
  m.def("unroll_backward(Tensor grad_theta_T, Tensor thetas, Tensor records, Tensor ck_thetas, Tensor ck_bufs, "
        "Tensor syn_obs, Tensor syn_act, Tensor? noise, *, " OBD_FAST_INNER_ARGS
        ") -> (Tensor grad_theta0, Tensor grad_syn_obs, Tensor grad_syn_act)");
  m.def("weighted_loss(Tensor theta, Tensor obs, Tensor target, Tensor? weight, Tensor? noise, *, " OBD_FAST_POLICY_ARGS
        ", bool grad_obs=False, bool grad_target=False, bool grad_weight=False, str precision='native') -> "
        "(Tensor loss, Tensor grad_theta, Tensor grad_obs, Tensor grad_target, Tensor grad_weight)");
  m.def("meta_gradient(Tensor theta0, Tensor syn_obs, Tensor syn_act, Tensor? inner_noise, Tensor obs, "
        "Tensor target, Tensor? weight, Tensor? outer_noise, *, " OBD_FAST_INNER_ARGS
        ") -> (Tensor loss, Tensor grad_syn_obs, Tensor grad_syn_act, Tensor grad_theta0)");
  m.def("policy_forward(Tensor theta, Tensor obs, Tensor? noise, *, " OBD_FAST_POLICY_ARGS ") -> Tensor actions");
  m.def("build_info() -> str", &op_build_info);
  m.def("tape_pool_bytes() -> int", [] { return tape_pool_bytes(); });
  m.def("release_tape_pool() -> ()", [] { release_tape_pool(); });
}

TORCH_LIBRARY_IMPL(obd_fast, Autograd, m) {
  m.impl("meta_gradient", torch::CppFunction::makeFromBoxedFunction<&not_differentiable>());
  m.impl("policy_forward", torch::CppFunction::makeFromBoxedFunction<&not_differentiable>());
  // unroll_backward is unroll_forward's derivative (fused.py); differentiating it again raises.
  m.impl("unroll_backward", torch::autograd::autogradNotImplementedFallback());
}

}  // namespace obd_fast
