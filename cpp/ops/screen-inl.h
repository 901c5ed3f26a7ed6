// screen-inl.h (per target): the screen4 decode kernel, tiles [t0, t1) of a ScreenRef against x
// quantized per row (ScreenX). See screen.h for the product.
// x86 (AVX2; AVX3 where the CPU has AVX512_VNNI): each tile row's 64 code bytes of a block are
// two 256-bit loads whose low / high nibbles meet 4 vectors of x's int8 q (the byte products
// of matvec-inl.h's ByteDot), one int32 conversion and one FMA with the block's d a row and
// block: ~12 vector uops per 128 weights, against ~35 in the q4 decode tile (per-32-weight
// scales and x steps, asymmetric m terms), so the screen runs near the memory's read rate
// instead of bound by its arithmetic. Other targets: widened int16 products, exact as well.

#if defined(SPARK_OPS_SCREEN_INL_H_) == defined(HWY_TARGET_TOGGLE)
#ifdef SPARK_OPS_SCREEN_INL_H_
#undef SPARK_OPS_SCREEN_INL_H_
#else
#define SPARK_OPS_SCREEN_INL_H_
#endif

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "hwy/cache_control.h"
#include "hwy/highway.h"
#include "ops/matvec-inl.h"  // ByteDot, UseByteTiles, SPARK_BYTE_TILE_ATTR
#include "ops/screen.h"
#include "weights/types.h"

HWY_BEFORE_NAMESPACE();
namespace spark {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

// Block g's d of tile row r.
HWY_INLINE float ScreenScale(const uint8_t* tile, size_t blocks, size_t g, size_t r) {
  float d;
  memcpy(&d, tile + blocks * 256 + (4 * g + r) * 4, 4);  // the tensor is only byte-aligned
  return d;
}

// step * (sums[r] - sum_g d_rg * bias_g) into out[0, n), n <= 4 (the last tile's real rows).
HWY_INLINE void ScreenFinish(const uint8_t* tile, size_t blocks, const ScreenX& x, const float* sums,
                             float* HWY_RESTRICT out, size_t n) {
  for (size_t r = 0; r < n; ++r) {
    float b = 0.0f;
    for (size_t g = 0; g < blocks; ++g) b += ScreenScale(tile, blocks, g, r) * x.bias[g];
    out[r] = x.step * (sums[r] - b);
  }
}

#if HWY_TARGET == HWY_AVX3 || HWY_TARGET == HWY_AVX2
// One tile's scores for one x into out[0, n).
SPARK_BYTE_TILE_ATTR HWY_INLINE void ScreenTileBytes(const uint8_t* HWY_RESTRICT tile, size_t G,
                                                     const ScreenX& x, float* HWY_RESTRICT out, size_t n) {
  const __m256i low4 = _mm256_set1_epi8(15);
  __m256 acc[kScreenRows];
  for (size_t r = 0; r < kScreenRows; ++r) acc[r] = _mm256_setzero_ps();
  for (size_t g = 0; g < G; ++g) {
    const uint8_t* HWY_RESTRICT cb = tile + g * 256;
    const int8_t* HWY_RESTRICT qg = x.q8 + g * kScreenGroup;
    auto xv = [&](size_t k) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(qg + 32 * k)); };
    const __m256i x0 = xv(0), x1 = xv(1), x2 = xv(2), x3 = xv(3);
    for (size_t r = 0; r < kScreenRows; ++r) {
      const __m256i c0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(cb + 64 * r));
      const __m256i c1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(cb + 64 * r + 32));
      // Bytes 0-31 hold columns 0-31 (low) and 64-95 (high), bytes 32-63 columns 32-63, 96-127.
      __m256i i = ByteDot(_mm256_setzero_si256(), _mm256_and_si256(c0, low4), x0,
                          _mm256_and_si256(_mm256_srli_epi16(c0, 4), low4), x2);
      i = ByteDot(i, _mm256_and_si256(c1, low4), x1, _mm256_and_si256(_mm256_srli_epi16(c1, 4), low4), x3);
      acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(i), _mm256_set1_ps(ScreenScale(tile, G, g, r)), acc[r]);
    }
  }
  // Lanes of the 4 rows to one sum each: [r0 r1 r2 r3] in both 128-bit halves, then added.
  const __m256 h = _mm256_hadd_ps(_mm256_hadd_ps(acc[0], acc[1]), _mm256_hadd_ps(acc[2], acc[3]));
  const __m128 sums = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
  // ScreenFinish for the 4 rows at once: the d of block g of the 4 rows are 16 adjacent bytes
  // (the scalar loop was ~15 % of a tile's instructions; in cache, 2 threads, 28-31 -> 39-50
  // GB/s: bench/results/screen-finish-2026-12-08.txt).
  __m128 b = _mm_setzero_ps();
  for (size_t g = 0; g < G; ++g)
    b = _mm_fmadd_ps(_mm_loadu_ps(reinterpret_cast<const float*>(tile + G * 256 + 16 * g)),
                     _mm_set1_ps(x.bias[g]), b);
  const __m128 v = _mm_mul_ps(_mm_set1_ps(x.step), _mm_sub_ps(sums, b));
  if (n == kScreenRows) {
    _mm_storeu_ps(out, v);
  } else {
    HWY_ALIGN float tmp[4];
    _mm_store_ps(tmp, v);
    for (size_t r = 0; r < n; ++r) out[r] = tmp[r];
  }
}
#endif

// One tile's scores for one x into out[0, n): widened int16 products, any target.
HWY_INLINE void ScreenTileWide(const uint8_t* HWY_RESTRICT tile, size_t G, const ScreenX& x,
                               float* HWY_RESTRICT out, size_t n) {
  const hn::CappedTag<int16_t, 16> d16;
  const hn::Repartition<int32_t, decltype(d16)> d32;
  const hn::Rebind<uint8_t, decltype(d16)> d8;
  const size_t N = hn::Lanes(d16);
  const auto low4 = hn::Set(d16, 15);
  float sums[kScreenRows] = {0.0f, 0.0f, 0.0f, 0.0f};
  for (size_t g = 0; g < G; ++g) {
    const int16_t* HWY_RESTRICT qg = x.q16 + g * kScreenGroup;
    for (size_t r = 0; r < kScreenRows; ++r) {
      const uint8_t* HWY_RESTRICT cb = tile + g * 256 + 64 * r;
      auto a = hn::Zero(d32), b = a;  // ReorderWidenMulAccumulate's two halves
      for (size_t v = 0; v < 64; v += N) {
        const auto c = hn::PromoteTo(d16, hn::LoadU(d8, cb + v));
        a = hn::ReorderWidenMulAccumulate(d32, hn::And(c, low4), hn::LoadU(d16, qg + v), a, b);
        a = hn::ReorderWidenMulAccumulate(d32, hn::ShiftRight<4>(c), hn::LoadU(d16, qg + 64 + v), a, b);
      }
      const int32_t dot = hn::GetLane(hn::SumOfLanes(d32, hn::RearrangeToOddPlusEven(a, b)));
      sums[r] += static_cast<float>(dot) * ScreenScale(tile, G, g, r);
    }
  }
  ScreenFinish(tile, G, x, sums, out, n);
}

// Tile t's stream, prefetched two tiles ahead (lead across tile boundaries); returns its first
// row and sets *n to its real rows (the last tile may have padding).
HWY_INLINE size_t ScreenTileStart(const ScreenRef& s, size_t t, size_t* n) {
  const size_t tile_bytes = s.TileBytes();
  for (size_t b = 0; b < tile_bytes; b += 64) hwy::Prefetch(s.Tile(t) + 2 * tile_bytes + b);
  const size_t r0 = t * kScreenRows;
  *n = HWY_MIN(kScreenRows, s.rows - r0);
  return r0;
}

// Tiles [t0, t1) against each of the T rows of x (xs[i], skipped when !xs[i].valid): out[i *
// out_stride + v]. Rows of x are the inner loop, so a tile comes from memory once per call and
// from L1 for the other rows: a prefill chunk's scores cost one pass over the screen.
#if HWY_TARGET == HWY_AVX3 || HWY_TARGET == HWY_AVX2
SPARK_BYTE_TILE_ATTR HWY_NOINLINE void ScreenTilesBytes(const ScreenRef& s, const ScreenX* xs, size_t T,
                                                        size_t t0, size_t t1, float* HWY_RESTRICT out,
                                                        size_t out_stride) {
  for (size_t t = t0; t < t1; ++t) {
    size_t n;
    const size_t r0 = ScreenTileStart(s, t, &n);
    for (size_t i = 0; i < T; ++i)
      if (xs[i].valid) ScreenTileBytes(s.Tile(t), s.Blocks(), xs[i], out + i * out_stride + r0, n);
  }
}
#endif

HWY_NOINLINE void ScreenTiles(const ScreenRef& s, const ScreenX* xs, size_t T, size_t t0, size_t t1,
                              float* HWY_RESTRICT out, size_t out_stride) {
#if HWY_TARGET == HWY_AVX3 || HWY_TARGET == HWY_AVX2
  if (UseByteTiles()) return ScreenTilesBytes(s, xs, T, t0, t1, out, out_stride);
#endif
  for (size_t t = t0; t < t1; ++t) {
    size_t n;
    const size_t r0 = ScreenTileStart(s, t, &n);
    for (size_t i = 0; i < T; ++i)
      if (xs[i].valid) ScreenTileWide(s.Tile(t), s.Blocks(), xs[i], out + i * out_stride + r0, n);
  }
}

}  // namespace HWY_NAMESPACE
}  // namespace spark
HWY_AFTER_NAMESPACE();

#endif  // SPARK_OPS_SCREEN_INL_H_
