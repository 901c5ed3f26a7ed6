// load-inl.h: load weights of any WeightType as f32 vectors (per target), and the scalar
// equivalent for tails. Shared by every weight-reading kernel; the layouts are types.h. Also
// the input side of q4's integer dot (Q4X: x rounded to int8 per block).
//
// Kernels take weights as a "pointer" P: `const W*` for f32/bf16/int8, Q4Ptr / Q5Ptr for q4 / q5; all
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

// q5 (Q5_0 blocks): d of the block at b, and m = -16 d, so that w = d q + m as in q4 (exact:
// -16 d is a power-of-two multiple, and d q + m = d (q - 16) is exact in f32 for an f16 d).
// Q4Params reads d and the low half of qh; the latter is dropped.
HWY_INLINE void Q5Params(const uint8_t* HWY_RESTRICT b, float* d, float* m) {
  float unused;
  Q4Params(b, d, &unused);
  *m = -16.0f * *d;
}

// Bit j of a u32 in lane j (the q5 qh bits of weights j and j + 16 are tested against these).
alignas(64) static constexpr uint32_t kQ5Bit32[32] = {
    1u << 0,  1u << 1,  1u << 2,  1u << 3,  1u << 4,  1u << 5,  1u << 6,  1u << 7,
    1u << 8,  1u << 9,  1u << 10, 1u << 11, 1u << 12, 1u << 13, 1u << 14, 1u << 15,
    1u << 16, 1u << 17, 1u << 18, 1u << 19, 1u << 20, 1u << 21, 1u << 22, 1u << 23,
    1u << 24, 1u << 25, 1u << 26, 1u << 27, 1u << 28, 1u << 29, 1u << 30, 1u << 31};

// q5 codes (0..31), as f32, of weights [v, v + Lanes(df)) and [16 + v, 16 + v + Lanes(df)) of
// the block at b (v + Lanes(df) <= 16): the nibbles as q4's, plus 16 where the qh bit is set.
// With 8 or 16 lanes (v a multiple of 8) the bits load straight into a mask, as the q5 decode
// tile does; narrower vectors test a bit per lane.
template <class DF>
HWY_INLINE void Q5CodePair(DF df, const uint8_t* HWY_RESTRICT b, size_t v, hn::Vec<DF>& lo,
                           hn::Vec<DF>& hi) {
  const hn::Rebind<int32_t, DF> di;
  const hn::Rebind<uint8_t, DF> d8;
  const auto c = hn::PromoteTo(di, hn::LoadU(d8, b + 6 + v));
  const auto sixteen = hn::Set(di, 16);
  hn::Mask<decltype(di)> hl, hh;
  if (hn::Lanes(df) % 8 == 0) {
    hl = hn::LoadMaskBits(di, b + 2 + v / 8);
    hh = hn::LoadMaskBits(di, b + 4 + v / 8);
  } else {
    const hn::Rebind<uint32_t, DF> du;
    uint32_t qh;
    memcpy(&qh, b + 2, 4);
    const auto vqh = hn::Set(du, qh);
    hl = hn::RebindMask(di, hn::TestBit(vqh, hn::LoadU(du, kQ5Bit32 + v)));
    hh = hn::RebindMask(di, hn::TestBit(vqh, hn::LoadU(du, kQ5Bit32 + 16 + v)));
  }
  lo = hn::ConvertTo(df, hn::Or(hn::And(c, hn::Set(di, 15)), hn::IfThenElseZero(hl, sixteen)));
  hi = hn::ConvertTo(df, hn::Or(hn::ShiftRight<4>(c), hn::IfThenElseZero(hh, sixteen)));
}

// The block types (q4, q5) to the kernels that work block by block: w = d c + m per block,
// c the codes of weights [v, v + N) and [16 + v, 16 + v + N) (BlockCodes).
HWY_INLINE constexpr size_t BlockBytes(Q4Ptr) { return kQ4BlockBytes; }
HWY_INLINE constexpr size_t BlockBytes(Q5Ptr) { return kQ5BlockBytes; }
HWY_INLINE void BlockParams(Q4Ptr, const uint8_t* HWY_RESTRICT b, float* d, float* m) { Q4Params(b, d, m); }
HWY_INLINE void BlockParams(Q5Ptr, const uint8_t* HWY_RESTRICT b, float* d, float* m) { Q5Params(b, d, m); }
template <class DF>
HWY_INLINE void BlockCodes(Q4Ptr, DF df, const uint8_t* HWY_RESTRICT b, size_t v, hn::Vec<DF>& lo,
                           hn::Vec<DF>& hi) {
  Q4CodePair(df, b + 4 + v, lo, hi);
}
template <class DF>
HWY_INLINE void BlockCodes(Q5Ptr, DF df, const uint8_t* HWY_RESTRICT b, size_t v, hn::Vec<DF>& lo,
                           hn::Vec<DF>& hi) {
  Q5CodePair(df, b, v, lo, hi);
}

// f32 copy of the `cols` weights of a block-type row at p (cols % 32 == 0): w = d c + m per
// block, d and m read once per block.
template <class P>
HWY_INLINE void DecodeBlockRowF32(P p, size_t cols, float* HWY_RESTRICT out) {
  const hn::CappedTag<float, 16> df;  // a vector never spans the two nibble halves of a block
  const size_t NF = hn::Lanes(df);
  const uint8_t* b = p.Block();
  for (size_t g = 0; g < cols / kQ4Group; ++g, b += BlockBytes(P())) {
    float d, m;
    BlockParams(P(), b, &d, &m);
    const auto vd = hn::Set(df, d), vm = hn::Set(df, m);
    float* o = out + g * kQ4Group;
    for (size_t v = 0; v < 16; v += NF) {
      hn::Vec<decltype(df)> lo, hi;
      BlockCodes(P(), df, b, v, lo, hi);
      hn::StoreU(hn::MulAdd(lo, vd, vm), df, o + v);
      hn::StoreU(hn::MulAdd(hi, vd, vm), df, o + 16 + v);
    }
  }
}

// q4 / q5 weights [e, e + Lanes(df)). Vectors that start at a multiple of their width within
// a block (what every kernel loads: rows and column tiles start at multiples of 32) lie in one
// half of it and take the fast path; others are assembled lane by lane.
template <class DF, class P>
HWY_INLINE hn::Vec<DF> LoadBlockF32(DF df, P p) {
  const size_t NF = hn::Lanes(df);
  const size_t j = p.e % kQ4Group;
  if (NF <= 16 && j % NF == 0) {
    const uint8_t* b = p.Block();
    float d, m;
    BlockParams(P(), b, &d, &m);
    hn::Vec<DF> lo, hi;
    BlockCodes(P(), df, b, j & 15, lo, hi);
    return hn::MulAdd(j >= 16 ? hi : lo, hn::Set(df, d), hn::Set(df, m));
  }
  HWY_ALIGN float tmp[HWY_MAX_BYTES / sizeof(float)];
  for (size_t k = 0; k < NF; ++k) tmp[k] = p[k];
  return hn::Load(df, tmp);
}
template <class DF>
HWY_INLINE hn::Vec<DF> LoadF32(DF df, Q4Ptr p) { return LoadBlockF32(df, p); }
template <class DF>
HWY_INLINE hn::Vec<DF> LoadF32(DF df, Q5Ptr p) { return LoadBlockF32(df, p); }

// Byte address and byte counts of weight positions, for prefetching.
template <class W>
HWY_INLINE const uint8_t* BytePtr(const W* p) { return reinterpret_cast<const uint8_t*>(p); }
HWY_INLINE const uint8_t* BytePtr(Q4Ptr p) { return p.Block(); }
HWY_INLINE const uint8_t* BytePtr(Q5Ptr p) { return p.Block(); }
template <class W>
HWY_INLINE size_t BytesOf(const W*, size_t n) { return n * sizeof(W); }
HWY_INLINE size_t BytesOf(Q4Ptr, size_t n) { return n * kQ4BlockBytes / kQ4Group; }
HWY_INLINE size_t BytesOf(Q5Ptr, size_t n) { return n * kQ5BlockBytes / kQ4Group; }
template <class W>
HWY_INLINE size_t ElemsOf(const W*, size_t bytes) { return bytes / sizeof(W); }
HWY_INLINE size_t ElemsOf(Q4Ptr, size_t bytes) { return bytes * kQ4Group / kQ4BlockBytes; }
HWY_INLINE size_t ElemsOf(Q5Ptr, size_t bytes) { return bytes * kQ4Group / kQ5BlockBytes; }

HWY_INLINE float ScalarF32(float v) { return v; }
HWY_INLINE float ScalarF32(hwy::bfloat16_t v) { return hwy::F32FromBF16(v); }
HWY_INLINE float ScalarF32(int8_t v) { return static_cast<float>(v); }

// f32 copy of the `cols` weights at p (int8: the integers, before the row's scale).
template <class W>
HWY_INLINE void DecodeRowF32(const W* HWY_RESTRICT p, size_t cols, float* HWY_RESTRICT out) {
  const hn::ScalableTag<float> df;
  const size_t NF = hn::Lanes(df);
  size_t i = 0;
  for (; i + NF <= cols; i += NF) hn::StoreU(LoadF32(df, p + i), df, out + i);
  for (; i < cols; ++i) out[i] = ScalarF32(p[i]);
}
HWY_INLINE void DecodeRowF32(Q4Ptr p, size_t cols, float* HWY_RESTRICT out) { DecodeBlockRowF32(p, cols, out); }
HWY_INLINE void DecodeRowF32(Q5Ptr p, size_t cols, float* HWY_RESTRICT out) { DecodeBlockRowF32(p, cols, out); }

// Calls f(p, scale) with the typed weight pointer of w (`const W*`, Q4Ptr or Q5Ptr) and its int8 row
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
    case WeightType::kQ5:
      return f(Q5Ptr{static_cast<const uint8_t*>(w.data), 0}, nullptr);
  }
}

// Decode input of a q4 / q5 matrix: x per block of 32 as int8 q with the step s = amax / 127
// (amax = max |x_block| in f32; s = 1 when amax == 0), q_i = round-half-even(x_i / s) in
// -127..127 (the f32 division, so every target rounds the same q), plus s sum(q) (q4's m term).
// A decode dot is then the dequantized weights times the dequantized x, sum_i w_i s q_i: the
// codes (q4 0..15, q5 c - 16 in -16..15) meet q in exact integer multiply-adds, then one FMA with
// d s per block and row (q4: plus m s sum(q)), so targets differ only in float summation order.
// m times the exact sum of x instead made the q4 dot respond to a change of the block's largest
// |x| (which moves s) through d c alone, ~10x its own size where d c and m cancel, and moved the
// logits of an all-q4 test model by 1e-2 between SIMD targets; it was also less accurate: Gemma 3
// 270M `--dtype q4`, every token through the decode tiles (chunk_size=1), KJV / Austen
// perplexity 12.3134 / 36.1007 with it, 12.2741 / 36.0452 with m s sum(q) (f32 12.2151 /
// 35.9120): its error sum_i d c_i e_i (e_i = s q_i - x_i) has the codes' mean in it, that of
// sum_i w_i e_i does not. Int8, as llama.cpp's Q8_0 activations, is what
// AVX-512 VNNI's vpdpbusd (u8 x s8, 4 products per 32-bit lane) multiplies; the generic tiles
// take the same values widened to int16. |x_i - s q_i| <= s / 2 = amax / 254 per element (int16
// with a power-of-two step was <= amax / 32767, its tile at ~0.7x the VNNI tile's speed on Zen 4).
// Non-finite x (or a block sum that overflows) gives s = sum = NaN and q = 0, so NaN propagates.
struct Q4X {
  const int16_t* q = nullptr;         // [cols] q, widened (generic tiles)
  const int8_t* q8 = nullptr;         // [cols] q (VNNI tiles)
  const float* step_sum = nullptr;    // [cols / 32][2]: s and s sum(q), per block
  const int32_t* q5_bias = nullptr;   // [cols / 32][8]: -16 sum(q) in lanes 0 and 4, else 0:
                                      // the VNNI q5 tile's accumulator start (codes 0..31)
};

// Quantizes x [cols] into per-thread buffers (valid until this thread's next call).
HWY_INLINE Q4X QuantizeQ4X(const float* HWY_RESTRICT x, size_t cols) {
  thread_local std::vector<int16_t> q;
  thread_local std::vector<int8_t> q8;
  thread_local std::vector<float> step_sum;
  thread_local std::vector<int32_t> q5_bias;
  const size_t blocks = cols / kQ4Group;
  if (q.size() < cols) {
    q.resize(cols);
    q8.resize(cols);
  }
  if (step_sum.size() < 2 * blocks) {
    step_sum.resize(2 * blocks);
    q5_bias.resize(8 * blocks);
  }
  // At most 16 lanes, so that a block is a whole number of vectors on every target.
  const hn::CappedTag<float, 16> df;
  const hn::Rebind<int32_t, decltype(df)> di;
  const hn::Rebind<int16_t, decltype(df)> d16;
  const hn::Rebind<int8_t, decltype(df)> d8;
  const size_t NF = hn::Lanes(df);
  for (size_t g = 0; g < blocks; ++g) {
    const float* HWY_RESTRICT xg = x + g * kQ4Group;
    auto vmax = hn::Zero(df), vsum = hn::Zero(df);
    for (size_t i = 0; i < kQ4Group; i += NF) {
      const auto v = hn::LoadU(df, xg + i);
      vmax = hn::Max(vmax, hn::Abs(v));
      vsum = hn::Add(vsum, v);
    }
    // A NaN or infinity in x makes the sum non-finite (Max may drop a NaN; Add does not).
    float amax = hn::GetLane(hn::MaxOfLanes(df, vmax));
    float sum = hn::GetLane(hn::SumOfLanes(df, vsum));
    int32_t qsum = 0;
    if (!std::isfinite(sum)) {
      amax = sum = std::numeric_limits<float>::quiet_NaN();
      for (size_t i = 0; i < kQ4Group; ++i) {
        q[g * kQ4Group + i] = 0;
        q8[g * kQ4Group + i] = 0;
      }
      step_sum[2 * g] = step_sum[2 * g + 1] = amax;
    } else {
      const float step = amax > 0.0f ? amax / 127.0f : 1.0f;
      auto vq = hn::Zero(di);
      for (size_t i = 0; i < kQ4Group; i += NF) {
        // |x / step| <= 127 (x / (amax / 127) rounds to at most 127 in f32), so no clamp.
#if HWY_TARGET == HWY_SCALAR
        // Highway 1.0.3's scalar Round adds 0.5 in f32 (0.49999997 -> 1): nearbyint instead.
        const auto qi = hn::Set(di, static_cast<int32_t>(std::nearbyint(xg[i] / step)));
#else
        const auto qi = hn::ConvertTo(di, hn::Round(hn::Div(hn::LoadU(df, xg + i), hn::Set(df, step))));
#endif
        vq = hn::Add(vq, qi);
        hn::StoreU(hn::DemoteTo(d16, qi), d16, q.data() + g * kQ4Group + i);
        hn::StoreU(hn::DemoteTo(d8, qi), d8, q8.data() + g * kQ4Group + i);
      }
      qsum = hn::GetLane(hn::SumOfLanes(di, vq));
      step_sum[2 * g] = step;
      step_sum[2 * g + 1] = step * static_cast<float>(qsum);
    }
    int32_t* bias = q5_bias.data() + 8 * g;
    for (size_t k = 0; k < 8; ++k) bias[k] = k % 4 == 0 ? -16 * qsum : 0;
  }
  return Q4X{q.data(), q8.data(), step_sum.data(), q5_bias.data()};
}

// Decode input of a weight pointer: x itself, or x quantized for q4 and q5 (see Q4X).
template <class W>
HWY_INLINE const float* DecodeInput(const W*, const float* x, size_t) { return x; }
HWY_INLINE Q4X DecodeInput(Q4Ptr, const float* x, size_t cols) { return QuantizeQ4X(x, cols); }
HWY_INLINE Q4X DecodeInput(Q5Ptr, const float* x, size_t cols) { return QuantizeQ4X(x, cols); }

}  // namespace HWY_NAMESPACE
}  // namespace spark
HWY_AFTER_NAMESPACE();

#endif  // toggle guard
