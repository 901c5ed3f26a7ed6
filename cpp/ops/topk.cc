// topk.cc: statistical top-k (dispatch) and the inverse normal CDF.
#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "ops/topk.cc"
#include "hwy/foreach_target.h"  // IWYU pragma: keep

#include "hwy/highway.h"
#include "ops/topk-inl.h"
#include "ops/topk.h"

HWY_BEFORE_NAMESPACE();
namespace spark {
namespace HWY_NAMESPACE {

HWY_NOINLINE TopKStats StatTopK(const float* HWY_RESTRICT x, size_t n, float q,
                                int32_t* HWY_RESTRICT idx, float* HWY_RESTRICT shifted) {
  TopKStats s;
  if (n == 0) return s;
  s.mean = SumPow<1>(x, n, 0.0f) / static_cast<float>(n);
  s.std = sqrtf(SumPow<2>(x, n, s.mean) / static_cast<float>(n));
  s.theta = s.mean + s.std * q;
  s.count = ThresholdScan(x, n, s.theta, idx, shifted);
  return s;
}

HWY_NOINLINE size_t WithinOfMaxT(const float* HWY_RESTRICT x, size_t n, float margin,
                                 int32_t* HWY_RESTRICT idx) {
  const float floor = MaxOf(x, n) - margin;
  // x >= floor is x > the float just below floor (none lies between them).
  return ThresholdScan(x, n, nextafterf(floor, -INFINITY), idx, nullptr);
}

}  // namespace HWY_NAMESPACE
}  // namespace spark
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
#include <math.h>

#include <limits>

namespace spark {
HWY_EXPORT(StatTopK);
HWY_EXPORT(WithinOfMaxT);

size_t WithinOfMax(const float* x, size_t n, float margin, int32_t* idx) {
  return HWY_DYNAMIC_DISPATCH(WithinOfMaxT)(x, n, margin, idx);
}

double InvNormalCdf(double p) {
  if (!(p > 0.0 && p < 1.0)) return std::numeric_limits<double>::quiet_NaN();
  // Q(p) = -Q(1 - p): refine only in the lower half, where erfc(-x / sqrt 2) is small and the
  // Halley step below does not cancel (1 - p is exact for p >= 0.5, Sterbenz).
  if (p > 0.5) return -InvNormalCdf(1.0 - p);
  // P. J. Acklam's rational approximation (relative error 1.15e-9) ...
  static const double a[] = {-3.969683028665376e+01, 2.209460984245205e+02,
                             -2.759285104469687e+02, 1.383577518672690e+02,
                             -3.066479806614716e+01, 2.506628277459239e+00};
  static const double b[] = {-5.447609879822406e+01, 1.615858368580409e+02,
                             -1.556989798598866e+02, 6.680131188771972e+01,
                             -1.328068155288572e+01};
  static const double c[] = {-7.784894002430293e-03, -3.223964580411365e-01,
                             -2.400758277161838e+00, -2.549732539343734e+00,
                             4.374664141464968e+00,  2.938163982698783e+00};
  static const double d[] = {7.784695709041462e-03, 3.224671290700398e-01,
                             2.445134137142996e+00, 3.754408661907416e+00};
  const double p_low = 0.02425;
  double x;
  if (p < p_low) {
    const double q = sqrt(-2 * log(p));
    x = (((((c[0] * q + c[1]) * q + c[2]) * q + c[3]) * q + c[4]) * q + c[5]) /
        ((((d[0] * q + d[1]) * q + d[2]) * q + d[3]) * q + 1);
  } else if (p <= 1 - p_low) {
    const double q = p - 0.5, r = q * q;
    x = (((((a[0] * r + a[1]) * r + a[2]) * r + a[3]) * r + a[4]) * r + a[5]) * q /
        (((((b[0] * r + b[1]) * r + b[2]) * r + b[3]) * r + b[4]) * r + 1);
  } else {
    const double q = sqrt(-2 * log1p(-p));
    x = -(((((c[0] * q + c[1]) * q + c[2]) * q + c[3]) * q + c[4]) * q + c[5]) /
        ((((d[0] * q + d[1]) * q + d[2]) * q + d[3]) * q + 1);
  }
  // ... refined by one Halley step on Phi(x) - p, Phi(x) = erfc(-x / sqrt 2) / 2, which
  // brings it to double precision (the step's error is cubic in Acklam's).
  const double e = 0.5 * erfc(-x / sqrt(2.0)) - p;
  const double u = e * sqrt(2 * M_PI) * exp(x * x / 2);
  return x - u / (1 + x * u / 2);
}

TopKStats StatisticalTopK(const float* x, size_t n, float q, int32_t* idx, float* shifted) {
  return HWY_DYNAMIC_DISPATCH(StatTopK)(x, n, q, idx, shifted);
}

}  // namespace spark
#endif  // HWY_ONCE
