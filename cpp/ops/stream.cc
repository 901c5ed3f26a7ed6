// stream.cc: dispatch for stream-inl.h.
#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "ops/stream.cc"
#include "hwy/foreach_target.h"  // IWYU pragma: keep

#include "hwy/highway.h"
#include "ops/stream-inl.h"

HWY_BEFORE_NAMESPACE();
namespace spark {
namespace HWY_NAMESPACE {
HWY_NOINLINE float StreamSumK(const float* HWY_RESTRICT p, size_t n) { return StreamSumT(p, n); }
}  // namespace HWY_NAMESPACE
}  // namespace spark
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
#include "ops/stream.h"

namespace spark {
HWY_EXPORT(StreamSumK);

float StreamSum(const float* p, size_t n) { return HWY_DYNAMIC_DISPATCH(StreamSumK)(p, n); }

}  // namespace spark
#endif  // HWY_ONCE
