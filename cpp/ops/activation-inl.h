// activation-inl.h (per target): element-wise maps with an exact tail. The tail is copied into a
// padded local vector, mapped with the same vector code, and copied back, so every element gets
// the same rounding and the map never reads or writes past n (in-place safe).

#if defined(SPARK_OPS_ACTIVATION_INL_H_) == defined(HWY_TARGET_TOGGLE)
#ifdef SPARK_OPS_ACTIVATION_INL_H_
#undef SPARK_OPS_ACTIVATION_INL_H_
#else
#define SPARK_OPS_ACTIVATION_INL_H_
#endif

#include <stddef.h>
#include <string.h>

#include "hwy/contrib/math/math-inl.h"
#include "hwy/highway.h"

HWY_BEFORE_NAMESPACE();
namespace spark {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

// out[i] = f(a[i], b[i]) for i < n; f maps vectors. b may be null when f ignores it.
template <class F>
HWY_INLINE void Map2(const float* a, const float* b, size_t n, float* out, const F& f) {
  const hn::ScalableTag<float> df;
  const size_t NF = hn::Lanes(df);
  size_t i = 0;
  for (; i + NF <= n; i += NF) {
    const auto va = hn::LoadU(df, a + i);
    const auto vb = b ? hn::LoadU(df, b + i) : hn::Zero(df);
    hn::StoreU(f(df, va, vb), df, out + i);
  }
  if (i == n) return;
  HWY_ALIGN float ta[HWY_MAX_BYTES / sizeof(float)] = {0};
  HWY_ALIGN float tb[HWY_MAX_BYTES / sizeof(float)] = {0};
  memcpy(ta, a + i, (n - i) * sizeof(float));
  if (b) memcpy(tb, b + i, (n - i) * sizeof(float));
  hn::Store(f(df, hn::Load(df, ta), hn::Load(df, tb)), df, ta);
  memcpy(out + i, ta, (n - i) * sizeof(float));
}

template <class DF, class V>
HWY_INLINE V GeluTanhV(DF df, V x) {
  const auto kSqrt2OverPi = hn::Set(df, 0.7978845608028654f);
  const auto kCubic = hn::Set(df, 0.044715f);
  const auto half = hn::Set(df, 0.5f);
  const auto x3 = hn::Mul(hn::Mul(x, x), x);
  const auto inner = hn::Mul(kSqrt2OverPi, hn::MulAdd(kCubic, x3, x));
  const auto t = hn::Tanh(df, inner);
  return hn::Mul(hn::Mul(half, x), hn::Add(hn::Set(df, 1.0f), t));
}

template <class DF, class V>
HWY_INLINE V SoftplusV(DF df, V x) {
  // log1p(exp(-|x|)) <= log 2, and exp(-|x|) <= 1 never overflows.
  const auto e = hn::Exp(df, hn::Neg(hn::Abs(x)));
  return hn::Add(hn::Max(x, hn::Zero(df)), hn::Log1p(df, e));
}

HWY_INLINE float MaxOf(const float* x, size_t n) {
  const hn::ScalableTag<float> df;
  const size_t NF = hn::Lanes(df);
  float m = x[0];
  size_t i = 0;
  if (n >= NF) {
    auto vm = hn::LoadU(df, x);
    for (i = NF; i + NF <= n; i += NF) vm = hn::Max(vm, hn::LoadU(df, x + i));
    m = hn::GetLane(hn::MaxOfLanes(df, vm));
  }
  for (; i < n; ++i) m = x[i] > m ? x[i] : m;
  return m;
}

}  // namespace HWY_NAMESPACE
}  // namespace spark
HWY_AFTER_NAMESPACE();

#endif  // toggle guard
