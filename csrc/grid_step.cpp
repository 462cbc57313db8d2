#include "grid_step.h"

#include <limits>
#include <type_traits>

#include "grid/program.h"
#include "head_args.h"

namespace obd_fast {

namespace {

grid::Net make_net(const Mlp& mlp) {
  grid::Net net;
  net.L = static_cast<int>(mlp.layers());
  for (int l = 0; l <= net.L; ++l) net.widths[l] = static_cast<int>(mlp.widths[l]);
  for (int l = 0; l < net.L; ++l) {
    net.w_off[l] = static_cast<int>(mlp.weight_offset[l]);
    net.b_off[l] = static_cast<int>(mlp.bias_offset[l]);
  }
  net.head_off = static_cast<int>(mlp.head_offset);
  net.P = static_cast<int>(mlp.num_params);
  net.act_dim = static_cast<int>(mlp.act_dim);
  net.gaussian = mlp.gaussian;
  net.max_action = mlp.max_action;
  return net;
}

// Offsets of a record's parts, read off record_views itself so both paths share one layout.
grid::RecordLayout make_record_layout(const Mlp& mlp, const at::Tensor& slot, int64_t n) {
  const StepRecord rec = record_views(mlp, slot, n);
  auto off = [&](const at::Tensor& t) { return static_cast<int>(t.storage_offset() - slot.storage_offset()); };
  grid::RecordLayout r;
  for (size_t l = 0; l < rec.activations.size(); ++l) r.activations[l] = off(rec.activations[l]);
  for (size_t l = 0; l < rec.dloss_dz.size(); ++l) r.dloss_dz[l] = off(rec.dloss_dz[l]);
  r.z_out = off(rec.z_out);
  return r;
}

// The fields both phases share.
template <typename T>
void fill_step_args(grid::StepArgs<T>& s, const Mlp& mlp, const InnerConfig& cfg, const at::Tensor& syn_obs,
                    const at::Tensor& syn_act, const at::Tensor& noise, const at::Tensor& records, int64_t t0,
                    int64_t t1) {
  const int64_t n = syn_obs.size(0);
  s.net = make_net(mlp);
  s.rec = make_record_layout(mlp, records.select(0, 0), n);
  s.n = static_cast<int>(n);
  s.obs = syn_obs.data_ptr<T>();
  s.target = syn_act.data_ptr<T>();
  s.noise = mlp.gaussian ? ptr_or_null<T>(noise) : nullptr;
  s.rec_stride = records.size(0) == 1 ? 0 : records.stride(0);
  s.lr = static_cast<T>(cfg.lr);
  s.momentum = static_cast<T>(cfg.momentum);
  s.weight_decay = static_cast<T>(cfg.weight_decay);
  s.t0 = static_cast<int>(t0);
  s.t1 = static_cast<int>(t1);
}

// Runs a phase sequence (forward_steps or reverse_steps) with the device's executor.
template <typename T, template <typename> class Args>
void execute(const Device& device, const InnerConfig& cfg, const Args<T>& args, const at::Device& where) {
  if constexpr (std::is_same_v<Args<T>, grid::ForwardArgs<T>>) {
    forward_executor<T>(device)(args, cfg.grid, where);
  } else {
    reverse_executor<T>(device)(args, cfg.grid, where);
  }
}

template <typename T>
void forward_typed(const Device& device, const Mlp& mlp, const InnerConfig& cfg, const at::Tensor& syn_obs,
                   const at::Tensor& syn_act, const at::Tensor& noise, int64_t t0, int64_t t1,
                   const at::Tensor& thetas, const at::Tensor& records, const at::Tensor& buf, bool last_update) {
  const int64_t n = syn_obs.size(0);
  grid::ForwardArgs<T> f;
  fill_step_args<T>(f, mlp, cfg, syn_obs, syn_act, noise, records, t0, t1);
  f.thetas = thetas.data_ptr<T>();
  f.records = records.data_ptr<T>();
  f.buf = mut_ptr_or_null<T>(buf);
  const int64_t dots = n * mlp.widths.back() * grid::kDotSplit;
  // One allocation for the scratch: the head's terms, the split dot products, chunk sums.
  const at::Tensor scratch = at::empty({3 * n * mlp.act_dim + dots + 2 * grid::kSumChunks}, syn_obs.options());
  f.partials = scratch.data_ptr<T>();
  f.dots = f.partials + 3 * n * mlp.act_dim;
  f.sums = f.dots + dots;
  f.last_update = last_update;
  execute(device, cfg, f, syn_obs.device());
}

template <typename T>
void reverse_typed(const Device& device, const Mlp& mlp, const InnerConfig& cfg, const at::Tensor& syn_obs,
                   const at::Tensor& syn_act, const at::Tensor& noise, int64_t t0, int64_t t1,
                   const at::Tensor& thetas, const at::Tensor& records, const at::Tensor& a, const at::Tensor& u,
                   const at::Tensor& d_obs, const at::Tensor& d_act) {
  const int64_t n = syn_obs.size(0), L = mlp.layers();
  grid::ReverseArgs<T> r;
  fill_step_args<T>(r, mlp, cfg, syn_obs, syn_act, noise, records, t0, t1);
  r.thetas = thetas.data_ptr<T>();
  r.records = records.data_ptr<T>();
  r.a = a.data_ptr<T>();
  r.u = u.data_ptr<T>();
  r.d_obs = mut_ptr_or_null<T>(d_obs);
  r.d_target = d_act.data_ptr<T>();
  int64_t tangent_total = 0;
  for (int64_t l = 0; l < L; ++l) {
    r.tan_off[l] = static_cast<int>(tangent_total);
    tangent_total += n * mlp.widths[l + 1];
  }
  const int64_t dots = n * mlp.widths.back() * grid::kDotSplit;
  // One allocation for the scratch: u_alt, tangents, Q, the head's terms, the split dot
  // products, chunk sums.
  const at::Tensor scratch = at::empty(
      {mlp.num_params + 2 * tangent_total + 2 * n * mlp.act_dim + dots + 2 * grid::kSumChunks}, syn_obs.options());
  r.u_alt = scratch.data_ptr<T>();
  r.tangent = r.u_alt + mlp.num_params;
  r.q = r.tangent + tangent_total;
  r.partials = r.q + tangent_total;
  r.dots = r.partials + 2 * n * mlp.act_dim;
  r.sums = r.dots + dots;
  execute(device, cfg, r, syn_obs.device());
}

}  // namespace

bool use_grid_program(const Device& device, const Mlp& mlp, const InnerConfig& cfg, const at::Tensor& like,
                      int64_t n) {
  if (cfg.step_kernel == StepKernel::kLibrary) return false;
  if (cfg.step_kernel == StepKernel::kAuto && device.host) return false;
  // (The program reads the last hidden layer's tangent, so it needs L >= 2, as Mlp does.)
  const bool fits = mlp.layers() >= 2 && mlp.layers() <= grid::kMaxLayers &&
                    n * (2 * mlp.hidden_total() + 2 * mlp.widths.back()) < std::numeric_limits<int>::max() &&
                    mlp.num_params < std::numeric_limits<int>::max() / 2;
  return fits && cfg.precision != Precision::kBF16 && !cfg.compact_records &&
         (like.scalar_type() == at::kFloat || like.scalar_type() == at::kDouble);
}

void grid_forward_segment(const Device& device, const Mlp& mlp, const InnerConfig& cfg, const at::Tensor& syn_obs,
                          const at::Tensor& syn_act, const at::Tensor& noise, int64_t t0, int64_t t1,
                          const at::Tensor& thetas, const at::Tensor& records, const at::Tensor& buf,
                          bool last_update) {
  AT_DISPATCH_FLOATING_TYPES(syn_obs.scalar_type(), "obd_fast_grid_forward", [&] {
    forward_typed<scalar_t>(device, mlp, cfg, syn_obs, syn_act, noise, t0, t1, thetas, records, buf, last_update);
  });
}

void grid_reverse_segment(const Device& device, const Mlp& mlp, const InnerConfig& cfg, const at::Tensor& syn_obs,
                          const at::Tensor& syn_act, const at::Tensor& noise, int64_t t0, int64_t t1,
                          const at::Tensor& thetas, const at::Tensor& records, const at::Tensor& a,
                          const at::Tensor& u, const at::Tensor& d_obs, const at::Tensor& d_act) {
  AT_DISPATCH_FLOATING_TYPES(syn_obs.scalar_type(), "obd_fast_grid_reverse", [&] {
    reverse_typed<scalar_t>(device, mlp, cfg, syn_obs, syn_act, noise, t0, t1, thetas, records, a, u, d_obs, d_act);
  });
}

}  // namespace obd_fast
