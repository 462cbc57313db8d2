#include "unroll.h"

#include "grid_step.h"

namespace obd_fast {

namespace {

LossBatch inner_batch(const at::Tensor& syn_obs, const at::Tensor& syn_act, const at::Tensor& noise, int64_t t) {
  return LossBatch{syn_obs, syn_act, noise.defined() ? noise.select(0, t) : at::Tensor(), at::Tensor()};
}

// Inner steps t0 .. t1-1. thetas[0] holds theta_{t0} on entry; thetas[k] receives theta_{t0+k}.
// records holds one slot per step, or a single slot reused by every step. Without last_update
// the last step only fills its record (a recomputed segment's end is the next checkpoint).
void run_segment(const Mlp& mlp, const Gemm& mm, const InnerConfig& cfg, const at::Tensor& syn_obs,
                 const at::Tensor& syn_act, const at::Tensor& noise, int64_t t0, int64_t t1, const at::Tensor& thetas,
                 const at::Tensor& records, const at::Tensor& buf, const at::Tensor& grad, Workspace& ws,
                 bool last_update = true) {
  const int64_t n = syn_obs.size(0);
  if (use_grid_program(ws.device, mlp, cfg, syn_obs, n)) {
    grid_forward_segment(ws.device, mlp, cfg, syn_obs, syn_act, noise, t0, t1, thetas, records, buf, last_update);
    return;
  }
  for (int64_t t = t0; t < t1; ++t) {
    const int64_t k = t - t0;
    const StepRecord rec = record_views(mlp, records.select(0, records.size(0) == 1 ? 0 : k), n, cfg.compact_records);
    const at::Tensor theta = thetas.select(0, k);
    const bool update = last_update || t + 1 < t1;
    loss_grad(mlp, mm, theta, inner_batch(syn_obs, syn_act, noise, t), rec, update ? grad : at::Tensor(), ws);
    if (update) ws.device.sgd_step(theta, grad, buf, thetas.select(0, k + 1), cfg.lr, cfg.momentum, cfg.weight_decay);
  }
}

// Adjoint state of the reverse phase. u always holds the adjoint of the next (earlier) step's
// update direction: u_t = momentum * u_{t+1} - lr * a_{t+1}, starting from u_{T-1} = -lr * a_T.
struct Adjoint {
  at::Tensor theta;  // a_t: adjoint of theta_t
  at::Tensor u;      // u_t
  at::Tensor hu;     // scratch: H_t u_t
  at::Tensor d_obs, d_act;
};

// Reverse over steps t1-1 .. t0 whose thetas (row t - t0) and records (slot t - t0) are kept.
void reverse_segment(const Mlp& mlp, const Gemm& mm, const InnerConfig& cfg, const at::Tensor& syn_obs,
                     const at::Tensor& syn_act, const at::Tensor& noise, int64_t t0, int64_t t1,
                     const at::Tensor& thetas, const at::Tensor& records, Adjoint& adj, Workspace& ws) {
  const int64_t n = syn_obs.size(0);
  if (use_grid_program(ws.device, mlp, cfg, syn_obs, n)) {
    grid_reverse_segment(ws.device, mlp, cfg, syn_obs, syn_act, noise, t0, t1, thetas, records, adj.theta, adj.u,
                         adj.d_obs, adj.d_act);
    return;
  }
  for (int64_t t = t1 - 1; t >= t0; --t) {
    const int64_t k = t - t0;
    const StepRecord rec = record_views(mlp, records.select(0, k), n, cfg.compact_records);
    hessian_vector(mlp, mm, thetas.select(0, k), adj.u, inner_batch(syn_obs, syn_act, noise, t), rec, adj.hu,
                   adj.d_obs, adj.d_act, ws);
    // a_t = a_{t+1} + (H_t + weight_decay) u_t, then u_{t-1} = momentum * u_t - lr * a_t.
    ws.device.adjoint_step(adj.theta, adj.hu, adj.u, cfg.lr, cfg.momentum, cfg.weight_decay);
  }
}

// The records start on a 64-byte boundary of the storage, as a fresh allocation would: BLAS
// kernels may sum in another order for other operand alignments, and the checkpointed schedule
// (records in their own allocation) must stay bitwise equal to this one.
int64_t thetas_span(const Mlp& mlp, const InnerConfig& cfg) {
  constexpr int64_t kAlign = 16;  // elements; 64 bytes or more for float32 and float64
  return ((cfg.steps + 1) * mlp.num_params + kAlign - 1) / kAlign * kAlign;
}

}  // namespace

int64_t tape_numel(const Mlp& mlp, const InnerConfig& cfg, int64_t n) {
  return thetas_span(mlp, cfg) + cfg.steps * mlp.record_size(n, cfg.compact_records);
}

UnrollTape unroll_forward(const Device& device, const Mlp& mlp, const InnerConfig& cfg, const at::Tensor& theta0,
                          const at::Tensor& syn_obs, const at::Tensor& syn_act, const at::Tensor& noise,
                          const at::Tensor& storage, bool keep_last_segment) {
  const auto opts = theta0.options();
  const int64_t P = mlp.num_params, n = syn_obs.size(0), R = mlp.record_size(n, cfg.compact_records),
                T = cfg.steps;
  const Gemm mm{cfg.precision, device.host};
  Workspace ws(device, mlp, n, opts);
  at::Tensor grad = at::empty({P}, opts);
  at::Tensor buf = cfg.momentum != 0.0 ? at::zeros({P}, opts) : at::Tensor();
  UnrollTape tape;
  if (cfg.keep_all()) {
    if (storage.defined()) {
      TORCH_CHECK(storage.numel() == tape_numel(mlp, cfg, n) && storage.dtype() == opts.dtype(),
                  "obd_fast: tape storage of the wrong size or dtype");
      tape.thetas = storage.narrow(0, 0, (T + 1) * P).view({T + 1, P});
      tape.records = storage.narrow(0, thetas_span(mlp, cfg), T * R).view({T, R});
    } else {
      tape.thetas = at::empty({T + 1, P}, opts);
      tape.records = at::empty({T, R}, opts);
    }
    tape.thetas.select(0, 0).copy_(theta0);
    run_segment(mlp, mm, cfg, syn_obs, syn_act, noise, 0, T, tape.thetas, tape.records, buf, grad, ws);
    tape.theta_T = tape.thetas.select(0, T);
    return tape;
  }
  const int64_t k = cfg.checkpoint_every, C = cfg.checkpoints();
  tape.ck_thetas = at::empty({C, P}, opts);
  if (buf.defined()) tape.ck_bufs = at::empty({C, P}, opts);
  at::Tensor seg_thetas = at::empty({k + 1, P}, opts);
  // One record slot reused by every step, or the last segment's k slots when they are kept.
  at::Tensor seg_records = at::empty({keep_last_segment ? k : 1, R}, opts);
  seg_thetas.select(0, 0).copy_(theta0);
  for (int64_t c = 0; c < C; ++c) {
    const int64_t t0 = c * k, t1 = std::min(T, t0 + k);
    const bool last = c == C - 1;
    tape.ck_thetas.select(0, c).copy_(seg_thetas.select(0, 0));
    if (buf.defined()) tape.ck_bufs.select(0, c).copy_(buf);
    const at::Tensor records = last && keep_last_segment ? seg_records : seg_records.narrow(0, 0, 1);
    run_segment(mlp, mm, cfg, syn_obs, syn_act, noise, t0, t1, seg_thetas, records, buf, grad, ws);
    if (!last) seg_thetas.select(0, 0).copy_(seg_thetas.select(0, t1 - t0));
  }
  const at::Tensor theta_T = seg_thetas.select(0, T - (C - 1) * k);
  if (keep_last_segment) {
    tape.seg_thetas = seg_thetas;
    tape.seg_records = seg_records;
    tape.theta_T = theta_T;
  } else {
    tape.theta_T = theta_T.clone();
  }
  return tape;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> unroll_backward(const Device& device, const Mlp& mlp,
                                                               const InnerConfig& cfg, const UnrollTape& tape,
                                                               const at::Tensor& syn_obs, const at::Tensor& syn_act,
                                                               const at::Tensor& noise,
                                                               const at::Tensor& grad_theta_T) {
  const auto opts = syn_obs.options();
  const int64_t P = mlp.num_params, n = syn_obs.size(0), T = cfg.steps;
  const Gemm mm{cfg.precision, device.host};
  Workspace ws(device, mlp, n, opts);
  Adjoint adj;
  adj.theta = grad_theta_T.clone();
  adj.u = grad_theta_T * (-cfg.lr);
  adj.hu = at::empty({P}, opts);
  adj.d_obs = at::zeros_like(syn_obs);
  adj.d_act = at::zeros_like(syn_act);
  if (cfg.keep_all()) {
    reverse_segment(mlp, mm, cfg, syn_obs, syn_act, noise, 0, T, tape.thetas, tape.records, adj, ws);
    return {adj.theta, adj.d_obs, adj.d_act};
  }
  // Checkpointed: recompute each segment's forward from its checkpoint (unless the forward phase
  // kept it), then reverse it.
  const int64_t k = cfg.checkpoint_every, C = cfg.checkpoints();
  const bool have_last = tape.seg_records.defined();
  at::Tensor seg_thetas = have_last ? tape.seg_thetas : at::empty({k + 1, P}, opts);
  at::Tensor seg_records = have_last ? tape.seg_records : at::empty({k, mlp.record_size(n, cfg.compact_records)}, opts);
  at::Tensor grad = at::empty({P}, opts);
  at::Tensor buf = tape.ck_bufs.defined() ? at::empty({P}, opts) : at::Tensor();
  for (int64_t c = C - 1; c >= 0; --c) {
    const int64_t t0 = c * k, t1 = std::min(T, t0 + k);
    if (!(have_last && c == C - 1)) {
      seg_thetas.select(0, 0).copy_(tape.ck_thetas.select(0, c));
      if (buf.defined()) buf.copy_(tape.ck_bufs.select(0, c));
      run_segment(mlp, mm, cfg, syn_obs, syn_act, noise, t0, t1, seg_thetas, seg_records, buf, grad, ws,
                  /*last_update=*/false);
    }
    reverse_segment(mlp, mm, cfg, syn_obs, syn_act, noise, t0, t1, seg_thetas, seg_records, adj, ws);
  }
  return {adj.theta, adj.d_obs, adj.d_act};
}

}  // namespace obd_fast
