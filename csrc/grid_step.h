// The inner steps of the unroll through the grid program (grid/program.h): one cooperative
// kernel per segment on CUDA (cuda/grid_cuda.cpp), a serial executor of the same code on the CPU
// (cpu/grid_cpu.cpp; there only for tests: the ATen path is the fast one on the CPU). unroll.cpp
// calls these in place of its per-step loops when use_grid_program says so.
#pragma once

#include "unroll.h"

namespace obd_fast {

// Whether the grid program runs the inner steps, by cfg.step_kernel:
//   kAuto: on devices without host memory (CUDA) with native or tf32 products, ATen otherwise;
//   kGrid: the grid program wherever it applies (on the CPU: the serial executor, slow);
//   kLibrary: the ATen path (cuBLAS products) everywhere.
// The grid program does float32/float64 products on the CUDA cores: it never runs with bf16
// products or compact records, and precision="tf32" (a cuBLAS setting) does not change it.
bool use_grid_program(const Device& device, const Mlp& mlp, const InnerConfig& cfg, const at::Tensor& like, int64_t n);

// run_segment of unroll.cpp: steps t0 .. t1-1 from thetas[0], filling thetas[1..] and the
// records (one slot per step, or a single reused slot).
void grid_forward_segment(const Device& device, const Mlp& mlp, const InnerConfig& cfg, const at::Tensor& syn_obs,
                          const at::Tensor& syn_act, const at::Tensor& noise, int64_t t0, int64_t t1,
                          const at::Tensor& thetas, const at::Tensor& records, const at::Tensor& buf,
                          bool last_update);

// reverse_segment of unroll.cpp: steps t1-1 .. t0; a (adjoint of theta), u (adjoint of the
// update direction), d_obs and d_act are updated in place.
void grid_reverse_segment(const Device& device, const Mlp& mlp, const InnerConfig& cfg, const at::Tensor& syn_obs,
                          const at::Tensor& syn_act, const at::Tensor& noise, int64_t t0, int64_t t1,
                          const at::Tensor& thetas, const at::Tensor& records, const at::Tensor& a,
                          const at::Tensor& u, const at::Tensor& d_obs, const at::Tensor& d_act);

// The executors of a phase sequence on each device (the Device table's grid entries).
namespace cpu {
template <typename T>
void grid_forward(const grid::ForwardArgs<T>& args, const GridLaunch& launch, const at::Device& device);
template <typename T>
void grid_reverse(const grid::ReverseArgs<T>& args, const GridLaunch& launch, const at::Device& device);
}  // namespace cpu

#ifdef OBD_FAST_WITH_CUDA
namespace cuda {
template <typename T>
void grid_forward(const grid::ForwardArgs<T>& args, const GridLaunch& launch, const at::Device& device);
template <typename T>
void grid_reverse(const grid::ReverseArgs<T>& args, const GridLaunch& launch, const at::Device& device);
}  // namespace cuda
#endif

}  // namespace obd_fast
