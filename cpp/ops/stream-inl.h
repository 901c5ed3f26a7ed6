// stream-inl.h (per target): a read-only pass over a f32 buffer, the kernel of the bandwidth
// probe. Every byte is loaded once with full-vector loads; the tail is read in scalar code,
// so nothing past n is touched.

#if defined(SPARK_OPS_STREAM_INL_H_) == defined(HWY_TARGET_TOGGLE)
#ifdef SPARK_OPS_STREAM_INL_H_
#undef SPARK_OPS_STREAM_INL_H_
#else
#define SPARK_OPS_STREAM_INL_H_
#endif

#include <stddef.h>

#include "hwy/highway.h"
#include "ops/load-inl.h"

HWY_BEFORE_NAMESPACE();
namespace spark {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

// 8 accumulators: 2 load ports x 4-cycle add latency keep 8 adds in flight, so the adds never
// limit the load rate (one 64-byte line per 4 cycles at 16 B/cycle is far above what DRAM
// delivers to one core).
HWY_INLINE float StreamSumT(const float* HWY_RESTRICT p, size_t n) {
  const hn::ScalableTag<float> df;
  const size_t NF = hn::Lanes(df);
  auto a0 = hn::Zero(df), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0, a6 = a0, a7 = a0;
  size_t i = 0;
  for (; i + 8 * NF <= n; i += 8 * NF) {
    a0 = hn::Add(a0, hn::LoadU(df, p + i));
    a1 = hn::Add(a1, hn::LoadU(df, p + i + 1 * NF));
    a2 = hn::Add(a2, hn::LoadU(df, p + i + 2 * NF));
    a3 = hn::Add(a3, hn::LoadU(df, p + i + 3 * NF));
    a4 = hn::Add(a4, hn::LoadU(df, p + i + 4 * NF));
    a5 = hn::Add(a5, hn::LoadU(df, p + i + 5 * NF));
    a6 = hn::Add(a6, hn::LoadU(df, p + i + 6 * NF));
    a7 = hn::Add(a7, hn::LoadU(df, p + i + 7 * NF));
  }
  for (; i + NF <= n; i += NF) a0 = hn::Add(a0, hn::LoadU(df, p + i));
  const auto s = hn::Add(hn::Add(hn::Add(a0, a1), hn::Add(a2, a3)),
                         hn::Add(hn::Add(a4, a5), hn::Add(a6, a7)));
  float sum = SumLanes(df, s);
  for (; i < n; ++i) sum += p[i];
  return sum;
}

}  // namespace HWY_NAMESPACE
}  // namespace spark
HWY_AFTER_NAMESPACE();

#endif  // toggle guard
