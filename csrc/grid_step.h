// The inner steps of the unroll through the grid program (grid/program.h): one cooperative
// kernel per segment on CUDA, a serial executor of the same code on the CPU (there only for
// tests: the ATen path is the fast one on the CPU). unroll.cpp calls these in place of its
// per-step loops when use_grid_program says so.
#pragma once

#include "unroll.h"

namespace obd_fast {

// Which code runs the inner steps, from OBD_FAST_STEP_KERNEL (read per call):
//   auto (default): the grid program for CUDA tensors with native products, ATen otherwise;
//   grid: the grid program wherever it applies (on the CPU: the serial executor, slow);
//   library: the ATen path (cuBLAS products) everywhere.
// The grid program does float32/float64 products on the CUDA cores: it never runs with bf16
// products or compact records, and precision="tf32" (a cuBLAS setting) does not change it.
bool use_grid_program(const Mlp& mlp, const InnerConfig& cfg, const at::Tensor& like, int64_t n);

// run_segment of unroll.cpp: steps t0 .. t1-1 from thetas[0], filling thetas[1..] and the
// records (one slot per step, or a single reused slot).
void grid_forward_segment(const Mlp& mlp, const InnerConfig& cfg, const at::Tensor& syn_obs,
                          const at::Tensor& syn_act, const at::Tensor& noise, int64_t t0, int64_t t1,
                          const at::Tensor& thetas, const at::Tensor& records, const at::Tensor& buf,
                          bool last_update);

// reverse_segment of unroll.cpp: steps t1-1 .. t0; a (adjoint of theta), u (adjoint of the
// update direction), d_obs and d_act are updated in place.
void grid_reverse_segment(const Mlp& mlp, const InnerConfig& cfg, const at::Tensor& syn_obs,
                          const at::Tensor& syn_act, const at::Tensor& noise, int64_t t0, int64_t t1,
                          const at::Tensor& thetas, const at::Tensor& records, const at::Tensor& a,
                          const at::Tensor& u, const at::Tensor& d_obs, const at::Tensor& d_act);

}  // namespace obd_fast
