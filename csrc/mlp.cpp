#include "mlp.h"

#include <numeric>

namespace obd_fast {

// ---------------------------------------------------------------------------------------------
// Gemm

at::Tensor Gemm::operand(const at::Tensor& t) const {
  return precision == Precision::kBF16 && t.scalar_type() != at::kBFloat16 ? t.to(at::kBFloat16) : t;
}

at::Tensor Gemm::product(const at::Tensor& a, const at::Tensor& b) const {
  const at::Tensor x = operand(a), y = operand(b);
  const int64_t numel = x.size(0) * y.size(1);
  if (!scratch_.defined() || scratch_.numel() < numel || scratch_.scalar_type() != x.scalar_type() ||
      scratch_.device() != x.device()) {
    scratch_ = at::empty({numel}, x.options());
  }
  at::Tensor r = scratch_.narrow(0, 0, numel).view({x.size(0), y.size(1)});
  at::mm_out(r, x, y);
  return r;
}

void Gemm::operator()(const at::Tensor& out, const at::Tensor& a, const at::Tensor& b, bool accumulate) const {
  at::Tensor o = out;
  // CPU BLAS handles a tall, narrow output (e.g. 256 x obs_dim) far worse than its wide
  // transpose: compute (b^T a^T) and write it back transposed. (On CUDA the copy would only
  // add a kernel launch.)
  const bool transposed = host && out.size(1) < 32 && out.size(0) >= 4 * out.size(1);
  if (!transposed && precision != Precision::kBF16) {
    if (accumulate) {
      o.addmm_(a, b);
    } else {
      at::mm_out(o, a, b);
    }
    return;
  }
  // The product lands in a temporary (transposed, or bf16); store or add it.
  if (!transposed && host && out.is_contiguous()) {
    cpu::store_product(out, product(a, b), at::Tensor(), accumulate, /*relu=*/false);
    return;
  }
  const at::Tensor r = transposed ? product(b.t(), a.t()).t() : product(a, b);
  if (accumulate) {
    o.add_(r);
  } else {
    o.copy_(r);
  }
}

void Gemm::with_bias(const at::Tensor& out, const at::Tensor& bias, const at::Tensor& a, const at::Tensor& b,
                     bool relu) const {
  at::Tensor o = out;
  if (host && out.is_contiguous()) {
    // The product, then bias (+ ReLU) in one pass over the (cache-hot) output: ATen's CPU addmm
    // would first copy the broadcast bias into out, and bf16 results need a conversion anyway.
    if (precision == Precision::kBF16) {
      cpu::store_product(out, product(a, b), bias, /*accumulate=*/false, relu);
    } else {
      at::mm_out(o, a, b);
      cpu::store_product(out, out, bias, /*accumulate=*/false, relu);
    }
    return;
  }
  if (precision == Precision::kBF16) {
    at::add_out(o, at::mm(operand(a), operand(b)).to(out.scalar_type()), bias);
    if (relu) o.relu_();
    return;
  }
  if (relu) {
    at::_addmm_activation_out(o, bias, a, b, 1, 1, /*use_gelu=*/false);
  } else {
    at::addmm_out(o, bias, a, b);
  }
}

// x <- 0 where activation <= 0: the ReLU's backward (and its tangent) with the mask of a kept
// activation.
static void relu_mask(const Gemm& mm, const at::Tensor& x, const at::Tensor& activation) {
  if (mm.host && x.is_contiguous() && activation.is_contiguous()) return cpu::relu_mask(x, activation);
  at::Tensor out = x;
  at::threshold_backward_out(out, x, activation, 0);
}

// ---------------------------------------------------------------------------------------------
// Mlp

Mlp::Mlp(std::vector<int64_t> widths_, bool gaussian_, double max_action_)
    : widths(std::move(widths_)), gaussian(gaussian_), max_action(max_action_) {
  TORCH_CHECK(widths.size() >= 3, "obd_fast: the MLP needs at least one hidden layer");
  act_dim = gaussian ? widths.back() / 2 : widths.back();
  int64_t offset = 0;
  for (int64_t l = 0; l < layers(); ++l) {
    weight_offset.push_back(offset);
    bias_offset.push_back(offset + widths[l] * widths[l + 1]);
    offset += widths[l] * widths[l + 1] + widths[l + 1];
  }
  head_offset = offset;
  num_params = offset + (gaussian ? 2 : 0);
}

int64_t Mlp::hidden_total() const { return std::accumulate(widths.begin() + 1, widths.end() - 1, int64_t{0}); }

at::Tensor Mlp::weight(const at::Tensor& flat, int64_t l) const {
  return flat.narrow(0, weight_offset[l], widths[l] * widths[l + 1]).view({widths[l + 1], widths[l]});
}

at::Tensor Mlp::bias(const at::Tensor& flat, int64_t l) const { return flat.narrow(0, bias_offset[l], widths[l + 1]); }

at::Tensor Mlp::scalars(const at::Tensor& flat) const {
  return gaussian ? flat.narrow(0, head_offset, 2) : at::Tensor();
}

// Floats of a record's activations and dloss/dz (hidden, hidden and out widths): two bf16 per
// float when compact.
static int64_t act_grad_floats(const Mlp& mlp, int64_t n, bool compact) {
  const int64_t numel = n * (2 * mlp.hidden_total() + mlp.widths.back());
  return compact ? (numel + 1) / 2 : numel;
}

int64_t Mlp::record_size(int64_t n, bool compact) const {
  return act_grad_floats(*this, n, compact) + n * widths.back();  // + z_out, always float
}

StepRecord record_views(const Mlp& mlp, const at::Tensor& slot, int64_t n, bool compact) {
  StepRecord rec;
  rec.compact = compact;
  const int64_t packed = act_grad_floats(mlp, n, compact);
  // bf16 views of the slot's first floats, two per float (view(dtype) reinterprets the bytes).
  const at::Tensor act_grad = compact ? slot.narrow(0, 0, packed).view(at::kBFloat16) : slot;
  int64_t offset = 0;
  auto take = [&](int64_t width) {
    at::Tensor v = act_grad.narrow(0, offset, n * width).view({n, width});
    offset += n * width;
    return v;
  };
  for (int64_t l = 1; l < mlp.layers(); ++l) rec.activations.push_back(take(mlp.widths[l]));
  for (int64_t l = 1; l <= mlp.layers(); ++l) rec.dloss_dz.push_back(take(mlp.widths[l]));
  const int64_t out = mlp.widths.back();
  rec.z_out = slot.narrow(0, packed, n * out).view({n, out});
  return rec;
}

Workspace::Workspace(const Device& device_, const Mlp& mlp, int64_t n, const at::TensorOptions& opts)
    : device(device_) {
  for (int64_t l = 1; l <= mlp.layers(); ++l) {
    tangent.push_back(at::empty({n, mlp.widths[l]}, opts));
    q.push_back(at::empty({n, mlp.widths[l]}, opts));
  }
  partials = at::empty({3, n * mlp.act_dim}, opts);
}

Workspace::Pairs& Workspace::pairs(const Mlp& mlp) {
  if (!pairs_.rows.empty()) return pairs_;
  const int64_t n = partials.size(1) / mlp.act_dim;
  const auto opts = partials.options().dtype(at::kBFloat16);
  for (int64_t l = 0; l < mlp.layers(); ++l) {
    const int64_t in = mlp.widths[l], out = mlp.widths[l + 1];
    if (l + 1 < mlp.layers()) pairs_.activations.push_back(at::empty({n, 2 * out}, opts));
    pairs_.dz.push_back(at::empty({n, 2 * out}, opts));
    pairs_.cols.push_back(l > 0 ? at::empty({out, 2 * in}, opts) : at::Tensor());
    pairs_.rows.push_back(at::empty({2 * out, in}, opts));
  }
  return pairs_;
}

const at::Tensor& Workspace::obs_operand(const Gemm& mm, const at::Tensor& obs) {
  const int64_t version = static_cast<int64_t>(obs._version());
  if (!obs_operand_.defined() || obs_source_ != obs.data_ptr() || obs_version_ != version ||
      obs_operand_.sizes() != obs.sizes()) {
    obs_operand_ = mm.operand(obs);
    obs_source_ = obs.data_ptr();
    obs_version_ = version;
  }
  return obs_operand_;
}

const at::Tensor& Workspace::theta_bf16(const at::Tensor& theta) {
  if (!theta_bf16_.defined() || theta_bf16_.numel() != theta.numel())
    theta_bf16_ = at::empty({theta.numel()}, theta.options().dtype(at::kBFloat16));
  cpu::convert_to_bf16(theta_bf16_, theta);
  return theta_bf16_;
}

HeadInputs head_inputs(const Mlp& mlp, const at::Tensor& theta, const LossBatch& batch, const at::Tensor& z_out) {
  HeadInputs in;
  in.z = z_out;
  in.target = batch.target;
  in.noise = mlp.gaussian ? batch.noise : at::Tensor();
  in.weight = batch.weight;
  in.scalars = mlp.scalars(theta);
  in.max_action = mlp.max_action;
  in.scale = 1.0 / static_cast<double>(z_out.size(0) * mlp.act_dim);
  in.act_dim = mlp.act_dim;
  return in;
}

// ---------------------------------------------------------------------------------------------
// Forward + backward

// The head of a loss_grad pass: grad_z <- dloss/dz_out, the per-element terms of the loss and of
// dloss/d(m, o) in ws.partials, and the (m, o) entries of grad when it is wanted.
static void head_grad_step(const Mlp& mlp, const at::Tensor& theta, const LossBatch& batch, const StepRecord& rec,
                           const at::Tensor& grad_z, const at::Tensor& grad, Workspace& ws,
                           const at::Tensor& d_target, const at::Tensor& sq) {
  ws.device.head_grad(head_inputs(mlp, theta, batch, rec.z_out), grad_z, ws.partials, d_target, sq);
  if (mlp.gaussian && grad.defined()) {
    at::Tensor g_scalars = mlp.scalars(grad);
    at::sum_out(g_scalars, ws.partials.narrow(0, 1, 2), {1});
  }
}

// loss_grad on a compact (bf16, CPU) record: each hidden product's epilogue writes its bf16
// value straight into the record, where the next products read it (bf16_epilogue), so no float32
// copy of the activations or of the hidden dloss/dz is stored, converted or summed apart.
static void loss_grad_compact(const Mlp& mlp, const Gemm& mm, const at::Tensor& theta, const LossBatch& batch,
                              const StepRecord& rec, const at::Tensor& grad, Workspace& ws, const at::Tensor& d_obs,
                              const at::Tensor& d_target, const at::Tensor& sq) {
  const int64_t L = mlp.layers();
  const at::Tensor th = ws.theta_bf16(theta);
  std::vector<at::Tensor> inputs(L);  // bf16 input of each layer: obs, then the record's A_l
  inputs[0] = ws.obs_operand(mm, batch.obs);
  for (int64_t l = 0; l + 1 < L; ++l) {
    cpu::bf16_epilogue(rec.activations[l], mm.product(inputs[l], mlp.weight(th, l).t()), mlp.bias(theta, l),
                       at::Tensor(), /*relu=*/true, at::Tensor());
    inputs[l + 1] = rec.activations[l];
  }
  mm.with_bias(rec.z_out, mlp.bias(theta, L - 1), inputs[L - 1], mlp.weight(th, L - 1).t());
  // Head: the last layer's dloss/dz in float32 (the workspace), then its bf16 copy in the record.
  const at::Tensor p_last = ws.q[L - 1];
  head_grad_step(mlp, theta, batch, rec, p_last, grad, ws, d_target, sq);
  rec.dloss_dz[L - 1].copy_(p_last);
  if (grad.defined()) {
    at::Tensor g_bias = mlp.bias(grad, L - 1);
    at::sum_out(g_bias, p_last, {0});
  }
  // Backward; the hidden layers' bias gradients are the column sums of their epilogues.
  for (int64_t l = L - 1; l >= 0; --l) {
    const at::Tensor& p = rec.dloss_dz[l];
    if (grad.defined()) mm(mlp.weight(grad, l), p.t(), inputs[l], false);
    if (l > 0) {
      cpu::bf16_epilogue(rec.dloss_dz[l - 1], mm.product(p, mlp.weight(th, l)), at::Tensor(), rec.activations[l - 1],
                         /*relu=*/false, grad.defined() ? mlp.bias(grad, l - 1) : at::Tensor());
    } else if (d_obs.defined()) {
      mm(d_obs, p, mlp.weight(th, 0), false);
    }
  }
}

void loss_grad(const Mlp& mlp, const Gemm& mm, const at::Tensor& theta, const LossBatch& batch, const StepRecord& rec,
               const at::Tensor& grad, Workspace& ws, const at::Tensor& d_obs, const at::Tensor& d_target,
               const at::Tensor& sq) {
  if (rec.compact) return loss_grad_compact(mlp, mm, theta, batch, rec, grad, ws, d_obs, d_target, sq);
  const int64_t L = mlp.layers();
  const at::Tensor th = mm.operand(theta);
  std::vector<at::Tensor> inputs(L);  // operand form of each layer's input
  inputs[0] = mm.operand(batch.obs);
  // Forward, keeping post-ReLU activations (their sign is the ReLU mask).
  for (int64_t l = 0; l < L; ++l) {
    at::Tensor out = l == L - 1 ? rec.z_out : rec.activations[l];
    mm.with_bias(out, mlp.bias(theta, l), inputs[l], mlp.weight(th, l).t(), /*relu=*/l < L - 1);
    if (l < L - 1) inputs[l + 1] = mm.operand(out);
  }
  head_grad_step(mlp, theta, batch, rec, rec.dloss_dz[L - 1], grad, ws, d_target, sq);
  // Backward: P_{l-1} = mask_{l-1} * (P_l W_l); weight gradients P_l^T A_{l-1}.
  for (int64_t l = L - 1; l >= 0; --l) {
    const at::Tensor& p = rec.dloss_dz[l];
    const at::Tensor p_op = mm.operand(p);
    if (grad.defined()) {
      mm(mlp.weight(grad, l), p_op.t(), inputs[l], false);
      at::Tensor g_bias = mlp.bias(grad, l);
      at::sum_out(g_bias, p, {0});
    }
    if (l > 0) {
      at::Tensor p_prev = rec.dloss_dz[l - 1];
      mm(p_prev, p_op, mlp.weight(th, l), false);
      relu_mask(mm, p_prev, rec.activations[l - 1]);
    } else if (d_obs.defined()) {
      mm(d_obs, p_op, mlp.weight(th, 0), false);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Hessian-vector pass

// The head of a Hessian-vector pass: Q_L (ws.q) from the head's second derivatives along the
// last layer's tangent (ws.tangent), and the (m, o) entries of H u.
static void head_hvp_step(const Mlp& mlp, const at::Tensor& theta, const at::Tensor& u, const LossBatch& batch,
                          const StepRecord& rec, const at::Tensor& hu, const at::Tensor& d_target, Workspace& ws) {
  const int64_t L = mlp.layers();
  at::Tensor head_partials = ws.partials.narrow(0, 0, 2);
  ws.device.head_hvp(head_inputs(mlp, theta, batch, rec.z_out), ws.tangent[L - 1], mlp.scalars(u), ws.q[L - 1],
                     head_partials, d_target);
  if (mlp.gaussian) {
    at::Tensor hu_scalars = mlp.scalars(hu);
    at::sum_out(hu_scalars, head_partials, {1});
  }
}

// hessian_vector on a compact (bf16, CPU) record. The same recursion, but each pair of products
// that sums into one output is one product over stacked operands (K doubled):
//   Zdot_l = [A_{l-1} | Adot_{l-1}] [U_l | W_l]^T + c_l,
//   (H u)_{W_l} = [Q_l | P_l]^T [A_{l-1} | Adot_{l-1}], both read as (2n, width) matrices whose
//                 rows alternate q_i, p_i and a_i, adot_i, so the K = 2n sum pairs them up,
//   Q_{l-1} = mask_{l-1} * ([Q_l | P_l] [W_l ; U_l]).
// Half the oneDNN calls and epilogue passes, larger products that run nearer the bf16 GEMM peak,
// and each pair summed in float32 before its one rounding to bf16.
static void hessian_vector_paired(const Mlp& mlp, const Gemm& mm, const at::Tensor& theta, const at::Tensor& u,
                                  const LossBatch& batch, const StepRecord& rec, const at::Tensor& hu,
                                  const at::Tensor& d_obs, const at::Tensor& d_target, Workspace& ws) {
  const int64_t L = mlp.layers(), n = batch.obs.size(0);
  Workspace::Pairs& pairs = ws.pairs(mlp);
  for (int64_t l = 0; l < L; ++l)
    cpu::pack_weight_pair(pairs.cols[l], pairs.rows[l], mlp.weight(theta, l), mlp.weight(u, l));
  auto left = [](const at::Tensor& pair) { return pair.narrow(1, 0, pair.size(1) / 2); };
  auto right = [](const at::Tensor& pair) { return pair.narrow(1, pair.size(1) / 2, pair.size(1) / 2); };
  const at::Tensor obs = ws.obs_operand(mm, batch.obs);
  // Tangent forward; the hidden Adot_l go straight into the right halves of [A_l | Adot_l].
  for (int64_t l = 0; l < L; ++l) {
    const int64_t out = mlp.widths[l + 1];
    const at::Tensor in = l == 0 ? obs : pairs.activations[l - 1];
    // U_1^T (the first layer has no input tangent), else [U_l | W_l]^T
    const at::Tensor dir_t = l == 0 ? pairs.rows[0].narrow(0, out, out).t() : pairs.cols[l].t();
    if (l == L - 1) {
      mm.with_bias(ws.tangent[l], mlp.bias(u, l), in, dir_t);
    } else {
      cpu::copy_rows(left(pairs.activations[l]), rec.activations[l]);
      cpu::bf16_epilogue(right(pairs.activations[l]), mm.product(in, dir_t), mlp.bias(u, l), rec.activations[l],
                         /*relu=*/false, at::Tensor());
    }
  }
  head_hvp_step(mlp, theta, u, batch, rec, hu, d_target, ws);
  // Reverse; the hidden Q_l go straight into the left halves of [Q_l | P_l], their column sums
  // into (H u)_{b_l}.
  left(pairs.dz[L - 1]).copy_(ws.q[L - 1]);  // the head's Q_L, out wide: ATen's conversion
  cpu::copy_rows(right(pairs.dz[L - 1]), rec.dloss_dz[L - 1]);
  at::Tensor hb_last = mlp.bias(hu, L - 1);
  at::sum_out(hb_last, ws.q[L - 1], {0});
  for (int64_t l = L - 1; l >= 0; --l) {
    const at::Tensor& qp = pairs.dz[l];
    const int64_t width = mlp.widths[l + 1];
    const at::Tensor hw = mlp.weight(hu, l);
    if (l > 0) {
      mm(hw, qp.view({2 * n, width}).t(), pairs.activations[l - 1].view({2 * n, mlp.widths[l]}), false);
      cpu::copy_rows(right(pairs.dz[l - 1]), rec.dloss_dz[l - 1]);
      cpu::bf16_epilogue(left(pairs.dz[l - 1]), mm.product(qp, pairs.rows[l]), at::Tensor(), rec.activations[l - 1],
                         /*relu=*/false, mlp.bias(hu, l - 1));
    } else {
      mm(hw, left(qp).t(), obs, false);
      if (d_obs.defined()) mm(d_obs, qp, pairs.rows[0], true);
    }
  }
}

void hessian_vector(const Mlp& mlp, const Gemm& mm, const at::Tensor& theta, const at::Tensor& u,
                    const LossBatch& batch, const StepRecord& rec, const at::Tensor& hu, const at::Tensor& d_obs,
                    const at::Tensor& d_target, Workspace& ws) {
  if (rec.compact) return hessian_vector_paired(mlp, mm, theta, u, batch, rec, hu, d_obs, d_target, ws);
  const int64_t L = mlp.layers();
  const at::Tensor th = mm.operand(theta), uo = mm.operand(u);
  std::vector<at::Tensor> inputs(L), tangents(L);  // operand forms of A_{l-1} and Adot_l
  inputs[0] = mm.operand(batch.obs);
  for (int64_t l = 1; l < L; ++l) inputs[l] = mm.operand(rec.activations[l - 1]);
  // Tangent forward along u: Zdot_l = A_{l-1} U_l^T + c_l + Adot_{l-1} W_l^T, Adot_l = mask_l * Zdot_l.
  for (int64_t l = 0; l < L; ++l) {
    at::Tensor zdot = ws.tangent[l];
    mm.with_bias(zdot, mlp.bias(u, l), inputs[l], mlp.weight(uo, l).t());
    if (l > 0) mm(zdot, tangents[l - 1], mlp.weight(th, l).t(), true);
    if (l < L - 1) {
      relu_mask(mm, zdot, rec.activations[l]);  // now Adot_l (a bf16 activation has the same sign)
      tangents[l] = mm.operand(zdot);
    }
  }
  head_hvp_step(mlp, theta, u, batch, rec, hu, d_target, ws);
  // Reverse over both streams: (H u)_{W_l} = Q_l^T A_{l-1} + P_l^T Adot_{l-1},
  // Q_{l-1} = mask_{l-1} * (Q_l W_l + P_l U_l); at the input d obs += Q_1 W_1 + P_1 U_1.
  for (int64_t l = L - 1; l >= 0; --l) {
    const at::Tensor& q = ws.q[l];
    const at::Tensor q_op = mm.operand(q), p_op = mm.operand(rec.dloss_dz[l]);
    const at::Tensor hw = mlp.weight(hu, l);
    mm(hw, q_op.t(), inputs[l], false);
    if (l > 0) mm(hw, p_op.t(), tangents[l - 1], true);
    at::Tensor hb = mlp.bias(hu, l);
    at::sum_out(hb, q, {0});
    if (l > 0) {
      at::Tensor q_prev = ws.q[l - 1];
      mm(q_prev, q_op, mlp.weight(th, l), false);
      mm(q_prev, p_op, mlp.weight(uo, l), true);
      relu_mask(mm, q_prev, rec.activations[l - 1]);
    } else if (d_obs.defined()) {
      mm(d_obs, q_op, mlp.weight(th, 0), true);
      mm(d_obs, p_op, mlp.weight(uo, 0), true);
    }
  }
}

}  // namespace obd_fast
