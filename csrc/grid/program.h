// The grid program: whole inner steps of the unroll (forward: loss gradient + SGD; reverse:
// Hessian-vector product + adjoint update) as a short sequence of phases, each a set of
// independent work items, separated by grid-wide barriers. On CUDA one cooperative kernel runs
// a whole segment of steps (csrc/cuda/grid_kernels.cu), so a step costs 2L + 1 barriers instead
// of ~100 kernel launches; on the CPU a serial executor runs the same code (grid_cpu.cpp), which is
// how the CPU tests check every index of it.
//
// The rules that make the two executors agree: an item writes only memory no other item of its
// phase reads or writes, and reads only what earlier phases (or itself) wrote. Matrix products
// are register tiles (TM x TN outputs per item, no shared memory) laid out so the 32 items of a
// warp read consecutive addresses of the operand that varies along their columns.
//
// The math is mlp.cpp's loss_grad / hessian_vector and head_math.h's element functions; the
// record layout is record_views' (non-compact), so tapes are interchangeable with the ATen path.
// No torch, no CUDA runtime here.
#pragma once

#include "../head_math.h"

namespace obd_fast {
namespace grid {

constexpr int kMaxLayers = 8;
// A dot product of the last layer is split over kDotSplit items (each a strided slice of k),
// and a sum over the head's n * act terms over kSumChunks items: one item walking all of k or
// all terms was a chain of dependent loads far longer than the rest of its phase.
constexpr int kDotSplit = 8;
constexpr int kSumChunks = 32;

// Phases per inner step: forward and reverse each have L - 1 hidden layers, the last layer's
// split dot products, the head, and L backward layers.
inline constexpr int phases_per_step(int L) { return 2 * L + 1; }

// Row-major view with explicit strides: element (i, k) is p[i * rs + k * cs].
template <typename T>
struct Mat {
  const T* p;
  int rs, cs;
};

// Shapes of the MLP and offsets of its parameters in theta (DESIGN.md's flat layout).
struct Net {
  int L = 0;                      // layers
  int widths[kMaxLayers + 1] = {};
  int w_off[kMaxLayers] = {}, b_off[kMaxLayers] = {};
  int head_off = 0, P = 0, act = 0;
  bool gaussian = false;
  double max_action = 1.0;
  // Offsets of W_l^T (l = 1 .. L-2, the hidden-to-hidden layers) in the transposed scratch.
  int wt_off[kMaxLayers] = {};
  int wt_total = 0;
};

// Offsets (elements) of one step's record: act_l (l = 0 .. L-2), dloss/dz_l (l = 0 .. L-1), z_out.
struct RecordLayout {
  int act[kMaxLayers] = {}, grad[kMaxLayers] = {}, z_out = 0;
};

template <typename T>
struct ForwardArgs {
  Net net;
  RecordLayout rec;
  int n = 0;                     // synthetic rows
  const T* obs = nullptr;        // (n, obs_dim)
  const T* target = nullptr;     // (n, act)
  const T* noise = nullptr;      // (steps, n, act) of the whole unroll, or null
  T* thetas = nullptr;           // row k: theta_{t0 + k}; rows 1 .. t1 - t0 are written
  T* records = nullptr;          // slot k at records + k * rec_stride (rec_stride 0: one slot)
  long long rec_stride = 0;
  T* buf = nullptr;              // momentum buffer or null
  T* wt = nullptr;               // scratch: net.wt_total
  T* partials = nullptr;         // scratch: 3 * n * act
  T* dots = nullptr;             // scratch: n * out * kDotSplit (split dot products of the last layer)
  T* sums = nullptr;             // scratch: 2 * kSumChunks (chunk sums of the head's partial terms)
  T lr = 0, momentum = 0, weight_decay = 0;
  int t0 = 0, t1 = 0;
  bool last_update = true;       // false: the last step only fills its record
  unsigned long long* profile = nullptr;  // GPU only: a timestamp after each phase, or null
};

template <typename T>
struct ReverseArgs {
  Net net;
  RecordLayout rec;
  int n = 0;
  const T* obs = nullptr;
  const T* target = nullptr;
  const T* noise = nullptr;
  const T* thetas = nullptr;     // row k: theta_{t0 + k}
  const T* records = nullptr;    // slot k: step t0 + k
  long long rec_stride = 0;
  T* a = nullptr;                // adjoint of theta, updated in place
  T* u = nullptr;                // adjoint of the update direction; holds the result at the end
  T* u_alt = nullptr;            // scratch: P (u is double-buffered within the kernel)
  T* d_obs = nullptr;            // (n, obs_dim) +=
  T* d_target = nullptr;         // (n, act) +=
  T* wt = nullptr;               // scratch: W^T of the hidden-to-hidden layers
  T* ut = nullptr;               // scratch: U^T of the same layers
  T* tangent = nullptr;          // scratch: Adot_l / Zdot_out, at tan_off[l]
  T* q = nullptr;                // scratch: Q_l, at tan_off[l]
  T* partials = nullptr;         // scratch: 2 * n * act
  T* dots = nullptr;             // scratch: n * out * kDotSplit
  T* sums = nullptr;             // scratch: 2 * kSumChunks
  int tan_off[kMaxLayers] = {};
  T lr = 0, momentum = 0, weight_decay = 0;
  int t0 = 0, t1 = 0;
  unsigned long long* profile = nullptr;
};

// ---------------------------------------------------------------------------------------------
// Register tiles of a product C (M x N) = sum over k of A(i, k) B(k, j).
//
// 32 consecutive items form a warp tile of (32 / lw) * TM rows by lw * TN columns; item lane
// (r, c) = (lane / lw, lane % lw) owns rows i0 + r + (32 / lw) * a and columns j0 + c + lw * b.
// Interleaving puts the lanes' columns side by side, so a warp's load of B(k, .) is one
// contiguous run when B's column stride is 1. lw shrinks for narrow outputs (obs_dim columns).
template <int TM, int TN>
struct Tiling {
  int M = 0, N = 0, lw = 32, wc = 1, items = 0;
  OBD_HD Tiling(int M_, int N_) : M(M_), N(N_) {
    const int col_tiles = (N + TN - 1) / TN;
    lw = 1;
    while (lw < 32 && lw < col_tiles) lw *= 2;
    const int rows_per_warp = (32 / lw) * TM, cols_per_warp = lw * TN;
    wc = (N + cols_per_warp - 1) / cols_per_warp;
    const int wr = (M + rows_per_warp - 1) / rows_per_warp;
    items = M > 0 && N > 0 ? wr * wc * 32 : 0;
  }
  // Rows and columns of item w; false if the item owns no element.
  OBD_HD bool locate(int w, int (&rows)[TM], int (&cols)[TN]) const {
    const int warp = w / 32, lane = w % 32, lr = 32 / lw;
    const int i0 = (warp / wc) * lr * TM + lane / lw, j0 = (warp % wc) * lw * TN + lane % lw;
    if (i0 >= M || j0 >= N) return false;
    for (int a = 0; a < TM; ++a) rows[a] = i0 + lr * a;
    for (int b = 0; b < TN; ++b) cols[b] = j0 + lw * b;
    return true;
  }
  OBD_HD bool row_ok(int i) const { return i < M; }
  OBD_HD bool col_ok(int j) const { return j < N; }
};

// Sums over k are taken in chunks of kChunk, each chunk's sum then added to the total, as BLAS
// does: at the paper setting (seed 2, no ReLU flips) that halves the float32 meta-gradient's
// error against float64 compared with one running sum (3.0e-6 -> 1.5e-6).
constexpr int kChunk = 16;

// acc[a][b] += sum_k A(rows[a], k) B(k, cols[b]); rows and columns past the end are clamped
// (read, never written).
template <typename T, int TM, int TN>
OBD_HD void tile_mac(T (&acc)[TM][TN], const Mat<T>& A, const Mat<T>& B, const int (&rows)[TM], const int (&cols)[TN],
                     int M, int N, int K) {
  const T* ap[TM];
  const T* bp[TN];
  for (int a = 0; a < TM; ++a) ap[a] = A.p + static_cast<long long>(rows[a] < M ? rows[a] : M - 1) * A.rs;
  for (int b = 0; b < TN; ++b) bp[b] = B.p + static_cast<long long>(cols[b] < N ? cols[b] : N - 1) * B.cs;
  for (int k0 = 0; k0 < K; k0 += kChunk) {
    const int k1 = k0 + kChunk < K ? k0 + kChunk : K;
    T part[TM][TN] = {};
#if defined(__CUDA_ARCH__)
#pragma unroll 8
#endif
    for (int k = k0; k < k1; ++k) {
      T av[TM], bv[TN];
      for (int a = 0; a < TM; ++a) av[a] = ap[a][static_cast<long long>(k) * A.cs];
      for (int b = 0; b < TN; ++b) bv[b] = bp[b][static_cast<long long>(k) * B.rs];
      for (int a = 0; a < TM; ++a)
        for (int b = 0; b < TN; ++b) part[a][b] += av[a] * bv[b];
    }
    for (int a = 0; a < TM; ++a)
      for (int b = 0; b < TN; ++b) acc[a][b] += part[a][b];
  }
}

// sum over r of x[r * stride] for r < count, in 8 interleaved partial sums (independent loads
// in flight, and a shorter rounding chain).
template <typename T>
OBD_HD T strided_sum(const T* x, int count, int stride) {
  T s[8] = {};
  int r = 0;
  for (; r + 8 <= count; r += 8)
    for (int j = 0; j < 8; ++j) s[j] += x[static_cast<long long>(r + j) * stride];
  for (; r < count; ++r) s[0] += x[static_cast<long long>(r) * stride];
  return ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]));
}

// Chunk `chunk` of kSumChunks interleaved chunks of x[0 .. count): x[chunk], x[chunk + kSumChunks], ...
template <typename T>
OBD_HD T chunk_sum(const T* x, int count, int chunk) {
  return chunk < count ? strided_sum(x + chunk, (count - chunk + kSumChunks - 1) / kSumChunks, kSumChunks) : T(0);
}

// Slice `part` of the dot product of x and y (length K): k = part, part + kDotSplit, ...
template <typename T>
OBD_HD T dot_slice(const T* x, const T* y, int K, int part) {
  T s0 = T(0), s1 = T(0);
  int k = part;
  for (; k + kDotSplit < K; k += 2 * kDotSplit) {
    s0 += x[k] * y[k];
    s1 += x[k + kDotSplit] * y[k + kDotSplit];
  }
  if (k < K) s0 += x[k] * y[k];
  return s0 + s1;
}

template <typename T, int TM, int TN>
OBD_HD void zero(T (&acc)[TM][TN]) {
  for (int a = 0; a < TM; ++a)
    for (int b = 0; b < TN; ++b) acc[a][b] = T(0);
}

// One SGD step of element k (head_math.h's sgd_update), the gradient given as a value.
template <typename T>
OBD_HD void sgd_at(const ForwardArgs<T>& f, const T* theta, T* theta_next, int k, T g) {
  theta_next[k] = head::sgd_update(theta[k], g, f.buf != nullptr ? f.buf + k : nullptr, f.lr, f.momentum,
                                   f.weight_decay);
}

// One adjoint step of element k given hu = (H u)_k (head_math.h's adjoint_update).
template <typename T>
OBD_HD void adjoint_at(const ReverseArgs<T>& r, const T* u, T* u_next, int k, T hu) {
  u_next[k] = head::adjoint_update(r.a + k, hu, u[k], r.lr, r.momentum, r.weight_decay);
}

template <typename T>
OBD_HD head::HeadArgs<T> head_args(const Net& net, int n, const T* z, const T* target, const T* noise,
                                   const T* theta) {
  head::HeadArgs<T> h;
  h.z = z;
  h.target = target;
  h.noise = net.gaussian ? noise : nullptr;
  h.weight = nullptr;
  h.scalars = net.gaussian ? theta + net.head_off : nullptr;
  h.max_action = static_cast<T>(net.max_action);
  h.scale = T(1) / static_cast<T>(n * net.act);
  h.n = n;
  h.act = net.act;
  h.out = net.widths[net.L];
  return h;
}

// Transposes of the hidden-to-hidden weights of x (theta or a direction) into xt: item w is one
// element. Returns the number of items; with w >= 0 does item w.
template <typename T>
OBD_HD int transpose_items(const Net& net, const T* x, T* xt, int w) {
  int base = 0;
  for (int l = 1; l <= net.L - 2; ++l) {
    const int out = net.widths[l + 1], in = net.widths[l], size = out * in;
    if (w >= base && w < base + size) {
      const int e = w - base, o = e / in, i = e % in;  // consecutive items read consecutive W(o, i)
      xt[net.wt_off[l] + i * out + o] = x[net.w_off[l] + e];
      return 0;
    }
    base += size;
  }
  return base;
}

// ---------------------------------------------------------------------------------------------
// Forward: steps t0 .. t1-1 (mlp.cpp's loss_grad, then the SGD step fused into the gradients'
// epilogues). phases_per_step(L) phases per step.
template <typename T, int TM, int TN, typename Exec>
OBD_HD void forward_steps(Exec& ex, const ForwardArgs<T>& f) {
  const Net& net = f.net;
  const int L = net.L, n = f.n, act = net.act, out_w = net.widths[L];
  for (int t = f.t0; t < f.t1; ++t) {
    const int k = t - f.t0;
    const T* theta = f.thetas + static_cast<long long>(k) * net.P;
    T* theta_next = f.thetas + static_cast<long long>(k + 1) * net.P;
    T* rec = f.records + k * f.rec_stride;
    const T* noise = f.noise != nullptr ? f.noise + static_cast<long long>(t) * n * act : nullptr;
    const bool update = f.last_update || t + 1 < f.t1;
    auto input = [&](int l) -> const T* { return l == 0 ? f.obs : rec + f.rec.act[l - 1]; };

    // Hidden layers: A_l = relu(A_{l-1} W_l^T + b_l). Phase 0 also transposes the weights the
    // later layers read (W^T makes their warp loads contiguous).
    for (int l = 0; l <= L - 2; ++l) {
      const int in_w = net.widths[l], w = net.widths[l + 1];
      const Tiling<TM, TN> tl(n, w);
      const int extra = l == 0 ? transpose_items(net, theta, f.wt, -1) : 0;
      // B(k, j) = W_l(j, k): theta directly for layer 0 (few columns), W^T after.
      const Mat<T> A{input(l), in_w, 1};
      const Mat<T> B = l == 0 ? Mat<T>{theta + net.w_off[0], 1, in_w} : Mat<T>{f.wt + net.wt_off[l], w, 1};
      const T* bias = theta + net.b_off[l];
      T* y = rec + f.rec.act[l];
      ex.phase(tl.items + extra, [&](int item) {
        if (item >= tl.items) {
          transpose_items(net, theta, f.wt, item - tl.items);
          return;
        }
        int rows[TM], cols[TN];
        if (!tl.locate(item, rows, cols)) return;
        T acc[TM][TN];
        zero(acc);
        tile_mac(acc, A, B, rows, cols, n, w, in_w);
        for (int a = 0; a < TM; ++a)
          for (int b = 0; b < TN; ++b)
            if (tl.row_ok(rows[a]) && tl.col_ok(cols[b])) {
              const T v = acc[a][b] + bias[cols[b]];
              y[rows[a] * w + cols[b]] = v > T(0) ? v : T(0);
            }
      });
    }

    // Last layer: z_out = A_{L-2} W^T + b, each dot product split over kDotSplit items.
    const int l_out = L - 1, k_out = net.widths[l_out];
    const T* x_out = input(l_out);
    const T* w_out = theta + net.w_off[l_out];
    const int z_cols = net.gaussian ? 2 * act : act;  // columns the head reads
    ex.phase(n * z_cols * kDotSplit, [&](int item) {
      const int part = item % kDotSplit, e = item / kDotSplit, i = e / z_cols, jj = e % z_cols;
      f.dots[item] = dot_slice(x_out + static_cast<long long>(i) * k_out, w_out + static_cast<long long>(jj) * k_out,
                               k_out, part);
    });

    // Head, one item per (row, action): z_out[i, j] (and z_out[i, act + j]) from the slices,
    // then dloss/dz_out and the per-element terms of dloss/d(m, o).
    {
      const T* bias = theta + net.b_off[l_out];
      T* z = rec + f.rec.z_out;
      const head::HeadArgs<T> h = head_args(net, n, z, f.target, noise, theta);
      const head::GradOut<T> o{rec + f.rec.grad[l_out], f.partials, nullptr, nullptr};
      ex.phase(n * act, [&](int item) {
        const int i = item / act, j = item % act;
        for (int jj = j; jj < z_cols; jj += act) {
          const T* d = f.dots + static_cast<long long>(i * z_cols + jj) * kDotSplit;
          z[i * out_w + jj] = bias[jj] + strided_sum(d, kDotSplit, 1);
        }
        head::head_grad_element(h, o, item);
      });
    }

    // Backward, layer L-1 .. 0: weight and bias gradients (SGD in their epilogue) and
    // P_{l-1} = mask_{l-1} * (P_l W_l).
    for (int l = L - 1; l >= 0; --l) {
      const int in_w = net.widths[l], w = net.widths[l + 1];
      const T* P = rec + f.rec.grad[l];
      const Tiling<TM, TN> tw(w, in_w), tp(n, in_w);
      const int n_w = update ? tw.items : 0, n_b = update ? w : 0;
      // (m, o): chunk sums of the head's terms at layer L-1, their total (and SGD) at L-2.
      const bool scalars = update && net.gaussian;
      const int n_s = scalars && l == L - 1 ? kSumChunks : (scalars && l == L - 2 ? 1 : 0);
      const int n_p = l > 0 ? tp.items : 0;
      const Mat<T> Pt{P, 1, w}, X{input(l), in_w, 1};  // P^T (w x n), A_{l-1} (n x in_w)
      const Mat<T> Pm{P, w, 1}, Wm{theta + net.w_off[l], in_w, 1};
      T* p_prev = l > 0 ? rec + f.rec.grad[l - 1] : nullptr;
      const T* mask = l > 0 ? rec + f.rec.act[l - 1] : nullptr;
      ex.phase(n_w + n_b + n_s + n_p, [&](int item) {
        int rows[TM], cols[TN];
        T acc[TM][TN];
        if (item < n_w) {  // dW_l = P_l^T A_{l-1}
          if (!tw.locate(item, rows, cols)) return;
          zero(acc);
          tile_mac(acc, Pt, X, rows, cols, w, in_w, n);
          for (int a = 0; a < TM; ++a)
            for (int b = 0; b < TN; ++b)
              if (tw.row_ok(rows[a]) && tw.col_ok(cols[b]))
                sgd_at(f, theta, theta_next, net.w_off[l] + rows[a] * in_w + cols[b], acc[a][b]);
        } else if (item < n_w + n_b) {  // db_l = column sums of P_l
          const int c = item - n_w;
          sgd_at(f, theta, theta_next, net.b_off[l] + c, strided_sum(P + c, n, w));
        } else if (item < n_w + n_b + n_s) {  // d(m, o) from the head's terms
          const int total = n * act, chunk = item - n_w - n_b;
          if (l == L - 1) {
            for (int q = 0; q < 2; ++q)
              f.sums[q * kSumChunks + chunk] = chunk_sum(f.partials + (q + 1) * total, total, chunk);
          } else {
            sgd_at(f, theta, theta_next, net.head_off, strided_sum(f.sums, kSumChunks, 1));
            sgd_at(f, theta, theta_next, net.head_off + 1, strided_sum(f.sums + kSumChunks, kSumChunks, 1));
          }
        } else {  // P_{l-1} = mask * (P_l W_l)
          if (!tp.locate(item - n_w - n_b - n_s, rows, cols)) return;
          zero(acc);
          tile_mac(acc, Pm, Wm, rows, cols, n, in_w, w);
          for (int a = 0; a < TM; ++a)
            for (int b = 0; b < TN; ++b)
              if (tp.row_ok(rows[a]) && tp.col_ok(cols[b])) {
                const int e = rows[a] * in_w + cols[b];
                p_prev[e] = mask[e] > T(0) ? acc[a][b] : T(0);
              }
        }
      });
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Reverse: steps t1-1 .. t0 (mlp.cpp's hessian_vector, with the adjoint step fused into the
// epilogues of H u). phases_per_step(L) phases per step, plus one at the end when u ends in u_alt.
template <typename T, int TM, int TN, typename Exec>
OBD_HD void reverse_steps(Exec& ex, const ReverseArgs<T>& r) {
  const Net& net = r.net;
  const int L = net.L, n = r.n, act = net.act, out_w = net.widths[L];
  T* u_cur = r.u;
  T* u_next = r.u_alt;
  for (int t = r.t1 - 1; t >= r.t0; --t) {
    const int k = t - r.t0;
    const T* theta = r.thetas + static_cast<long long>(k) * net.P;
    const T* rec = r.records + k * r.rec_stride;
    const T* noise = r.noise != nullptr ? r.noise + static_cast<long long>(t) * n * act : nullptr;
    const T* u = u_cur;
    T* u_out = u_next;
    auto input = [&](int l) -> const T* { return l == 0 ? r.obs : rec + r.rec.act[l - 1]; };

    // Tangent forward along u: Adot_l = mask_l * (A_{l-1} U_l^T + c_l + Adot_{l-1} W_l^T).
    for (int l = 0; l <= L - 2; ++l) {
      const int in_w = net.widths[l], w = net.widths[l + 1];
      const Tiling<TM, TN> tl(n, w);
      const int n_tr = l == 0 ? transpose_items(net, theta, r.wt, -1) : 0;
      const Mat<T> A{input(l), in_w, 1};
      const Mat<T> Bu = l == 0 ? Mat<T>{u + net.w_off[0], 1, in_w} : Mat<T>{r.ut + net.wt_off[l], w, 1};
      const Mat<T> Ad{l > 0 ? r.tangent + r.tan_off[l - 1] : nullptr, in_w, 1};
      const Mat<T> Bw{l > 0 ? r.wt + net.wt_off[l] : nullptr, w, 1};
      const T* c = u + net.b_off[l];
      const T* mask = rec + r.rec.act[l];
      T* y = r.tangent + r.tan_off[l];
      ex.phase(tl.items + 2 * n_tr, [&](int item) {
        if (item >= tl.items) {
          const int e = item - tl.items;
          if (e < n_tr) {
            transpose_items(net, theta, r.wt, e);
          } else {
            transpose_items(net, u, r.ut, e - n_tr);
          }
          return;
        }
        int rows[TM], cols[TN];
        if (!tl.locate(item, rows, cols)) return;
        T acc[TM][TN];
        zero(acc);
        tile_mac(acc, A, Bu, rows, cols, n, w, in_w);
        if (l > 0) tile_mac(acc, Ad, Bw, rows, cols, n, w, in_w);
        for (int a = 0; a < TM; ++a)
          for (int b = 0; b < TN; ++b)
            if (tl.row_ok(rows[a]) && tl.col_ok(cols[b])) {
              const int e = rows[a] * w + cols[b];
              y[e] = mask[e] > T(0) ? acc[a][b] + c[cols[b]] : T(0);
            }
      });
    }

    // Last layer's tangent Zdot_out = A_{L-2} U^T + c + Adot_{L-2} W^T, each dot product split
    // over kDotSplit items.
    const int l_out = L - 1, k_out = net.widths[l_out];
    const T* x_out = input(l_out);
    const T* ad_out = r.tangent + r.tan_off[l_out - 1];
    const T* w_out = theta + net.w_off[l_out];
    const T* u_w_out = u + net.w_off[l_out];
    const int z_cols = net.gaussian ? 2 * act : act;
    ex.phase(n * z_cols * kDotSplit, [&](int item) {
      const int part = item % kDotSplit, e = item / kDotSplit, i = e / z_cols, jj = e % z_cols;
      const long long xi = static_cast<long long>(i) * k_out, wj = static_cast<long long>(jj) * k_out;
      r.dots[item] = dot_slice(x_out + xi, u_w_out + wj, k_out, part) + dot_slice(ad_out + xi, w_out + wj, k_out, part);
    });

    // The head's second-order terms, one item per (row, action).
    {
      const T* c = u + net.b_off[l_out];
      T* zdot = r.tangent + r.tan_off[l_out];
      const head::HeadArgs<T> h = head_args(net, n, rec + r.rec.z_out, r.target, noise, theta);
      const head::HvpArgs<T> hv{zdot, net.gaussian ? u + net.head_off : nullptr};
      const head::HvpOut<T> o{r.q + r.tan_off[l_out], r.partials, r.d_target};
      ex.phase(n * act, [&](int item) {
        const int i = item / act, j = item % act;
        for (int jj = j; jj < z_cols; jj += act) {
          const T* d = r.dots + static_cast<long long>(i * z_cols + jj) * kDotSplit;
          zdot[i * out_w + jj] = c[jj] + strided_sum(d, kDotSplit, 1);
        }
        head::head_hvp_element(h, hv, o, item);
      });
    }

    // Reverse over both streams, layer L-1 .. 0: (H u)_{W_l} = Q_l^T A_{l-1} + P_l^T Adot_{l-1}
    // and (H u)_{b_l} = column sums of Q_l, each fed to the adjoint step;
    // Q_{l-1} = mask_{l-1} * (Q_l W_l + P_l U_l); at the input d_obs += Q_0 W_0 + P_0 U_0.
    for (int l = L - 1; l >= 0; --l) {
      const int in_w = net.widths[l], w = net.widths[l + 1];
      const T* Q = r.q + r.tan_off[l];
      const T* P = rec + r.rec.grad[l];
      const Tiling<TM, TN> tw(w, in_w), tp(n, in_w);
      const int n_w = tw.items, n_b = w;
      const int n_s = net.gaussian ? (l == L - 1 ? kSumChunks : (l == L - 2 ? 1 : 0)) : 0;
      const int n_p = l > 0 || r.d_obs != nullptr ? tp.items : 0;
      const Mat<T> Qt{Q, 1, w}, Pt{P, 1, w}, X{input(l), in_w, 1};
      const Mat<T> Ad{l > 0 ? r.tangent + r.tan_off[l - 1] : nullptr, in_w, 1};
      const Mat<T> Qm{Q, w, 1}, Pm{P, w, 1}, Wm{theta + net.w_off[l], in_w, 1}, Um{u + net.w_off[l], in_w, 1};
      T* q_prev = l > 0 ? r.q + r.tan_off[l - 1] : r.d_obs;
      const T* mask = l > 0 ? rec + r.rec.act[l - 1] : nullptr;
      ex.phase(n_w + n_b + n_s + n_p, [&](int item) {
        int rows[TM], cols[TN];
        T acc[TM][TN];
        if (item < n_w) {
          if (!tw.locate(item, rows, cols)) return;
          zero(acc);
          tile_mac(acc, Qt, X, rows, cols, w, in_w, n);
          if (l > 0) tile_mac(acc, Pt, Ad, rows, cols, w, in_w, n);
          for (int a = 0; a < TM; ++a)
            for (int b = 0; b < TN; ++b)
              if (tw.row_ok(rows[a]) && tw.col_ok(cols[b]))
                adjoint_at(r, u, u_out, net.w_off[l] + rows[a] * in_w + cols[b], acc[a][b]);
        } else if (item < n_w + n_b) {
          const int c = item - n_w;
          adjoint_at(r, u, u_out, net.b_off[l] + c, strided_sum(Q + c, n, w));
        } else if (item < n_w + n_b + n_s) {  // (H u) for (m, o): chunk sums at L-1, totals at L-2
          const int total = n * act, chunk = item - n_w - n_b;
          if (l == L - 1) {
            for (int qq = 0; qq < 2; ++qq)
              r.sums[qq * kSumChunks + chunk] = chunk_sum(r.partials + qq * total, total, chunk);
          } else {
            adjoint_at(r, u, u_out, net.head_off, strided_sum(r.sums, kSumChunks, 1));
            adjoint_at(r, u, u_out, net.head_off + 1, strided_sum(r.sums + kSumChunks, kSumChunks, 1));
          }
        } else {
          if (!tp.locate(item - n_w - n_b - n_s, rows, cols)) return;
          zero(acc);
          tile_mac(acc, Qm, Wm, rows, cols, n, in_w, w);
          tile_mac(acc, Pm, Um, rows, cols, n, in_w, w);
          for (int a = 0; a < TM; ++a)
            for (int b = 0; b < TN; ++b)
              if (tp.row_ok(rows[a]) && tp.col_ok(cols[b])) {
                const int e = rows[a] * in_w + cols[b];
                if (l > 0) {
                  q_prev[e] = mask[e] > T(0) ? acc[a][b] : T(0);
                } else {
                  q_prev[e] += acc[a][b];
                }
              }
        }
      });
    }
    u_cur = u_out;
    u_next = const_cast<T*>(u);
  }
  if (u_cur != r.u) {  // an odd number of steps: the result is in u_alt
    ex.phase(net.P, [&](int k) { r.u[k] = u_cur[k]; });
  }
}

}  // namespace grid
}  // namespace obd_fast
