// load-inl.h: load weights of any WeightType as f32 vectors (per target), and the scalar
// equivalent for tails. Shared by every weight-reading kernel; the layouts are types.h. Also
// the input side of q4's integer dot (Q4X: x rounded to int16 per block).
//
// Kernels take weights as a "pointer" P: `const W*` for f32/bf16/int8, Q4Ptr for q4; both
// support p + k, p[k] (a value ScalarF32 turns into a float), LoadF32(df, p) and the byte
// helpers BytePtr / BytesOf / ElemsOf (prefetch pacing).
//
// Tags: df is a full f32 vector; narrower weight types are loaded through Rebind (same lane
// count, fewer bytes), which also builds on Highway 1.0.3's 1-lane SCALAR target.

#if defined(SPARK_WEIGHTS_LOAD_INL_H_) == defined(HWY_TARGET_TOGGLE)
#ifdef SPARK_WEIGHTS_LOAD_INL_H_
#undef SPARK_WEIGHTS_LOAD_INL_H_
#else
#define SPARK_WEIGHTS_LOAD_INL_H_
#endif

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "hwy/highway.h"
#include "weights/types.h"

HWY_BEFORE_NAMESPACE();
namespace spark {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

template <class DF>
HWY_INLINE hn::Vec<DF> LoadF32(DF df, const float* HWY_RESTRICT p) {
  return hn::LoadU(df, p);
}
template <class DF>
HWY_INLINE hn::Vec<DF> LoadF32(DF df, const hwy::bfloat16_t* HWY_RESTRICT p) {
  const hn::Rebind<hwy::bfloat16_t, DF> dbf;
  return hn::PromoteTo(df, hn::LoadU(dbf, p));
}
template <class DF>
HWY_INLINE hn::Vec<DF> LoadF32(DF df, const int8_t* HWY_RESTRICT p) {
  const hn::Rebind<int32_t, DF> di;
  const hn::Rebind<int8_t, DF> d8;
  return hn::ConvertTo(df, hn::PromoteTo(di, hn::LoadU(d8, p)));
}

// q4 codes, as f32, of Lanes(df) code bytes at c: their low nibbles (weights j of the block)
// and high nibbles (weights j + 16). One load serves both.
template <class DF>
HWY_INLINE void Q4CodePair(DF df, const uint8_t* HWY_RESTRICT c, hn::Vec<DF>& lo,
                           hn::Vec<DF>& hi) {
  const hn::Rebind<int32_t, DF> di;
  const hn::Rebind<uint8_t, DF> d8;
  const auto v = hn::PromoteTo(di, hn::LoadU(d8, c));
  lo = hn::ConvertTo(df, hn::And(v, hn::Set(di, 15)));
  hi = hn::ConvertTo(df, hn::ShiftRight<4>(v));
}

// f32 d and m of the q4 block at b. Vector targets widen the two halves with one conversion
// (F16C's vcvtph2ps on AVX2/AVX3): the scalar bit manipulation of F32FromF16Bits, twice per row
// and block, made the q4 decode tile ~2x slower. The load of 8 bytes stays inside the block.
HWY_INLINE void Q4Params(const uint8_t* HWY_RESTRICT b, float* d, float* m) {
#if HWY_TARGET == HWY_SCALAR
  uint16_t h[2];
  memcpy(h, b, 4);
  *d = F32FromF16Bits(h[0]);
  *m = F32FromF16Bits(h[1]);
#else
  const hn::Full128<float> d4;
  const hn::Rebind<hwy::float16_t, decltype(d4)> dh;
  const auto v = hn::PromoteTo(d4, hn::LoadU(dh, reinterpret_cast<const hwy::float16_t*>(b)));
  *d = hn::GetLane(v);
  *m = hn::GetLane(hn::Shuffle2301(v));
#endif
}

// q4 weights [e, e + Lanes(df)). Vectors that start at a multiple of their width within a
// block (what every kernel loads: rows and column tiles start at multiples of 32) lie in one
// half of it and take the fast path; others are assembled lane by lane.
template <class DF>
HWY_INLINE hn::Vec<DF> LoadF32(DF df, Q4Ptr p) {
  const size_t NF = hn::Lanes(df);
  const size_t j = p.e % kQ4Group;
  if (NF <= 16 && j % NF == 0) {
    const uint8_t* b = p.Block();
    float d, m;
    Q4Params(b, &d, &m);
    hn::Vec<DF> lo, hi;
    Q4CodePair(df, b + 4 + (j & 15), lo, hi);
    return hn::MulAdd(j >= 16 ? hi : lo, hn::Set(df, d), hn::Set(df, m));
  }
  HWY_ALIGN float tmp[HWY_MAX_BYTES / sizeof(float)];
  for (size_t k = 0; k < NF; ++k) tmp[k] = p[k];
  return hn::Load(df, tmp);
}

// Byte address and byte counts of weight positions, for prefetching.
template <class W>
HWY_INLINE const uint8_t* BytePtr(const W* p) { return reinterpret_cast<const uint8_t*>(p); }
HWY_INLINE const uint8_t* BytePtr(Q4Ptr p) { return p.Block(); }
template <class W>
HWY_INLINE size_t BytesOf(const W*, size_t n) { return n * sizeof(W); }
HWY_INLINE size_t BytesOf(Q4Ptr, size_t n) { return n * kQ4BlockBytes / kQ4Group; }
template <class W>
HWY_INLINE size_t ElemsOf(const W*, size_t bytes) { return bytes / sizeof(W); }
HWY_INLINE size_t ElemsOf(Q4Ptr, size_t bytes) { return bytes * kQ4Group / kQ4BlockBytes; }

HWY_INLINE float ScalarF32(float v) { return v; }
HWY_INLINE float ScalarF32(hwy::bfloat16_t v) { return hwy::F32FromBF16(v); }
HWY_INLINE float ScalarF32(int8_t v) { return static_cast<float>(v); }

// Calls f(p, scale) with the typed weight pointer of w (`const W*`, or Q4Ptr) and its int8 row
// scales (null for other types): every kernel's dispatch on the weight type.
template <class F>
HWY_INLINE void VisitWeights(const MatRef& w, const F& f) {
  switch (w.type) {
    case WeightType::kF32:
      return f(static_cast<const float*>(w.data), nullptr);
    case WeightType::kBF16:
      return f(static_cast<const hwy::bfloat16_t*>(w.data), nullptr);
    case WeightType::kI8:
      return f(static_cast<const int8_t*>(w.data), w.scale);
    case WeightType::kQ4:
      return f(Q4Ptr{static_cast<const uint8_t*>(w.data), 0}, nullptr);
  }
}

// Decode input of a q4 matrix: x per block of 32 as int16 q with a power-of-two scale s
// (x_i ~ s q_i, |q_i| <= 32767, so |x_i - s q_i| <= s / 2 <= max|x_block| / 32767), plus the
// exact f32 sum of the block's x. The codes (<= 15) meet q in integer multiply-adds (two
// products per 32-bit lane, exact), one conversion and one FMA per block and row: half the
// instructions of widening every code to f32, at 2^-15 of the block's largest |x| (int8
// activations, as in llama.cpp, would be 2^-7). A power-of-two s keeps x that is already on
// a coarse grid (small integers) exact. Non-finite x gives s = that value, so NaN propagates.
// Measured against widening every code to f32 and one FMA per code with x (the f32 contract
// of ops/matvec-inl.h's DotRows4, sum d (q . x) + m sum(x) per block), 1 thread, W [2048, 640]
// L2-resident, target AVX3 on the Zen 4 VM: 28-29 -> 45 GFLOP/s; the f32 version left the
// logits of the engine tests within 4e-7 of the reference, this one within 3e-4.
struct Q4X {
  const int16_t* q = nullptr;        // [cols]
  const float* step_sum = nullptr;  // [cols / 32][2]: s and the sum of x, per block
};

// Quantizes x [cols] into per-thread buffers (valid until this thread's next call).
HWY_INLINE Q4X QuantizeQ4X(const float* HWY_RESTRICT x, size_t cols) {
  thread_local std::vector<int16_t> q;
  thread_local std::vector<float> step_sum;
  const size_t blocks = cols / kQ4Group;
  if (q.size() < cols) q.resize(cols);
  if (step_sum.size() < 2 * blocks) step_sum.resize(2 * blocks);
  for (size_t g = 0; g < blocks; ++g) {
    const float* xg = x + g * kQ4Group;
    float amax = 0.0f, s = 0.0f;
    for (size_t i = 0; i < kQ4Group; ++i) {
      amax = std::max(amax, std::fabs(xg[i]));
      s += xg[i];
    }
    if (!std::isfinite(amax) || !std::isfinite(s)) amax = s = std::numeric_limits<float>::quiet_NaN();
    int e = 0;
    std::frexp(amax / 32767.0f, &e);  // amax / 32767 < 2^e
    const float step = amax > 0.0f ? std::ldexp(1.0f, e) : 1.0f;
    for (size_t i = 0; i < kQ4Group; ++i)
      q[g * kQ4Group + i] = std::isfinite(step) && std::isfinite(amax)
                                ? static_cast<int16_t>(std::lrint(xg[i] / step)) : 0;
    step_sum[2 * g] = std::isfinite(amax) ? step : amax;
    step_sum[2 * g + 1] = s;
  }
  return Q4X{q.data(), step_sum.data()};
}

// Decode input of a weight pointer: x itself, or x quantized for q4 (see Q4X).
template <class W>
HWY_INLINE const float* DecodeInput(const W*, const float* x, size_t) { return x; }
HWY_INLINE Q4X DecodeInput(Q4Ptr, const float* x, size_t cols) { return QuantizeQ4X(x, cols); }

}  // namespace HWY_NAMESPACE
}  // namespace spark
HWY_AFTER_NAMESPACE();

#endif  // toggle guard
