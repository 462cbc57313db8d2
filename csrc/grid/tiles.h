// Block tiles of the grid program's matrix products: one thread block computes a kTile x kTile
// tile of C (M x N) = sum over k of A(i, k) B(k, j), staging operand slices of kSlice k's in
// shared memory (read from global memory along whichever index is contiguous; the next slice is
// loaded into registers while the current one is multiplied).
//
// Block is the executor's view of one block (grid/program.h): Block::threads(f) runs f(t) for
// each thread t (on the GPU: f(threadIdx.x)), Block::sync() is the block barrier,
// Block::Local<V> is one V per thread, Block::smem<T>() the block's shared buffer (kSmemFloats T).
//
// SliceTiles multiplies a staged slice: thread t owns 2 x 2 outputs and walks all of the slice's k.
#pragma once

#include "../host_device.h"

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
constexpr int kSmemFloats = 2 * kSlice * (kTile + 1);   // two staged slices at SliceTiles::kPitch

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

// 2 x 2 outputs per thread: (r + 16 a, c + 16 b) with (r, c) = (t / 16, t % 16).
template <typename T, typename Block>
struct SliceTiles {
  struct Values {
    T v[2][2];
  };
  using Acc = typename Block::template Local<Values>;
  static constexpr int kPitch = kTile + 1;  // staged rows one float apart: conflict-free stores

  OBD_HD static void zero(Block& bx, Acc& acc) {
    bx.threads([&](int t) { acc(t) = Values{}; });  // value-initialized: every v[a][b] = 0
  }

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

}  // namespace grid
}  // namespace obd_fast
