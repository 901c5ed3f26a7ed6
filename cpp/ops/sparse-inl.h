// sparse-inl.h (per target): vector-masked matvec and column-tiled sparse vec-mat.
// W: [rows, cols] row-major (neuron-major for Spark), f32 / bf16 / int8 (times scale[row]) / q4 / q5.

#if defined(SPARK_OPS_SPARSE_INL_H_) == defined(HWY_TARGET_TOGGLE)
#ifdef SPARK_OPS_SPARSE_INL_H_
#undef SPARK_OPS_SPARSE_INL_H_
#else
#define SPARK_OPS_SPARSE_INL_H_
#endif

#include <stddef.h>
#include <stdint.h>

#include <type_traits>

#include "hwy/cache_control.h"
#include "hwy/highway.h"
#include "ops/matvec-inl.h"
#include "weights/load-inl.h"
#include "weights/types.h"

HWY_BEFORE_NAMESPACE();
namespace spark {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

// out[j] = W[idx[j]] . x for j in [j0, j1), kDecodeRows gathered rows per tile (a short last
// tile repeats its last row), so out[j] depends only on row idx[j] and x, not on j's tile or
// thread. The rows are scattered, so the hardware prefetcher, which follows sequential lines,
// would only catch on a few lines into each row: every tile prefetches the next tile's rows
// while it sums its own (DotRows4's `next`). Measured against prefetching only each next
// row's first line (1 thread, K2 [13824, 1280], 8 %, weights cold, median ms): bf16 0.37 ->
// 0.30, int8 0.30 -> 0.16; sparse V [13824, 2304]: bf16 0.61 -> 0.49, int8 0.42 -> 0.26.
// Prefetching two tiles ahead, or the next tile in one burst, was no better or worse.
template <class P>
HWY_INLINE void MaskedMatVecT(P w, const float* HWY_RESTRICT scale,
                              size_t cols, const float* HWY_RESTRICT x,
                              const int32_t* HWY_RESTRICT idx, size_t j0, size_t j1,
                              float* HWY_RESTRICT out) {
  // Row pointers of the tile at j (rows repeated past j1); false if the tile is empty.
  auto tile_rows = [&](size_t j, P* rows) {
    if (j >= j1) return false;
    const size_t m = j1 - j < kDecodeRows ? j1 - j : kDecodeRows;
    for (size_t k = 0; k < kDecodeRows; ++k)
      rows[k] = w + static_cast<size_t>(idx[j + (k < m ? k : m - 1)]) * cols;
    return true;
  };
  P rows[kDecodeRows];
  P next[kDecodeRows];
  const auto xin = DecodeInput(w, x, cols);
  bool have_next = tile_rows(j0, next);
  for (size_t j = j0; have_next; j += kDecodeRows) {
    for (size_t k = 0; k < kDecodeRows; ++k) rows[k] = next[k];
    have_next = tile_rows(j + kDecodeRows, next);
    float s[kDecodeRows];
    DotRows4(rows, cols, xin, s, have_next ? next : static_cast<const P*>(nullptr), 0);
    const size_t m = j1 - j < kDecodeRows ? j1 - j : kDecodeRows;
    for (size_t k = 0; k < m; ++k) out[j + k] = scale ? s[k] * scale[idx[j + k]] : s[k];
  }
}

// out[c] = sum_j coef_j * W[idx[j], c] for c in [c0, c1), coef_j = u[j] (* scale[idx[j]]).
// Rows are visited in groups of 4 so each out vector is loaded and stored once per 4 rows; the
// tile of out stays in L1 while each row segment streams through, and the next group's
// segments are prefetched meanwhile (the rows are scattered: see MaskedMatVecT). The sum over
// j runs in index order for every column, whatever c0 and c1 are.
template <class P>
HWY_INLINE void SparseVecMatT(P w, const float* HWY_RESTRICT scale,
                              size_t cols, const float* HWY_RESTRICT u,
                              const int32_t* HWY_RESTRICT idx, size_t n, float* HWY_RESTRICT out,
                              size_t c0, size_t c1) {
  const hn::ScalableTag<float> df;
  const size_t NF = hn::Lanes(df);
  for (size_t c = c0; c < c1; ++c) out[c] = 0.0f;
  auto coef = [&](size_t j) {
    return scale ? u[j] * scale[idx[j]] : u[j];
  };
  auto row = [&](size_t j) { return w + static_cast<size_t>(idx[j]) * cols; };
  size_t j = 0;
  for (; j + 4 <= n; j += 4) {
    P rows[4];
    float a[4];
    for (size_t r = 0; r < 4; ++r) {
      rows[r] = row(j + r);
      a[r] = coef(j + r);
    }
    P next_rows[kDecodeRows];
    const bool have_next = j + 4 + kDecodeRows <= n;
    if (have_next) {
      for (size_t r = 0; r < kDecodeRows; ++r) next_rows[r] = row(j + 4 + r) + c0;
    }
    const auto a0 = hn::Set(df, a[0]), a1 = hn::Set(df, a[1]);
    const auto a2 = hn::Set(df, a[2]), a3 = hn::Set(df, a[3]);
    size_t c = c0;
    for (; c + NF <= c1; c += NF) {
      PrefetchStep(have_next ? next_rows : static_cast<const P*>(nullptr), c - c0, NF);
      auto o = hn::LoadU(df, out + c);
      o = hn::MulAdd(a0, LoadF32(df, rows[0] + c), o);
      o = hn::MulAdd(a1, LoadF32(df, rows[1] + c), o);
      o = hn::MulAdd(a2, LoadF32(df, rows[2] + c), o);
      o = hn::MulAdd(a3, LoadF32(df, rows[3] + c), o);
      hn::StoreU(o, df, out + c);
    }
    for (; c < c1; ++c) {
      // As the vector loop: one multiply-add per row, in row order.
      float o = out[c];
      o = a[0] * ScalarF32(rows[0][c]) + o;
      o = a[1] * ScalarF32(rows[1][c]) + o;
      o = a[2] * ScalarF32(rows[2][c]) + o;
      o = a[3] * ScalarF32(rows[3][c]) + o;
      out[c] = o;
    }
  }
  for (; j < n; ++j) {
    const P r = row(j);
    const float a = coef(j);
    const auto va = hn::Set(df, a);
    size_t c = c0;
    for (; c + NF <= c1; c += NF)
      hn::StoreU(hn::MulAdd(va, LoadF32(df, r + c), hn::LoadU(df, out + c)), df, out + c);
    for (; c < c1; ++c) out[c] = a * ScalarF32(r[c]) + out[c];
  }
}

// q4 / q5: SparseVecMatT's contract, block by block. Per gathered row and block, d and m are read
// once (the generic path reads them for every vector): out[c] += (u d) q_c for each of the 4
// rows of a group, after out[c] += sum_r u_r m_r for the group. The per-column arithmetic does
// not depend on c0 and c1, which must be multiples of 32 (whole blocks; every caller's tiles
// are: thread tiles are multiples of 64 columns and end at cols); others take the generic path.
// 1 thread, V [8192, 2304], 1/8 of the rows: 0.265 -> 0.168 ms (int8 0.086, bf16 0.114: the
// widening of codes makes q4 compute-bound here).
template <class P>
HWY_INLINE void BlockSparseVecMatT(P w, const float* HWY_RESTRICT scale, size_t cols,
                                   const float* HWY_RESTRICT u, const int32_t* HWY_RESTRICT idx,
                                   size_t n, float* HWY_RESTRICT out, size_t c0, size_t c1) {
  if (c0 % kQ4Group != 0 || c1 % kQ4Group != 0)
    return SparseVecMatT<P>(w, scale, cols, u, idx, n, out, c0, c1);
  constexpr size_t kBlockBytes = BlockBytes(P());
  const hn::CappedTag<float, 16> df;  // a vector never spans the two nibble halves of a block
  const size_t NF = hn::Lanes(df);
  const size_t row_bytes = cols / kQ4Group * kBlockBytes;
  for (size_t c = c0; c < c1; ++c) out[c] = 0.0f;
  auto row = [&](size_t j) { return w.base + static_cast<size_t>(idx[j]) * row_bytes; };
  // Adds rows j0 .. j0 + kRows - 1 (kRows <= 4) into out[c0, c1).
  auto add_rows = [&](size_t j0, auto rows_tag) {
    constexpr size_t kRows = decltype(rows_tag)::value;
    const uint8_t* b[kRows];
    for (size_t r = 0; r < kRows; ++r) b[r] = row(j0 + r);
    const bool have_next = kRows == 4 && j0 + 8 <= n;
    for (size_t g = c0 / kQ4Group; g < c1 / kQ4Group; ++g) {
      const size_t off = g * kBlockBytes;
      if (have_next && off % 64 < kBlockBytes) {
        for (size_t r = 0; r < 4; ++r) hwy::Prefetch(row(j0 + 4 + r) + off);
      }
      hn::Vec<decltype(df)> vd[kRows];
      float msum = 0.0f;
      for (size_t r = 0; r < kRows; ++r) {
        float d, m;
        BlockParams(P(), b[r] + off, &d, &m);
        vd[r] = hn::Set(df, u[j0 + r] * d);
        msum += u[j0 + r] * m;
      }
      const auto vm = hn::Set(df, msum);
      float* HWY_RESTRICT o = out + g * kQ4Group;
      for (size_t v = 0; v < 16; v += NF) {
        auto lo = hn::Add(hn::LoadU(df, o + v), vm), hi = hn::Add(hn::LoadU(df, o + 16 + v), vm);
        for (size_t r = 0; r < kRows; ++r) {
          hn::Vec<decltype(df)> ql, qh;
          BlockCodes(P(), df, b[r] + off, v, ql, qh);
          lo = hn::MulAdd(vd[r], ql, lo);
          hi = hn::MulAdd(vd[r], qh, hi);
        }
        hn::StoreU(lo, df, o + v);
        hn::StoreU(hi, df, o + 16 + v);
      }
    }
  };
  size_t j = 0;
  for (; j + 4 <= n; j += 4) add_rows(j, std::integral_constant<size_t, 4>());
  for (; j < n; ++j) add_rows(j, std::integral_constant<size_t, 1>());
}
HWY_INLINE void SparseVecMatT(Q4Ptr w, const float* HWY_RESTRICT scale, size_t cols,
                              const float* HWY_RESTRICT u, const int32_t* HWY_RESTRICT idx,
                              size_t n, float* HWY_RESTRICT out, size_t c0, size_t c1) {
  BlockSparseVecMatT(w, scale, cols, u, idx, n, out, c0, c1);
}
HWY_INLINE void SparseVecMatT(Q5Ptr w, const float* HWY_RESTRICT scale, size_t cols,
                              const float* HWY_RESTRICT u, const int32_t* HWY_RESTRICT idx,
                              size_t n, float* HWY_RESTRICT out, size_t c0, size_t c1) {
  BlockSparseVecMatT(w, scale, cols, u, idx, n, out, c0, c1);
}

}  // namespace HWY_NAMESPACE
}  // namespace spark
HWY_AFTER_NAMESPACE();

#endif  // toggle guard
