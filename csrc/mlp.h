// The policy MLP over a flat parameter vector, and its three passes on ATen tensors:
// forward + backward (the inner gradient, keeping activations), and the Hessian-vector pass of
// the reverse phase (docs/design.md: the reverse pass by hand). Written against ATen and the
// Device table (device.h), so the same code drives CPU tensors (MKL/oneDNN products, the CPU
// loops) and CUDA tensors (cuBLAS products, the CUDA kernels).
#pragma once

#include <ATen/ATen.h>

#include <vector>

#include "device.h"

namespace obd_fast {

// The matrix products' precision. kTF32 is kNative for this code: cuBLAS picks TF32 tensor-core
// kernels for float32 products while the op call allows it (the CUDA device's begin_call).
enum class Precision { kNative, kBF16, kTF32 };

// Matrix products with an optional bf16 operand precision (float32 accumulation and outputs).
struct Gemm {
  // host: CPU tensors, whose products may use the CPU epilogue loops (cpu::store_product).
  Gemm(Precision p, bool host_memory) : precision(p), host(host_memory) {}
  Precision precision = Precision::kNative;
  bool host = false;
  // The form of t the products read: t itself, or its bf16 copy. Passes convert each tensor once
  // and reuse it in every product that reads it.
  at::Tensor operand(const at::Tensor& t) const;
  // out = a @ b, or out += a @ b when accumulate.
  void operator()(const at::Tensor& out, const at::Tensor& a, const at::Tensor& b, bool accumulate) const;
  // out = bias + a @ b, then ReLU when relu (one cuBLASLt call with a fused epilogue on CUDA).
  void with_bias(const at::Tensor& out, const at::Tensor& bias, const at::Tensor& a, const at::Tensor& b,
                 bool relu = false) const;
  // a @ b in the operands' precision, into a buffer reused by every product of this Gemm (no
  // allocation per product). The result lives until the next product.
  at::Tensor product(const at::Tensor& a, const at::Tensor& b) const;

 private:
  mutable at::Tensor scratch_;
};

// Layer shapes and offsets into theta (docs/design.md: the flat layout).
struct Mlp {
  std::vector<int64_t> widths;  // obs_dim, hidden..., out_dim
  bool gaussian = true;
  double max_action = 1.0;
  int64_t act_dim = 0;  // action dimension
  std::vector<int64_t> weight_offset, bias_offset;
  int64_t head_offset = 0, num_params = 0;

  Mlp(std::vector<int64_t> widths, bool gaussian, double max_action);
  int64_t layers() const { return static_cast<int64_t>(widths.size()) - 1; }
  int64_t hidden_total() const;  // sum of the hidden widths
  at::Tensor weight(const at::Tensor& flat, int64_t l) const;  // (out, in) view
  at::Tensor bias(const at::Tensor& flat, int64_t l) const;
  at::Tensor scalars(const at::Tensor& flat) const;  // {multiplier, offset} view, undefined for tanh
  // Floats stored per inner step for n rows: hidden activations, every layer's dloss/dz, z_out.
  // compact: the activations and dloss/dz as bf16 (two per float), z_out as float.
  int64_t record_size(int64_t n, bool compact = false) const;
};

// Views into one step's slot of the tape. A compact record (bf16 products on the CPU) keeps the
// activations and dloss/dz in bf16: exactly the operands the products read, at half the memory
// traffic. Its own passes (loss_grad_compact, hessian_vector_paired in mlp.cpp) write them from
// the products' epilogues; only the last layer's dloss/dz is also computed in float32 (the head's).
struct StepRecord {
  std::vector<at::Tensor> activations;  // A_l, l = 1 .. L-1, (n, hidden_l) post-ReLU
  std::vector<at::Tensor> dloss_dz;     // P_l, l = 1 .. L, (n, width_l) dloss/dz_l
  at::Tensor z_out;                     // (n, out) last layer's output, always in the tape's dtype
  bool compact = false;
};
StepRecord record_views(const Mlp& mlp, const at::Tensor& slot, int64_t n, bool compact = false);

// The per-row data of one loss evaluation.
struct LossBatch {
  at::Tensor obs;     // (n, obs_dim)
  at::Tensor target;  // (n, act_dim)
  at::Tensor noise;   // (n, act_dim) or undefined
  at::Tensor weight;  // (n,) or undefined
};

// What the passes of one op call share: the device's kernels and scratch buffers for n rows.
struct Workspace {
  const Device& device;
  std::vector<at::Tensor> tangent;  // Zdot_l / Adot_l, (n, width_l)
  std::vector<at::Tensor> q;        // Q_l, (n, width_l)
  at::Tensor partials;              // (3, n * act_dim)
  Workspace(const Device& device, const Mlp& mlp, int64_t n, const at::TensorOptions& opts);

  // bf16 operands of the paired Hessian-vector products (compact records), made on first use.
  struct Pairs {
    std::vector<at::Tensor> activations;  // [A_l | Adot_l], (n, 2 width_l), hidden layers
    std::vector<at::Tensor> dz;           // [Q_l | P_l], (n, 2 width_l), every layer
    std::vector<at::Tensor> cols;         // [U_l | W_l], (width_l, 2 width_{l-1}); undefined for the first layer
    std::vector<at::Tensor> rows;         // [W_l ; U_l], (2 width_l, width_{l-1})
  };
  Pairs& pairs(const Mlp& mlp);
  // obs in the products' precision: every inner step reads the same synthetic observations, so a
  // bf16 copy is made once per op call (again only if obs changes: other tensor or version).
  const at::Tensor& obs_operand(const Gemm& mm, const at::Tensor& obs);
  // theta's bf16 copy for compact passes, in a buffer kept for the op call (no allocation per
  // step).
  const at::Tensor& theta_bf16(const at::Tensor& theta);

 private:
  Pairs pairs_;
  at::Tensor obs_operand_, theta_bf16_;
  const void* obs_source_ = nullptr;
  int64_t obs_version_ = -1;
};

// Forward and backward of the weighted BC loss at theta; fills rec and grad (num_params; may be
// undefined when only the record is wanted) and leaves the per-element loss terms in
// ws.partials[0]. Optional outputs: d_obs, d_target, sq (scale * diff^2 per element, for the
// weight gradient).
void loss_grad(const Mlp& mlp, const Gemm& mm, const at::Tensor& theta, const LossBatch& batch, const StepRecord& rec,
               const at::Tensor& grad, Workspace& ws, const at::Tensor& d_obs = {}, const at::Tensor& d_target = {},
               const at::Tensor& sq = {});

// hu <- H(theta) u, d_obs += d<grad, u>/d obs, d_target += d<grad, u>/d target, from a record
// that loss_grad filled at the same theta.
void hessian_vector(const Mlp& mlp, const Gemm& mm, const at::Tensor& theta, const at::Tensor& u,
                    const LossBatch& batch, const StepRecord& rec, const at::Tensor& hu, const at::Tensor& d_obs,
                    const at::Tensor& d_target, Workspace& ws);

HeadInputs head_inputs(const Mlp& mlp, const at::Tensor& theta, const LossBatch& batch, const at::Tensor& z_out);

}  // namespace obd_fast
