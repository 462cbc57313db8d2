// Torch op registration (TORCH_LIBRARY(obd_fast)). The ops are functional; obd_fast/fused.py
// attaches autograd to them. The implementations are device-agnostic ATen code, registered for
// every backend (CompositeExplicitAutograd); the elementwise passes pick CPU loops or CUDA kernels.
#include <Python.h>
#include <torch/library.h>

#include <optional>
#include <string>

#include "env.h"
#include "tape_pool.h"
#include "unroll.h"

extern "C" {
// The module is imported only to load the shared library, which registers the ops.
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}

namespace obd_fast {
namespace {

at::Tensor optional_contig(const std::optional<at::Tensor>& t) {
  return t.has_value() && t->defined() ? t->contiguous() : at::Tensor();
}

Mlp make_mlp(at::IntArrayRef widths, bool gaussian, double max_action) {
  return Mlp(std::vector<int64_t>(widths.begin(), widths.end()), gaussian, max_action);
}

// like: a tensor of the unroll (its device and dtype decide the record layout).
InnerConfig make_config(int64_t steps, double lr, double momentum, double weight_decay, int64_t checkpoint_every,
                        int64_t precision, const at::Tensor& like) {
  TORCH_CHECK(steps >= 1, "obd_fast: steps must be >= 1, got ", steps);
  TORCH_CHECK(checkpoint_every >= 0, "obd_fast: checkpoint_every must be >= 0, got ", checkpoint_every);
  TORCH_CHECK(precision == 0 || precision == 1, "obd_fast: precision must be 0 (native) or 1 (bf16)");
  InnerConfig cfg;
  cfg.steps = steps;
  cfg.lr = lr;
  cfg.momentum = momentum;
  cfg.weight_decay = weight_decay;
  cfg.checkpoint_every = checkpoint_every == 0 ? 0 : std::min(checkpoint_every, steps);
  cfg.precision = static_cast<Precision>(precision);
  // CPU only: the CUDA passes keep float32 records (not yet measured or tested with bf16 ones).
  // OBD_FAST_BF16_RECORDS=float keeps float32 records on the CPU too: the slower path (ATen
  // conversions, one product per term) the tests check the compact one against.
  const std::string records_choice = env_or("OBD_FAST_BF16_RECORDS", "compact");
  TORCH_CHECK(records_choice == "compact" || records_choice == "float",
              "obd_fast: OBD_FAST_BF16_RECORDS must be compact or float, got '", records_choice, "'");
  cfg.compact_records = cfg.precision == Precision::kBF16 && like.is_cpu() && like.scalar_type() == at::kFloat &&
                        records_choice == "compact";
  return cfg;
}

void check_inputs(const Mlp& mlp, const at::Tensor& theta, const at::Tensor& obs, const at::Tensor& target) {
  TORCH_CHECK(theta.dim() == 1 && theta.numel() == mlp.num_params, "obd_fast: theta must have ", mlp.num_params,
              " elements");
  TORCH_CHECK(theta.scalar_type() == at::kFloat || theta.scalar_type() == at::kDouble,
              "obd_fast: tensors must be float32 or float64");
  TORCH_CHECK(obs.dim() == 2 && obs.size(1) == mlp.widths[0], "obd_fast: obs must be (n, ", mlp.widths[0], ")");
  TORCH_CHECK(target.dim() == 2 && target.size(0) == obs.size(0) && target.size(1) == mlp.act,
              "obd_fast: target must be (n, ", mlp.act, ")");
  TORCH_CHECK(obs.scalar_type() == theta.scalar_type() && target.scalar_type() == theta.scalar_type(),
              "obd_fast: all tensors must share one dtype");
  TORCH_CHECK(obs.device() == theta.device() && target.device() == theta.device(),
              "obd_fast: all tensors must be on one device");
}

std::vector<at::Tensor> tape_to_list(const UnrollTape& t) {
  return {t.theta_T, t.thetas, t.records, t.ck_thetas, t.ck_bufs};
}

UnrollTape tape_from_list(const std::vector<at::Tensor>& l) {
  TORCH_CHECK(l.size() == 5, "obd_fast: an unroll tape has 5 entries, got ", l.size());
  auto def = [](const at::Tensor& t) { return t.defined() && t.numel() > 0 ? t : at::Tensor(); };
  return UnrollTape{l[0], def(l[1]), def(l[2]), def(l[3]), def(l[4])};
}

std::vector<at::Tensor> op_unroll_forward(const at::Tensor& theta0, const at::Tensor& syn_obs, const at::Tensor& syn_act,
                                          const std::optional<at::Tensor>& noise, at::IntArrayRef widths, bool gaussian,
                                          double max_action, int64_t steps, double lr, double momentum,
                                          double weight_decay, int64_t checkpoint_every, int64_t precision) {
  const Mlp mlp = make_mlp(widths, gaussian, max_action);
  check_inputs(mlp, theta0, syn_obs, syn_act);
  const InnerConfig cfg = make_config(steps, lr, momentum, weight_decay, checkpoint_every, precision, theta0);
  std::vector<at::Tensor> out = tape_to_list(unroll_forward(mlp, cfg, theta0.contiguous(), syn_obs.contiguous(),
                                                            syn_act.contiguous(), optional_contig(noise)));
  for (auto& t : out)
    if (!t.defined()) t = at::empty({0}, theta0.options());
  return out;
}

std::vector<at::Tensor> op_unroll_backward(const std::vector<at::Tensor>& tape, const at::Tensor& syn_obs,
                                           const at::Tensor& syn_act, const std::optional<at::Tensor>& noise,
                                           at::IntArrayRef widths, bool gaussian, double max_action, int64_t steps,
                                           double lr, double momentum, double weight_decay, int64_t checkpoint_every,
                                           int64_t precision, const at::Tensor& grad_theta_T) {
  const Mlp mlp = make_mlp(widths, gaussian, max_action);
  check_inputs(mlp, grad_theta_T, syn_obs, syn_act);
  const InnerConfig cfg = make_config(steps, lr, momentum, weight_decay, checkpoint_every, precision, grad_theta_T);
  auto [d_theta0, d_obs, d_act] = unroll_backward(mlp, cfg, tape_from_list(tape), syn_obs.contiguous(),
                                                  syn_act.contiguous(), optional_contig(noise),
                                                  grad_theta_T.contiguous());
  return {d_theta0, d_obs, d_act};
}

// Loss and its gradients in one pass; needs = (theta, obs, target, weight). Unneeded gradients
// come back as empty tensors.
std::vector<at::Tensor> op_weighted_loss(const at::Tensor& theta_in, const at::Tensor& obs_in,
                                         const at::Tensor& target_in, const std::optional<at::Tensor>& weight,
                                         const std::optional<at::Tensor>& noise, at::IntArrayRef widths,
                                         bool gaussian, double max_action, at::IntArrayRef needs,
                                         int64_t precision) {
  const Mlp mlp = make_mlp(widths, gaussian, max_action);
  check_inputs(mlp, theta_in, obs_in, target_in);
  TORCH_CHECK(needs.size() == 4, "obd_fast: needs has 4 flags (theta, obs, target, weight)");
  const at::Tensor theta = theta_in.contiguous(), obs = obs_in.contiguous(), target = target_in.contiguous();
  const auto opts = theta.options();
  const int64_t n = obs.size(0);
  const LossBatch batch{obs, target, optional_contig(noise), optional_contig(weight)};
  Workspace ws(mlp, n, opts);
  at::Tensor slot = at::empty({mlp.record_size(n)}, opts);
  at::Tensor grad = at::empty({mlp.num_params}, opts);
  at::Tensor d_obs = needs[1] ? at::empty_like(obs) : at::Tensor();
  at::Tensor d_target = needs[2] ? at::empty_like(target) : at::Tensor();
  at::Tensor sq = needs[3] && batch.weight.defined() ? at::empty_like(target) : at::Tensor();
  loss_grad(mlp, Gemm{static_cast<Precision>(precision)}, theta, batch, record_views(mlp, slot, n), grad, ws, d_obs,
            d_target, sq);
  const at::Tensor empty = at::empty({0}, opts);
  return {ws.partials.select(0, 0).sum(), needs[0] ? grad : empty, needs[1] ? d_obs : empty,
          needs[2] ? d_target : empty, sq.defined() ? sq.sum(1) : empty};
}

std::vector<at::Tensor> op_meta_gradient(const at::Tensor& theta0, const at::Tensor& syn_obs_in,
                                         const at::Tensor& syn_act_in, const std::optional<at::Tensor>& inner_noise,
                                         const at::Tensor& obs, const at::Tensor& target,
                                         const std::optional<at::Tensor>& weight,
                                         const std::optional<at::Tensor>& outer_noise, at::IntArrayRef widths,
                                         bool gaussian, double max_action, int64_t steps, double lr, double momentum,
                                         double weight_decay, int64_t checkpoint_every, int64_t precision) {
  const Mlp mlp = make_mlp(widths, gaussian, max_action);
  check_inputs(mlp, theta0, syn_obs_in, syn_act_in);
  check_inputs(mlp, theta0, obs, target);
  const InnerConfig cfg = make_config(steps, lr, momentum, weight_decay, checkpoint_every, precision, theta0);
  const at::Tensor syn_obs = syn_obs_in.contiguous(), syn_act = syn_act_in.contiguous();
  const at::Tensor noise = optional_contig(inner_noise);
  // The tape dies with this call, so on CPU it can live in pooled memory (tape_pool.h).
  std::optional<TapeLease> lease;
  if (theta0.is_cpu() && cfg.keep_all()) lease.emplace(tape_numel(mlp, cfg, syn_obs.size(0)), theta0.options());
  const UnrollTape tape = unroll_forward(mlp, cfg, theta0.contiguous(), syn_obs, syn_act, noise,
                                         lease ? lease->buffer() : at::Tensor(), /*keep_last_segment=*/true);
  // Outer loss and v = dH/dtheta_T.
  const auto opts = theta0.options();
  const int64_t b = obs.size(0);
  const LossBatch batch{obs.contiguous(), target.contiguous(), optional_contig(outer_noise), optional_contig(weight)};
  Workspace ws(mlp, b, opts);
  // A compact record here too (bf16 on the CPU): the outer batch is 10x the inner one, and its
  // float32 activations would each be stored, then converted for the next product. Pooled on
  // the CPU like the tape: allocated fresh, its ~8 MB were page-faulted in on every call.
  const int64_t slot_numel = mlp.record_size(b, cfg.compact_records);
  std::optional<TapeLease> slot_lease;
  if (theta0.is_cpu()) slot_lease.emplace(slot_numel, opts);
  const at::Tensor slot = slot_lease ? slot_lease->buffer() : at::empty({slot_numel}, opts);
  at::Tensor v = at::empty({mlp.num_params}, opts);
  loss_grad(mlp, Gemm{cfg.precision}, tape.theta_T, batch, record_views(mlp, slot, b, cfg.compact_records), v, ws);
  at::Tensor loss = ws.partials.select(0, 0).sum();
  auto [d_theta0, d_obs, d_act] = unroll_backward(mlp, cfg, tape, syn_obs, syn_act, noise, v);
  return {loss, d_obs, d_act};
}

at::Tensor op_policy_forward(const at::Tensor& theta_in, const at::Tensor& obs_in,
                             const std::optional<at::Tensor>& noise, at::IntArrayRef widths, bool gaussian,
                             double max_action) {
  const Mlp mlp = make_mlp(widths, gaussian, max_action);
  const at::Tensor theta = theta_in.contiguous();
  at::Tensor x = obs_in.contiguous();
  check_inputs(mlp, theta, x, at::empty({x.size(0), mlp.act}, theta.options()));
  for (int64_t l = 0; l < mlp.layers(); ++l) {
    x = at::addmm(mlp.bias(theta, l), x, mlp.weight(theta, l).t());
    if (l < mlp.layers() - 1) x.relu_();
  }
  LossBatch batch{obs_in, at::Tensor(), optional_contig(noise), at::Tensor()};
  at::Tensor actions = at::empty({x.size(0), mlp.act}, theta.options());
  head_action(head_inputs(mlp, theta, batch, x), actions);
  return actions;
}

std::string op_build_info() {
#ifdef OBD_FAST_WITH_CUDA
  return "cpu+cuda";
#else
  return "cpu";
#endif
}

}  // namespace

TORCH_LIBRARY(obd_fast, m) {
  m.def(
      "unroll_forward(Tensor theta0, Tensor syn_obs, Tensor syn_act, Tensor? noise, int[] widths, bool gaussian, "
      "float max_action, int steps, float lr, float momentum, float weight_decay, int checkpoint_every, "
      "int precision) -> Tensor[]");
  m.def(
      "unroll_backward(Tensor[] tape, Tensor syn_obs, Tensor syn_act, Tensor? noise, int[] widths, bool gaussian, "
      "float max_action, int steps, float lr, float momentum, float weight_decay, int checkpoint_every, "
      "int precision, Tensor grad_theta_T) -> Tensor[]");
  m.def(
      "weighted_loss(Tensor theta, Tensor obs, Tensor target, Tensor? weight, Tensor? noise, int[] widths, "
      "bool gaussian, float max_action, int[] needs, int precision) -> Tensor[]");
  m.def(
      "meta_gradient(Tensor theta0, Tensor syn_obs, Tensor syn_act, Tensor? inner_noise, Tensor obs, Tensor target, "
      "Tensor? weight, Tensor? outer_noise, int[] widths, bool gaussian, float max_action, int steps, float lr, "
      "float momentum, float weight_decay, int checkpoint_every, int precision) -> Tensor[]");
  m.def("policy_forward(Tensor theta, Tensor obs, Tensor? noise, int[] widths, bool gaussian, float max_action) -> Tensor");
  m.def("build_info() -> str", &op_build_info);
  m.def("tape_pool_bytes() -> int", [] { return tape_pool_bytes(); });
  m.def("release_tape_pool() -> ()", [] { release_tape_pool(); });
}

TORCH_LIBRARY_IMPL(obd_fast, CompositeExplicitAutograd, m) {
  m.impl("unroll_forward", &op_unroll_forward);
  m.impl("unroll_backward", &op_unroll_backward);
  m.impl("weighted_loss", &op_weighted_loss);
  m.impl("meta_gradient", &op_meta_gradient);
  m.impl("policy_forward", &op_policy_forward);
}

}  // namespace obd_fast
