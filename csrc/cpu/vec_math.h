// Float exp and tanh for the CPU head loops. libm's expf and tanhf are calls, one element at a
// time; these inline, and GCC vectorizes
// loops of them where the ISA has masked vector ops (the AVX-512 target clone; with AVX2 its
// if-conversion stops at the selects, since float ops may trap, and the loop stays scalar).
// Accuracy: on a 2M-point grid of [-20, 20] tanh is within 1.3 float ulps of the double-precision
// function and exp within 1; tests/test_fused_cpu.py checks the head's actions against torch's
// float32 exp and tanh (test_cpu_vector_exp_tanh_in_the_head_*). NaN propagates.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

namespace obd_fast {
namespace cpu {

// exp(x) by 2^n * exp(r), |r| <= ln2 / 2, with Cephes' expf polynomial; clamped where float
// overflows or goes subnormal (the head only asks for exp of [-20, 18]).
inline float vec_exp(float x) {
  // std::min / std::max keep a NaN (it is their first argument); xs is finite for the rounding.
  const float xc = std::min(std::max(x, -87.0f), 88.0f);
  const float xs = xc == xc ? xc : 0.0f;
  // round(x / ln2) without a libm call: adding 1.5 * 2^23 rounds to an integer in float.
  constexpr float kRound = 12582912.0f;
  const float n = (xs * 1.44269504088896341f + kRound) - kRound;
  float r = xs - n * 0.693359375f;  // ln2 in two parts (Cody-Waite), the first exact in float
  r = r - n * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;  // 2^n, n in [-126, 127]
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return p * scale + (xc - xc);  // + 0, or NaN for a NaN x: arithmetic, not a branch, so it vectorizes
}

// tanh(x): Cephes' tanhf polynomial below |x| = 0.625, else 1 - 2 / (exp(2|x|) + 1).
inline float tanh_small(float x) {
  const float z = x * x;
  float p = -5.70498872745e-3f;
  p = p * z + 2.06390887954e-2f;
  p = p * z - 5.37397155531e-2f;
  p = p * z + 1.33314422036e-1f;
  p = p * z - 3.33332819422e-1f;
  return x + x * z * p;
}

// 1 - 2 / (exp(2|x|) + 1) with x's sign, for |x| >= 0.625. NaN stays NaN.
inline float tanh_large(float x) {
  const float ax = std::fabs(x);
  const float e = vec_exp(2.0f * std::min(ax, 9.0f));  // tanh(9) is 1 in float
  return std::copysign(1.0f - 2.0f / (e + 1.0f), x);
}

inline float vec_tanh(float x) { return std::fabs(x) < 0.625f ? tanh_small(x) : tanh_large(x); }

}  // namespace cpu
}  // namespace obd_fast
