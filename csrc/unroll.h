// The unrolled inner loop (forward phase keeping what the reverse needs, or only checkpoints)
// and its reverse by the P/Q recursion; the outer loss; the whole meta-gradient.
#pragma once

#include <tuple>

#include "mlp.h"

namespace obd_fast {

// Which code runs the inner steps (grid_step.h's use_grid_program).
enum class StepKernel { kAuto, kGrid, kLibrary };

struct InnerConfig {
  int64_t steps = 1;
  double lr = 0.1, momentum = 0.0, weight_decay = 0.0;
  int64_t checkpoint_every = 0;  // 0: keep every step's activations; k: keep theta every k steps
  Precision precision = Precision::kNative;
  bool compact_records = false;  // records of bf16 operands (StepRecord::compact): bf16 on the CPU
  StepKernel step_kernel = StepKernel::kAuto;
  GridLaunch grid;
  bool keep_all() const { return checkpoint_every == 0; }
  int64_t checkpoints() const { return (steps + checkpoint_every - 1) / checkpoint_every; }
};

// What the forward phase leaves for the reverse. Unused members are undefined.
struct UnrollTape {
  at::Tensor theta_T;    // (P,)
  at::Tensor thetas;     // keep_all: (T + 1, P), theta_0 .. theta_T
  at::Tensor records;    // keep_all: (T, record_size)
  at::Tensor ck_thetas;  // checkpointed: (C, P), theta at steps 0, k, 2k, ...
  at::Tensor ck_bufs;    // checkpointed with momentum: (C, P), momentum buffer before those steps
  // Checkpointed with keep_last_segment: the last segment as the forward phase left it, (k + 1, P)
  // thetas from its first step and (k, record_size) records. The reverse pass starts on them
  // without recomputing, then reuses both buffers for the other segments.
  at::Tensor seg_thetas, seg_records;
};

// Elements of the keep-all tape (thetas and records).
int64_t tape_numel(const Mlp& mlp, const InnerConfig& cfg, int64_t n);

// storage: optional 1-D buffer of tape_numel elements for a keep-all tape (else it is allocated).
// keep_last_segment (checkpointed only): keep the last segment's records for the reverse pass.
// That costs no peak memory where the reverse pass follows in the same call (it needs a
// segment's buffers anyway), but holds them between the phases: meta_gradient uses it, the
// autograd op does not.
UnrollTape unroll_forward(const Device& device, const Mlp& mlp, const InnerConfig& cfg, const at::Tensor& theta0,
                          const at::Tensor& syn_obs, const at::Tensor& syn_act, const at::Tensor& noise,
                          const at::Tensor& storage = {}, bool keep_last_segment = false);

// (d theta_0, d syn_obs, d syn_act) of <grad_theta_T, theta_T>.
std::tuple<at::Tensor, at::Tensor, at::Tensor> unroll_backward(const Device& device, const Mlp& mlp,
                                                               const InnerConfig& cfg, const UnrollTape& tape,
                                                               const at::Tensor& syn_obs, const at::Tensor& syn_act,
                                                               const at::Tensor& noise,
                                                               const at::Tensor& grad_theta_T);

}  // namespace obd_fast
