// Per-element math of the policy head and the weighted BC loss: value, first derivatives and the
// Hessian-vector terms. Included by the CPU loops and the CUDA kernels alike, so the CPU tests
// check the same code the GPU runs. No torch, no CUDA runtime: plain inline functions. The inner
// optimizer's step and its adjoint are in sgd_math.h.
//
// One element (row i, action j) of the gaussian head:
//   mu = z[i, j], lam = z[i, act_dim + j], s = m * lam + o, sigma = exp(clamp(s, -20, 2)),
//   u = mu + sigma * eps, y = max_action * tanh(u), loss term c_i * (y - target)^2
// with c_i = weight_i / (n * act_dim). The tanh head is the same with sigma * eps = 0 and no lam.
// A deterministic gaussian head (no noise) is eps = 0: tanh(mean), no gradient to lam, m, o.
#pragma once

#include <cstdint>
#include <math.h>

#include "host_device.h"

namespace obd_fast {
namespace head {

constexpr double kLogStdMin = -20.0;
constexpr double kLogStdMax = 2.0;

OBD_HD float fast_tanh(float x) { return tanhf(x); }
OBD_HD double fast_tanh(double x) { return tanh(x); }
OBD_HD float fast_exp(float x) { return expf(x); }
OBD_HD double fast_exp(double x) { return exp(x); }

// Raw views of one head evaluation. Pointers that may be null say so.
template <typename T>
struct HeadArgs {
  const T* z;        // (n, out) last Linear layer's output
  const T* target;   // (n, act_dim)
  const T* noise;    // (n, act_dim), null: deterministic action
  const T* weight;   // (n,), null: all ones
  const T* scalars;  // {log_std_multiplier, log_std_offset} inside theta; null for the tanh head
  T max_action;
  T scale;           // 1 / (n * act_dim)
  int64_t n, act_dim, out;
};

// Everything the derivatives need at one element.
template <typename T>
struct HeadPoint {
  T yp;    // dy/du
  T ypp;   // d2y/du2
  T c;     // loss coefficient weight_i * scale
  T diff;  // y - target
  T r;     // dloss/dy = 2 c diff
  T rho;   // du/ds = sigma * eps inside the clamp, 0 outside it (and for tanh / no noise)
  T m;     // log_std multiplier (0 for the tanh head)
  T lam;   // log_std output of the network (0 for the tanh head)
};

// log_std before the exp, clamped as torch.clamp(s, -20, 2).
template <typename T>
OBD_HD T clamp_log_std(T s) {
  return s < T(kLogStdMin) ? T(kLogStdMin) : (s > T(kLogStdMax) ? T(kLogStdMax) : s);
}

// The transcendental part of one element: the noise term sigma * eps (0 for the tanh head or without noise)
// and tanh(u). Apart so that the CPU loops can compute a block of them with vector code.
template <typename T>
struct HeadTrig {
  T sigma_eps;
  T th;
};

// s = m * lam + o, the log_std before the clamp (gaussian head).
template <typename T>
OBD_HD T head_log_std(const HeadArgs<T>& a, int64_t i, int64_t j) {
  return a.scalars[0] * a.z[i * a.out + a.act_dim + j] + a.scalars[1];
}

template <typename T>
OBD_HD HeadTrig<T> head_trig(const HeadArgs<T>& a, int64_t i, int64_t j) {
  HeadTrig<T> t{T(0), T(0)};
  if (a.scalars != nullptr && a.noise != nullptr) {
    t.sigma_eps = fast_exp(clamp_log_std(head_log_std(a, i, j))) * a.noise[i * a.act_dim + j];
  }
  t.th = fast_tanh(a.z[i * a.out + j] + t.sigma_eps);
  return t;
}

template <typename T>
OBD_HD HeadPoint<T> head_point(const HeadArgs<T>& a, int64_t i, int64_t j, const HeadTrig<T>& t) {
  HeadPoint<T> p;
  p.rho = T(0);
  p.m = T(0);
  p.lam = T(0);
  if (a.scalars != nullptr) {
    p.lam = a.z[i * a.out + a.act_dim + j];
    p.m = a.scalars[0];
    if (a.noise != nullptr) {
      const T s = head_log_std(a, i, j);
      // torch.clamp passes the gradient on the closed interval [min, max].
      const bool inside = s >= T(kLogStdMin) && s <= T(kLogStdMax);
      p.rho = inside ? t.sigma_eps : T(0);
    }
  }
  const T th = t.th;
  const T sech2 = T(1) - th * th;
  p.yp = a.max_action * sech2;
  p.ypp = T(-2) * a.max_action * th * sech2;
  p.c = a.scale * (a.weight != nullptr ? a.weight[i] : T(1));
  p.diff = a.max_action * th - a.target[i * a.act_dim + j];
  p.r = T(2) * p.c * p.diff;
  return p;
}

// Outputs of the first-order pass at one element (index idx = i * act_dim + j).
template <typename T>
struct GradOut {
  T* grad_z;     // (n, out): dloss/dz
  T* partials;   // (3, n * act_dim): loss term, dloss/dm term, dloss/do term (summed afterwards)
  T* d_target;   // (n, act_dim) or null
  T* sq;         // (n, act_dim) or null: scale * diff^2, the loss per unit weight
};

// t: head_trig(a, i, j), computed here unless the caller has it.
template <typename T>
OBD_HD void head_grad_element(const HeadArgs<T>& a, const GradOut<T>& o, int64_t idx, const HeadTrig<T>* t = nullptr) {
  const int64_t i = idx / a.act_dim, j = idx - (idx / a.act_dim) * a.act_dim;
  const HeadPoint<T> p = head_point(a, i, j, t != nullptr ? *t : head_trig(a, i, j));
  const int64_t total = a.n * a.act_dim;
  const T g_u = p.r * p.yp;
  o.grad_z[i * a.out + j] = g_u;
  o.partials[idx] = p.c * p.diff * p.diff;
  if (a.scalars != nullptr) {
    o.grad_z[i * a.out + a.act_dim + j] = g_u * p.rho * p.m;
    o.partials[total + idx] = g_u * p.rho * p.lam;
    o.partials[2 * total + idx] = g_u * p.rho;
  } else {
    o.partials[total + idx] = T(0);
    o.partials[2 * total + idx] = T(0);
  }
  if (o.d_target != nullptr) o.d_target[idx] = -p.r;
  if (o.sq != nullptr) o.sq[idx] = a.scale * p.diff * p.diff;
}

// Second-order pass: the gradient of phi = <dloss/dtheta, u> restricted to the head, given the
// tangent zdot of the network output along u and the direction's (dm, do).
template <typename T>
struct HvpArgs {
  const T* zdot;        // (n, out)
  const T* dir_scalars; // {dm, do} inside the direction vector; null for the tanh head
};

template <typename T>
struct HvpOut {
  T* q;           // (n, out): dphi/dz, the Q stream entering the last layer
  T* partials;    // (2, n * act_dim): dphi/dm term, dphi/do term
  T* d_target;    // (n, act_dim) accumulated (+=) dphi/dtarget, or null
};

template <typename T>
OBD_HD void head_hvp_element(const HeadArgs<T>& a, const HvpArgs<T>& h, const HvpOut<T>& o, int64_t idx,
                             const HeadTrig<T>* t = nullptr) {
  const int64_t i = idx / a.act_dim, j = idx - (idx / a.act_dim) * a.act_dim;
  const HeadPoint<T> p = head_point(a, i, j, t != nullptr ? *t : head_trig(a, i, j));
  const int64_t total = a.n * a.act_dim;
  const T g_u = p.r * p.yp;                                 // dloss/du
  const T h_uu = T(2) * p.c * p.yp * p.yp + p.r * p.ypp;    // d2loss/du2
  const T mudot = h.zdot[i * a.out + j];
  if (a.scalars != nullptr) {
    const T lamdot = h.zdot[i * a.out + a.act_dim + j];
    const T dm = h.dir_scalars[0], d_o = h.dir_scalars[1];
    const T sdot = p.m * lamdot + p.lam * dm + d_o;       // tangent of s = m * lam + o
    const T udot = mudot + p.rho * sdot;
    o.q[i * a.out + j] = h_uu * udot;
    o.q[i * a.out + a.act_dim + j] = h_uu * p.rho * p.m * udot + g_u * p.rho * (p.m * sdot + dm);
    o.partials[idx] = h_uu * p.rho * p.lam * udot + g_u * p.rho * (p.lam * sdot + lamdot);
    o.partials[total + idx] = h_uu * p.rho * udot + g_u * p.rho * sdot;
    if (o.d_target != nullptr) o.d_target[idx] += T(-2) * p.c * p.yp * udot;
  } else {
    o.q[i * a.out + j] = h_uu * mudot;
    o.partials[idx] = T(0);
    o.partials[total + idx] = T(0);
    if (o.d_target != nullptr) o.d_target[idx] += T(-2) * p.c * p.yp * mudot;
  }
}

// Action of the head (the policy's forward), for the standalone forward op.
template <typename T>
OBD_HD T head_action(const HeadArgs<T>& a, int64_t i, int64_t j) {
  return a.max_action * head_trig(a, i, j).th;
}

}  // namespace head
}  // namespace obd_fast
