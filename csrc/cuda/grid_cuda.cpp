// ATen-facing glue of the grid program's cooperative kernels: current device and stream.
// Compiled only when the extension is built with CUDA (OBD_FAST_WITH_CUDA).
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <cstdio>
#include <vector>

#include "../grid_step.h"
#include "grid_kernels.h"

namespace obd_fast {
namespace cuda {

namespace {

// grid_profile: each eager (not captured) launch stamps every phase and prints the mean time of
// each phase of a step to stderr. For finding the slow phase; costs a sync.
bool profiling(const GridLaunch& launch, cudaStream_t stream) {
  if (!launch.profile) return false;
  cudaStreamCaptureStatus status = cudaStreamCaptureStatusNone;
  C10_CUDA_CHECK(cudaStreamIsCapturing(stream, &status));
  return status == cudaStreamCaptureStatusNone;
}

void print_profile(const at::Tensor& stamps_dev, const char* what, const char* dtype, int steps, int per_step) {
  const at::Tensor stamps = stamps_dev.cpu();
  const int64_t* t = stamps.data_ptr<int64_t>();
  std::vector<double> mean(per_step, 0.0);
  for (int s = 0; s < steps; ++s)
    for (int p = 0; p < per_step; ++p) mean[p] += (t[s * per_step + p + 1] - t[s * per_step + p]) / 1e3 / steps;
  const double total = (t[steps * per_step] - t[0]) / 1e3;
  std::fprintf(stderr, "obd_fast grid profile: %s %s, %d steps, %.1f us (%.2f us per step); mean us per phase:", what,
               dtype, steps, total, total / steps);
  for (int p = 0; p < per_step; ++p) std::fprintf(stderr, " %.2f", mean[p]);
  std::fprintf(stderr, "\n");
}

// A failed cooperative launch (a GPU or driver mode without it, or a kernel that does not fit
// one block per multiprocessor) names the way around it.
void check_launch(cudaError_t err, const char* what) {
  if (err == cudaErrorCooperativeLaunchTooLarge || err == cudaErrorNotSupported) {
    TORCH_CHECK(false, "obd_fast: the grid program's cooperative ", what, " kernel cannot run on this GPU (",
                cudaGetErrorString(err), "); pass step_kernel='library' to use the ATen path");
  }
  C10_CUDA_CHECK(err);
}

template <typename Args, typename Launch>
void launch_maybe_profiled(Args args, const GridLaunch& settings, const at::Device& device, const char* what,
                           Launch launch) {
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  if (!profiling(settings, stream)) {
    check_launch(launch(args, stream), what);
    return;
  }
  const int steps = args.t1 - args.t0, per_step = grid::phases_per_step(args.net.L);
  const at::Tensor stamps = at::zeros({steps * per_step + 2}, at::TensorOptions().dtype(at::kLong).device(device));
  args.profile = reinterpret_cast<unsigned long long*>(stamps.data_ptr<int64_t>());
  check_launch(launch(args, stream), what);
  print_profile(stamps, what, sizeof(args.lr) == 4 ? "float32" : "float64", steps, per_step);
}

}  // namespace

template <typename T>
void grid_forward(const grid::ForwardArgs<T>& args, const GridLaunch& launch, const at::Device& device) {
  const c10::cuda::CUDAGuard guard(device);
  launch_maybe_profiled(args, launch, device, "forward", [&](const grid::ForwardArgs<T>& a, cudaStream_t stream) {
    return cuda_kernels::launch_grid_forward(a, launch.blocks, stream);
  });
}

template <typename T>
void grid_reverse(const grid::ReverseArgs<T>& args, const GridLaunch& launch, const at::Device& device) {
  const c10::cuda::CUDAGuard guard(device);
  launch_maybe_profiled(args, launch, device, "reverse", [&](const grid::ReverseArgs<T>& a, cudaStream_t stream) {
    return cuda_kernels::launch_grid_reverse(a, launch.blocks, stream);
  });
}

template void grid_forward<float>(const grid::ForwardArgs<float>&, const GridLaunch&, const at::Device&);
template void grid_forward<double>(const grid::ForwardArgs<double>&, const GridLaunch&, const at::Device&);
template void grid_reverse<float>(const grid::ReverseArgs<float>&, const GridLaunch&, const at::Device&);
template void grid_reverse<double>(const grid::ReverseArgs<double>&, const GridLaunch&, const at::Device&);

}  // namespace cuda
}  // namespace obd_fast
