// matvec-inl.h (per target): out[t, r] = W[r, :] . x[t, :] for rows r in [r0, r1), tokens t < T.
//   W: [rows, cols] row-major, f32 / bf16 / int8 (times scale[r]) / q4 / q5; x: [T, cols] f32;
//   out: [T, out_stride] f32.
// Decode (T = 1) uses a 4-row tile with two accumulators per row, its rows a quarter of the
// range apart (4 long sequential weight streams, each also prefetched 512 B ahead); chunks (T > 1) use register tiles of kR rows
// x kT tokens, so each weight vector is loaded once per kT tokens (the point of chunked
// prefill) and each x vector once per kR rows. The tail of a row is summed in scalar
// code: weights live in a memory map, so we never read (or mask-load) past a row's end.
// A row's result depends only on the row, x and the target, never on how rows were grouped
// into tiles or threads (short groups are padded, not handled by other code).
// bf16 W in chunks: x is rounded to bf16 first (RoundToBF16, by the caller: ops/matvec.cc),
// then meets the rows on the AVX512_BF16 tile (DotTileBF16) or the f32 tile.
// Error vs a float64 dot of the same (dequantized) values: <= cols * 2^-24 * sum_i |w_i x_i|.

#if defined(SPARK_OPS_MATVEC_INL_H_) == defined(HWY_TARGET_TOGGLE)
#ifdef SPARK_OPS_MATVEC_INL_H_
#undef SPARK_OPS_MATVEC_INL_H_
#else
#define SPARK_OPS_MATVEC_INL_H_
#endif

#include <stddef.h>
#include <stdint.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "hwy/cache_control.h"
#include "hwy/highway.h"
#include "ops/reduce-inl.h"
#include "util/cpu_features.h"
#include "weights/load-inl.h"
#include "weights/types.h"

HWY_BEFORE_NAMESPACE();
namespace spark {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

// Rows per decode tile. Four rows share each x load; with two accumulators per row that is 8
// independent FMA chains, what 2 FMA ports x 4-cycle latency need. Measured against one
// accumulator per row (1 thread, W [64, 2304] L2-resident, GB/s): AVX2 bf16 34 -> 41, int8
// 16 -> 18, AVX3 f32 64 -> 68; AVX3 int8 stays at 24, bound by its two conversion uops per
// vector, not by latency. More rows would spill on AVX2's 16 registers.
constexpr size_t kDecodeRows = 4;

// Prefetches rows[r][i, i + step) for each of the kDecodeRows rows, one prefetch per 64 bytes
// of progress: called on every step of a loop that advances `step` weights, it paces the
// prefetches with the loads. null: nothing. A prefetch never faults, but callers still keep
// [i, i + step) inside the rows.
template <class P>
HWY_INLINE void PrefetchStep(const P* rows, size_t i, size_t step) {
  if (rows == nullptr) return;
  const size_t bytes = BytesOf(rows[0], step);
  if (bytes >= 64) {
    for (size_t r = 0; r < kDecodeRows; ++r)
      for (size_t b = 0; b < bytes; b += 64) hwy::Prefetch(BytePtr(rows[r] + i) + b);
  } else if (BytesOf(rows[0], i) % 64 < bytes) {
    for (size_t r = 0; r < kDecodeRows; ++r) hwy::Prefetch(BytePtr(rows[r] + i));
  }
}

// `const W*` weight pointers keep HWY_RESTRICT when copied into locals; Q4Ptr, Q5Ptr are structs.
template <class P>
struct RestrictT {
  using type = P;
};
template <class W>
struct RestrictT<const W*> {
  using type = const W* HWY_RESTRICT;
};

// Software prefetch distance within a decode row. The hardware prefetchers alone left bf16
// and int8 rows at ~80 % of the read probe's rate (the conversions make ~4x more uops per byte
// than the probe's adds, so the out-of-order window reaches less far ahead). Interleaved A/B,
// 1 thread, weights cold, bf16 [9216, 2304] median GB/s: none 12.3, 256 B 13.0, 512 B 13.9,
// 1 KiB 14.0, 2 KiB 13.7; 1 KiB and more lost on 2 KiB rows (less of each row covered) and
// int8.
constexpr size_t kAheadBytes = 512;

// A decode range of more weight bytes than this is assumed to stream from L3 or DRAM, and
// gets kAheadBytes prefetches; a smaller one is likely cache-resident (attention over a short
// context, a repeated call), where the prefetches only cost issue slots (AVX2, W [64, 2304]
// f32 L2-resident: 88 -> 60 GB/s with them).
constexpr size_t kStreamingBytes = 1 << 20;

// out[r] = rows[r] . x for r < kDecodeRows; each row has `cols` weights. Rows may repeat.
// next: the rows of the tile after this one (scattered rows) to prefetch while summing; or
// null: prefetch each row kAheadBytes ahead of its loads, as long as that stays within
// ahead_limit weights from the row's start (0: no prefetch). Decode rows are followed by the
// next row of their stream, so the limit may reach past a row's end, into rows of the range.
template <class P>
HWY_INLINE void DotRows4(const P* rows, size_t cols, const float* HWY_RESTRICT x,
                         float* HWY_RESTRICT out, const P* next, size_t ahead_limit) {
  const hn::ScalableTag<float> df;
  const size_t NF = hn::Lanes(df);
  const typename RestrictT<P>::type w0 = rows[0];
  const typename RestrictT<P>::type w1 = rows[1];
  const typename RestrictT<P>::type w2 = rows[2];
  const typename RestrictT<P>::type w3 = rows[3];
  auto a0 = hn::Zero(df), a1 = a0, a2 = a0, a3 = a0;
  auto b0 = a0, b1 = a0, b2 = a0, b3 = a0;
  size_t i = 0;
  const size_t ahead = ElemsOf(w0, kAheadBytes);
  const P in_row[kDecodeRows] = {w0 + ahead, w1 + ahead, w2 + ahead, w3 + ahead};
  for (; i + 2 * NF <= cols; i += 2 * NF) {
    if (next != nullptr) {
      PrefetchStep(next, i, 2 * NF);
    } else if (i + ahead + 2 * NF <= ahead_limit) {
      PrefetchStep(in_row, i, 2 * NF);
    }
    const auto vx0 = hn::LoadU(df, x + i);
    const auto vx1 = hn::LoadU(df, x + i + NF);
    a0 = hn::MulAdd(LoadF32(df, w0 + i), vx0, a0);
    a1 = hn::MulAdd(LoadF32(df, w1 + i), vx0, a1);
    a2 = hn::MulAdd(LoadF32(df, w2 + i), vx0, a2);
    a3 = hn::MulAdd(LoadF32(df, w3 + i), vx0, a3);
    b0 = hn::MulAdd(LoadF32(df, w0 + i + NF), vx1, b0);
    b1 = hn::MulAdd(LoadF32(df, w1 + i + NF), vx1, b1);
    b2 = hn::MulAdd(LoadF32(df, w2 + i + NF), vx1, b2);
    b3 = hn::MulAdd(LoadF32(df, w3 + i + NF), vx1, b3);
  }
  if (i + NF <= cols) {
    PrefetchStep(next, i, NF);
    const auto vx0 = hn::LoadU(df, x + i);
    a0 = hn::MulAdd(LoadF32(df, w0 + i), vx0, a0);
    a1 = hn::MulAdd(LoadF32(df, w1 + i), vx0, a1);
    a2 = hn::MulAdd(LoadF32(df, w2 + i), vx0, a2);
    a3 = hn::MulAdd(LoadF32(df, w3 + i), vx0, a3);
    i += NF;
  }
  float s[4] = {SumLanes(df, hn::Add(a0, b0)), SumLanes(df, hn::Add(a1, b1)),
                SumLanes(df, hn::Add(a2, b2)), SumLanes(df, hn::Add(a3, b3))};
  for (; i < cols; ++i) {
    const float xi = x[i];
    s[0] += ScalarF32(w0[i]) * xi;
    s[1] += ScalarF32(w1[i]) * xi;
    s[2] += ScalarF32(w2[i]) * xi;
    s[3] += ScalarF32(w3[i]) * xi;
  }
  for (size_t r = 0; r < 4; ++r) out[r] = s[r];
}

// The block-walking decode tiles' prefetch, called at every block g: one prefetch per 64 bytes
// of progress, of the next tile's rows (`next`), or else kAheadBytes ahead in each of the rows
// b while that stays within ahead_limit weights (DotRows4's contract).
template <class P>
HWY_INLINE void PrefetchBlockStep(const uint8_t* HWY_RESTRICT const* b, const P* next, size_t g,
                                  size_t ahead_limit) {
  constexpr size_t kBytes = BlockBytes(P());
  const size_t off = g * kBytes;
  if (off % 64 >= kBytes) return;
  const size_t ahead_blocks = kAheadBytes / kBytes;
  if (next != nullptr) {
    for (size_t r = 0; r < kDecodeRows; ++r) hwy::Prefetch(next[r].Block() + off);
  } else if ((g + ahead_blocks + 1) * kQ4Group <= ahead_limit) {
    for (size_t r = 0; r < kDecodeRows; ++r) hwy::Prefetch(b[r] + off + ahead_blocks * kBytes);
  }
}

#if HWY_TARGET == HWY_AVX3 || HWY_TARGET == HWY_AVX2
// Byte decode tiles (q4, q5): the codes as u8 against x's int8 q (Q4X::q8). AVX3 takes them
// when the CPU has AVX512_VNNI (util/cpu_features.h) and multiplies with vpdpbusd (u8 x s8, 4
// products summed per int32 lane); Highway 1.0.3's AVX3 target string lacks "avx512vnni", so
// these functions add it there (everything AVX3 has still inlines into them: a superset
// target). AVX2 multiplies with vpmaddubsw (u8 x s8 pairs to int16: |sum| <= 4 * 31 * 127 <
// 2^15, no saturation) and vpmaddwd by ones. Per block, rows 0 and 2 (1 and 3) share one
// 256-bit vector: their 16 code bytes side by side, split into low and high nibbles (weights
// j and j + 16), each met by x's q broadcast to both halves; lanes 0-3 sum row 0, 4-7 row 2,
// exactly. One conversion and one FMA then serve two rows, with d s broadcast per half from the
// 4 rows' (d, m) pairs, widened in one vcvtph2ps as in the AVX3 int16 tile. A 32-MAC row block
// is ~4 vector uops with VNNI against ~9 in the int16 tile (two vpmaddwd + vpaddd pairs, byte
// widening); on Zen 4 the AVX2 form runs q4 as fast (64 against 65 GFLOP/s: the per-block
// scaling and loads bound both), q5 at 39 against 48 (its bit masks). Tried and slower (1 thread, W [2048, 640], Zen 4): all 4 rows in one 512-bit
// vector (Zen 4 double-pumps it; the q5 bit masks then need scalar assembly), q4 63 / q5 40
// against 65 / 49 GFLOP/s; two blocks per iteration into separate sums (spilled), q4 42.
#undef SPARK_BYTE_TILE_ATTR
#if HWY_TARGET == HWY_AVX3
#define SPARK_BYTE_TILE_ATTR __attribute__((target("avx512vnni")))
#else
#define SPARK_BYTE_TILE_ATTR
#endif

// acc + (lo . xl) + (hi . xh) per int32 lane (4 byte products each).
SPARK_BYTE_TILE_ATTR HWY_INLINE __m256i ByteDot(__m256i acc, __m256i lo, __m256i xl, __m256i hi,
                                                __m256i xh) {
#if HWY_TARGET == HWY_AVX3
  return _mm256_dpbusd_epi32(_mm256_dpbusd_epi32(acc, lo, xl), hi, xh);
#else
  const __m256i p = _mm256_add_epi16(_mm256_maddubs_epi16(lo, xl), _mm256_maddubs_epi16(hi, xh));
  return _mm256_add_epi32(acc, _mm256_madd_epi16(p, _mm256_set1_epi16(1)));
#endif
}

// Bytes of v plus 16 where bit i of `bits` is set (byte i).
SPARK_BYTE_TILE_ATTR HWY_INLINE __m256i AddSixteenWhere(__m256i v, uint32_t bits) {
#if HWY_TARGET == HWY_AVX3
  return _mm256_mask_add_epi8(v, bits, v, _mm256_set1_epi8(16));
#else
  // Byte i takes byte i / 8 of bits, then tests its bit i % 8.
  const __m256i spread = _mm256_shuffle_epi8(
      _mm256_set1_epi32(static_cast<int32_t>(bits)),
      _mm256_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 3, 3,
                       3, 3, 3, 3, 3, 3));
  const __m256i bit = _mm256_set1_epi64x(static_cast<int64_t>(0x8040201008040201ull));
  const __m256i set = _mm256_cmpeq_epi8(_mm256_and_si256(spread, bit), bit);
  return _mm256_add_epi8(v, _mm256_and_si256(set, _mm256_set1_epi8(16)));
#endif
}

// [d0 s, m0 s sum(q), d1 s, .. | d2 s, ..., d3 s, m3 s sum(q)] of block `off` of the 4 rows
// (q5: lanes 1, 3, .. hold its qh bits read as f16, unused).
SPARK_BYTE_TILE_ATTR HWY_INLINE __m256 ByteTileScales(const uint8_t* HWY_RESTRICT const* b, size_t off,
                                                      const float* HWY_RESTRICT step_sum) {
  const __m128i p01 = _mm_unpacklo_epi32(_mm_loadu_si32(b[0] + off), _mm_loadu_si32(b[1] + off));
  const __m128i p23 = _mm_unpacklo_epi32(_mm_loadu_si32(b[2] + off), _mm_loadu_si32(b[3] + off));
  const __m256 dm = _mm256_cvtph_ps(_mm_unpacklo_epi64(p01, p23));
  const __m256 ss = _mm256_castpd_ps(_mm256_broadcast_sd(reinterpret_cast<const double*>(step_sum)));
  return _mm256_mul_ps(dm, ss);
}

// The 16 code bytes at r0 + off and r1 + off, side by side.
SPARK_BYTE_TILE_ATTR HWY_INLINE __m256i ByteTileCodes(const uint8_t* r0, const uint8_t* r1, size_t off) {
  return _mm256_inserti128_si256(
      _mm256_castsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(r0 + off))),
      _mm_loadu_si128(reinterpret_cast<const __m128i*>(r1 + off)), 1);
}

// The block tile for P = Q4Ptr (m terms) or Q5Ptr (fifth bits, the -16 sum(q) start).
template <class P>
inline SPARK_BYTE_TILE_ATTR HWY_NOINLINE void DotRows4Bytes(const P* rows, size_t cols, const Q4X& x,
                                                            float* HWY_RESTRICT out, const P* next,
                                                            size_t ahead_limit) {
  constexpr bool kQ5 = BlockBytes(P()) == kQ5BlockBytes;
  constexpr size_t kCodes = kQ5 ? 6 : 4;  // offset of the code bytes in a block
  const uint8_t* HWY_RESTRICT b[kDecodeRows];
  for (size_t r = 0; r < kDecodeRows; ++r) b[r] = rows[r].Block();
  const __m256i low4 = _mm256_set1_epi8(15);
  __m256 a02 = _mm256_setzero_ps(), a13 = a02, macc = a02;
  const size_t blocks = cols / kQ4Group;
  for (size_t g = 0; g < blocks; ++g) {
    const size_t off = g * BlockBytes(P());
    PrefetchBlockStep(b, next, g, ahead_limit);
    const int8_t* HWY_RESTRICT qg = x.q8 + g * kQ4Group;
    const __m256i xl = _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(qg)));
    const __m256i xh = _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(qg + 16)));
    // q5: the accumulator starts at -16 sum(q) (Q4X::q5_bias), so each row's lanes sum to
    // (c - 16) . q with the codes c (0..31) as u8.
    const __m256i start = kQ5 ? _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x.q5_bias + 8 * g))
                              : _mm256_setzero_si256();
    auto dot = [&](const uint8_t* r0, const uint8_t* r1) {
      const __m256i c = ByteTileCodes(r0, r1, off + kCodes);
      __m256i lo = _mm256_and_si256(c, low4);
      __m256i hi = _mm256_and_si256(_mm256_srli_epi16(c, 4), low4);
      if (kQ5) {  // the fifth bits of weights j (qh bits 0-15) and j + 16 (16-31), both rows
        uint32_t h0, h1;
        memcpy(&h0, r0 + off + 2, 4);
        memcpy(&h1, r1 + off + 2, 4);
        lo = AddSixteenWhere(lo, (h0 & 0xFFFFu) | (h1 << 16));
        hi = AddSixteenWhere(hi, (h0 >> 16) | (h1 & 0xFFFF0000u));
      }
      return ByteDot(start, lo, xl, hi, xh);
    };
    const __m256i s02 = dot(b[0], b[2]), s13 = dot(b[1], b[3]);
    const __m256 prod = ByteTileScales(b, off, x.step_sum + 2 * g);
    if (!kQ5) macc = _mm256_add_ps(macc, prod);
    a02 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s02), _mm256_permute_ps(prod, 0x00), a02);
    a13 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s13), _mm256_permute_ps(prod, 0xAA), a13);
  }
  HWY_ALIGN float v02[8], v13[8], vm[8];
  _mm256_store_ps(v02, a02);
  _mm256_store_ps(v13, a13);
  _mm256_store_ps(vm, macc);
  const float* half[kDecodeRows] = {v02, v13, v02 + 4, v13 + 4};
  for (size_t r = 0; r < kDecodeRows; ++r)
    out[r] = ((half[r][0] + half[r][1]) + (half[r][2] + half[r][3])) + vm[2 * r + 1];
}

// Whether this target's q4 / q5 decode takes DotRows4Bytes.
HWY_INLINE bool UseByteTiles() {
#if HWY_TARGET == HWY_AVX3
  return UseAvx512Vnni();
#else
  return true;
#endif
}
#endif  // HWY_TARGET == HWY_AVX3 || HWY_TARGET == HWY_AVX2

// q4 decode tile: DotRows4's contract with x quantized (Q4X), block by block. Per row and
// block, sum_i (d c_i + m) s q_i = d s (c . q) + m s sum(q): the integer dot in int32 lanes, then
// one FMA with d s per block. Rows start at block boundaries (cols % 32 == 0).
HWY_INLINE void DotRows4(const Q4Ptr* rows, size_t cols, const Q4X& x, float* HWY_RESTRICT out,
                         const Q4Ptr* next, size_t ahead_limit) {
#if HWY_TARGET == HWY_AVX3 || HWY_TARGET == HWY_AVX2
  if (UseByteTiles()) return DotRows4Bytes(rows, cols, x, out, next, ahead_limit);
#endif
  const hn::CappedTag<int16_t, 16> d16;  // 16 codes = one nibble half of a block, at most
  const hn::Repartition<int32_t, decltype(d16)> d32;
  const hn::Rebind<float, decltype(d32)> df;
  const hn::Rebind<uint8_t, decltype(d16)> d8;
  const size_t N16 = hn::Lanes(d16);
  const uint8_t* HWY_RESTRICT b[kDecodeRows];
  for (size_t r = 0; r < kDecodeRows; ++r) b[r] = rows[r].Block();
#if HWY_ARCH_X86 && HWY_TARGET <= HWY_AVX2
  auto a02 = hn::Zero(df), a13 = a02, macc = a02;  // see below
#else
  auto a0 = hn::Zero(df), a1 = a0, a2 = a0, a3 = a0;  // sum over blocks of d s (c . q)
  float m0 = 0.0f, m1 = 0.0f, m2 = 0.0f, m3 = 0.0f;   // sum over blocks of m s sum(q)
#endif
  const size_t blocks = cols / kQ4Group;
  const auto low4 = hn::Set(d16, 15);
  for (size_t g = 0; g < blocks; ++g) {
    const size_t off = g * kQ4BlockBytes;
    PrefetchBlockStep(b, next, g, ahead_limit);
    const int16_t* HWY_RESTRICT qg = x.q + g * kQ4Group;
    // Two int32 sums per row: ReorderWidenMulAccumulate may split lanes between them (x86
    // uses only the first); RearrangeToOddPlusEven joins them.
    auto s0 = hn::Zero(d32), s1 = s0, s2 = s0, s3 = s0;
    auto t0 = s0, t1 = s0, t2 = s0, t3 = s0;
    for (size_t v = 0; v < 16; v += N16) {
      const auto ql = hn::LoadU(d16, qg + v), qh = hn::LoadU(d16, qg + 16 + v);
      auto dot = [&](const uint8_t* blk, hn::Vec<decltype(d32)>& s, hn::Vec<decltype(d32)>& t) {
        const auto c = hn::PromoteTo(d16, hn::LoadU(d8, blk + off + 4 + v));
        s = hn::ReorderWidenMulAccumulate(d32, hn::And(c, low4), ql, s, t);
        s = hn::ReorderWidenMulAccumulate(d32, hn::ShiftRight<4>(c), qh, s, t);
      };
      dot(b[0], s0, t0);
      dot(b[1], s1, t1);
      dot(b[2], s2, t2);
      dot(b[3], s3, t3);
    }
    s0 = hn::RearrangeToOddPlusEven(s0, t0);
    s1 = hn::RearrangeToOddPlusEven(s1, t1);
    s2 = hn::RearrangeToOddPlusEven(s2, t2);
    s3 = hn::RearrangeToOddPlusEven(s3, t3);
#if HWY_ARCH_X86 && HWY_TARGET <= HWY_AVX2
    // 8 f32 lanes: the 4 rows' (d, m) pairs widen in one conversion, [d0 m0 .. d3 m3], times
    // [s, s sum(q)] per pair; rows 0 and 2 (1 and 3) share one accumulator, each folded to 4 lanes
    // (exactly, in int32), so d s needs only an in-block broadcast. Each row's arithmetic is
    // the same in any slot of the tile. Against one scalar conversion per row and block (1
    // thread, L2-resident, AVX3 on the Zen 4 VM, GFLOP/s): W [2048, 640] 44.9 -> 48.5,
    // W [640, 2048] 46.4 -> 51.7 (int8: 52-57).
    const hn::Full128<uint32_t> du4;
    const hn::Full128<uint64_t> du2;
    const hn::Full128<hwy::float16_t> dh8;
    auto pair = [&](size_t r) { return hn::LoadU(du4, reinterpret_cast<const uint32_t*>(b[r] + off)); };
    const auto p0123 = hn::InterleaveLower(du2, hn::BitCast(du2, hn::InterleaveLower(du4, pair(0), pair(1))),
                                           hn::BitCast(du2, hn::InterleaveLower(du4, pair(2), pair(3))));
    uint64_t ss_bits;
    memcpy(&ss_bits, x.step_sum + 2 * g, 8);
    const auto prod = hn::Mul(hn::PromoteTo(df, hn::BitCast(dh8, p0123)),
                              hn::BitCast(df, hn::Set(hn::Repartition<uint64_t, decltype(df)>(), ss_bits)));
    macc = hn::Add(macc, prod);
    const auto c02 = hn::Add(hn::ConcatLowerLower(d32, s2, s0), hn::ConcatUpperUpper(d32, s2, s0));
    const auto c13 = hn::Add(hn::ConcatLowerLower(d32, s3, s1), hn::ConcatUpperUpper(d32, s3, s1));
    a02 = hn::MulAdd(hn::ConvertTo(df, c02), hn::Broadcast<0>(prod), a02);
    a13 = hn::MulAdd(hn::ConvertTo(df, c13), hn::Broadcast<2>(prod), a13);
  }
  HWY_ALIGN float v02[8], v13[8], vm[8];
  hn::Store(a02, df, v02);
  hn::Store(a13, df, v13);
  hn::Store(macc, df, vm);
  const float* half[kDecodeRows] = {v02, v13, v02 + 4, v13 + 4};
  for (size_t r = 0; r < kDecodeRows; ++r)
    out[r] = ((half[r][0] + half[r][1]) + (half[r][2] + half[r][3])) + vm[2 * r + 1];
}
#else
    const float step = x.step_sum[2 * g], sx = x.step_sum[2 * g + 1];
    // One row at a time, in scalars: with d and m gathered in arrays, GCC stored them one by
    // one and reloaded them as one vector, a failed store-to-load forward per block that
    // halved the kernel's speed.
    auto finish = [&](const uint8_t* blk, hn::Vec<decltype(d32)> s, hn::Vec<decltype(df)>& a,
                      float& macc) {
      float d, mb;
      Q4Params(blk + off, &d, &mb);
      a = hn::MulAdd(hn::ConvertTo(df, s), hn::Set(df, d * step), a);
      macc += mb * sx;
    };
    finish(b[0], s0, a0, m0);
    finish(b[1], s1, a1, m1);
    finish(b[2], s2, a2, m2);
    finish(b[3], s3, a3, m3);
  }
  out[0] = SumLanes(df, a0) + m0;
  out[1] = SumLanes(df, a1) + m1;
  out[2] = SumLanes(df, a2) + m2;
  out[3] = SumLanes(df, a3) + m3;
}
#endif

// Bit j of an int16 in lane j (q5's qh bits, half a block at a time).
alignas(32) static constexpr int16_t kQ5Bit16[16] = {
    1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384,
    static_cast<int16_t>(static_cast<uint16_t>(0x8000))};

// q5 decode tile: DotRows4's contract with x quantized (Q4X), block by block. Per row and
// block, sum_i d (c_i - 16) x_i ~ d s ((c - 16) . q): the codes minus 16 (-16..15) meet q in
// int16 multiply-adds as q4's codes do (|sum| <= 32 * 16 * 127 < 2^24: exact in int32 and in
// its f32 conversion), then one FMA with d s per block; a symmetric block has no m term.
HWY_INLINE void DotRows4(const Q5Ptr* rows, size_t cols, const Q4X& x, float* HWY_RESTRICT out,
                         const Q5Ptr* next, size_t ahead_limit) {
#if HWY_TARGET == HWY_AVX3 || HWY_TARGET == HWY_AVX2
  if (UseByteTiles()) return DotRows4Bytes(rows, cols, x, out, next, ahead_limit);
#endif
  const hn::CappedTag<int16_t, 16> d16;
  const hn::Repartition<int32_t, decltype(d16)> d32;
  const hn::Rebind<float, decltype(d32)> df;
  const hn::Rebind<uint8_t, decltype(d16)> d8;
  const size_t N16 = hn::Lanes(d16);
  const uint8_t* HWY_RESTRICT b[kDecodeRows];
  for (size_t r = 0; r < kDecodeRows; ++r) b[r] = rows[r].Block();
  auto a0 = hn::Zero(df), a1 = a0, a2 = a0, a3 = a0;  // sum over blocks of d s ((c - 16) . q)
  const size_t blocks = cols / kQ4Group;
  const auto low4 = hn::Set(d16, 15), sixteen = hn::Set(d16, 16);
  for (size_t g = 0; g < blocks; ++g) {
    const size_t off = g * kQ5BlockBytes;
    PrefetchBlockStep(b, next, g, ahead_limit);
    const int16_t* HWY_RESTRICT qg = x.q + g * kQ4Group;
    auto s0 = hn::Zero(d32), s1 = s0, s2 = s0, s3 = s0;
    auto t0 = s0, t1 = s0, t2 = s0, t3 = s0;
    for (size_t v = 0; v < 16; v += N16) {
      const auto ql = hn::LoadU(d16, qg + v), qh = hn::LoadU(d16, qg + 16 + v);
#if HWY_TARGET == HWY_SCALAR
      const auto bits = hn::LoadU(d16, kQ5Bit16 + v);
#endif
      auto dot = [&](const uint8_t* blk, hn::Vec<decltype(d32)>& s, hn::Vec<decltype(d32)>& t) {
        const auto c = hn::PromoteTo(d16, hn::LoadU(d8, blk + off + 6 + v));
        const auto lo = hn::And(c, low4), hi = hn::ShiftRight<4>(c);
        // Lanes whose fifth bit is clear lose 16: c - 16 = (c & 15) - (bit clear ? 16 : 0).
        // Vector targets read the bits straight into a mask (AVX3: one mask-register load;
        // against broadcasting qh and testing a bit per lane, `python bench/block_decode.py`
        // (1 thread, W [2048, 640] L2-resident, AVX3 on the Zen 4 VM, quiet): 30.4-32.1 ->
        // 33.2-33.8 GFLOP/s; q4 47). v is a multiple of 8 there.
#if HWY_TARGET == HWY_SCALAR
        uint32_t h;
        memcpy(&h, blk + off + 2, 4);
        const auto hl = hn::TestBit(hn::Set(d16, static_cast<int16_t>(h & 0xFFFF)), bits);
        const auto hh = hn::TestBit(hn::Set(d16, static_cast<int16_t>(h >> 16)), bits);
#else
        const auto hl = hn::LoadMaskBits(d16, blk + off + 2 + v / 8);
        const auto hh = hn::LoadMaskBits(d16, blk + off + 4 + v / 8);
#endif
        s = hn::ReorderWidenMulAccumulate(d32, hn::Sub(lo, hn::IfThenZeroElse(hl, sixteen)), ql, s, t);
        s = hn::ReorderWidenMulAccumulate(d32, hn::Sub(hi, hn::IfThenZeroElse(hh, sixteen)), qh, s, t);
      };
      dot(b[0], s0, t0);
      dot(b[1], s1, t1);
      dot(b[2], s2, t2);
      dot(b[3], s3, t3);
    }
    const float step = x.step_sum[2 * g];
    auto finish = [&](const uint8_t* blk, hn::Vec<decltype(d32)> s, hn::Vec<decltype(d32)> t,
                      hn::Vec<decltype(df)>& a) {
      float d, m;
      Q5Params(blk + off, &d, &m);
      a = hn::MulAdd(hn::ConvertTo(df, hn::RearrangeToOddPlusEven(s, t)), hn::Set(df, d * step), a);
    };
    finish(b[0], s0, t0, a0);
    finish(b[1], s1, t1, a1);
    finish(b[2], s2, t2, a2);
    finish(b[3], s3, t3, a3);
  }
  out[0] = SumLanes(df, a0);
  out[1] = SumLanes(df, a1);
  out[2] = SumLanes(df, a2);
  out[3] = SumLanes(df, a3);
}

// out[r + t * out_tok_stride] = rows[r] . x[t] for r < kR, t < kT; each row has `cols` weights.
// One accumulator per (row, token): kR * kT independent chains, in registers (see below).
template <size_t kR, size_t kT, class P>
HWY_INLINE void DotTile(const P* rows, size_t cols, const float* HWY_RESTRICT x,
                        size_t x_stride, float* HWY_RESTRICT out, size_t out_tok_stride) {
  const hn::ScalableTag<float> df;
  const size_t NF = hn::Lanes(df);
  // Fully unrolled (HWY_UNROLL; GCC 12 wants a literal bound) so that acc lives in registers:
  // left rolled, acc stays on the stack and every FMA waits on a store-to-load forward
  // (2-4x slower, measured).
  hn::Vec<decltype(df)> acc[kR][kT];
  HWY_UNROLL(16)
  for (size_t r = 0; r < kR; ++r) {
    HWY_UNROLL(16)
    for (size_t t = 0; t < kT; ++t) acc[r][t] = hn::Zero(df);
  }
  size_t i = 0;
  for (; i + NF <= cols; i += NF) {
    hn::Vec<decltype(df)> vw[kR];
    HWY_UNROLL(16)
    for (size_t r = 0; r < kR; ++r) vw[r] = LoadF32(df, rows[r] + i);
    HWY_UNROLL(16)
    for (size_t t = 0; t < kT; ++t) {
      const auto vx = hn::LoadU(df, x + t * x_stride + i);
      HWY_UNROLL(16)
      for (size_t r = 0; r < kR; ++r) acc[r][t] = hn::MulAdd(vw[r], vx, acc[r][t]);
    }
  }
  HWY_UNROLL(16)
  for (size_t r = 0; r < kR; ++r) {
    HWY_UNROLL(16)
    for (size_t t = 0; t < kT; ++t) {
      float sum = SumLanes(df, acc[r][t]);
      for (size_t j = i; j < cols; ++j) sum += ScalarF32(rows[r][j]) * x[t * x_stride + j];
      out[r + t * out_tok_stride] = sum;
    }
  }
}

// Rows per chunk tile: kR x 4 accumulators plus kR weight vectors and one x vector must fit
// in the register file. AVX-512 has 32: 4 x 4 (21 live); elsewhere 16: 2 x 4 (11 live).
#if HWY_ARCH_X86 && HWY_TARGET <= HWY_AVX3
constexpr size_t kChunkRows = 4;
#else
constexpr size_t kChunkRows = 2;
#endif

// rows[0, kR) of `cols` weights against all T tokens of x [T, cols]: K::Dot<kR, kT> (a
// DotTile's contract) on token groups of 4, then 2, 1.
template <size_t kR, class K, class W, class X>
HWY_INLINE void TokenGroups(const W* const* rows, size_t cols, const X* HWY_RESTRICT x, size_t T,
                            float* HWY_RESTRICT out, size_t out_stride) {
  size_t t = 0;
  for (; t + 4 <= T; t += 4)
    K::template Dot<kR, 4>(rows, cols, x + t * cols, cols, out + t * out_stride, out_stride);
  for (; t + 2 <= T; t += 2)
    K::template Dot<kR, 2>(rows, cols, x + t * cols, cols, out + t * out_stride, out_stride);
  if (t < T) K::template Dot<kR, 1>(rows, cols, x + t * cols, cols, out + t * out_stride, out_stride);
}

struct F32Dot {
  template <size_t kR, size_t kT>
  static HWY_INLINE void Dot(const float* const* rows, size_t cols, const float* HWY_RESTRICT x,
                             size_t x_stride, float* HWY_RESTRICT out, size_t out_tok_stride) {
    DotTile<kR, kT>(rows, cols, x, x_stride, out, out_tok_stride);
  }
};

// f32 rows w[0, kR) of `cols` weights for all T tokens. The per element arithmetic of DotTile
// does not depend on kR or kT, so neither does the result.
template <size_t kR>
HWY_INLINE void RowsAllTokens(const float* w, size_t cols, const float* HWY_RESTRICT x,
                              size_t T, float* HWY_RESTRICT out, size_t out_stride) {
  const float* rows[kR];
  for (size_t r = 0; r < kR; ++r) rows[r] = w + r * cols;
  TokenGroups<kR, F32Dot>(rows, cols, x, T, out, out_stride);
}

// Other types: the kR rows are decoded to f32 once (DecodeRowF32: exact, int8 before its scale),
// then meet all T tokens as f32 rows do, so each weight is converted once per chunk, not once
// per 4 tokens. For q4 / q5 the decode inside the tile cost about as much as the FMAs: Gemma 3
// 270M `--dtype q4` (its q4 / q5 / int8 mix) prefill of 512 in chunks of 64, 2 threads, AVX3 on
// the Zen 4 VM: see bench/results/prefill-panel-2026-12-07.txt.
template <size_t kR, class P>
HWY_INLINE void RowsAllTokens(P w, size_t cols, const float* HWY_RESTRICT x, size_t T,
                              float* HWY_RESTRICT out, size_t out_stride) {
  thread_local std::vector<float> panel;
  if (panel.size() < kR * cols) panel.resize(kR * cols);
  for (size_t r = 0; r < kR; ++r) DecodeRowF32(w + r * cols, cols, panel.data() + r * cols);
  RowsAllTokens<kR>(static_cast<const float*>(panel.data()), cols, x, T, out, out_stride);
}

// Chunk input of bf16 weights (T > 1): x rounded to bf16, round to nearest even, NaN a quiet
// NaN of its sign (BF16BitsFromF32, as the KV cache rounds), as f32 values (xr) and / or as
// bf16 bits (xb); null: not wanted. Every product of a bf16 weight and a bf16 x is exact in
// f32, so each target's chunk matmul computes the same products and differs from the others
// only in the f32 summation order (and, on the AVX512_BF16 tile, in flushing subnormals: see
// DotTileBF16). x keeps f32 in decode, which is bound by the weights' bytes, not by the FMAs.
HWY_INLINE void RoundToBF16(const float* HWY_RESTRICT x, size_t n, float* HWY_RESTRICT xr,
                            uint16_t* HWY_RESTRICT xb) {
  const hn::ScalableTag<float> df;
  const hn::RebindToUnsigned<decltype(df)> du;
  const hn::RebindToSigned<decltype(df)> di;
  const hn::Rebind<uint16_t, decltype(di)> d16;
  const size_t NF = hn::Lanes(df);
  size_t i = 0;
  for (; i + NF <= n; i += NF) {
    const auto v = hn::LoadU(df, x + i);
    const auto bits = hn::BitCast(du, v);
    const auto odd = hn::And(hn::ShiftRight<16>(bits), hn::Set(du, 1u));
    const auto nearest = hn::Add(bits, hn::Add(hn::Set(du, 0x7FFFu), odd));
    const auto quiet = hn::Or(bits, hn::Set(du, 0x00400000u));
    const auto r = hn::And(hn::IfThenElse(hn::RebindMask(du, hn::IsNaN(v)), quiet, nearest),
                           hn::Set(du, 0xFFFF0000u));
    if (xr != nullptr) hn::StoreU(hn::BitCast(df, r), df, xr + i);
    if (xb != nullptr) hn::StoreU(hn::DemoteTo(d16, hn::BitCast(di, hn::ShiftRight<16>(r))), d16, xb + i);
  }
  for (; i < n; ++i) {
    const uint16_t b = BF16BitsFromF32(x[i]);
    if (xr != nullptr) xr[i] = F32FromBF16Bits(b);
    if (xb != nullptr) xb[i] = b;
  }
}

#if HWY_TARGET == HWY_AVX3
// The AVX512_BF16 chunk tile (CPUs with it: util/cpu_features.h; Highway 1.0.3 has no target
// with it, so these functions add "avx512bf16" to AVX3's, as the byte decode tiles add VNNI).
// vdpbf16ps multiplies 32 bf16 pairs and adds each lane's two products to an f32 lane: the
// weights' bf16 straight from the file against x's bf16 bits (RoundToBF16), adjacent columns
// (2k, 2k + 1) in lane k of both, so neither side is reordered; twice the multiply-adds of an
// f32 FMA per instruction, and no f32 panel (DecodeRowF32) to write and read back. T = 64 at
// Gemma 3 270M's shapes, Zen 4, 1 thread: 151-197 GFLOP/s against the f32 tile's 84-100
// (`python bench/bf16_chunk.py`, bench/results/bf16-dot-2026-12-07.txt). The
// instruction treats subnormal inputs as 0 and flushes a subnormal result to 0 (DAZ / FTZ,
// whatever MXCSR says): products under 2^-126 in magnitude (|w x|, e.g. both under 2^-63) are
// lost and a partial sum under 2^-126 becomes 0, an absolute error below cols * 2^-126 per
// output, far under the f32 rounding of any normal-range dot (tests/test_kernels.py
// test_bf16_chunk_tiny_values).
#undef SPARK_BF16_TILE_ATTR
#define SPARK_BF16_TILE_ATTR __attribute__((target("avx512bf16")))

// DotTile's contract for bf16 rows against bf16 x bits [kT][x_stride]; the tail (cols % 32)
// adds the exact products in scalar f32.
template <size_t kR, size_t kT>
SPARK_BF16_TILE_ATTR HWY_INLINE void DotTileBF16(const uint16_t* const* rows, size_t cols,
                                                 const uint16_t* HWY_RESTRICT x, size_t x_stride,
                                                 float* HWY_RESTRICT out, size_t out_tok_stride) {
  // Fully unrolled for DotTile's reason (acc in registers); 4 x 4: 16 accumulators, 4 weight
  // vectors and one x vector of AVX-512's 32 registers.
  __m512 acc[kR][kT];
  HWY_UNROLL(16)
  for (size_t r = 0; r < kR; ++r) {
    HWY_UNROLL(16)
    for (size_t t = 0; t < kT; ++t) acc[r][t] = _mm512_setzero_ps();
  }
  size_t i = 0;
  for (; i + 32 <= cols; i += 32) {
    __m512bh vw[kR];
    HWY_UNROLL(16)
    for (size_t r = 0; r < kR; ++r) vw[r] = (__m512bh)_mm512_loadu_si512(rows[r] + i);
    HWY_UNROLL(16)
    for (size_t t = 0; t < kT; ++t) {
      const __m512bh vx = (__m512bh)_mm512_loadu_si512(x + t * x_stride + i);
      HWY_UNROLL(16)
      for (size_t r = 0; r < kR; ++r) acc[r][t] = _mm512_dpbf16_ps(acc[r][t], vw[r], vx);
    }
  }
  HWY_UNROLL(16)
  for (size_t r = 0; r < kR; ++r) {
    HWY_UNROLL(16)
    for (size_t t = 0; t < kT; ++t) {
      float sum = _mm512_reduce_add_ps(acc[r][t]);
      for (size_t j = i; j < cols; ++j)
        sum += F32FromBF16Bits(rows[r][j]) * F32FromBF16Bits(x[t * x_stride + j]);
      out[r + t * out_tok_stride] = sum;
    }
  }
}

// DotTileBF16 for TokenGroups. Not always-inline: its target attribute is a superset of the
// caller's (one call per token group).
struct BF16Dot {
  template <size_t kR, size_t kT>
  static SPARK_BF16_TILE_ATTR HWY_NOINLINE void Dot(const uint16_t* const* rows, size_t cols,
                                                    const uint16_t* HWY_RESTRICT x, size_t x_stride,
                                                    float* HWY_RESTRICT out, size_t out_tok_stride) {
    DotTileBF16<kR, kT>(rows, cols, x, x_stride, out, out_tok_stride);
  }
};

// RowsAllTokens for bf16 rows w[0, kR) against xb [T, cols], x as bf16 bits.
template <size_t kR>
HWY_INLINE void RowsAllTokensBF16(const hwy::bfloat16_t* w, size_t cols, const uint16_t* HWY_RESTRICT xb,
                                  size_t T, float* HWY_RESTRICT out, size_t out_stride) {
  const uint16_t* rows[kR];
  for (size_t r = 0; r < kR; ++r) rows[r] = reinterpret_cast<const uint16_t*>(w + r * cols);
  TokenGroups<kR, BF16Dot>(rows, cols, xb, T, out, out_stride);
}

// Rows [r0, r1) of a bf16 chunk matmul on the AVX512_BF16 tile: xb is x as bf16 bits [T, cols].
HWY_INLINE void MatMulRowsBF16(const hwy::bfloat16_t* w, size_t cols, const uint16_t* HWY_RESTRICT xb,
                               size_t T, float* HWY_RESTRICT out, size_t out_stride, size_t r0,
                               size_t r1) {
  size_t r = r0;
  for (; r + kChunkRows <= r1; r += kChunkRows)
    RowsAllTokensBF16<kChunkRows>(w + r * cols, cols, xb, T, out + r, out_stride);
  for (; r < r1; ++r) RowsAllTokensBF16<1>(w + r * cols, cols, xb, T, out + r, out_stride);
}

// int8 rows [r0, r1) of a chunk matmul on the AVX512_BF16 tile, times their scale after: each
// kR-row panel is converted to bf16 once per chunk, exactly (|q| <= 127 has at most 7
// significant bits, and a bf16 holds 8), so the products are those of the f32 tile on the
// bf16-rounded x. Gemma 3 270M int8 prefill: bench/results/int8-bf16-dot-2026-12-07.txt.
// dst[0, n) = src[0, n) as bf16 bits, exactly (|q| <= 127: 7 significant bits).
HWY_INLINE void I8ToBF16(const int8_t* HWY_RESTRICT src, size_t n, uint16_t* HWY_RESTRICT dst) {
  size_t i = 0;
  for (; i + 16 <= n; i += 16) {
    const __m512 f = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(
        _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i))));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + i),
                        _mm512_cvtepi32_epi16(_mm512_srli_epi32(_mm512_castps_si512(f), 16)));
  }
  for (; i < n; ++i) dst[i] = BF16BitsFromF32(static_cast<float>(src[i]));
}

template <size_t kR>
SPARK_BF16_TILE_ATTR HWY_NOINLINE void RowsAllTokensI8BF16(const int8_t* w, size_t cols,
                                                           const uint16_t* HWY_RESTRICT xb, size_t T,
                                                           float* HWY_RESTRICT out, size_t out_stride) {
  thread_local std::vector<uint16_t> panel;
  if (panel.size() < kR * cols) panel.resize(kR * cols);
  const uint16_t* rows[kR];
  for (size_t r = 0; r < kR; ++r) {
    I8ToBF16(w + r * cols, cols, panel.data() + r * cols);
    rows[r] = panel.data() + r * cols;
  }
  TokenGroups<kR, BF16Dot>(rows, cols, xb, T, out, out_stride);
}

HWY_INLINE void MatMulRowsI8BF16(const int8_t* w, const float* HWY_RESTRICT scale, size_t cols,
                                 const uint16_t* HWY_RESTRICT xb, size_t T, float* HWY_RESTRICT out,
                                 size_t out_stride, size_t r0, size_t r1) {
  size_t r = r0;
  for (; r + kChunkRows <= r1; r += kChunkRows)
    RowsAllTokensI8BF16<kChunkRows>(w + r * cols, cols, xb, T, out + r, out_stride);
  for (; r < r1; ++r) RowsAllTokensI8BF16<1>(w + r * cols, cols, xb, T, out + r, out_stride);
  for (size_t t = 0; t < T; ++t)
    for (size_t rr = r0; rr < r1; ++rr) out[t * out_stride + rr] *= scale[rr];
}

#endif  // HWY_TARGET == HWY_AVX3

// Whether this target's bf16 chunk matmul takes x as bf16 bits (the AVX512_BF16 tile) rather
// than as bf16-rounded f32 values (the f32 tile on the decoded panel).
HWY_INLINE bool UseBF16Tile() {
#if HWY_TARGET == HWY_AVX3
  return UseAvx512Bf16();
#else
  return false;
#endif
}

template <class P>
HWY_INLINE void MatMulRowsT(P w, const float* HWY_RESTRICT scale,
                            size_t cols, const float* HWY_RESTRICT x, size_t T,
                            float* HWY_RESTRICT out, size_t out_stride, size_t r0, size_t r1) {
  if (T == 1) {
    // Decode. The rows of a tile are a quarter of [r0, r1) apart, so each of the 4 weight
    // streams runs through one contiguous quarter: hardware prefetchers follow a few long
    // sequential streams well, but 4 adjacent short rows start 3 new streams every tile
    // (1 thread, weights cold, bf16 [13824, 1024]: 8.6 -> 12.4 GB/s; int8 [9216, 2304]:
    // 6.9 -> 12.3 GB/s).
    const size_t q = (r1 - r0 + kDecodeRows - 1) / kDecodeRows;  // rows per stream
    const bool streaming = BytesOf(w, (r1 - r0) * cols) > kStreamingBytes;
    const auto xin = DecodeInput(w, x, cols);
    for (size_t k = 0; k < q; ++k) {
      size_t r[kDecodeRows];
      P rows[kDecodeRows];
      for (size_t s = 0; s < kDecodeRows; ++s) {
        r[s] = r0 + s * q + k;
        rows[s] = w + (r[s] < r1 ? r[s] : r0 + k) * cols;  // past the end: a valid row, unused
      }
      // Prefetch up to the end of the range: past a row's end lies the next row of its
      // stream. Stopping at each row's end left the last 512 B of every row to the hardware
      // alone, a fifth to a quarter of 2-3 KiB rows (interleaved A/B, weights cold, GB/s:
      // bf16 [13824, 1024] 10.1 -> 10.9, int8 [13824, 1024] 8.9 -> 10.5, bf16 [9216, 2304]
      // 11.6 -> 11.8). r[0] < r1 always.
      size_t last = r[0];
      for (size_t s = 1; s < kDecodeRows; ++s) last = r[s] < r1 ? r[s] : last;
      const size_t ahead_limit = streaming ? (r1 - last) * cols : 0;
      float dots[kDecodeRows];
      DotRows4(rows, cols, xin, dots, static_cast<const P*>(nullptr), ahead_limit);
      for (size_t s = 0; s < kDecodeRows; ++s) {
        if (r[s] < r1) out[r[s]] = scale ? dots[s] * scale[r[s]] : dots[s];
      }
    }
    return;
  }
  size_t r = r0;
  for (; r + kChunkRows <= r1; r += kChunkRows)
    RowsAllTokens<kChunkRows>(w + r * cols, cols, x, T, out + r, out_stride);
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
