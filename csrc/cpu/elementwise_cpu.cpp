// CPU loops of the fused elementwise passes, parallelized with torch's intra-op threads.
// Every output element is written by exactly one iteration, so results do not depend on the
// number of threads.
#include <ATen/Parallel.h>

#include <algorithm>

#include "../head_args.h"

namespace obd_fast {
namespace cpu {

namespace {
constexpr int64_t kGrain = 2048;
}

void head_grad(const HeadInputs& in, const at::Tensor& grad_z, const at::Tensor& partials, const at::Tensor& d_target,
               const at::Tensor& sq) {
  AT_DISPATCH_FLOATING_TYPES(in.z.scalar_type(), "obd_fast_head_grad_cpu", [&] {
    const auto a = make_head_args<scalar_t>(in);
    const head::GradOut<scalar_t> o{grad_z.data_ptr<scalar_t>(), partials.data_ptr<scalar_t>(),
                                    mut_ptr_or_null<scalar_t>(d_target), mut_ptr_or_null<scalar_t>(sq)};
    at::parallel_for(0, a.n * a.act, kGrain, [&](int64_t begin, int64_t end) {
      for (int64_t idx = begin; idx < end; ++idx) head::head_grad_element(a, o, idx);
    });
  });
}

void head_hvp(const HeadInputs& in, const at::Tensor& zdot, const at::Tensor& dir_scalars, const at::Tensor& q,
              const at::Tensor& partials, const at::Tensor& d_target) {
  AT_DISPATCH_FLOATING_TYPES(in.z.scalar_type(), "obd_fast_head_hvp_cpu", [&] {
    const auto a = make_head_args<scalar_t>(in);
    const head::HvpArgs<scalar_t> h{zdot.data_ptr<scalar_t>(), ptr_or_null<scalar_t>(dir_scalars)};
    const head::HvpOut<scalar_t> o{q.data_ptr<scalar_t>(), partials.data_ptr<scalar_t>(),
                                   mut_ptr_or_null<scalar_t>(d_target)};
    at::parallel_for(0, a.n * a.act, kGrain, [&](int64_t begin, int64_t end) {
      for (int64_t idx = begin; idx < end; ++idx) head::head_hvp_element(a, h, o, idx);
    });
  });
}

void head_action(const HeadInputs& in, const at::Tensor& actions) {
  AT_DISPATCH_FLOATING_TYPES(in.z.scalar_type(), "obd_fast_head_action_cpu", [&] {
    const auto a = make_head_args<scalar_t>(in);
    scalar_t* out = actions.data_ptr<scalar_t>();
    at::parallel_for(0, a.n * a.act, kGrain, [&](int64_t begin, int64_t end) {
      for (int64_t idx = begin; idx < end; ++idx) out[idx] = head::head_action(a, idx / a.act, idx % a.act);
    });
  });
}

void sgd_step(const at::Tensor& theta, const at::Tensor& grad, const at::Tensor& buf, const at::Tensor& theta_next,
              double lr, double momentum, double weight_decay) {
  AT_DISPATCH_FLOATING_TYPES(theta.scalar_type(), "obd_fast_sgd_cpu", [&] {
    const scalar_t* th = theta.data_ptr<scalar_t>();
    const scalar_t* g = grad.data_ptr<scalar_t>();
    scalar_t* b = mut_ptr_or_null<scalar_t>(buf);
    scalar_t* next = theta_next.data_ptr<scalar_t>();
    const auto lr_ = static_cast<scalar_t>(lr), mom = static_cast<scalar_t>(momentum),
               wd = static_cast<scalar_t>(weight_decay);
    at::parallel_for(0, theta.numel(), 16384, [&](int64_t begin, int64_t end) {
      for (int64_t k = begin; k < end; ++k) head::sgd_element(th, g, b, next, lr_, mom, wd, k);
    });
  });
}

void adjoint_step(const at::Tensor& a, const at::Tensor& hu, const at::Tensor& u, double lr, double momentum,
                  double weight_decay) {
  AT_DISPATCH_FLOATING_TYPES(a.scalar_type(), "obd_fast_adjoint_cpu", [&] {
    scalar_t* a_ = a.data_ptr<scalar_t>();
    const scalar_t* hu_ = hu.data_ptr<scalar_t>();
    scalar_t* u_ = u.data_ptr<scalar_t>();
    const auto lr_ = static_cast<scalar_t>(lr), mom = static_cast<scalar_t>(momentum),
               wd = static_cast<scalar_t>(weight_decay);
    at::parallel_for(0, a.numel(), 16384, [&](int64_t begin, int64_t end) {
      for (int64_t k = begin; k < end; ++k) head::adjoint_element(a_, hu_, u_, lr_, mom, wd, k);
    });
  });
}

namespace {
// One row of store_product: out = act(r (+ out) (+ bias)), r in the output's dtype or in bf16.
// r may be out itself (no __restrict__ on the two).
template <typename scalar_t, typename src_t>
inline void store_row(scalar_t* out, const src_t* r, const scalar_t* __restrict__ bias,
                      int64_t m, bool accumulate, bool relu) {
  for (int64_t j = 0; j < m; ++j) {
    scalar_t v = static_cast<scalar_t>(r[j]);
    if (accumulate) v += out[j];
    if (bias != nullptr) v += bias[j];
    out[j] = relu && v < scalar_t(0) ? scalar_t(0) : v;  // NaN passes, as torch.relu does
  }
}
}  // namespace

void store_product(const at::Tensor& out, const at::Tensor& r, const at::Tensor& bias, bool accumulate, bool relu) {
  const int64_t n = out.size(0), m = out.size(1);
  AT_DISPATCH_FLOATING_TYPES(out.scalar_type(), "obd_fast_store_product_cpu", [&] {
    scalar_t* o = out.data_ptr<scalar_t>();
    const scalar_t* b = ptr_or_null<scalar_t>(bias);
    const int64_t grain_rows = std::max<int64_t>(1, 16384 / std::max<int64_t>(m, 1));
    auto rows = [&](auto* src) {
      at::parallel_for(0, n, grain_rows, [&](int64_t begin, int64_t end) {
        for (int64_t i = begin; i < end; ++i) store_row(o + i * m, src + i * m, b, m, accumulate, relu);
      });
    };
    if (r.scalar_type() == at::kBFloat16) {
      rows(r.data_ptr<at::BFloat16>());
    } else {
      rows(r.data_ptr<scalar_t>());
    }
  });
}

namespace {
template <typename T>
inline bool relu_off(T a) {
  return a <= T(0);  // false for NaN
}
inline bool relu_off(at::BFloat16 a) { return static_cast<float>(a) <= 0.f; }
}  // namespace

void relu_mask(const at::Tensor& x, const at::Tensor& act) {
  TORCH_INTERNAL_ASSERT(x.is_contiguous() && act.is_contiguous() && x.numel() == act.numel());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "obd_fast_relu_mask_cpu", [&] {
    scalar_t* v = x.data_ptr<scalar_t>();
    auto mask = [&](auto* a) {
      at::parallel_for(0, x.numel(), 16384, [&](int64_t begin, int64_t end) {
        for (int64_t k = begin; k < end; ++k) v[k] = relu_off(a[k]) ? scalar_t(0) : v[k];
      });
    };
    if (act.scalar_type() == at::kBFloat16) {
      mask(act.data_ptr<at::BFloat16>());
    } else {
      mask(act.data_ptr<scalar_t>());
    }
  });
}

}  // namespace cpu
}  // namespace obd_fast
