// The ops on CPU tensors: the CPU's Device (the loops of elementwise_cpu.cpp, the grid program's
// serial executor of grid_cpu.cpp) and the registration of every op for the CPU dispatch key.
#include "../grid_step.h"
#include "../ops.h"

namespace obd_fast {

namespace {

const Device& cpu_device() {
  static const Device device = [] {
    Device d;
    d.host = true;
    d.tf32 = false;
    d.head_grad = &cpu::head_grad;
    d.head_hvp = &cpu::head_hvp;
    d.head_action = &cpu::head_action;
    d.sgd_step = &cpu::sgd_step;
    d.adjoint_step = &cpu::adjoint_step;
    d.grid_forward_float = &cpu::grid_forward<float>;
    d.grid_forward_double = &cpu::grid_forward<double>;
    d.grid_reverse_float = &cpu::grid_reverse<float>;
    d.grid_reverse_double = &cpu::grid_reverse<double>;
    d.begin_call = [](const at::Tensor&, bool) { return std::shared_ptr<void>(); };
    d.may_read_values = [] { return true; };
    return d;
  }();
  return device;
}

}  // namespace

TORCH_LIBRARY_IMPL(obd_fast, CPU, m) { register_device_kernels<cpu_device>(m); }

}  // namespace obd_fast
