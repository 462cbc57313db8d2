// Launchers of the grid program's cooperative kernels. CUDA runtime and project headers only.
#pragma once

#include <cuda_runtime_api.h>

#include "../grid/program.h"

namespace obd_fast {
namespace cuda_kernels {

// blocks: co-resident blocks to launch (0: one per multiprocessor; never more than fit at once).
template <typename T>
cudaError_t launch_grid_forward(const grid::ForwardArgs<T>& args, int blocks, cudaStream_t stream);

template <typename T>
cudaError_t launch_grid_reverse(const grid::ReverseArgs<T>& args, int blocks, cudaStream_t stream);

}  // namespace cuda_kernels
}  // namespace obd_fast
