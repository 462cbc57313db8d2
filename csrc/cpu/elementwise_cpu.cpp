// CPU loops of the fused elementwise passes, parallelized with torch's intra-op threads.
// Every output element is written by exactly one iteration, so results do not depend on the
// number of threads.
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "../head_args.h"
#include "../sgd_math.h"
#include "vec_math.h"

namespace obd_fast {
namespace cpu {

namespace {
constexpr int64_t kGrain = 2048;
}

// Row loops worth vector code are compiled for AVX-512 and AVX2 too and picked at load time
// (GCC target clones, Linux x86-64); the default build targets the baseline ISA.
#if defined(__x86_64__) && defined(__linux__) && defined(__GNUC__) && !defined(__clang__)
#define OBD_FAST_CPU_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define OBD_FAST_CPU_CLONES
#endif

namespace {
constexpr int64_t kHeadBlock = 256;

// sigma * eps and tanh(u) of the head elements [begin, end) (head::head_trig) into se and th.
template <typename T>
void head_trig_block(const head::HeadArgs<T>& a, int64_t begin, int64_t end, T* se, T* th) {
  for (int64_t idx = begin; idx < end; ++idx) {
    const head::HeadTrig<T> t = head::head_trig(a, idx / a.act_dim, idx % a.act_dim);
    se[idx - begin] = t.sigma_eps;
    th[idx - begin] = t.th;
  }
}

OBD_FAST_CPU_CLONES void trig_columns(const float* mu, const float* s, const float* eps, int64_t count, float* se,
                                      float* th) {
  if (s != nullptr) {
    for (int64_t k = 0; k < count; ++k) se[k] = vec_exp(s[k]) * eps[k];
  } else {
    for (int64_t k = 0; k < count; ++k) se[k] = 0.0f;
  }
  for (int64_t k = 0; k < count; ++k) th[k] = vec_tanh(mu[k] + se[k]);
}

// float: exp and tanh from vec_math.h (inline, vector code) instead of libm calls.
template <>
void head_trig_block<float>(const head::HeadArgs<float>& a, int64_t begin, int64_t end, float* se, float* th) {
  float mu[kHeadBlock], s[kHeadBlock], eps[kHeadBlock];
  const bool noisy = a.scalars != nullptr && a.noise != nullptr;
  for (int64_t idx = begin; idx < end; ++idx) {
    const int64_t i = idx / a.act_dim, j = idx % a.act_dim, k = idx - begin;
    mu[k] = a.z[i * a.out + j];
    if (noisy) {
      s[k] = head::clamp_log_std(head::head_log_std(a, i, j));
      eps[k] = a.noise[i * a.act_dim + j];
    }
  }
  trig_columns(mu, noisy ? s : nullptr, eps, end - begin, se, th);
}

// f(idx, trig) for every head element, the transcendental parts a block at a time.
template <typename T, typename F>
void for_head_elements(const head::HeadArgs<T>& a, const F& f) {
  at::parallel_for(0, a.n * a.act_dim, kGrain, [&](int64_t begin, int64_t end) {
    T se[kHeadBlock], th[kHeadBlock];
    for (int64_t b0 = begin; b0 < end; b0 += kHeadBlock) {
      const int64_t b1 = std::min(end, b0 + kHeadBlock);
      head_trig_block(a, b0, b1, se, th);
      for (int64_t idx = b0; idx < b1; ++idx) f(idx, head::HeadTrig<T>{se[idx - b0], th[idx - b0]});
    }
  });
}
}  // namespace

void head_grad(const HeadInputs& in, const at::Tensor& grad_z, const at::Tensor& partials, const at::Tensor& d_target,
               const at::Tensor& sq) {
  AT_DISPATCH_FLOATING_TYPES(in.z.scalar_type(), "obd_fast_head_grad_cpu", [&] {
    const auto a = make_head_args<scalar_t>(in);
    const head::GradOut<scalar_t> o{grad_z.data_ptr<scalar_t>(), partials.data_ptr<scalar_t>(),
                                    mut_ptr_or_null<scalar_t>(d_target), mut_ptr_or_null<scalar_t>(sq)};
    for_head_elements(a, [&](int64_t idx, const head::HeadTrig<scalar_t>& t) {
      head::head_grad_element(a, o, idx, &t);
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
    for_head_elements(a, [&](int64_t idx, const head::HeadTrig<scalar_t>& t) {
      head::head_hvp_element(a, h, o, idx, &t);
    });
  });
}

void head_action(const HeadInputs& in, const at::Tensor& actions) {
  AT_DISPATCH_FLOATING_TYPES(in.z.scalar_type(), "obd_fast_head_action_cpu", [&] {
    const auto a = make_head_args<scalar_t>(in);
    scalar_t* out = actions.data_ptr<scalar_t>();
    for_head_elements(a, [&](int64_t idx, const head::HeadTrig<scalar_t>& t) { out[idx] = a.max_action * t.th; });
  });
}

namespace {
template <typename T>
OBD_FAST_CPU_CLONES void sgd_range(const T* theta, const T* grad, T* buf, T* next, T lr, T momentum, T weight_decay,
                                   int64_t begin, int64_t end) {
  if (buf == nullptr) {  // two loops, so that neither tests buf per element
    T* const none = nullptr;
    for (int64_t k = begin; k < end; ++k) sgd::update_element(theta, grad, none, next, lr, momentum, weight_decay, k);
  } else {
    for (int64_t k = begin; k < end; ++k) sgd::update_element(theta, grad, buf, next, lr, momentum, weight_decay, k);
  }
}

template <typename T>
OBD_FAST_CPU_CLONES void adjoint_range(T* a, const T* hu, T* u, T lr, T momentum, T weight_decay, int64_t begin,
                                       int64_t end) {
  for (int64_t k = begin; k < end; ++k) sgd::adjoint_element(a, hu, u, lr, momentum, weight_decay, k);
}
}  // namespace

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
      sgd_range(th, g, b, next, lr_, mom, wd, begin, end);
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
      adjoint_range(a_, hu_, u_, lr_, mom, wd, begin, end);
    });
  });
}

namespace {
// One row of store_product: out = act(r (+ out) (+ bias)), r in the output's dtype or in bf16.
// r may be out itself (no __restrict__ on the two).
template <typename scalar_t, typename src_t>
OBD_FAST_CPU_CLONES void store_row(scalar_t* out, const src_t* r, const scalar_t* __restrict__ bias,
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

template <typename T, typename A>
OBD_FAST_CPU_CLONES void mask_range(T* __restrict__ v, const A* __restrict__ act, int64_t begin, int64_t end) {
  for (int64_t k = begin; k < end; ++k) v[k] = relu_off(act[k]) ? T(0) : v[k];
}
}  // namespace

void relu_mask(const at::Tensor& x, const at::Tensor& act) {
  TORCH_INTERNAL_ASSERT(x.is_contiguous() && act.is_contiguous() && x.numel() == act.numel());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "obd_fast_relu_mask_cpu", [&] {
    scalar_t* v = x.data_ptr<scalar_t>();
    auto mask = [&](auto* a) {
      at::parallel_for(0, x.numel(), 16384, [&](int64_t begin, int64_t end) { mask_range(v, a, begin, end); });
    };
    if (act.scalar_type() == at::kBFloat16) {
      mask(act.data_ptr<at::BFloat16>());
    } else {
      mask(act.data_ptr<scalar_t>());
    }
  });
}

namespace {
// float -> bf16, rounding to nearest even (NaN -> quiet NaN), as torch converts; written without
// branches so that the loops below vectorize.
inline at::BFloat16 to_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof(u));
  const uint32_t rounded = (u + 0x7FFFu + ((u >> 16) & 1u)) >> 16;
  return at::BFloat16(static_cast<uint16_t>(f != f ? 0x7FC0u : rounded), at::BFloat16::from_bits());
}

OBD_FAST_CPU_CLONES void convert_row(at::BFloat16* __restrict__ out, const float* __restrict__ src, int64_t w) {
  for (int64_t j = 0; j < w; ++j) out[j] = to_bf16(src[j]);
}

// Rows [0, n) of bf16_epilogue, columns [c0, c1): v = r (+ bias), zeroed where mask <= 0 (kMask)
// or where v < 0 (kRelu); out <- bf16(v); colsum += v (kSum).
template <bool kBias, bool kMask, bool kRelu, bool kSum>
OBD_FAST_CPU_CLONES void epilogue_columns(at::BFloat16* __restrict__ out, int64_t out_stride,
                                          const at::BFloat16* __restrict__ r, const float* __restrict__ bias,
                                          const at::BFloat16* __restrict__ mask, float* __restrict__ colsum,
                                          int64_t n, int64_t m, int64_t c0, int64_t c1) {
  if (kSum) std::fill(colsum + c0, colsum + c1, 0.f);
  for (int64_t i = 0; i < n; ++i) {
    const at::BFloat16* ri = r + i * m;
    const at::BFloat16* mi = kMask ? mask + i * m : nullptr;
    at::BFloat16* oi = out + i * out_stride;
    for (int64_t j = c0; j < c1; ++j) {
      float v = static_cast<float>(ri[j]);
      if (kBias) v += bias[j];
      if (kMask) v = relu_off(mi[j]) ? 0.f : v;
      if (kRelu) v = v < 0.f ? 0.f : v;  // NaN passes, as torch.relu does
      oi[j] = to_bf16(v);
      if (kSum) colsum[j] += v;
    }
  }
}

template <typename F>
void with_flag(bool flag, const F& f) {
  if (flag) {
    f(std::true_type{});
  } else {
    f(std::false_type{});
  }
}
}  // namespace

void bf16_epilogue(const at::Tensor& out, const at::Tensor& r, const at::Tensor& bias, const at::Tensor& mask,
                   bool relu, const at::Tensor& colsum) {
  const int64_t n = r.size(0), m = r.size(1);
  TORCH_INTERNAL_ASSERT(r.scalar_type() == at::kBFloat16 && r.is_contiguous() && out.scalar_type() == at::kBFloat16 &&
                        out.size(0) == n && out.size(1) == m && out.stride(1) == 1);
  TORCH_INTERNAL_ASSERT(!bias.defined() ||
                        (bias.scalar_type() == at::kFloat && bias.is_contiguous() && bias.numel() == m));
  TORCH_INTERNAL_ASSERT(!mask.defined() || (mask.scalar_type() == at::kBFloat16 && mask.is_contiguous() &&
                                            mask.sizes() == r.sizes()));
  TORCH_INTERNAL_ASSERT(!colsum.defined() ||
                        (colsum.scalar_type() == at::kFloat && colsum.is_contiguous() && colsum.numel() == m));
  at::BFloat16* o = out.data_ptr<at::BFloat16>();
  const at::BFloat16* rp = r.data_ptr<at::BFloat16>();
  const float* b = ptr_or_null<float>(bias);
  const at::BFloat16* mp = ptr_or_null<at::BFloat16>(mask);
  float* cs = mut_ptr_or_null<float>(colsum);
  with_flag(b != nullptr, [&](auto has_bias) {
    with_flag(mp != nullptr, [&](auto has_mask) {
      with_flag(relu, [&](auto do_relu) {
        with_flag(cs != nullptr, [&](auto do_sum) {
          // Threads split the columns, so each column sum runs over the rows in order whatever the
          // thread count.
          at::parallel_for(0, m, 64, [&](int64_t c0, int64_t c1) {
            epilogue_columns<decltype(has_bias)::value, decltype(has_mask)::value, decltype(do_relu)::value,
                             decltype(do_sum)::value>(o, out.stride(0), rp, b, mp, cs, n, m, c0, c1);
          });
        });
      });
    });
  });
}

void convert_to_bf16(const at::Tensor& dst, const at::Tensor& src) {
  TORCH_INTERNAL_ASSERT(dst.scalar_type() == at::kBFloat16 && src.scalar_type() == at::kFloat && dst.is_contiguous() &&
                        src.is_contiguous() && dst.numel() == src.numel());
  at::BFloat16* d = dst.data_ptr<at::BFloat16>();
  const float* s = src.data_ptr<float>();
  at::parallel_for(0, src.numel(), 16384, [&](int64_t begin, int64_t end) {
    convert_row(d + begin, s + begin, end - begin);
  });
}

void copy_rows(const at::Tensor& dst, const at::Tensor& src) {
  TORCH_INTERNAL_ASSERT(dst.dim() == 2 && dst.sizes() == src.sizes() && dst.scalar_type() == src.scalar_type() &&
                        dst.stride(1) == 1 && src.stride(1) == 1);
  const int64_t n = src.size(0), row_bytes = src.size(1) * src.element_size();
  char* d = static_cast<char*>(dst.data_ptr());
  const char* s = static_cast<const char*>(src.data_ptr());
  const int64_t ds = dst.stride(0) * dst.element_size(), ss = src.stride(0) * src.element_size();
  const int64_t grain_rows = std::max<int64_t>(1, 65536 / std::max<int64_t>(row_bytes, 1));
  at::parallel_for(0, n, grain_rows, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) std::memcpy(d + i * ds, s + i * ss, row_bytes);
  });
}

void pack_weight_pair(const at::Tensor& cols, const at::Tensor& rows, const at::Tensor& w, const at::Tensor& u) {
  TORCH_INTERNAL_ASSERT(w.scalar_type() == at::kFloat && u.scalar_type() == at::kFloat && w.is_contiguous() &&
                        u.is_contiguous() && w.sizes() == u.sizes() && rows.is_contiguous() &&
                        rows.size(0) == 2 * w.size(0) && rows.size(1) == w.size(1));
  TORCH_INTERNAL_ASSERT(!cols.defined() || (cols.is_contiguous() && cols.size(0) == w.size(0) &&
                                            cols.size(1) == 2 * w.size(1)));
  const int64_t out = w.size(0), in = w.size(1);
  const float* wp = w.data_ptr<float>();
  const float* up = u.data_ptr<float>();
  at::BFloat16* c = cols.defined() ? cols.data_ptr<at::BFloat16>() : nullptr;
  at::BFloat16* r = rows.data_ptr<at::BFloat16>();
  at::parallel_for(0, out, std::max<int64_t>(1, 16384 / std::max<int64_t>(in, 1)), [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      convert_row(r + i * in, wp + i * in, in);
      convert_row(r + (out + i) * in, up + i * in, in);
      if (c != nullptr) {
        convert_row(c + i * 2 * in, up + i * in, in);
        convert_row(c + i * 2 * in + in, wp + i * in, in);
      }
    }
  });
}

}  // namespace cpu
}  // namespace obd_fast
