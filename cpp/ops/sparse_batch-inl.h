// sparse_batch-inl.h (per target): neuron-grouped (CSR) masked matmul and sparse matmul.

#if defined(SPARK_OPS_SPARSE_BATCH_INL_H_) == defined(HWY_TARGET_TOGGLE)
#ifdef SPARK_OPS_SPARSE_BATCH_INL_H_
#undef SPARK_OPS_SPARSE_BATCH_INL_H_
#else
#define SPARK_OPS_SPARSE_BATCH_INL_H_
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

// Column block of the chunk kernels: 256 f32 = 1 KiB per token row, so a block of all 64
// tokens' activations (64 KiB) stays in L1/L2 while every neuron's row segment is applied to it.
// Without blocking each (neuron, token) pair re-read a whole activation row from L2, which
// measured ~10x slower than the arithmetic.
constexpr size_t kChunkColBlock = 256;

// out[j] += row[0, len) . xs[j][0, len) for kT token vectors; the row is loaded once.
template <size_t kT, class P>
HWY_INLINE void RowDotTokensAcc(P row, size_t len, const float* const* xs,
                                float* HWY_RESTRICT out) {
  const hn::ScalableTag<float> df;
  const size_t NF = hn::Lanes(df);
  hn::Vec<decltype(df)> acc[kT];
  for (size_t t = 0; t < kT; ++t) acc[t] = hn::Zero(df);
  size_t i = 0;
  for (; i + NF <= len; i += NF) {
    const auto vw = LoadF32(df, row + i);
    for (size_t t = 0; t < kT; ++t) acc[t] = hn::MulAdd(vw, hn::LoadU(df, xs[t] + i), acc[t]);
  }
  for (size_t t = 0; t < kT; ++t) {
    float sum = SumLanes(df, acc[t]);
    for (size_t j = i; j < len; ++j) sum += ScalarF32(row[j]) * xs[t][j];
    out[t] += sum;
  }
}

template <class P>
HWY_INLINE void CsrMaskedRowsT(P w, const float* HWY_RESTRICT scale,
                               size_t cols, const float* HWY_RESTRICT x,
                               const int32_t* HWY_RESTRICT offsets,
                               const int32_t* HWY_RESTRICT tokens, size_t r0, size_t r1,
                               float* HWY_RESTRICT out) {
  const size_t k_begin = static_cast<size_t>(offsets[r0]), k_end = static_cast<size_t>(offsets[r1]);
  for (size_t k = k_begin; k < k_end; ++k) out[k] = 0.0f;
  for (size_t cb = 0; cb < cols; cb += kChunkColBlock) {
    const size_t len = cols - cb < kChunkColBlock ? cols - cb : kChunkColBlock;
    for (size_t r = r0; r < r1; ++r) {
      const P row = w + r * cols + cb;
      size_t k = static_cast<size_t>(offsets[r]);
      const size_t end = static_cast<size_t>(offsets[r + 1]);
      const float* xs[4];
      for (; k + 4 <= end; k += 4) {
        for (size_t j = 0; j < 4; ++j) xs[j] = x + static_cast<size_t>(tokens[k + j]) * cols + cb;
        RowDotTokensAcc<4>(row, len, xs, out + k);
      }
      for (; k < end; ++k) {
        xs[0] = x + static_cast<size_t>(tokens[k]) * cols + cb;
        RowDotTokensAcc<1>(row, len, xs, out + k);
      }
    }
  }
  if (scale != nullptr) {
    for (size_t r = r0; r < r1; ++r)
      for (size_t k = static_cast<size_t>(offsets[r]); k < static_cast<size_t>(offsets[r + 1]); ++k)
        out[k] *= scale[r];
  }
}

// Columns [c0, c1) of out [T, cols]: zeroed, then, block by block, every neuron's row segment
// is loaded once per vector and added into each of its tokens' outputs.
template <class P>
HWY_INLINE void CsrSparseColsT(P w, const float* HWY_RESTRICT scale,
                               size_t rows, size_t cols, const float* HWY_RESTRICT u,
                               const int32_t* HWY_RESTRICT offsets,
                               const int32_t* HWY_RESTRICT tokens, size_t T,
                               float* HWY_RESTRICT out, size_t c0, size_t c1) {
  const hn::ScalableTag<float> df;
  const size_t NF = hn::Lanes(df);
  for (size_t t = 0; t < T; ++t)
    for (size_t c = c0; c < c1; ++c) out[t * cols + c] = 0.0f;
  for (size_t b0 = c0; b0 < c1; b0 += kChunkColBlock) {
    const size_t b1 = c1 - b0 < kChunkColBlock ? c1 : b0 + kChunkColBlock;
    for (size_t r = 0; r < rows; ++r) {
      const size_t k0 = static_cast<size_t>(offsets[r]), k1 = static_cast<size_t>(offsets[r + 1]);
      if (k0 == k1) continue;
      const P row = w + r * cols;
      const float s = scale ? scale[r] : 1.0f;
      size_t c = b0;
      // Four vectors of the row stay in registers while every token of the neuron takes them.
      for (; c + 4 * NF <= b1; c += 4 * NF) {
        const auto v0 = LoadF32(df, row + c), v1 = LoadF32(df, row + c + NF);
        const auto v2 = LoadF32(df, row + c + 2 * NF), v3 = LoadF32(df, row + c + 3 * NF);
        for (size_t k = k0; k < k1; ++k) {
          float* o = out + static_cast<size_t>(tokens[k]) * cols + c;
          const auto a = hn::Set(df, u[k] * s);
          hn::StoreU(hn::MulAdd(a, v0, hn::LoadU(df, o)), df, o);
          hn::StoreU(hn::MulAdd(a, v1, hn::LoadU(df, o + NF)), df, o + NF);
          hn::StoreU(hn::MulAdd(a, v2, hn::LoadU(df, o + 2 * NF)), df, o + 2 * NF);
          hn::StoreU(hn::MulAdd(a, v3, hn::LoadU(df, o + 3 * NF)), df, o + 3 * NF);
        }
      }
      for (; c + NF <= b1; c += NF) {
        const auto v = LoadF32(df, row + c);
        for (size_t k = k0; k < k1; ++k) {
          float* o = out + static_cast<size_t>(tokens[k]) * cols + c;
          hn::StoreU(hn::MulAdd(hn::Set(df, u[k] * s), v, hn::LoadU(df, o)), df, o);
        }
      }
      for (; c < b1; ++c) {
        const float v = ScalarF32(row[c]);
        for (size_t k = k0; k < k1; ++k) out[static_cast<size_t>(tokens[k]) * cols + c] += u[k] * s * v;
      }
    }
  }
}

template <class P>
HWY_INLINE void MultiSparseVecMatT(P w, const float* HWY_RESTRICT scale,
                                   size_t cols, const float* HWY_RESTRICT u,
                                   const int32_t* HWY_RESTRICT idx, size_t n, size_t G,
                                   float* HWY_RESTRICT out, size_t c0, size_t c1) {
  const hn::ScalableTag<float> df;
  const size_t NF = hn::Lanes(df);
  for (size_t g = 0; g < G; ++g)
    for (size_t c = c0; c < c1; ++c) out[g * cols + c] = 0.0f;
  for (size_t j = 0; j < n; ++j) {
    const size_t r = static_cast<size_t>(idx[j]);
    const P row = w + r * cols;
    const float s = scale ? scale[r] : 1.0f;
    size_t c = c0;
    for (; c + NF <= c1; c += NF) {
      const auto v = LoadF32(df, row + c);
      for (size_t g = 0; g < G; ++g) {
        float* o = out + g * cols + c;
        hn::StoreU(hn::MulAdd(hn::Set(df, u[g * n + j] * s), v, hn::LoadU(df, o)), df, o);
      }
    }
    for (; c < c1; ++c) {
      const float v = ScalarF32(row[c]) * s;
      for (size_t g = 0; g < G; ++g) out[g * cols + c] += u[g * n + j] * v;
    }
  }
}

}  // namespace HWY_NAMESPACE
}  // namespace spark
HWY_AFTER_NAMESPACE();

#endif  // toggle guard
