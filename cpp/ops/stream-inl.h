// stream-inl.h (per target): a read-only pass over a f32 buffer, the kernel of the bandwidth
// probe. Every element is loaded once with full-vector loads; the tail is read in scalar
// code, so nothing past n is touched.

#if defined(SPARK_OPS_STREAM_INL_H_) == defined(HWY_TARGET_TOGGLE)
#ifdef SPARK_OPS_STREAM_INL_H_
#undef SPARK_OPS_STREAM_INL_H_
#else
#define SPARK_OPS_STREAM_INL_H_
#endif

#include <stddef.h>

#include "hwy/highway.h"
#include "ops/reduce-inl.h"

HWY_BEFORE_NAMESPACE();
namespace spark {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

// Sum of p[0, n) read as kStreams sequential streams, one per contiguous quarter, advanced in
// lockstep: one core's hardware prefetchers keep several streams in flight at once, so this
// reads faster than a single stream (1 thread on the 2-core Xeon VM we develop on: ~10-11 GB/s
// with one stream, ~16-17 with four; eight gave no more), and it is how the decode matvec
// reads (4 rows a quarter of its range apart). Two accumulators per stream: 8 adds in flight
// cover 2 ports x 4-cycle latency.
constexpr size_t kStreams = 4;

HWY_INLINE float StreamSumT(const float* HWY_RESTRICT p, size_t n) {
  const hn::ScalableTag<float> df;
  const size_t NF = hn::Lanes(df);
  const size_t part = n / kStreams / (2 * NF) * (2 * NF);  // whole steps per stream
  const float* HWY_RESTRICT s0 = p;
  const float* HWY_RESTRICT s1 = p + part;
  const float* HWY_RESTRICT s2 = p + 2 * part;
  const float* HWY_RESTRICT s3 = p + 3 * part;
  auto a0 = hn::Zero(df), a1 = a0, a2 = a0, a3 = a0, b0 = a0, b1 = a0, b2 = a0, b3 = a0;
  for (size_t i = 0; i < part; i += 2 * NF) {
    a0 = hn::Add(a0, hn::LoadU(df, s0 + i));
    a1 = hn::Add(a1, hn::LoadU(df, s1 + i));
    a2 = hn::Add(a2, hn::LoadU(df, s2 + i));
    a3 = hn::Add(a3, hn::LoadU(df, s3 + i));
    b0 = hn::Add(b0, hn::LoadU(df, s0 + i + NF));
    b1 = hn::Add(b1, hn::LoadU(df, s1 + i + NF));
    b2 = hn::Add(b2, hn::LoadU(df, s2 + i + NF));
    b3 = hn::Add(b3, hn::LoadU(df, s3 + i + NF));
  }
  size_t i = kStreams * part;  // the rest, one stream
  for (; i + NF <= n; i += NF) a0 = hn::Add(a0, hn::LoadU(df, p + i));
  const auto s = hn::Add(hn::Add(hn::Add(a0, a1), hn::Add(a2, a3)),
                         hn::Add(hn::Add(b0, b1), hn::Add(b2, b3)));
  float sum = SumLanes(df, s);
  for (; i < n; ++i) sum += p[i];
  return sum;
}

}  // namespace HWY_NAMESPACE
}  // namespace spark
HWY_AFTER_NAMESPACE();

#endif  // toggle guard
