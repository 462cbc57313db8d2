// The CPU's executor of the grid program (grid/program.h): every block item and thread item of a
// phase, one after another. Slow; there so that the CPU tests check every index of the code the
// GPU runs.
#include <memory>

#include "../grid/program.h"
#include "../grid_step.h"

namespace obd_fast {
namespace cpu {

namespace {

// One block of the serial executor: its threads run one after another (last first) between the
// barriers, each with its own Local values.
struct SerialBlock {
  template <typename V>
  struct Local {
    V v[grid::kBlockThreads];
    V& operator()(int t) { return v[t]; }
  };
  template <typename F>
  void threads(F&& f) {
    for (int t = grid::kBlockThreads - 1; t >= 0; --t) f(t);
  }
  void sync() {}
  template <typename T>
  T* smem() {
    return reinterpret_cast<T*>(buf);
  }
  alignas(16) unsigned char buf[grid::kSmemFloats * sizeof(double)];
};

// Runs each phase's block items, then its thread items, one after another and last first: an
// item that read what another item of its phase writes would see other values than on the GPU,
// and the CPU tests' comparison with the independent unroll would catch it.
struct SerialExec {
  using Block = SerialBlock;
  Block block;
  template <typename BlockItem, typename Item>
  void phase(int blocks, BlockItem&& block_item, int items, Item&& item) {
    for (int b = blocks - 1; b >= 0; --b) block_item(block, b);
    for (int w = items - 1; w >= 0; --w) item(w);
  }
};

}  // namespace

template <typename T>
void grid_forward(const grid::ForwardArgs<T>& args, const GridLaunch&, const at::Device&) {
  auto ex = std::make_unique<SerialExec>();  // the block's shared buffer is too big for the stack
  grid::forward_steps<T>(*ex, args);
}

template <typename T>
void grid_reverse(const grid::ReverseArgs<T>& args, const GridLaunch&, const at::Device&) {
  auto ex = std::make_unique<SerialExec>();
  grid::reverse_steps<T>(*ex, args);
}

template void grid_forward<float>(const grid::ForwardArgs<float>&, const GridLaunch&, const at::Device&);
template void grid_forward<double>(const grid::ForwardArgs<double>&, const GridLaunch&, const at::Device&);
template void grid_reverse<float>(const grid::ReverseArgs<float>&, const GridLaunch&, const at::Device&);
template void grid_reverse<double>(const grid::ReverseArgs<double>&, const GridLaunch&, const at::Device&);

}  // namespace cpu
}  // namespace obd_fast
