// activation.cc: dispatch for activation-inl.h.
#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "ops/activation.cc"
#include "hwy/foreach_target.h"  // IWYU pragma: keep

#include "hwy/highway.h"
#include "ops/activation-inl.h"
#include "ops/activation.h"

HWY_BEFORE_NAMESPACE();
namespace spark {
namespace HWY_NAMESPACE {

HWY_NOINLINE void GeluTanhK(const float* x, size_t n, float* out) {
  Map2(x, nullptr, n, out, [](auto df, auto a, auto) { return GeluTanhV(df, a); });
}
HWY_NOINLINE void GeluMulK(const float* gate, const float* up, size_t n, float* out) {
  Map2(gate, up, n, out, [](auto df, auto g, auto u) { return hn::Mul(GeluTanhV(df, g), u); });
}
HWY_NOINLINE void SoftplusK(const float* x, size_t n, float* out) {
  Map2(x, nullptr, n, out, [](auto df, auto a, auto) { return SoftplusV(df, a); });
}
HWY_NOINLINE void SoftCapK(const float* x, size_t n, float cap, float* out) {
  Map2(x, nullptr, n, out, [cap](auto df, auto a, auto) {
    return hn::Mul(hn::Set(df, cap), hn::Tanh(df, hn::Mul(a, hn::Set(df, 1.0f / cap))));
  });
}
HWY_NOINLINE SoftmaxStats SoftmaxK(const float* x, size_t n, float* out) {
  const float m = MaxOf(x, n);
  Map2(x, nullptr, n, out, [m](auto df, auto a, auto) {
    return hn::Exp(df, hn::Sub(a, hn::Set(df, m)));
  });
  float sum = 0.0f;
  for (size_t i = 0; i < n; ++i) sum += out[i];
  const float inv = 1.0f / sum;
  Map2(out, nullptr, n, out, [inv](auto df, auto a, auto) { return hn::Mul(a, hn::Set(df, inv)); });
  return SoftmaxStats{m, sum};
}

}  // namespace HWY_NAMESPACE
}  // namespace spark
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
#include "ops/activation.h"

namespace spark {
HWY_EXPORT(GeluTanhK);
HWY_EXPORT(GeluMulK);
HWY_EXPORT(SoftplusK);
HWY_EXPORT(SoftCapK);
HWY_EXPORT(SoftmaxK);

void GeluTanh(const float* x, size_t n, float* out) { HWY_DYNAMIC_DISPATCH(GeluTanhK)(x, n, out); }
void GeluMul(const float* gate, const float* up, size_t n, float* out) {
  HWY_DYNAMIC_DISPATCH(GeluMulK)(gate, up, n, out);
}
void Softplus(const float* x, size_t n, float* out) { HWY_DYNAMIC_DISPATCH(SoftplusK)(x, n, out); }
void SoftCap(const float* x, size_t n, float cap, float* out) {
  HWY_DYNAMIC_DISPATCH(SoftCapK)(x, n, cap, out);
}
SoftmaxStats Softmax(const float* x, size_t n, float* out) { return HWY_DYNAMIC_DISPATCH(SoftmaxK)(x, n, out); }

}  // namespace spark
#endif  // HWY_ONCE
