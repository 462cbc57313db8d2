// The grid program (grid/program.h) as cooperative kernels: every thread of the grid runs the
// program, takes the items of each phase in turn and waits at a grid-wide barrier after it.
#include <cooperative_groups.h>
#include <cuda_runtime.h>

#include "grid_kernels.h"

namespace obd_fast {
namespace cuda_kernels {

namespace {

namespace cg = cooperative_groups;

constexpr int kBlock = grid::kBlockThreads;

__device__ __forceinline__ unsigned long long global_ns() {
  unsigned long long t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
  return t;
}

// A thread block's side of a block item (grid/program.h's Block).
struct GpuBlock {
  unsigned char* buf;  // the block's shared memory
  template <typename V>
  struct Local {
    V v;
    __device__ V& operator()(int) { return v; }
  };
  template <typename F>
  __device__ void threads(F&& f) {
    f(static_cast<int>(threadIdx.x));
  }
  __device__ void sync() { __syncthreads(); }
  template <typename T>
  __device__ T* smem() {
    return reinterpret_cast<T*>(buf);
  }
};

// Block items go to blocks in turn; thread items go to threads warp by warp, consecutive warps
// of items to different blocks (starting after the blocks busy with block items), so a phase
// with fewer items than threads still spreads over every multiprocessor.
struct GridExec {
  using Block = GpuBlock;
  cg::grid_group grid;
  Block block;
  int warp, lane, stride;
  unsigned long long* profile;  // thread 0 of block 0 stamps the start and the end of each phase
  int stamps = 0;

  __device__ GridExec(unsigned char* smem, unsigned long long* profile_)
      : grid(cg::this_grid()), block{smem}, profile(profile_) {
    warp = threadIdx.x / 32;
    lane = threadIdx.x % 32;
    stride = gridDim.x * blockDim.x;
    profile = blockIdx.x == 0 && threadIdx.x == 0 ? profile : nullptr;
    if (profile != nullptr) profile[stamps++] = global_ns();
  }

  template <typename BlockItem, typename Item>
  __device__ void phase(int blocks, BlockItem&& block_item, int items, Item&& item) {
    for (int b = blockIdx.x; b < blocks; b += gridDim.x) block_item(block, b);
    if (items > 0) {
      const int rotated = (blockIdx.x + gridDim.x - blocks % gridDim.x) % gridDim.x;
      for (int w = (warp * gridDim.x + rotated) * 32 + lane; w < items; w += stride) item(w);
    }
    grid.sync();  // also makes this phase's writes visible to every thread
    if (profile != nullptr) profile[stamps++] = global_ns();
  }
};

template <typename T>
__global__ void __launch_bounds__(kBlock) grid_forward_kernel(const grid::ForwardArgs<T> args) {
  __shared__ alignas(16) unsigned char smem[grid::kSmemFloats * sizeof(T)];
  GridExec ex(smem, args.profile);
  grid::forward_steps<T>(ex, args);
}

template <typename T>
__global__ void __launch_bounds__(kBlock) grid_reverse_kernel(const grid::ReverseArgs<T> args) {
  __shared__ alignas(16) unsigned char smem[grid::kSmemFloats * sizeof(T)];
  GridExec ex(smem, args.profile);
  grid::reverse_steps<T>(ex, args);
}

// A cooperative launch of kernel with one argument; blocks capped by what can be co-resident.
template <typename Args>
cudaError_t launch_cooperative(const void* kernel, const Args& args, int blocks, cudaStream_t stream) {
  int device = 0, sms = 0, per_sm = 0;
  cudaError_t err = cudaGetDevice(&device);
  if (err == cudaSuccess) err = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
  if (err == cudaSuccess) err = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, kBlock, 0);
  if (err != cudaSuccess) return err;
  if (per_sm < 1) return cudaErrorCooperativeLaunchTooLarge;
  const int most = sms * per_sm;
  const int grid_blocks = blocks <= 0 ? sms : (blocks < most ? blocks : most);
  void* params[] = {const_cast<Args*>(&args)};
  return cudaLaunchCooperativeKernel(kernel, dim3(grid_blocks), dim3(kBlock), params, 0, stream);
}

}  // namespace

template <typename T>
cudaError_t launch_grid_forward(const grid::ForwardArgs<T>& args, int blocks, cudaStream_t stream) {
  if (args.t1 <= args.t0) return cudaSuccess;
  return launch_cooperative(reinterpret_cast<const void*>(&grid_forward_kernel<T>), args, blocks, stream);
}

template <typename T>
cudaError_t launch_grid_reverse(const grid::ReverseArgs<T>& args, int blocks, cudaStream_t stream) {
  if (args.t1 <= args.t0) return cudaSuccess;
  return launch_cooperative(reinterpret_cast<const void*>(&grid_reverse_kernel<T>), args, blocks, stream);
}

template cudaError_t launch_grid_forward<float>(const grid::ForwardArgs<float>&, int, cudaStream_t);
template cudaError_t launch_grid_forward<double>(const grid::ForwardArgs<double>&, int, cudaStream_t);
template cudaError_t launch_grid_reverse<float>(const grid::ReverseArgs<float>&, int, cudaStream_t);
template cudaError_t launch_grid_reverse<double>(const grid::ReverseArgs<double>&, int, cudaStream_t);

}  // namespace cuda_kernels
}  // namespace obd_fast
