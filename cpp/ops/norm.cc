// norm.cc: dispatch for norm-inl.h.
#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "ops/norm.cc"
#include "hwy/foreach_target.h"  // IWYU pragma: keep

#include "hwy/highway.h"
#include "ops/norm-inl.h"

HWY_BEFORE_NAMESPACE();
namespace spark {
namespace HWY_NAMESPACE {
HWY_NOINLINE void RmsNormK(const float* x, const float* w, size_t n, float eps, float* out) {
  RmsNormT(x, w, n, eps, out);
}
HWY_NOINLINE void RopeK(float* x, size_t m, const float* cs, const float* sn) {
  RopeT(x, m, cs, sn);
}
}  // namespace HWY_NAMESPACE
}  // namespace spark
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
#include <math.h>

#include "ops/norm.h"

namespace spark {
HWY_EXPORT(RmsNormK);
HWY_EXPORT(RopeK);

void RmsNorm(const float* x, const float* w, size_t n, float eps, float* out) {
  HWY_DYNAMIC_DISPATCH(RmsNormK)(x, w, n, eps, out);
}

void RopeAngles(double pos, double base, size_t m, float* cs, float* sn) {
  for (size_t i = 0; i < m / 2; ++i) {
    const double angle = pos * pow(base, -2.0 * static_cast<double>(i) / static_cast<double>(m));
    cs[i] = static_cast<float>(cos(angle));
    sn[i] = static_cast<float>(sin(angle));
  }
}

void Rope(float* x, size_t m, const float* cs, const float* sn) {
  HWY_DYNAMIC_DISPATCH(RopeK)(x, m, cs, sn);
}

}  // namespace spark
#endif  // HWY_ONCE
