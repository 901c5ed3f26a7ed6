// sparse_batch.cc: dispatch and threading for sparse_batch-inl.h.
#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "ops/sparse_batch.cc"
#include "hwy/foreach_target.h"  // IWYU pragma: keep

#include "hwy/highway.h"
#include "ops/sparse_batch-inl.h"

HWY_BEFORE_NAMESPACE();
namespace spark {
namespace HWY_NAMESPACE {

// xb: x as bf16 bits when bf16 / int8 weights take the AVX512_BF16 tile (ChunkInput), else null
// (x: then the bf16-rounded values for those types in a chunk).
HWY_NOINLINE void CsrMaskedRows(const MatRef& w, const float* x, const uint16_t* xb,
                                const int32_t* offsets, const int32_t* tokens, size_t r0, size_t r1,
                                float* out) {
#if HWY_TARGET == HWY_AVX3
  if (xb != nullptr && w.type == WeightType::kBF16) {
    return CsrMaskedRowsBF16(static_cast<const uint16_t*>(w.data), nullptr, w.cols, xb, offsets,
                             tokens, r0, r1, out);
  }
  if (xb != nullptr && w.type == WeightType::kI8) {
    return CsrMaskedRowsBF16(static_cast<const int8_t*>(w.data), w.scale, w.cols, xb, offsets,
                             tokens, r0, r1, out);
  }
#else
  (void)xb;
#endif
  VisitWeights(w, [&](auto p, const float* scale) {
    CsrMaskedRowsT(p, scale, w.cols, x, offsets, tokens, r0, r1, out);
  });
}

// bf16_u: the pairs' u are bf16 values (a chunk of bf16 weights), which the AVX512_BF16 tile
// takes where the CPU has it.
HWY_NOINLINE void TokenSparseCols(const MatRef& w, const TokenPair* pairs,
                                  const int32_t* block_start, size_t T, float* out, size_t c0,
                                  size_t c1, size_t a0, bool bf16_u) {
  if (bf16_u && w.type == WeightType::kBF16 && UseBF16Tile()) {
    return TokenSparseColsT<true>(static_cast<const hwy::bfloat16_t*>(w.data), w.rows, w.cols,
                                  pairs, block_start, T, out, c0, c1, a0);
  }
  VisitWeights(w, [&](auto p, const float*) {
    TokenSparseColsT<false>(p, w.rows, w.cols, pairs, block_start, T, out, c0, c1, a0);
  });
}

HWY_NOINLINE void MultiSparseCols(const MatRef& w, const float* u, const int32_t* idx, size_t n,
                                  size_t G, float* out, size_t c0, size_t c1) {
  VisitWeights(w, [&](auto p, const float* scale) {
    MultiSparseVecMatT(p, scale, w.cols, u, idx, n, G, out, c0, c1);
  });
}

}  // namespace HWY_NAMESPACE
}  // namespace spark
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
#include <algorithm>
#include <vector>

#include "ops/matvec.h"
#include "ops/sparse_batch.h"
#include "util/threading.h"

namespace spark {
HWY_EXPORT(CsrMaskedRows);
HWY_EXPORT(TokenSparseCols);
HWY_EXPORT(MultiSparseCols);

void MultiSparseVecMatRange(const MatRef& w, const float* u, const int32_t* idx, size_t n,
                            size_t G, float* out, size_t c0, size_t c1) {
  HWY_DYNAMIC_DISPATCH(MultiSparseCols)(w, u, idx, n, G, out, c0, c1);
}

void CsrMaskedMatMul(ThreadPool& pool, const MatRef& w, const float* x, size_t T,
                     const int32_t* offsets, const int32_t* tokens, float* out) {
  const auto fn = HWY_DYNAMIC_DISPATCH(CsrMaskedRows);
  const ChunkInput in(x, T * w.cols, T > 1 && RoundsXToBF16(w.type));
  const float* xw = in.X(w.type);
  const uint16_t* xb = in.Bits(w.type);
  pool.ParallelFor(w.rows, 64, [&](size_t r0, size_t r1, int) { fn(w, xw, xb, offsets, tokens, r0, r1, out); });
}

void CsrSparseMatMul(ThreadPool& pool, const MatRef& w, const float* u, const int32_t* offsets,
                     const int32_t* tokens, size_t T, float* out) {
  // Transpose the pairs to token-major lists (counting sort over tokens; rows are visited in
  // ascending order, so each token's list stays ascending), int8 scales folded into u, and
  // note where each token's list enters each block of kSparseRowBlock neurons. Per caller
  // thread scratch: callers may run concurrently (threading.h), and a chunk's ~70k pairs would
  // otherwise cost a fresh 0.5 MiB allocation (page faults) per call.
  static thread_local std::vector<TokenPair> pairs;
  static thread_local std::vector<int32_t> start;
  static thread_local std::vector<float> rounded;
  const size_t rows = w.rows, nnz = static_cast<size_t>(offsets[rows]);
  // A chunk's u rounded to bf16 for bf16 / int8 weights, as a chunk matmul rounds its x; each
  // product with a bf16 weight is then exact (int8: u's scale is folded in after rounding).
  const bool round = T > 1 && RoundsXToBF16(w.type);
  if (round) {
    if (rounded.size() < nnz) rounded.resize(nnz);
    RoundToBF16Values(u, nnz, rounded.data());
    u = rounded.data();
  }
  const size_t blocks = (rows + kSparseRowBlock - 1) / kSparseRowBlock;
  pairs.resize(nnz);
  start.assign(T * (blocks + 1), 0);
  std::vector<int32_t> cursor(T + 1, 0);
  for (size_t k = 0; k < nnz; ++k) ++cursor[static_cast<size_t>(tokens[k]) + 1];
  for (size_t t = 0; t < T; ++t) cursor[t + 1] += cursor[t];
  for (size_t b = 0; b < blocks; ++b) {
    for (size_t t = 0; t < T; ++t) start[t * (blocks + 1) + b] = cursor[t];
    const size_t r1 = std::min(rows, (b + 1) * kSparseRowBlock);
    for (size_t r = b * kSparseRowBlock; r < r1; ++r) {
      const float s = w.scale ? w.scale[r] : 1.0f;
      for (int32_t k = offsets[r]; k < offsets[r + 1]; ++k) {
        const float uk = w.scale ? u[k] * s : u[k];
        pairs[static_cast<size_t>(cursor[static_cast<size_t>(tokens[k])]++)] =
            TokenPair{static_cast<int32_t>(r), uk};
      }
    }
  }
  for (size_t t = 0; t < T; ++t) start[t * (blocks + 1) + blocks] = cursor[t];
  const auto fn = HWY_DYNAMIC_DISPATCH(TokenSparseCols);
  // Plain pointers: inside the lambda the thread_local names would be the workers' own (empty).
  const TokenPair* pp = pairs.data();
  const int32_t* ps = start.data();
  // The panel grid's origin a0 (TokenSparseColsT): bf16 rows of whole cache lines whose
  // start is not 64-byte aligned; else 0.
  size_t a0 = 0;
  const size_t misalign = reinterpret_cast<uintptr_t>(w.data) % 64;
  if (w.type == WeightType::kBF16 && w.RowBytes() % 64 == 0 && misalign % 2 == 0)
    a0 = std::min(w.cols, (64 - misalign) % 64 / 2);
  // Parts of whole panels: a part's last panel narrower than 8 vectors would run on fewer
  // accumulators (a 64-column remainder on AVX3: ~1/5 of the columns at a fraction of the
  // rate). The first part also takes the columns [0, a0).
  pool.ParallelFor(w.cols - a0, kSparsePanel, [&](size_t c0, size_t c1, int) {
    fn(w, pp, ps, T, out, c0 == 0 ? 0 : a0 + c0, a0 + c1, a0, round);
  });
}

}  // namespace spark
#endif  // HWY_ONCE
