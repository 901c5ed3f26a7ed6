// reduce-inl.h (per target): horizontal reductions shared by the kernels.

#if defined(SPARK_OPS_REDUCE_INL_H_) == defined(HWY_TARGET_TOGGLE)
#ifdef SPARK_OPS_REDUCE_INL_H_
#undef SPARK_OPS_REDUCE_INL_H_
#else
#define SPARK_OPS_REDUCE_INL_H_
#endif

#include "hwy/highway.h"

HWY_BEFORE_NAMESPACE();
namespace spark {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

// Sum of all lanes as a scalar (1.0.3 has no ReduceSum).
template <class DF>
HWY_INLINE float SumLanes(DF df, hn::Vec<DF> v) {
  return hn::GetLane(hn::SumOfLanes(df, v));
}

}  // namespace HWY_NAMESPACE
}  // namespace spark
HWY_AFTER_NAMESPACE();

#endif  // toggle guard
