// matvec-inl.h (per target): out[t, r] = W[r, :] . x[t, :] for rows r in [r0, r1), tokens t < T.
//   W: [rows, cols] row-major, f32 / bf16 / int8 (times scale[r]); x: [T, cols] f32;
//   out: [T, out_stride] f32.
// Register tiles of kR rows x kT tokens: each weight vector is loaded once per kT tokens (the
// point of chunked prefill) and each x vector once per kR rows. The tail of a row is summed in
// scalar code: weights live in a memory map, so we never read (or mask-load) past a row's end.
// Error vs a float64 dot of the same (dequantized) values: <= cols * 2^-24 * sum_i |w_i x_i|.

#if defined(SPARK_OPS_MATVEC_INL_H_) == defined(HWY_TARGET_TOGGLE)
#ifdef SPARK_OPS_MATVEC_INL_H_
#undef SPARK_OPS_MATVEC_INL_H_
#else
#define SPARK_OPS_MATVEC_INL_H_
#endif

#include <stddef.h>
#include <stdint.h>

#include "hwy/highway.h"
#include "ops/load-inl.h"
#include "ops/weights.h"

HWY_BEFORE_NAMESPACE();
namespace spark {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

// out[r + t * out_tok_stride] = rows[r] . x[t] for r < kR, t < kT; each row has `cols` weights.
template <size_t kR, size_t kT, class W>
HWY_INLINE void DotTile(const W* const* rows, size_t cols, const float* HWY_RESTRICT x,
                        size_t x_stride, float* HWY_RESTRICT out, size_t out_tok_stride) {
  const hn::ScalableTag<float> df;
  const size_t NF = hn::Lanes(df);
  hn::Vec<decltype(df)> acc[kR][kT];
  for (size_t r = 0; r < kR; ++r)
    for (size_t t = 0; t < kT; ++t) acc[r][t] = hn::Zero(df);
  size_t i = 0;
  for (; i + NF <= cols; i += NF) {
    hn::Vec<decltype(df)> vw[kR];
    for (size_t r = 0; r < kR; ++r) vw[r] = LoadF32(df, rows[r] + i);
    for (size_t t = 0; t < kT; ++t) {
      const auto vx = hn::LoadU(df, x + t * x_stride + i);
      for (size_t r = 0; r < kR; ++r) acc[r][t] = hn::MulAdd(vw[r], vx, acc[r][t]);
    }
  }
  for (size_t r = 0; r < kR; ++r) {
    for (size_t t = 0; t < kT; ++t) {
      float sum = SumLanes(df, acc[r][t]);
      for (size_t j = i; j < cols; ++j) sum += ScalarF32(rows[r][j]) * x[t * x_stride + j];
      out[r + t * out_tok_stride] = sum;
    }
  }
}

// Rows [r0, r0 + kR) for all T tokens, in token groups of 4 (then 2, 1).
// Contiguous rows w[0, kR) of `cols` weights.
template <size_t kR, class W>
HWY_INLINE void ContiguousRows(const W* w, size_t cols, const W** rows) {
  for (size_t r = 0; r < kR; ++r) rows[r] = w + r * cols;
}

template <size_t kR, class W>
HWY_INLINE void RowsAllTokens(const W* HWY_RESTRICT w, size_t cols, const float* HWY_RESTRICT x,
                              size_t T, float* HWY_RESTRICT out, size_t out_stride) {
  const W* rows[kR];
  ContiguousRows<kR>(w, cols, rows);
  size_t t = 0;
  for (; t + 4 <= T; t += 4)
    DotTile<kR, 4>(rows, cols, x + t * cols, cols, out + t * out_stride, out_stride);
  for (; t + 2 <= T; t += 2)
    DotTile<kR, 2>(rows, cols, x + t * cols, cols, out + t * out_stride, out_stride);
  if (t < T) DotTile<kR, 1>(rows, cols, x + t * cols, cols, out + t * out_stride, out_stride);
}

template <class W>
HWY_INLINE void MatMulRowsT(const W* HWY_RESTRICT w, const float* HWY_RESTRICT scale,
                            size_t cols, const float* HWY_RESTRICT x, size_t T,
                            float* HWY_RESTRICT out, size_t out_stride, size_t r0, size_t r1) {
  size_t r = r0;
  if (T == 1) {
    // Decode: 4 rows share each x load; 4 independent FMA chains.
    for (; r + 4 <= r1; r += 4) {
      const W* rows[4];
      ContiguousRows<4>(w + r * cols, cols, rows);
      DotTile<4, 1>(rows, cols, x, cols, out + r, out_stride);
    }
  } else {
    for (; r + 2 <= r1; r += 2) RowsAllTokens<2>(w + r * cols, cols, x, T, out + r, out_stride);
  }
  for (; r < r1; ++r) RowsAllTokens<1>(w + r * cols, cols, x, T, out + r, out_stride);
  if (scale != nullptr) {
    for (size_t t = 0; t < T; ++t)
      for (size_t rr = r0; rr < r1; ++rr) out[t * out_stride + rr] *= scale[rr];
  }
}


}  // namespace HWY_NAMESPACE
}  // namespace spark
HWY_AFTER_NAMESPACE();

#endif  // toggle guard
