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

HWY_NOINLINE float MaxOfT(const float* HWY_RESTRICT x, size_t n) { return MaxOf(x, n); }

HWY_NOINLINE size_t AtLeastT(const float* HWY_RESTRICT x, size_t n, float floor, int32_t* HWY_RESTRICT idx) {
  // x >= floor is x > the float just below floor (none lies between them).
  return ThresholdScan(x, n, nextafterf(floor, -INFINITY), idx, nullptr);
}

}  // namespace HWY_NAMESPACE
}  // namespace spark
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
#include <math.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>
#include <vector>

namespace spark {
HWY_EXPORT(StatTopK);
HWY_EXPORT(MaxOfT);
HWY_EXPORT(AtLeastT);

size_t ScreenKept(const float* x, size_t n, float margin, size_t cap, int32_t* idx) {
  if (n == 0) return 0;
  const auto at_least = HWY_DYNAMIC_DISPATCH(AtLeastT);
  const float floor = HWY_DYNAMIC_DISPATCH(MaxOfT)(x, n) - margin;
  // Where more than `cap` lie within the margin, a threshold t from every 16th value (the
  // sample's rank for ~1.5 cap) collects a few thousand candidates instead of all of them. If
  // t overshot (fewer than cap at or above it), everything within the margin is collected.
  constexpr size_t kStride = 16;
  float t = floor;
  if (cap < n) {
    thread_local std::vector<float> sample;
    sample.clear();
    for (size_t i = 0; i < n; i += kStride)
      if (x[i] >= floor) sample.push_back(x[i]);
    const size_t rank = 3 * cap / 2 / kStride + 8;
    if (sample.size() > rank) {
      std::nth_element(sample.begin(), sample.begin() + (rank - 1), sample.end(), std::greater<float>());
      t = std::max(floor, sample[rank - 1]);
    }
  }
  size_t m = at_least(x, n, t, idx);
  if (m < cap && t > floor) m = at_least(x, n, floor, idx);
  if (m <= cap) return m;
  // Every x >= t is in idx and at least cap of them, so the cap-th largest is theirs.
  thread_local std::vector<float> vals;
  vals.resize(m);
  for (size_t j = 0; j < m; ++j) vals[j] = x[idx[j]];
  const float kth = KthLargest(vals.data(), m, cap);
  size_t kept = 0;
  for (size_t j = 0; j < m; ++j) {
    idx[kept] = idx[j];
    kept += x[idx[j]] >= kth;
  }
  return kept;
}

float KthLargest(const float* x, size_t n, size_t k) {
  float lo = x[0], hi = x[0];
  for (size_t i = 1; i < n; ++i) {
    lo = std::min(lo, x[i]);
    hi = std::max(hi, x[i]);
  }
  if (!(hi > lo)) return hi;
  thread_local std::vector<float> in_bin;
  if (!std::isfinite(hi - lo)) {  // infinities, or a range past FLT_MAX: no bins, select in all
    in_bin.assign(x, x + n);
    std::nth_element(in_bin.begin(), in_bin.begin() + (k - 1), in_bin.end(), std::greater<float>());
    return in_bin[k - 1];
  }
  // bin(v) is non-decreasing in v (a subtraction and a positive scale, each rounded
  // monotonically), so every value in a higher bin is >= every value in a lower one.
  constexpr size_t kBins = 2048;
  const float scale = static_cast<float>(kBins) / (hi - lo);
  auto bin = [&](float v) { return std::min(kBins - 1, static_cast<size_t>((v - lo) * scale)); };
  size_t counts[kBins] = {};
  for (size_t i = 0; i < n; ++i) ++counts[bin(x[i])];
  size_t b = kBins - 1, above = 0;  // values in bins > b
  while (above + counts[b] < k) above += counts[b--];
  in_bin.clear();
  for (size_t i = 0; i < n; ++i)
    if (bin(x[i]) == b) in_bin.push_back(x[i]);
  const size_t kk = k - above;  // 1 <= kk <= counts[b]
  std::nth_element(in_bin.begin(), in_bin.begin() + (kk - 1), in_bin.end(), std::greater<float>());
  return in_bin[kk - 1];
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
