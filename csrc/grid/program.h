// The grid program: whole inner steps of the unroll (forward: loss gradient + SGD; reverse:
// Hessian-vector product + adjoint update) as a short sequence of phases separated by grid-wide
// barriers. On CUDA one cooperative kernel runs a whole segment of steps
// (csrc/cuda/grid_kernels.cu), so a step costs 2L + 1 barriers instead of ~100 kernel launches;
// on the CPU a serial executor runs the same code (grid_step.cpp), which is how the CPU tests
// check every index of it.
//
// A phase has block items (a thread block computes one 32 x 32 tile of a matrix product,
// staging operand slices in shared memory) and thread items (elementwise work, small sums).
// The rules that make the two executors agree: an item writes only memory no other item of its
// phase reads or writes, and reads only what earlier phases (or itself) wrote; inside a block
// item, threads meet only at the block's barriers (Block::sync).
//
// The math is mlp.cpp's loss_grad / hessian_vector and the element functions of head_math.h and
// sgd_math.h; the record layout is record_views' (non-compact), so tapes are interchangeable with
// the ATen path. No torch, no CUDA runtime here.
#pragma once

#include "../head_math.h"
#include "../sgd_math.h"
#include "tiles.h"

namespace obd_fast {
namespace grid {

constexpr int kMaxLayers = 8;
// A dot product of the last layer is split over kDotSplit items (each a strided slice of k),
// and a sum over the head's n * act_dim terms over kSumChunks items: one item walking all of k
// or all terms would be a chain of dependent loads far longer than the rest of its phase.
constexpr int kDotSplit = 16;
constexpr int kSumChunks = 32;

// Phases per inner step: forward and reverse each have L - 1 hidden layers, the last layer's
// split dot products, the head, and L backward layers.
inline constexpr int phases_per_step(int L) { return 2 * L + 1; }

// Shapes of the MLP and offsets of its parameters in theta (docs/design.md: the flat layout).
struct Net {
  int L = 0;                      // layers
  int widths[kMaxLayers + 1] = {};
  int w_off[kMaxLayers] = {}, b_off[kMaxLayers] = {};
  int head_off = 0, P = 0, act_dim = 0;
  bool gaussian = false;
  double max_action = 1.0;
};

// Offsets (elements) of one step's record: activations A_l (l = 0 .. L-2), dloss/dz_l
// (l = 0 .. L-1), z_out.
struct RecordLayout {
  int activations[kMaxLayers] = {}, dloss_dz[kMaxLayers] = {}, z_out = 0;
};

// What the forward and the reverse phase share: the network, the record layout, the synthetic
// batch, the inner optimizer and the steps t0 .. t1-1 of the segment.
template <typename T>
struct StepArgs {
  Net net;
  RecordLayout rec;
  int n = 0;                     // synthetic rows
  const T* obs = nullptr;        // (n, obs_dim)
  const T* target = nullptr;     // (n, act_dim)
  const T* noise = nullptr;      // (steps, n, act_dim) of the whole unroll, or null
  long long rec_stride = 0;      // slot k of the records at records + k * rec_stride
  T lr = 0, momentum = 0, weight_decay = 0;
  int t0 = 0, t1 = 0;
  unsigned long long* profile = nullptr;  // GPU only: a timestamp after each phase, or null
};

template <typename T>
struct ForwardArgs : StepArgs<T> {
  T* thetas = nullptr;           // row k: theta_{t0 + k}; rows 1 .. t1 - t0 are written
  T* records = nullptr;          // rec_stride 0: one slot reused by every step
  T* buf = nullptr;              // momentum buffer or null
  T* partials = nullptr;         // scratch: 3 * n * act_dim
  T* dots = nullptr;             // scratch: n * out * kDotSplit (split dot products of the last layer)
  T* sums = nullptr;             // scratch: 2 * kSumChunks (chunk sums of the head's partial terms)
  bool last_update = true;       // false: the last step only fills its record
};

template <typename T>
struct ReverseArgs : StepArgs<T> {
  const T* thetas = nullptr;     // row k: theta_{t0 + k}
  const T* records = nullptr;    // slot k: step t0 + k
  T* a = nullptr;                // adjoint of theta, updated in place
  T* u = nullptr;                // adjoint of the update direction; holds the result at the end
  T* u_alt = nullptr;            // scratch: P (u is double-buffered within the kernel)
  T* d_obs = nullptr;            // (n, obs_dim) +=
  T* d_target = nullptr;         // (n, act_dim) +=
  T* tangent = nullptr;          // scratch: Adot_l / Zdot_out, at tan_off[l]
  T* q = nullptr;                // scratch: Q_l, at tan_off[l]
  T* partials = nullptr;         // scratch: 2 * n * act_dim
  T* dots = nullptr;             // scratch: n * out * kDotSplit
  T* sums = nullptr;             // scratch: 2 * kSumChunks
  int tan_off[kMaxLayers] = {};
};

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

// The (m, o) entries of a gradient or of H u, from the head's per-element terms m_terms and
// o_terms (n * act_dim each): kSumChunks items of chunk sums in the phase of layer L-1, then one item
// that totals them in the phase of layer L-2 and hands them to apply(m_total, o_total).
OBD_HD int head_scalar_items(const Net& net, int l, bool wanted) {
  if (!wanted || !net.gaussian) return 0;
  return l == net.L - 1 ? kSumChunks : (l == net.L - 2 ? 1 : 0);
}

template <typename T, typename Apply>
OBD_HD void head_scalar_item(const Net& net, int l, int chunk, const T* m_terms, const T* o_terms, int total, T* sums,
                             Apply&& apply) {
  if (l == net.L - 1) {
    sums[chunk] = chunk_sum(m_terms, total, chunk);
    sums[kSumChunks + chunk] = chunk_sum(o_terms, total, chunk);
  } else {
    apply(strided_sum(sums, kSumChunks, 1), strided_sum(sums + kSumChunks, kSumChunks, 1));
  }
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

// One SGD step of element k (sgd_math.h's update), the gradient given as a value.
template <typename T>
OBD_HD void sgd_at(const ForwardArgs<T>& f, const T* theta, T* theta_next, int k, T g) {
  theta_next[k] = sgd::update(theta[k], g, f.buf != nullptr ? f.buf + k : nullptr, f.lr, f.momentum,
                                   f.weight_decay);
}

// One adjoint step of element k given hu = (H u)_k (sgd_math.h's adjoint_update).
template <typename T>
OBD_HD void adjoint_at(const ReverseArgs<T>& r, const T* u, T* u_next, int k, T hu) {
  u_next[k] = sgd::adjoint_update(r.a + k, hu, u[k], r.lr, r.momentum, r.weight_decay);
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
  h.scale = T(1) / static_cast<T>(n * net.act_dim);
  h.n = n;
  h.act_dim = net.act_dim;
  h.out = net.widths[net.L];
  return h;
}

// Phases without thread items or without block items.
struct NoBlocks {
  template <typename Block>
  OBD_HD void operator()(Block&, int) const {}
};
struct NoItems {
  OBD_HD void operator()(int) const {}
};

template <typename Exec, typename BlockItem>
OBD_HD void block_phase(Exec& ex, int blocks, BlockItem&& block_item) {
  ex.phase(blocks, block_item, 0, NoItems{});
}

template <typename Exec, typename Item>
OBD_HD void item_phase(Exec& ex, int items, Item&& item) {
  ex.phase(0, NoBlocks{}, items, item);
}

// ---------------------------------------------------------------------------------------------
// Forward: steps t0 .. t1-1 (mlp.cpp's loss_grad, then the SGD step fused into the gradients'
// epilogues). phases_per_step(L) phases per step.
//
// Exec::phase(block_items, block_item(Block&, b), items, item(w)) runs one phase; SliceTiles
// (tiles.h) computes the block tiles of the products.
template <typename T, typename Exec>
OBD_HD void forward_steps(Exec& ex, const ForwardArgs<T>& f) {
  using Block = typename Exec::Block;
  using Tiles = SliceTiles<T, Block>;
  const Net& net = f.net;
  const int L = net.L, n = f.n, act_dim = net.act_dim, out_w = net.widths[L];
  for (int t = f.t0; t < f.t1; ++t) {
    const int k = t - f.t0;
    const T* theta = f.thetas + static_cast<long long>(k) * net.P;
    T* theta_next = f.thetas + static_cast<long long>(k + 1) * net.P;
    T* rec = f.records + k * f.rec_stride;
    const T* noise = f.noise != nullptr ? f.noise + static_cast<long long>(t) * n * act_dim : nullptr;
    const bool update = f.last_update || t + 1 < f.t1;
    auto input = [&](int l) -> const T* { return l == 0 ? f.obs : rec + f.rec.activations[l - 1]; };

    // Hidden layers: A_l = relu(A_{l-1} W_l^T + b_l).
    for (int l = 0; l <= L - 2; ++l) {
      const int in_w = net.widths[l], w = net.widths[l + 1];
      const TileGrid tiles(n, w);
      const Mat<T> X{input(l), in_w, 1}, Wt{theta + net.w_off[l], 1, in_w};  // Wt(k, j) = W_l(j, k)
      const T* bias = theta + net.b_off[l];
      T* y = rec + f.rec.activations[l];
      block_phase(ex, tiles.count, [&](Block& bx, int b) {
        const int i0 = tiles.row0(b), j0 = tiles.col0(b);
        typename Tiles::Acc acc;
        Tiles::zero(bx, acc);
        Tiles::mac(bx, acc, X, Wt, i0, j0, n, w, in_w);
        Tiles::store(bx, acc, i0, j0, n, w, [&](int i, int j, T v) {
          v += bias[j];
          y[i * w + j] = v > T(0) ? v : T(0);
        });
      });
    }

    // Last layer: z_out = A_{L-2} W^T + b, each dot product split over kDotSplit items.
    const int l_out = L - 1, k_out = net.widths[l_out];
    const T* x_out = input(l_out);
    const T* w_out = theta + net.w_off[l_out];
    const int z_cols = net.gaussian ? 2 * act_dim : act_dim;  // columns the head reads
    item_phase(ex, n * z_cols * kDotSplit, [&](int item) {
      const int part = item % kDotSplit, e = item / kDotSplit, i = e / z_cols, jj = e % z_cols;
      f.dots[item] = dot_slice(x_out + static_cast<long long>(i) * k_out, w_out + static_cast<long long>(jj) * k_out,
                               k_out, part);
    });

    // Head, one item per (row, action): z_out[i, j] (and z_out[i, act_dim + j]) from the slices,
    // then dloss/dz_out and the per-element terms of dloss/d(m, o).
    {
      const T* bias = theta + net.b_off[l_out];
      T* z = rec + f.rec.z_out;
      const head::HeadArgs<T> h = head_args(net, n, z, f.target, noise, theta);
      const head::GradOut<T> o{rec + f.rec.dloss_dz[l_out], f.partials, nullptr, nullptr};
      item_phase(ex, n * act_dim, [&](int item) {
        const int i = item / act_dim, j = item % act_dim;
        for (int jj = j; jj < z_cols; jj += act_dim) {
          const T* d = f.dots + static_cast<long long>(i * z_cols + jj) * kDotSplit;
          z[i * out_w + jj] = bias[jj] + strided_sum(d, kDotSplit, 1);
        }
        head::head_grad_element(h, o, item);
      });
    }

    // Backward, layer L-1 .. 0: weight gradients P_l^T A_{l-1} and P_{l-1} = mask_{l-1} * (P_l W_l)
    // as block tiles; bias gradients (column sums of P_l) and the (m, o) sums as thread items;
    // SGD in the epilogue of each gradient.
    for (int l = L - 1; l >= 0; --l) {
      const int in_w = net.widths[l], w = net.widths[l + 1];
      const T* P = rec + f.rec.dloss_dz[l];
      const TileGrid tw(update ? w : 0, in_w), tp(l > 0 ? n : 0, in_w);
      const Mat<T> Pt{P, 1, w}, X{input(l), in_w, 1};  // P^T (w x n), A_{l-1} (n x in_w)
      const Mat<T> Pm{P, w, 1}, Wm{theta + net.w_off[l], in_w, 1};
      T* p_prev = l > 0 ? rec + f.rec.dloss_dz[l - 1] : nullptr;
      const T* mask = l > 0 ? rec + f.rec.activations[l - 1] : nullptr;
      const int n_b = update ? w : 0, n_s = head_scalar_items(net, l, update);
      ex.phase(
          tw.count + tp.count,
          [&](Block& bx, int b) {
            typename Tiles::Acc acc;
            Tiles::zero(bx, acc);
            if (b < tw.count) {  // dW_l = P_l^T A_{l-1}
              const int i0 = tw.row0(b), j0 = tw.col0(b);
              Tiles::mac(bx, acc, Pt, X, i0, j0, w, in_w, n);
              Tiles::store(bx, acc, i0, j0, w, in_w, [&](int i, int j, T v) {
                sgd_at(f, theta, theta_next, net.w_off[l] + i * in_w + j, v);
              });
            } else {  // P_{l-1} = mask * (P_l W_l)
              const int i0 = tp.row0(b - tw.count), j0 = tp.col0(b - tw.count);
              Tiles::mac(bx, acc, Pm, Wm, i0, j0, n, in_w, w);
              Tiles::store(bx, acc, i0, j0, n, in_w, [&](int i, int j, T v) {
                const int e = i * in_w + j;
                p_prev[e] = mask[e] > T(0) ? v : T(0);
              });
            }
          },
          n_b + n_s,
          [&](int item) {
            if (item < n_b) {  // db_l = column sums of P_l
              sgd_at(f, theta, theta_next, net.b_off[l] + item, strided_sum(P + item, n, w));
              return;
            }
            const int total = n * act_dim;  // partials: loss, d/dm, d/do terms
            head_scalar_item(net, l, item - n_b, f.partials + total, f.partials + 2 * total, total, f.sums,
                             [&](T gm, T go) {
                               sgd_at(f, theta, theta_next, net.head_off, gm);
                               sgd_at(f, theta, theta_next, net.head_off + 1, go);
                             });
          });
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Reverse: steps t1-1 .. t0 (mlp.cpp's hessian_vector, with the adjoint step fused into the
// epilogues of H u). phases_per_step(L) phases per step, plus one at the end when u ends in
// u_alt.
template <typename T, typename Exec>
OBD_HD void reverse_steps(Exec& ex, const ReverseArgs<T>& r) {
  using Block = typename Exec::Block;
  using Tiles = SliceTiles<T, Block>;
  const Net& net = r.net;
  const int L = net.L, n = r.n, act_dim = net.act_dim, out_w = net.widths[L];
  T* u_cur = r.u;
  T* u_next = r.u_alt;
  for (int t = r.t1 - 1; t >= r.t0; --t) {
    const int k = t - r.t0;
    const T* theta = r.thetas + static_cast<long long>(k) * net.P;
    const T* rec = r.records + k * r.rec_stride;
    const T* noise = r.noise != nullptr ? r.noise + static_cast<long long>(t) * n * act_dim : nullptr;
    const T* u = u_cur;
    T* u_out = u_next;
    auto input = [&](int l) -> const T* { return l == 0 ? r.obs : rec + r.rec.activations[l - 1]; };

    // Tangent forward along u: Adot_l = mask_l * (A_{l-1} U_l^T + c_l + Adot_{l-1} W_l^T).
    for (int l = 0; l <= L - 2; ++l) {
      const int in_w = net.widths[l], w = net.widths[l + 1];
      const TileGrid tiles(n, w);
      const Mat<T> X{input(l), in_w, 1}, Ut{u + net.w_off[l], 1, in_w};
      const Mat<T> Ad{l > 0 ? r.tangent + r.tan_off[l - 1] : nullptr, in_w, 1}, Wt{theta + net.w_off[l], 1, in_w};
      const T* c = u + net.b_off[l];
      const T* mask = rec + r.rec.activations[l];
      T* y = r.tangent + r.tan_off[l];
      block_phase(ex, tiles.count, [&](Block& bx, int b) {
        const int i0 = tiles.row0(b), j0 = tiles.col0(b);
        typename Tiles::Acc acc;
        Tiles::zero(bx, acc);
        Tiles::mac(bx, acc, X, Ut, i0, j0, n, w, in_w);
        if (l > 0) Tiles::mac(bx, acc, Ad, Wt, i0, j0, n, w, in_w);
        Tiles::store(bx, acc, i0, j0, n, w, [&](int i, int j, T v) {
          const int e = i * w + j;
          y[e] = mask[e] > T(0) ? v + c[j] : T(0);
        });
      });
    }

    // Last layer's tangent Zdot_out = A_{L-2} U^T + c + Adot_{L-2} W^T, each dot product split
    // over kDotSplit items.
    const int l_out = L - 1, k_out = net.widths[l_out];
    const T* x_out = input(l_out);
    const T* ad_out = r.tangent + r.tan_off[l_out - 1];
    const T* w_out = theta + net.w_off[l_out];
    const T* u_w_out = u + net.w_off[l_out];
    const int z_cols = net.gaussian ? 2 * act_dim : act_dim;
    item_phase(ex, n * z_cols * kDotSplit, [&](int item) {
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
      item_phase(ex, n * act_dim, [&](int item) {
        const int i = item / act_dim, j = item % act_dim;
        for (int jj = j; jj < z_cols; jj += act_dim) {
          const T* d = r.dots + static_cast<long long>(i * z_cols + jj) * kDotSplit;
          zdot[i * out_w + jj] = c[jj] + strided_sum(d, kDotSplit, 1);
        }
        head::head_hvp_element(h, hv, o, item);
      });
    }

    // Reverse over both streams, layer L-1 .. 0: (H u)_{W_l} = Q_l^T A_{l-1} + P_l^T Adot_{l-1}
    // and Q_{l-1} = mask_{l-1} * (Q_l W_l + P_l U_l) (at the input d_obs += Q_0 W_0 + P_0 U_0) as
    // block tiles; (H u)_{b_l} = column sums of Q_l and the (m, o) sums as thread items; the
    // adjoint step in the epilogue of each entry of H u.
    for (int l = L - 1; l >= 0; --l) {
      const int in_w = net.widths[l], w = net.widths[l + 1];
      const T* Q = r.q + r.tan_off[l];
      const T* P = rec + r.rec.dloss_dz[l];
      const TileGrid tw(w, in_w), tp(l > 0 || r.d_obs != nullptr ? n : 0, in_w);
      const Mat<T> Qt{Q, 1, w}, Pt{P, 1, w}, X{input(l), in_w, 1};
      const Mat<T> Ad{l > 0 ? r.tangent + r.tan_off[l - 1] : nullptr, in_w, 1};
      const Mat<T> Qm{Q, w, 1}, Pm{P, w, 1}, Wm{theta + net.w_off[l], in_w, 1}, Um{u + net.w_off[l], in_w, 1};
      T* q_prev = l > 0 ? r.q + r.tan_off[l - 1] : r.d_obs;
      const T* mask = l > 0 ? rec + r.rec.activations[l - 1] : nullptr;
      const int n_s = head_scalar_items(net, l, true);
      ex.phase(
          tw.count + tp.count,
          [&](Block& bx, int b) {
            typename Tiles::Acc acc;
            Tiles::zero(bx, acc);
            if (b < tw.count) {
              const int i0 = tw.row0(b), j0 = tw.col0(b);
              Tiles::mac(bx, acc, Qt, X, i0, j0, w, in_w, n);
              if (l > 0) Tiles::mac(bx, acc, Pt, Ad, i0, j0, w, in_w, n);
              Tiles::store(bx, acc, i0, j0, w, in_w, [&](int i, int j, T v) {
                adjoint_at(r, u, u_out, net.w_off[l] + i * in_w + j, v);
              });
            } else {
              const int i0 = tp.row0(b - tw.count), j0 = tp.col0(b - tw.count);
              Tiles::mac(bx, acc, Qm, Wm, i0, j0, n, in_w, w);
              Tiles::mac(bx, acc, Pm, Um, i0, j0, n, in_w, w);
              Tiles::store(bx, acc, i0, j0, n, in_w, [&](int i, int j, T v) {
                const int e = i * in_w + j;
                if (l > 0) {
                  q_prev[e] = mask[e] > T(0) ? v : T(0);
                } else {
                  q_prev[e] += v;
                }
              });
            }
          },
          w + n_s,
          [&](int item) {
            if (item < w) {
              adjoint_at(r, u, u_out, net.b_off[l] + item, strided_sum(Q + item, n, w));
              return;
            }
            const int total = n * act_dim;  // partials: d/dm, d/do terms of H u
            head_scalar_item(net, l, item - w, r.partials, r.partials + total, total, r.sums, [&](T hm, T ho) {
              adjoint_at(r, u, u_out, net.head_off, hm);
              adjoint_at(r, u, u_out, net.head_off + 1, ho);
            });
          });
    }
    u_cur = u_out;
    u_next = const_cast<T*>(u);
  }
  if (u_cur != r.u) {  // an odd number of steps: the result is in u_alt
    item_phase(ex, net.P, [&](int k) { r.u[k] = u_cur[k]; });
  }
}

}  // namespace grid
}  // namespace obd_fast
