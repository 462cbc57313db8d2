// Block tiles of the grid program's matrix products: one thread block computes a kTile x kTile
// tile of C (M x N) = sum over k of A(i, k) B(k, j), staging operand slices of kSlice k's in
// shared memory (read from global memory along whichever index is contiguous; the next slice is
// loaded into registers while the current one is multiplied).
//
// Block is the executor's view of one block (grid/program.h): Block::threads(f) runs f(t) for
// each thread t (on the GPU: f(threadIdx.x)), Block::sync() is the block barrier,
// Block::Local<V> is one V per thread, Block::smem<T>() the block's shared buffer (kSmemFloats T).
//
// Two ways to multiply a staged slice (TilesT of forward_steps / reverse_steps):
//   SliceTiles: thread t owns 2 x 2 outputs and walks all of the slice's k. Measured on an H100.
//   KSplitTiles: 4 groups of 64 threads each take a quarter of the slice's k with 4 x 4 outputs
//     per thread (half the shared-memory reads per multiply-add, read 4 at a time), and the
//     groups' partial tiles are summed through shared memory at the end. Not yet run on a GPU.
#pragma once

#include "../head_math.h"

namespace obd_fast {
namespace grid {

// Row-major view with explicit strides: element (i, k) is p[i * rs + k * cs].
template <typename T>
struct Mat {
  const T* p;
  int rs, cs;
};

constexpr int kBlockThreads = 256;
constexpr int kTile = 32;
constexpr int kSlice = 64;
constexpr int kLoads = kTile * kSlice / kBlockThreads;  // elements of each operand per thread
constexpr int kSmemFloats = 2 * kSlice * (kTile + 4);   // two staged slices at the widest pitch

// The tiles of an M x N product: block item b is tile (b / cols, b % cols).
struct TileGrid {
  int M, N, cols, count;
  OBD_HD TileGrid(int M_, int N_) : M(M_), N(N_), cols((N_ + kTile - 1) / kTile), count(0) {
    count = M > 0 && N > 0 ? ((M + kTile - 1) / kTile) * cols : 0;
  }
  OBD_HD int row0(int b) const { return b / cols * kTile; }  // first row and column of tile b
  OBD_HD int col0(int b) const { return b % cols * kTile; }
};

// Element e (of kTile * kSlice) of an operand slice: (tile index x, k index) such that
// consecutive e walk the operand's contiguous index.
OBD_HD void slice_pos(int e, bool k_fastest, int& x, int& k) {
  if (k_fastest) {
    x = e / kSlice;
    k = e % kSlice;
  } else {
    x = e % kTile;
    k = e / kTile;
  }
}

template <typename T>
struct SliceRegs {
  T a[kLoads], b[kLoads];
};

// Walks the slices of the tile (i0, j0) of A B (A: M x K, B: K x N; zeros outside them): each
// slice staged as As[k * kPitch + i] and Bs[k * kPitch + j], then multiply(As, Bs) between
// two block barriers.
template <int kPitch, typename T, typename Block, typename Multiply>
OBD_HD void for_each_slice(Block& bx, const Mat<T>& A, const Mat<T>& B, int i0, int j0, int M, int N, int K,
                           Multiply&& multiply) {
  T* As = bx.template smem<T>();
  T* Bs = As + kSlice * kPitch;
  const bool a_k_fastest = A.cs == 1, b_k_fastest = B.rs == 1;
  typename Block::template Local<SliceRegs<T>> regs;
  auto load = [&](int k0) {
    bx.threads([&](int t) {
      for (int q = 0; q < kLoads; ++q) {
        int x, k;
        slice_pos(t + q * kBlockThreads, a_k_fastest, x, k);
        const int i = i0 + x, kk = k0 + k;
        regs(t).a[q] = i < M && kk < K ? A.p[static_cast<long long>(i) * A.rs + static_cast<long long>(kk) * A.cs] : T(0);
        slice_pos(t + q * kBlockThreads, b_k_fastest, x, k);
        const int j = j0 + x, kb = k0 + k;
        regs(t).b[q] = j < N && kb < K ? B.p[static_cast<long long>(kb) * B.rs + static_cast<long long>(j) * B.cs] : T(0);
      }
    });
  };
  load(0);
  for (int k0 = 0; k0 < K; k0 += kSlice) {
    bx.threads([&](int t) {
      for (int q = 0; q < kLoads; ++q) {
        int x, k;
        slice_pos(t + q * kBlockThreads, a_k_fastest, x, k);
        As[k * kPitch + x] = regs(t).a[q];
        slice_pos(t + q * kBlockThreads, b_k_fastest, x, k);
        Bs[k * kPitch + x] = regs(t).b[q];
      }
    });
    bx.sync();
    if (k0 + kSlice < K) load(k0 + kSlice);  // in flight while this slice is multiplied
    multiply(As, Bs);
    bx.sync();
  }
}

// The per-thread accumulators of a tile policy, R x C values per thread, and their zeroing.
template <typename T, typename Block, int R, int C>
struct TileAccumulators {
  struct Values {
    T v[R][C];
  };
  using Acc = typename Block::template Local<Values>;

  OBD_HD static void zero(Block& bx, Acc& acc) {
    bx.threads([&](int t) { acc(t) = Values{}; });  // value-initialized: every v[a][b] = 0
  }
};

// 2 x 2 outputs per thread: (r + 16 a, c + 16 b) with (r, c) = (t / 16, t % 16).
template <typename T, typename Block>
struct SliceTiles : TileAccumulators<T, Block, 2, 2> {
  using Acc = typename TileAccumulators<T, Block, 2, 2>::Acc;
  static constexpr int kPitch = kTile + 1;  // staged rows one float apart: conflict-free stores

  // acc += the tile (i0, j0) of A B.
  OBD_HD static void mac(Block& bx, Acc& acc, const Mat<T>& A, const Mat<T>& B, int i0, int j0, int M, int N, int K) {
    for_each_slice<kPitch>(bx, A, B, i0, j0, M, N, K, [&](const T* As, const T* Bs) {
      bx.threads([&](int t) {
        const int r = t / 16, c = t % 16;
        // Each slice's sum is added to the total on its own (blockwise, as BLAS sums).
        T part[2][2] = {{T(0), T(0)}, {T(0), T(0)}};
        for (int k = 0; k < kSlice; ++k) {
          const T a0 = As[k * kPitch + r], a1 = As[k * kPitch + r + 16];
          const T b0 = Bs[k * kPitch + c], b1 = Bs[k * kPitch + c + 16];
          part[0][0] += a0 * b0;
          part[0][1] += a0 * b1;
          part[1][0] += a1 * b0;
          part[1][1] += a1 * b1;
        }
        for (int a = 0; a < 2; ++a)
          for (int b = 0; b < 2; ++b) acc(t).v[a][b] += part[a][b];
      });
    });
  }

  // out(i, j, value) for each output of the tile (i0, j0) inside M x N.
  template <typename Out>
  OBD_HD static void store(Block& bx, Acc& acc, int i0, int j0, int M, int N, Out&& out) {
    bx.threads([&](int t) {
      const int r = t / 16, c = t % 16;
      for (int a = 0; a < 2; ++a)
        for (int b = 0; b < 2; ++b) {
          const int i = i0 + r + 16 * a, j = j0 + c + 16 * b;
          if (i < M && j < N) out(i, j, acc(t).v[a][b]);
        }
    });
  }
};

// Four consecutive staged values (16- or 32-byte aligned: the pitch and the offsets are multiples of 4).
template <typename T>
OBD_HD void load4(const T* p, T (&v)[4]) {
#if defined(__CUDA_ARCH__)
  if constexpr (sizeof(T) == 4) {
    const float4 q = *reinterpret_cast<const float4*>(p);
    v[0] = q.x, v[1] = q.y, v[2] = q.z, v[3] = q.w;
    return;
  } else {
    const double2 q0 = reinterpret_cast<const double2*>(p)[0], q1 = reinterpret_cast<const double2*>(p)[1];
    v[0] = q0.x, v[1] = q0.y, v[2] = q1.x, v[3] = q1.y;
    return;
  }
#else
  for (int q = 0; q < 4; ++q) v[q] = p[q];
#endif
}

// Group g = t / 64 multiplies k in [g * kSlice / 4, (g + 1) * kSlice / 4) of each slice; thread
// (r, c) = ((t % 64) / 8, t % 8) of a group owns outputs (4 r + a, 4 c + b).
template <typename T, typename Block>
struct KSplitTiles : TileAccumulators<T, Block, 4, 4> {
  using Acc = typename TileAccumulators<T, Block, 4, 4>::Acc;
  static constexpr int kGroups = 4, kGroupK = kSlice / kGroups;
  static constexpr int kPitch = kTile + 4;  // staged rows 16 bytes apart: aligned 4-wide reads

  OBD_HD static void mac(Block& bx, Acc& acc, const Mat<T>& A, const Mat<T>& B, int i0, int j0, int M, int N, int K) {
    for_each_slice<kPitch>(bx, A, B, i0, j0, M, N, K, [&](const T* As, const T* Bs) {
      bx.threads([&](int t) {
        const int g = t / 64, r = (t % 64) / 8, c = t % 8;
        T part[4][4] = {};
        for (int k = g * kGroupK; k < (g + 1) * kGroupK; ++k) {
          T a[4], b[4];
          load4(As + k * kPitch + 4 * r, a);
          load4(Bs + k * kPitch + 4 * c, b);
          for (int p = 0; p < 4; ++p)
            for (int q = 0; q < 4; ++q) part[p][q] += a[p] * b[q];
        }
        for (int p = 0; p < 4; ++p)
          for (int q = 0; q < 4; ++q) acc(t).v[p][q] += part[p][q];
      });
    });
  }

  // The groups' partial tiles meet in shared memory; each output is their sum in group order.
  template <typename Out>
  OBD_HD static void store(Block& bx, Acc& acc, int i0, int j0, int M, int N, Out&& out) {
    T* red = bx.template smem<T>();  // [kGroups][kTile * kTile]; free: the last slice ended in a barrier
    static_assert(kGroups * kTile * kTile <= kSmemFloats, "shared buffer too small for the group sums");
    bx.threads([&](int t) {
      const int g = t / 64, r = (t % 64) / 8, c = t % 8;
      for (int p = 0; p < 4; ++p)
        for (int q = 0; q < 4; ++q) red[g * kTile * kTile + (4 * r + p) * kTile + 4 * c + q] = acc(t).v[p][q];
    });
    bx.sync();
    bx.threads([&](int t) {
      for (int e = t; e < kTile * kTile; e += kBlockThreads) {
        const int i = i0 + e / kTile, j = j0 + e % kTile;
        T v = red[e];
        for (int g = 1; g < kGroups; ++g) v += red[g * kTile * kTile + e];
        if (i < M && j < N) out(i, j, v);
      }
    });
    bx.sync();  // the next block item stages its slices in the same buffer
  }
};

}  // namespace grid
}  // namespace obd_fast
