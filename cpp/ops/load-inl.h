// load-inl.h: load weights of any WeightType as f32 vectors (per target), and the scalar
// equivalent for tails. Shared by every weight-reading kernel.
//
// Tags: df is a full f32 vector; narrower weight types are loaded through Rebind (same lane
// count, fewer bytes), which also builds on Highway 1.0.3's 1-lane SCALAR target.

#if defined(SPARK_OPS_LOAD_INL_H_) == defined(HWY_TARGET_TOGGLE)
#ifdef SPARK_OPS_LOAD_INL_H_
#undef SPARK_OPS_LOAD_INL_H_
#else
#define SPARK_OPS_LOAD_INL_H_
#endif

#include <stdint.h>

#include "hwy/highway.h"

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

HWY_INLINE float ScalarF32(float v) { return v; }
HWY_INLINE float ScalarF32(hwy::bfloat16_t v) { return hwy::F32FromBF16(v); }
HWY_INLINE float ScalarF32(int8_t v) { return static_cast<float>(v); }

// Sum of all lanes as a scalar (1.0.3 has no ReduceSum).
template <class DF>
HWY_INLINE float SumLanes(DF df, hn::Vec<DF> v) {
  return hn::GetLane(hn::SumOfLanes(df, v));
}

}  // namespace HWY_NAMESPACE
}  // namespace spark
HWY_AFTER_NAMESPACE();

#endif  // toggle guard
