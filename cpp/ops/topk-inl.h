// topk-inl.h (per target): mean / population std and the threshold scan of statistical top-k.

#if defined(SPARK_OPS_TOPK_INL_H_) == defined(HWY_TARGET_TOGGLE)
#ifdef SPARK_OPS_TOPK_INL_H_
#undef SPARK_OPS_TOPK_INL_H_
#else
#define SPARK_OPS_TOPK_INL_H_
#endif

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "hwy/highway.h"
#include "ops/reduce-inl.h"

HWY_BEFORE_NAMESPACE();
namespace spark {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

// sum_i (x_i - shift)^p for p = 1 or 2, in f32 with 4 accumulators (n ~ 1e4: f32 error ~1e-6
// relative, far below what moves a threshold by one element).
template <int kPower>
HWY_INLINE float SumPow(const float* HWY_RESTRICT x, size_t n, float shift) {
  const hn::ScalableTag<float> df;
  const size_t NF = hn::Lanes(df);
  const auto vs = hn::Set(df, shift);
  auto a0 = hn::Zero(df), a1 = a0, a2 = a0, a3 = a0;
  auto term = [&](size_t i) {
    const auto d = hn::Sub(hn::LoadU(df, x + i), vs);
    return kPower == 1 ? d : hn::Mul(d, d);
  };
  size_t i = 0;
  for (; i + 4 * NF <= n; i += 4 * NF) {
    a0 = hn::Add(a0, term(i));
    a1 = hn::Add(a1, term(i + NF));
    a2 = hn::Add(a2, term(i + 2 * NF));
    a3 = hn::Add(a3, term(i + 3 * NF));
  }
  for (; i + NF <= n; i += NF) a0 = hn::Add(a0, term(i));
  float sum = SumLanes(df, hn::Add(hn::Add(a0, a1), hn::Add(a2, a3)));
  for (; i < n; ++i) {
    const float d = x[i] - shift;
    sum += kPower == 1 ? d : d * d;
  }
  return sum;
}

// max_i x_i, NaN entries skipped (-inf for none): Max(v, acc) keeps acc where v is NaN on x86
// (maxps returns its second operand then), so the scalar tail does the same.
HWY_INLINE float MaxOf(const float* HWY_RESTRICT x, size_t n) {
  const hn::ScalableTag<float> df;
  const size_t NF = hn::Lanes(df);
  auto a0 = hn::Set(df, -INFINITY), a1 = a0;
  size_t i = 0;
  for (; i + 2 * NF <= n; i += 2 * NF) {
    a0 = hn::Max(hn::LoadU(df, x + i), a0);
    a1 = hn::Max(hn::LoadU(df, x + i + NF), a1);
  }
  for (; i + NF <= n; i += NF) a0 = hn::Max(hn::LoadU(df, x + i), a0);
  HWY_ALIGN float lanes[hn::MaxLanes(df)];
  hn::Store(hn::Max(a0, a1), df, lanes);
  float top = -INFINITY;
  for (size_t k = 0; k < NF; ++k) top = lanes[k] > top ? lanes[k] : top;
  for (; i < n; ++i) top = x[i] > top ? x[i] : top;
  return top;
}

// Appends i (and x_i - theta) for every x_i > theta; returns the count.
HWY_INLINE size_t ThresholdScan(const float* HWY_RESTRICT x, size_t n, float theta,
                                int32_t* HWY_RESTRICT idx, float* HWY_RESTRICT shifted) {
  const hn::ScalableTag<float> df;
  const size_t NF = hn::Lanes(df);
  const auto vt = hn::Set(df, theta);
  size_t count = 0;
  auto keep = [&](size_t i) {
    if (idx) idx[count] = static_cast<int32_t>(i);
    if (shifted) shifted[count] = x[i] - theta;
    ++count;
  };
  size_t i = 0;
  for (; i + NF <= n; i += NF) {
    const auto m = hn::Gt(hn::LoadU(df, x + i), vt);
    if (hn::AllFalse(df, m)) continue;
    uint8_t bytes[8] = {0};
    hn::StoreMaskBits(df, m, bytes);
    uint64_t bits;
    memcpy(&bits, bytes, 8);
    while (bits) {
      keep(i + hwy::Num0BitsBelowLS1Bit_Nonzero64(bits));
      bits &= bits - 1;
    }
  }
  for (; i < n; ++i) {
    if (x[i] > theta) keep(i);
  }
  return count;
}

}  // namespace HWY_NAMESPACE
}  // namespace spark
HWY_AFTER_NAMESPACE();

#endif  // toggle guard
