// sparse_batch-inl.h (per target): neuron-grouped (CSR) masked matmul and sparse matmul.

#if defined(SPARK_OPS_SPARSE_BATCH_INL_H_) == defined(HWY_TARGET_TOGGLE)
#ifdef SPARK_OPS_SPARSE_BATCH_INL_H_
#undef SPARK_OPS_SPARSE_BATCH_INL_H_
#else
#define SPARK_OPS_SPARSE_BATCH_INL_H_
#endif

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <algorithm>
#include <vector>

#include "hwy/cache_control.h"
#include "hwy/highway.h"
#include "ops/matvec-inl.h"
#include "ops/reduce-inl.h"
#include "ops/sparse_batch.h"
#include "weights/load-inl.h"
#include "weights/types.h"

HWY_BEFORE_NAMESPACE();
namespace spark {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

// A prefetch into L2 (prefetcht1): for data wanted a while later, which an L1 prefetch would
// bring in too early, evicting what is in use.
HWY_INLINE void PrefetchL2(const void* p) {
#if HWY_ARCH_X86
  _mm_prefetch(static_cast<const char*>(p), _MM_HINT_T1);
#else
  hwy::Prefetch(p);
#endif
}

// Prefetches the n weights at p into L2, one prefetch per cache line. The token-major V walk reads
// short segments of scattered rows that the hardware prefetcher does not run ahead of: fetching
// the next block's segments during the current block made V 1.5x faster from DRAM (13.7 -> 20.8
// GFLOP/s per core, bf16, AVX3). Into L2 rather than L1, with the blocks walked over the
// thread's whole column range: V [13824, 2304] bf16 from DRAM, T = 64, 2 threads, Zen 4 VM,
// 12.4 -> 9.3 ms (bench/results/spark-prefill-bf16-2026-12-07.txt).
// K2 reads whole rows in order, and still gains from software prefetch: RowDotTokens fetches
// the next row line by line as it walks its own (K2 [13824, 1280] bf16 from DRAM, T=64, 8 %,
// AVX3 on the Zen 4 VM, GFLOP/s: 1 thread 25-28 -> 35, 2 threads 44-54 -> 66-68;
// bench/results/kernels-chunk-k2-prefetch-2026-12-07.txt); the next row two ahead was no
// better; into L2 rather than L1 on the AVX512_BF16 tile (RowDotTokensBF16): 2.07 -> 1.88 ms.
template <class P>
HWY_INLINE void PrefetchElems(P p, size_t n) {
  const uint8_t* b = BytePtr(p);
  const size_t bytes = BytesOf(p, n);
  for (size_t i = 0; i < bytes; i += 64) PrefetchL2(b + i);
}

// out[j] = row[0, cols) . xs[j][0, cols) for kT token vectors (and a prefetch of `next`, the
// next row's bytes, when given): the row is loaded once per
// vector for all of them, and each pair's sum stays in registers (the loops over registers are
// unrolled explicitly: at -O2 GCC kept the accumulator arrays on the stack, a store-to-load
// round trip per FMA) over the whole row (one
// horizontal sum per pair; the earlier 256-column blocks paid one per block). kU row vectors per
// step keep >= 4 independent FMA chains when few tokens share the row. x ([T, cols], 0.3-0.6
// MiB at 2B shapes) is read from L2 either way: a column block of all 64 tokens already
// exceeded L1.
template <size_t kT, class P>
HWY_INLINE void RowDotTokens(P row, size_t cols, const float* const* xs,
                             float* HWY_RESTRICT out, const uint8_t* next = nullptr) {
  const hn::ScalableTag<float> df;
  const size_t NF = hn::Lanes(df);
  constexpr size_t kU = kT >= 4 ? 1 : kT == 1 ? 4 : 2;
  hn::Vec<decltype(df)> acc[kU][kT];
  HWY_UNROLL(8)
  for (size_t u = 0; u < kU; ++u)
    HWY_UNROLL(8)
    for (size_t t = 0; t < kT; ++t) acc[u][t] = hn::Zero(df);
  size_t i = 0;
  const size_t step_bytes = BytesOf(row, kU * NF);
  for (; i + kU * NF <= cols; i += kU * NF) {
    if (next != nullptr) {  // each line of the next row once, as this row reaches it
      const size_t off = BytesOf(row, i);
      for (size_t b = (off + 63) / 64 * 64; b < off + step_bytes; b += 64) hwy::Prefetch(next + b);
    }
    HWY_UNROLL(8)
    for (size_t u = 0; u < kU; ++u) {
      const auto vw = LoadF32(df, row + i + u * NF);
      HWY_UNROLL(8)
      for (size_t t = 0; t < kT; ++t)
        acc[u][t] = hn::MulAdd(vw, hn::LoadU(df, xs[t] + i + u * NF), acc[u][t]);
    }
  }
  for (; i + NF <= cols; i += NF) {
    const auto vw = LoadF32(df, row + i);
    HWY_UNROLL(8)
    for (size_t t = 0; t < kT; ++t) acc[0][t] = hn::MulAdd(vw, hn::LoadU(df, xs[t] + i), acc[0][t]);
  }
  HWY_UNROLL(8)
  for (size_t t = 0; t < kT; ++t) {
    auto v = acc[0][t];
    HWY_UNROLL(8)
    for (size_t u = 1; u < kU; ++u) v = hn::Add(v, acc[u][t]);
    float sum = SumLanes(df, v);
    for (size_t j = i; j < cols; ++j) sum += ScalarF32(row[j]) * xs[t][j];
    out[t] = sum;
  }
}

// Most tokens that share a row in one register pass (8 accumulators + row + x: 10 of AVX2's 16
// vector registers).
constexpr size_t kRowTokens = 8;

// Tokens of the next register pass over a row, `rem` of its tokens left: even passes, 9 tokens
// as 5 + 4, not 8 + 1 (a lone token is load-bound).
HWY_INLINE size_t PassTokens(size_t rem) {
  const size_t passes = (rem + kRowTokens - 1) / kRowTokens;
  return (rem + passes - 1) / passes;
}

template <class P>
HWY_INLINE void CsrMaskedRowsT(P w, const float* HWY_RESTRICT scale,
                               size_t cols, const float* HWY_RESTRICT x,
                               const int32_t* HWY_RESTRICT offsets,
                               const int32_t* HWY_RESTRICT tokens, size_t r0, size_t r1,
                               float* HWY_RESTRICT out) {
  for (size_t r = r0; r < r1; ++r) {
    const P row = w + r * cols;
    const uint8_t* next = r + 1 < r1 ? BytePtr(w + (r + 1) * cols) : nullptr;
    size_t k = static_cast<size_t>(offsets[r]);
    const size_t end = static_cast<size_t>(offsets[r + 1]);
    while (k < end) {
      const size_t n = PassTokens(end - k);
      const float* xs[kRowTokens];
      for (size_t j = 0; j < n; ++j) xs[j] = x + static_cast<size_t>(tokens[k + j]) * cols;
      switch (n) {
        case 1: RowDotTokens<1>(row, cols, xs, out + k, next); break;
        case 2: RowDotTokens<2>(row, cols, xs, out + k, next); break;
        case 3: RowDotTokens<3>(row, cols, xs, out + k, next); break;
        case 4: RowDotTokens<4>(row, cols, xs, out + k, next); break;
        case 5: RowDotTokens<5>(row, cols, xs, out + k, next); break;
        case 6: RowDotTokens<6>(row, cols, xs, out + k, next); break;
        case 7: RowDotTokens<7>(row, cols, xs, out + k, next); break;
        default: RowDotTokens<8>(row, cols, xs, out + k, next); break;
      }
      if (scale != nullptr)
        for (size_t j = 0; j < n; ++j) out[k + j] *= scale[r];
      k += n;
      next = nullptr;  // one pass per row prefetches the next row
    }
  }
}

#if HWY_TARGET == HWY_AVX3
// RowDotTokens on the AVX512_BF16 tile (matvec-inl.h DotTileBF16): a bf16 row (bits) against
// kT tokens' x as bf16 bits, 32 products per vdpbf16ps, each exact, summed in f32. Against the
// f32 FMAs this halves the instructions per product and the x bytes read from L2, and drops
// the row's bf16 -> f32 decode. next: the next row's raw bytes (elem_bytes per weight), one
// prefetch per 64 of them as this row's loads reach the same offset.
template <size_t kT>
SPARK_BF16_TILE_ATTR HWY_INLINE void RowDotTokensBF16(const uint16_t* HWY_RESTRICT row, size_t cols,
                                                      const uint16_t* const* xs, float* HWY_RESTRICT out,
                                                      const uint8_t* next, size_t elem_bytes) {
  constexpr size_t kU = kT >= 4 ? 1 : kT == 1 ? 4 : 2;
  __m512 acc[kU][kT];
  HWY_UNROLL(8)
  for (size_t u = 0; u < kU; ++u)
    HWY_UNROLL(8)
    for (size_t t = 0; t < kT; ++t) acc[u][t] = _mm512_setzero_ps();
  size_t i = 0;
  for (; i + 32 * kU <= cols; i += 32 * kU) {
    if (next != nullptr) {
      const size_t off = i * elem_bytes;
      for (size_t b = (off + 63) / 64 * 64; b < off + 32 * kU * elem_bytes; b += 64) PrefetchL2(next + b);
    }
    HWY_UNROLL(8)
    for (size_t u = 0; u < kU; ++u) {
      const __m512bh vw = (__m512bh)_mm512_loadu_si512(row + i + 32 * u);
      HWY_UNROLL(8)
      for (size_t t = 0; t < kT; ++t)
        acc[u][t] = _mm512_dpbf16_ps(acc[u][t], vw, (__m512bh)_mm512_loadu_si512(xs[t] + i + 32 * u));
    }
  }
  for (; i + 32 <= cols; i += 32) {
    const __m512bh vw = (__m512bh)_mm512_loadu_si512(row + i);
    HWY_UNROLL(8)
    for (size_t t = 0; t < kT; ++t)
      acc[0][t] = _mm512_dpbf16_ps(acc[0][t], vw, (__m512bh)_mm512_loadu_si512(xs[t] + i));
  }
  HWY_UNROLL(8)
  for (size_t t = 0; t < kT; ++t) {
    __m512 v = acc[0][t];
    HWY_UNROLL(8)
    for (size_t u = 1; u < kU; ++u) v = _mm512_add_ps(v, acc[u][t]);
    float sum = _mm512_reduce_add_ps(v);
    for (size_t j = i; j < cols; ++j) sum += F32FromBF16Bits(row[j]) * F32FromBF16Bits(xs[t][j]);
    out[t] = sum;
  }
}

// CsrMaskedRowsT on the AVX512_BF16 tile, x as bf16 bits [T, cols]: W is bf16 (bits) or int8,
// whose listed rows are converted to bf16 once each (exact), with the row scale after.
template <class W>
SPARK_BF16_TILE_ATTR HWY_NOINLINE void CsrMaskedRowsBF16(const W* w, const float* HWY_RESTRICT scale,
                                                         size_t cols, const uint16_t* HWY_RESTRICT xb,
                                                         const int32_t* HWY_RESTRICT offsets,
                                                         const int32_t* HWY_RESTRICT tokens, size_t r0,
                                                         size_t r1, float* HWY_RESTRICT out) {
  thread_local std::vector<uint16_t> converted;
  if (sizeof(W) == 1 && converted.size() < cols) converted.resize(cols);
  for (size_t r = r0; r < r1; ++r) {
    size_t k = static_cast<size_t>(offsets[r]);
    const size_t end = static_cast<size_t>(offsets[r + 1]);
    if (k == end) continue;
    const uint16_t* row;
    if constexpr (sizeof(W) == 1) {
      I8ToBF16(w + r * cols, cols, converted.data());
      row = converted.data();
    } else {
      row = w + r * cols;
    }
    const uint8_t* next = r + 1 < r1 ? reinterpret_cast<const uint8_t*>(w + (r + 1) * cols) : nullptr;
    while (k < end) {
      const size_t n = PassTokens(end - k);
      const uint16_t* xs[kRowTokens];
      for (size_t j = 0; j < n; ++j) xs[j] = xb + static_cast<size_t>(tokens[k + j]) * cols;
      switch (n) {
        case 1: RowDotTokensBF16<1>(row, cols, xs, out + k, next, sizeof(W)); break;
        case 2: RowDotTokensBF16<2>(row, cols, xs, out + k, next, sizeof(W)); break;
        case 3: RowDotTokensBF16<3>(row, cols, xs, out + k, next, sizeof(W)); break;
        case 4: RowDotTokensBF16<4>(row, cols, xs, out + k, next, sizeof(W)); break;
        case 5: RowDotTokensBF16<5>(row, cols, xs, out + k, next, sizeof(W)); break;
        case 6: RowDotTokensBF16<6>(row, cols, xs, out + k, next, sizeof(W)); break;
        case 7: RowDotTokensBF16<7>(row, cols, xs, out + k, next, sizeof(W)); break;
        default: RowDotTokensBF16<8>(row, cols, xs, out + k, next, sizeof(W)); break;
      }
      if (scale != nullptr)
        for (size_t j = 0; j < n; ++j) out[k + j] *= scale[r];
      k += n;
      next = nullptr;
    }
  }
}

// The bf16 bits of a bf16-rounded f32 value.
HWY_INLINE uint32_t BF16BitsOfRounded(float f) {
  uint32_t b;
  memcpy(&b, &f, 4);
  return b >> 16;
}

// TokenTile on the AVX512_BF16 tile, kG groups of 32 columns at c (2 kG accumulators of 16),
// bf16 rows against pair coefficients already rounded to bf16 (as f32 values). vdpbf16ps sums
// the products of adjacent bf16 pairs into one f32 lane, so pairs of neurons (e, e + 1) meet:
// their rows' 32 columns interleaved (vpunpck{l,h}wd: row e's weight in the even half of each
// lane, row e + 1's in the odd), against (u_e, u_e+1) broadcast. The interleave works within
// 128-bit lanes: accumulator 2g holds columns 8q + {0..3}, 2g + 1 columns 8q + {4..7} of 128-bit
// lane q, and o keeps that order until UnpermuteBF16Cols. An odd last pair meets a zero row.
// Not inlined: its target is a superset of the caller's.
template <size_t kG>
SPARK_BF16_TILE_ATTR HWY_NOINLINE void TokenTileBF16(const uint16_t* HWY_RESTRICT w, size_t cols,
                                                     const TokenPair* HWY_RESTRICT pairs, size_t n,
                                                     size_t c, float* HWY_RESTRICT o) {
  __m512 acc[2 * kG];
  HWY_UNROLL(8)
  for (size_t v = 0; v < 2 * kG; ++v) acc[v] = _mm512_loadu_ps(o + 16 * v);
  size_t e = 0;
  for (; e + 2 <= n; e += 2) {
    const uint16_t* ra = w + static_cast<size_t>(pairs[e].row) * cols + c;
    const uint16_t* rb = w + static_cast<size_t>(pairs[e + 1].row) * cols + c;
    const __m512bh coef = (__m512bh)_mm512_set1_epi32(static_cast<int32_t>(
        BF16BitsOfRounded(pairs[e].u) | (BF16BitsOfRounded(pairs[e + 1].u) << 16)));
    HWY_UNROLL(8)
    for (size_t g = 0; g < kG; ++g) {
      const __m512i a = _mm512_loadu_si512(ra + 32 * g), b = _mm512_loadu_si512(rb + 32 * g);
      acc[2 * g] = _mm512_dpbf16_ps(acc[2 * g], (__m512bh)_mm512_unpacklo_epi16(a, b), coef);
      acc[2 * g + 1] = _mm512_dpbf16_ps(acc[2 * g + 1], (__m512bh)_mm512_unpackhi_epi16(a, b), coef);
    }
  }
  if (e < n) {
    const uint16_t* ra = w + static_cast<size_t>(pairs[e].row) * cols + c;
    const __m512bh coef = (__m512bh)_mm512_set1_epi32(static_cast<int32_t>(BF16BitsOfRounded(pairs[e].u)));
    const __m512i zero = _mm512_setzero_si512();
    HWY_UNROLL(8)
    for (size_t g = 0; g < kG; ++g) {
      const __m512i a = _mm512_loadu_si512(ra + 32 * g);
      acc[2 * g] = _mm512_dpbf16_ps(acc[2 * g], (__m512bh)_mm512_unpacklo_epi16(a, zero), coef);
      acc[2 * g + 1] = _mm512_dpbf16_ps(acc[2 * g + 1], (__m512bh)_mm512_unpackhi_epi16(a, zero), coef);
    }
  }
  HWY_UNROLL(8)
  for (size_t v = 0; v < 2 * kG; ++v) _mm512_storeu_ps(o + 16 * v, acc[v]);
}

// Columns [c, c + 32 groups) of o from TokenTileBF16's order back to plain order.
HWY_INLINE void UnpermuteBF16Cols(float* HWY_RESTRICT o, size_t groups) {
  const __m512i lo = _mm512_setr_epi32(0, 1, 2, 3, 16, 17, 18, 19, 4, 5, 6, 7, 20, 21, 22, 23);
  const __m512i hi = _mm512_setr_epi32(8, 9, 10, 11, 24, 25, 26, 27, 12, 13, 14, 15, 28, 29, 30, 31);
  for (size_t g = 0; g < groups; ++g) {
    const __m512 p0 = _mm512_loadu_ps(o + 32 * g), p1 = _mm512_loadu_ps(o + 32 * g + 16);
    _mm512_storeu_ps(o + 32 * g, _mm512_permutex2var_ps(p0, lo, p1));
    _mm512_storeu_ps(o + 32 * g + 16, _mm512_permutex2var_ps(p0, hi, p1));
  }
}
#endif  // HWY_TARGET == HWY_AVX3

// out[t, c..c + kV NF) += sum over pairs of token t in this block (ascending neuron) of
// u * W[row, ...]: the token's output vectors stay in registers over its pairs, so each FMA
// needs only its weight load (the neuron-major loop loaded and stored an output row per pair).
template <size_t kV, class P>
HWY_INLINE void TokenTile(P w, size_t cols, const TokenPair* HWY_RESTRICT pairs, size_t n,
                          size_t c, float* HWY_RESTRICT o) {
  const hn::ScalableTag<float> df;
  const size_t NF = hn::Lanes(df);
  hn::Vec<decltype(df)> acc[kV];
  HWY_UNROLL(8)
  for (size_t v = 0; v < kV; ++v) acc[v] = hn::LoadU(df, o + v * NF);
  for (size_t e = 0; e < n; ++e) {
    const P row = w + static_cast<size_t>(pairs[e].row) * cols + c;
    const auto a = hn::Set(df, pairs[e].u);
    HWY_UNROLL(8)
    for (size_t v = 0; v < kV; ++v) acc[v] = hn::MulAdd(a, LoadF32(df, row + v * NF), acc[v]);
  }
  HWY_UNROLL(8)
  for (size_t v = 0; v < kV; ++v) hn::StoreU(acc[v], df, o + v * NF);
}

// Columns [c0, c1) of out [T, cols], token-major: pairs holds each token's (neuron, u) pairs in
// ascending neuron order; block_start[t * (blocks + 1) + b] is the first of token t's pairs with
// neuron >= b * kSparseRowBlock. Every (t, c) sums its pairs in ascending neuron order, as the
// neuron-major definition does (kBF16: in twos, TokenTileBF16, on each panel's whole 32-column
// groups; the rest on the f32 tiles, with the same exact products). c0 and each panel start
// are multiples of kSparsePanel apart from 0, so which tile a column takes does not depend on
// the thread split.
// Panels start at c0, then at a0 + k kSparsePanel (callers split threads on that grid): a0, the
// first column whose bf16 weights start a cache line in every row, so that TokenTileBF16's
// 64-byte loads never straddle two lines (the engine's bf16 tensors start at any even byte:
// docs/engine-file.md; V [13824, 2304] from DRAM, 2 threads: 12.5 -> 9.2 ms aligned).
// Blocks outermost: a block's rows are read over the whole column range [c0, c1) (one
// contiguous run per row: 2.3 KB at 2B shapes with 2 threads) while its panels are walked, and
// the next block's runs are prefetched meanwhile. Panels outermost read 256-byte pieces of every
// row per panel: a page (and a TLB miss, costly under a hypervisor's nested paging) per piece;
// V [13824, 2304] bf16 from DRAM, T = 64, 2 threads, Zen 4 VM: 2.2 GB/s that way.
template <bool kBF16, class P>
HWY_INLINE void TokenSparseColsT(P w, size_t rows, size_t cols, const TokenPair* HWY_RESTRICT pairs,
                                 const int32_t* HWY_RESTRICT block_start, size_t T,
                                 float* HWY_RESTRICT out, size_t c0, size_t c1, size_t a0) {
  const hn::ScalableTag<float> df;
  const size_t NF = hn::Lanes(df);
  constexpr size_t kV = 8;  // output vectors in registers: 8 independent FMA chains
  const size_t blocks = (rows + kSparseRowBlock - 1) / kSparseRowBlock;
  const size_t lead = c0 < a0 ? 1 : 0;  // the panel [c0, a0)
  const size_t g0 = std::max(c0, a0);  // panels on the grid from here
  const size_t panels = lead + (c1 - g0 + kSparsePanel - 1) / kSparsePanel;
  for (size_t t = 0; t < T; ++t)
    for (size_t c = c0; c < c1; ++c) out[t * cols + c] = 0.0f;
  for (size_t b = 0; b < blocks; ++b) {
    // The next block's rows, spread over this block's (panel, token) steps.
    const size_t nr0 = (b + 1) * kSparseRowBlock;
    const size_t nrows = nr0 < rows ? (rows - nr0 < kSparseRowBlock ? rows - nr0 : kSparseRowBlock) : 0;
    const size_t steps = panels * T;
    for (size_t pi = 0; pi < panels; ++pi) {
      const size_t p0 = pi < lead ? c0 : g0 + (pi - lead) * kSparsePanel;
      const size_t p1 = pi < lead ? a0 : std::min(c1, p0 + kSparsePanel);
      // 32-column groups on the bf16 tile
      const size_t groups = kBF16 && pi >= lead ? (p1 - p0) / 32 : 0;
      for (size_t t = 0; t < T; ++t) {
        const size_t step = pi * T + t;
        for (size_t r = nr0 + step * nrows / steps; r < nr0 + (step + 1) * nrows / steps; ++r)
          PrefetchElems(w + r * cols + c0, c1 - c0);
        const int32_t* bs = block_start + t * (blocks + 1) + b;
        const TokenPair* tp = pairs + bs[0];
        const size_t n = static_cast<size_t>(bs[1] - bs[0]);
        if (n == 0) continue;
        float* o = out + t * cols;
        size_t c = p0;
#if HWY_TARGET == HWY_AVX3
        if constexpr (kBF16) {
          const uint16_t* wb = reinterpret_cast<const uint16_t*>(w);
          for (; c + 128 <= p0 + 32 * groups; c += 128) TokenTileBF16<4>(wb, cols, tp, n, c, o + c);
          for (; c + 64 <= p0 + 32 * groups; c += 64) TokenTileBF16<2>(wb, cols, tp, n, c, o + c);
          for (; c + 32 <= p0 + 32 * groups; c += 32) TokenTileBF16<1>(wb, cols, tp, n, c, o + c);
        }
#else
        (void)groups;
#endif
        for (; c + kV * NF <= p1; c += kV * NF) TokenTile<kV>(w, cols, tp, n, c, o + c);
        for (; c + 4 * NF <= p1; c += 4 * NF) TokenTile<4>(w, cols, tp, n, c, o + c);
        for (; c + NF <= p1; c += NF) TokenTile<1>(w, cols, tp, n, c, o + c);
        for (; c < p1; ++c) {
          float sum = o[c];
          for (size_t e = 0; e < n; ++e)
            sum += tp[e].u * ScalarF32(w[static_cast<size_t>(tp[e].row) * cols + c]);
          o[c] = sum;
        }
      }
    }
  }
#if HWY_TARGET == HWY_AVX3
  if constexpr (kBF16) {
    for (size_t p0 = g0; p0 < c1; p0 += kSparsePanel) {
      const size_t groups = (std::min(c1, p0 + kSparsePanel) - p0) / 32;
      for (size_t t = 0; t < T; ++t) UnpermuteBF16Cols(out + t * cols + p0, groups);
    }
  }
#endif
}

// out[g, c] for g in [g0, g0 + kG) and the kC vectors of columns at c: the kG x kC sums stay in
// registers across the n rows, each value vector is loaded once for the kG rows of u. Every
// output is one FMA chain over j in order from 0, as a plain loop would make it, so neither the
// tiling nor G changes a result.
template <size_t kG, size_t kC, class P>
HWY_INLINE void MultiTile(P w, const float* HWY_RESTRICT scale, size_t cols,
                          const float* HWY_RESTRICT u, const int32_t* HWY_RESTRICT idx, size_t n,
                          size_t g0, float* HWY_RESTRICT out, size_t c) {
  const hn::ScalableTag<float> df;
  const size_t NF = hn::Lanes(df);
  const float* ug[kG];
  hn::Vec<decltype(df)> acc[kG][kC];
  // Fully unrolled (a literal bound >= the trip count, for GCC 12), so acc stays in registers.
  HWY_UNROLL(16)
  for (size_t k = 0; k < kG; ++k) {
    ug[k] = u + (g0 + k) * n;
    HWY_UNROLL(16)
    for (size_t v = 0; v < kC; ++v) acc[k][v] = hn::Zero(df);
  }
  for (size_t j = 0; j < n; ++j) {
    const size_t r = static_cast<size_t>(idx[j]);
    const P row = w + r * cols + c;
    const float s = scale ? scale[r] : 1.0f;
    hn::Vec<decltype(df)> v[kC];
    HWY_UNROLL(16)
    for (size_t i = 0; i < kC; ++i) v[i] = LoadF32(df, row + i * NF);
    HWY_UNROLL(16)
    for (size_t k = 0; k < kG; ++k) {
      const auto a = hn::Set(df, ug[k][j] * s);
      HWY_UNROLL(16)
      for (size_t i = 0; i < kC; ++i) acc[k][i] = hn::MulAdd(a, v[i], acc[k][i]);
    }
  }
  HWY_UNROLL(16)
  for (size_t k = 0; k < kG; ++k) {
    HWY_UNROLL(16)
    for (size_t i = 0; i < kC; ++i) hn::StoreU(acc[k][i], df, out + (g0 + k) * cols + c + i * NF);
  }
}

// Rows [g0, g0 + kG) of u at the vector columns [c, c1): strips of kC vectors, then 2, then 1.
template <size_t kG, size_t kC, class P>
HWY_INLINE void MultiStrips(P w, const float* HWY_RESTRICT scale, size_t cols,
                            const float* HWY_RESTRICT u, const int32_t* HWY_RESTRICT idx, size_t n,
                            size_t g0, float* HWY_RESTRICT out, size_t c, size_t c1) {
  const size_t NF = hn::Lanes(hn::ScalableTag<float>());
  for (; c + kC * NF <= c1; c += kC * NF) MultiTile<kG, kC>(w, scale, cols, u, idx, n, g0, out, c);
  if constexpr (kC > 2) {
    for (; c + 2 * NF <= c1; c += 2 * NF) MultiTile<kG, 2>(w, scale, cols, u, idx, n, g0, out, c);
  }
  for (; c + NF <= c1; c += NF) MultiTile<kG, 1>(w, scale, cols, u, idx, n, g0, out, c);
}

// Rows [0, G) of u in tiles of 4, 2, 1, each with strips of kC(kG) vectors over [c, c1).
template <size_t kC4, size_t kC2, size_t kC1, class P>
HWY_INLINE void MultiTiles(P w, const float* HWY_RESTRICT scale, size_t cols,
                           const float* HWY_RESTRICT u, const int32_t* HWY_RESTRICT idx, size_t n,
                           size_t G, float* HWY_RESTRICT out, size_t c, size_t c1) {
  size_t g0 = 0;
  for (; g0 + 4 <= G; g0 += 4) MultiStrips<4, kC4>(w, scale, cols, u, idx, n, g0, out, c, c1);
  if (g0 + 2 <= G) {
    MultiStrips<2, kC2>(w, scale, cols, u, idx, n, g0, out, c, c1);
    g0 += 2;
  }
  if (g0 < G) MultiStrips<1, kC1>(w, scale, cols, u, idx, n, g0, out, c, c1);
}

// out[g, c] = sum_j u[g, j] W[idx[j], c] (MultiSparseVecMatRange): register tiles of up to 4
// rows of u x kC vectors of columns, then scalar columns. A tile reads a strip of each value
// row; the strips partition the rows, so the values are read once per 4 rows of u.
// Wide strips mean fewer strided passes over the value rows. Few rows of u (decode: the query
// heads of one KV head) take the widest strips the registers hold (kG x kC sums and kC value
// vectors): AVX-512's 32 registers fit 4 x 4 and 2 x 8; AVX2's 16, 4 x 2. With 2 x 2 strips a
// bf16 row of 256 was walked in 8 passes of one 64-byte line; the wide strips raised Gemma 2
// 2B decode attention at 4096 from 17.6-18.0 to 20.3-23.1 GB/s of cache read (2 threads, Zen 4,
// bench/results/attention-decode-strips-2026-12-07.txt). Many rows (a prefill block's tokens x heads)
// walk column strips outer, so a strip of the values is reused from cache by every tile.
template <class P>
HWY_INLINE void MultiSparseVecMatT(P w, const float* HWY_RESTRICT scale,
                                   size_t cols, const float* HWY_RESTRICT u,
                                   const int32_t* HWY_RESTRICT idx, size_t n, size_t G,
                                   float* HWY_RESTRICT out, size_t c0, size_t c1) {
  const size_t NF = hn::Lanes(hn::ScalableTag<float>());
  const size_t cv = c0 + (c1 - c0) / NF * NF;  // end of the vector columns
#if HWY_ARCH_X86 && HWY_TARGET <= HWY_AVX3
  constexpr size_t kWide = 4;
  if (G <= 4) {
    MultiTiles<4, 8, 8>(w, scale, cols, u, idx, n, G, out, c0, cv);
  } else {
    for (size_t c = c0; c < cv; c += kWide * NF) {
      MultiTiles<4, 4, 4>(w, scale, cols, u, idx, n, G, out, c, std::min(cv, c + kWide * NF));
    }
  }
#else
  for (size_t c = c0; c < cv; c += 2 * NF) {
    MultiTiles<2, 2, 2>(w, scale, cols, u, idx, n, G, out, c, std::min(cv, c + 2 * NF));
  }
#endif
  for (size_t c = cv; c < c1; ++c) {
    for (size_t g = 0; g < G; ++g) {
      float sum = 0.0f;
      for (size_t j = 0; j < n; ++j) {
        const size_t r = static_cast<size_t>(idx[j]);
        sum += u[g * n + j] * (ScalarF32(w[r * cols + c]) * (scale ? scale[r] : 1.0f));
      }
      out[g * cols + c] = sum;
    }
  }
}

}  // namespace HWY_NAMESPACE
}  // namespace spark
HWY_AFTER_NAMESPACE();

#endif  // toggle guard
