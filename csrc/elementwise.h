// The fused elementwise passes of the core, on ATen tensors: the CPU loops (cpu/elementwise_cpu.cpp)
// and the CUDA kernels' glue (cuda/elementwise_cuda.cpp), one declaration each. The op bodies
// reach them through their Device (device.h).
#pragma once

#include <ATen/ATen.h>

namespace obd_fast {

// Tensors of one head evaluation; optional ones are undefined tensors.
struct HeadInputs {
  at::Tensor z;        // (n, out)
  at::Tensor target;   // (n, act_dim)
  at::Tensor noise;    // (n, act_dim) or undefined
  at::Tensor weight;   // (n,) or undefined
  at::Tensor scalars;  // 2-element slice of theta (gaussian head) or undefined
  double max_action = 1.0;
  double scale = 1.0;  // 1 / (n * act_dim)
  int64_t act_dim = 0;
};

// The passes each device provides (the Device table's entries):
//   head_grad(in, grad_z, partials, d_target, sq): grad_z (n, out) <- dloss/dz; partials
//     (3, n * act_dim) <- per-element loss, dm, do terms; d_target (n, act_dim) <- dloss/dtarget and
//     sq (n, act_dim) <- scale * diff^2 when defined.
//   head_hvp(in, zdot, dir_scalars, q, partials, d_target): q (n, out) <- dphi/dz; partials
//     (2, n * act_dim) <- dm, do terms; d_target (n, act_dim) += dphi/dtarget.
//   head_action(in, actions): actions (n, act_dim) of the head.
//   sgd_step(theta, grad, buf, theta_next, lr, momentum, weight_decay): theta_next <- theta - lr *
//     (momentum * buf + grad + wd * theta); buf updated when defined (sgd_math.h's update_element).
//   adjoint_step(a, hu, u, lr, momentum, weight_decay): a += hu + weight_decay * u;
//     u <- momentum * u - lr * a (sgd_math.h's adjoint_element).
namespace cpu {
void head_grad(const HeadInputs&, const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&);
void head_hvp(const HeadInputs&, const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
              const at::Tensor&);
void head_action(const HeadInputs&, const at::Tensor&);
void sgd_step(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, double, double, double);
void adjoint_step(const at::Tensor&, const at::Tensor&, const at::Tensor&, double, double, double);
// The epilogue of a CPU matrix product (mlp.cpp's Gemm): out (n, m) <- act(r (+ out) (+ bias)),
// where r (n, m, contiguous) has out's dtype or is bf16 and bias (m,) may be undefined; relu
// clamps at 0. Replaces ATen's bias broadcast copy, dtype conversion and add with one pass.
void store_product(const at::Tensor& out, const at::Tensor& r, const at::Tensor& bias, bool accumulate, bool relu);
// The ReLU's backward in place: x (contiguous) <- 0 where activation <= 0 (as torch's
// threshold_backward; a NaN activation keeps x). activation has x's shape and dtype, or is bf16
// (a compact record), which ATen would first convert to a float32 copy.
void relu_mask(const at::Tensor& x, const at::Tensor& activation);
// The epilogue of a bf16 product read afterwards only as a bf16 operand (compact records):
// v = r (+ bias), zeroed where mask <= 0 (the ReLU's backward / tangent, mask defined) or where
// v < 0 (relu); out <- bf16(v) and, when defined, colsum (m,) <- the column sums of v in float32
// (a bias gradient). r (n, m) bf16 contiguous; out (n, m) bf16 with unit column stride (a half of
// a pair buffer, or a record's slot). Replaces a float32 store, a masking pass, a conversion and
// a sum, each reading the whole matrix.
void bf16_epilogue(const at::Tensor& out, const at::Tensor& r, const at::Tensor& bias, const at::Tensor& mask,
                   bool relu, const at::Tensor& colsum);
// dst (bf16) <- src (float32), both contiguous with one numel (theta's operand form).
void convert_to_bf16(const at::Tensor& dst, const at::Tensor& src);
// dst <- src for two (n, m) matrices of one dtype with unit column strides (a record's matrix
// into one half of a pair buffer): a memcpy per row instead of ATen's element-wise strided copy.
void copy_rows(const at::Tensor& dst, const at::Tensor& src);
// A layer's float32 (W, U), both (out, in), as the two bf16 stacks the paired products read:
// cols (out, 2 in) <- [U | W] and rows (2 out, in) <- [W ; U]; cols may be undefined.
void pack_weight_pair(const at::Tensor& cols, const at::Tensor& rows, const at::Tensor& w, const at::Tensor& u);
}  // namespace cpu

#ifdef OBD_FAST_WITH_CUDA
namespace cuda {
void head_grad(const HeadInputs&, const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&);
void head_hvp(const HeadInputs&, const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
              const at::Tensor&);
void head_action(const HeadInputs&, const at::Tensor&);
void sgd_step(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, double, double, double);
void adjoint_step(const at::Tensor&, const at::Tensor&, const at::Tensor&, double, double, double);
}  // namespace cuda
#endif

}  // namespace obd_fast
