// norm-inl.h (per target): RMSNorm and RoPE rotation.

#if defined(SPARK_OPS_NORM_INL_H_) == defined(HWY_TARGET_TOGGLE)
#ifdef SPARK_OPS_NORM_INL_H_
#undef SPARK_OPS_NORM_INL_H_
#else
#define SPARK_OPS_NORM_INL_H_
#endif

#include <math.h>
#include <stddef.h>

#include "hwy/highway.h"
#include "ops/reduce-inl.h"

HWY_BEFORE_NAMESPACE();
namespace spark {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

HWY_INLINE float SumSquares(const float* HWY_RESTRICT x, size_t n) {
  const hn::ScalableTag<float> df;
  const size_t NF = hn::Lanes(df);
  auto a0 = hn::Zero(df), a1 = a0;
  size_t i = 0;
  for (; i + 2 * NF <= n; i += 2 * NF) {
    const auto v0 = hn::LoadU(df, x + i), v1 = hn::LoadU(df, x + i + NF);
    a0 = hn::MulAdd(v0, v0, a0);
    a1 = hn::MulAdd(v1, v1, a1);
  }
  for (; i + NF <= n; i += NF) {
    const auto v = hn::LoadU(df, x + i);
    a0 = hn::MulAdd(v, v, a0);
  }
  float s = SumLanes(df, hn::Add(a0, a1));
  for (; i < n; ++i) s += x[i] * x[i];
  return s;
}

HWY_INLINE void RmsNormT(const float* x, const float* w, size_t n, float eps, float* out) {
  const hn::ScalableTag<float> df;
  const size_t NF = hn::Lanes(df);
  const float inv = 1.0f / sqrtf(SumSquares(x, n) / static_cast<float>(n) + eps);
  const auto vinv = hn::Set(df, inv), one = hn::Set(df, 1.0f);
  size_t i = 0;
  for (; i + NF <= n; i += NF) {
    const auto g = w ? hn::Add(one, hn::LoadU(df, w + i)) : one;
    hn::StoreU(hn::Mul(hn::Mul(hn::LoadU(df, x + i), vinv), g), df, out + i);
  }
  for (; i < n; ++i) out[i] = x[i] * inv * (1.0f + (w ? w[i] : 0.0f));
}

HWY_INLINE void RopeT(float* HWY_RESTRICT x, size_t m, const float* HWY_RESTRICT cs,
                      const float* HWY_RESTRICT sn) {
  const hn::ScalableTag<float> df;
  const size_t NF = hn::Lanes(df);
  const size_t h = m / 2;
  float* HWY_RESTRICT x2 = x + h;
  size_t i = 0;
  for (; i + NF <= h; i += NF) {
    const auto a = hn::LoadU(df, x + i), b = hn::LoadU(df, x2 + i);
    const auto c = hn::LoadU(df, cs + i), s = hn::LoadU(df, sn + i);
    hn::StoreU(hn::NegMulAdd(b, s, hn::Mul(a, c)), df, x + i);  // a c - b s
    hn::StoreU(hn::MulAdd(a, s, hn::Mul(b, c)), df, x2 + i);    // b c + a s
  }
  for (; i < h; ++i) {
    const float a = x[i], b = x2[i];
    x[i] = a * cs[i] - b * sn[i];
    x2[i] = b * cs[i] + a * sn[i];
  }
}

}  // namespace HWY_NAMESPACE
}  // namespace spark
HWY_AFTER_NAMESPACE();

#endif  // toggle guard
