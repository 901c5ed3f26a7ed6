// sparse-inl.h (per target): vector-masked matvec and column-tiled sparse vec-mat.
// W: [rows, cols] row-major (neuron-major for Spark), f32 / bf16 / int8 (times scale[row]).

#if defined(SPARK_OPS_SPARSE_INL_H_) == defined(HWY_TARGET_TOGGLE)
#ifdef SPARK_OPS_SPARSE_INL_H_
#undef SPARK_OPS_SPARSE_INL_H_
#else
#define SPARK_OPS_SPARSE_INL_H_
#endif

#include <stddef.h>
#include <stdint.h>

#include "hwy/cache_control.h"
#include "hwy/highway.h"
#include "ops/load-inl.h"
#include "ops/matvec-inl.h"
#include "ops/weights.h"

HWY_BEFORE_NAMESPACE();
namespace spark {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

// out[j] = W[idx[j]] . x for j in [j0, j1). Four gathered rows share each x load.
template <class W>
HWY_INLINE void MaskedMatVecT(const W* HWY_RESTRICT w, const float* HWY_RESTRICT scale,
                              size_t cols, const float* HWY_RESTRICT x,
                              const int32_t* HWY_RESTRICT idx, size_t j0, size_t j1,
                              float* HWY_RESTRICT out) {
  size_t j = j0;
  for (; j + 4 <= j1; j += 4) {
    const W* rows[4];
    for (size_t r = 0; r < 4; ++r) rows[r] = w + static_cast<size_t>(idx[j + r]) * cols;
    if (j + 8 <= j1) {  // the next rows are scattered: start their first lines early
      for (size_t r = 0; r < 4; ++r)
        hwy::Prefetch(w + static_cast<size_t>(idx[j + 4 + r]) * cols);
    }
    DotTile<4, 1>(rows, cols, x, cols, out + j, 1);
  }
  for (; j < j1; ++j) {
    const W* row = w + static_cast<size_t>(idx[j]) * cols;
    DotTile<1, 1>(&row, cols, x, cols, out + j, 1);
  }
  if (scale != nullptr) {
    for (j = j0; j < j1; ++j) out[j] *= scale[idx[j]];
  }
}


// out[c] = sum_j coef_j * W[idx[j], c] for c in [c0, c1), coef_j = u[j] (* scale[idx[j]]).
// Rows are visited in groups of 4 so each out vector is loaded and stored once per 4 rows; the
// tile of out stays in L1 while each row segment streams through.
template <class W>
HWY_INLINE void SparseVecMatT(const W* HWY_RESTRICT w, const float* HWY_RESTRICT scale,
                              size_t cols, const float* HWY_RESTRICT u,
                              const int32_t* HWY_RESTRICT idx, size_t n, float* HWY_RESTRICT out,
                              size_t c0, size_t c1) {
  const hn::ScalableTag<float> df;
  const size_t NF = hn::Lanes(df);
  for (size_t c = c0; c < c1; ++c) out[c] = 0.0f;
  auto coef = [&](size_t j) {
    return scale ? u[j] * scale[idx[j]] : u[j];
  };
  size_t j = 0;
  for (; j + 4 <= n; j += 4) {
    const W* rows[4];
    float a[4];
    for (size_t r = 0; r < 4; ++r) {
      rows[r] = w + static_cast<size_t>(idx[j + r]) * cols;
      a[r] = coef(j + r);
    }
    const auto a0 = hn::Set(df, a[0]), a1 = hn::Set(df, a[1]);
    const auto a2 = hn::Set(df, a[2]), a3 = hn::Set(df, a[3]);
    size_t c = c0;
    for (; c + NF <= c1; c += NF) {
      auto o = hn::LoadU(df, out + c);
      o = hn::MulAdd(a0, LoadF32(df, rows[0] + c), o);
      o = hn::MulAdd(a1, LoadF32(df, rows[1] + c), o);
      o = hn::MulAdd(a2, LoadF32(df, rows[2] + c), o);
      o = hn::MulAdd(a3, LoadF32(df, rows[3] + c), o);
      hn::StoreU(o, df, out + c);
    }
    for (; c < c1; ++c) {
      out[c] += a[0] * ScalarF32(rows[0][c]) + a[1] * ScalarF32(rows[1][c]) +
                a[2] * ScalarF32(rows[2][c]) + a[3] * ScalarF32(rows[3][c]);
    }
  }
  for (; j < n; ++j) {
    const W* row = w + static_cast<size_t>(idx[j]) * cols;
    const float a = coef(j);
    const auto va = hn::Set(df, a);
    size_t c = c0;
    for (; c + NF <= c1; c += NF)
      hn::StoreU(hn::MulAdd(va, LoadF32(df, row + c), hn::LoadU(df, out + c)), df, out + c);
    for (; c < c1; ++c) out[c] += a * ScalarF32(row[c]);
  }
}


}  // namespace HWY_NAMESPACE
}  // namespace spark
HWY_AFTER_NAMESPACE();

#endif  // toggle guard
