// stream.h: the read kernel of the memory-bandwidth probe (STREAM-like "sum").
#ifndef SPARK_OPS_STREAM_H_
#define SPARK_OPS_STREAM_H_

#include <stddef.h>

namespace spark {

// Returns sum_i p[i] for i < n, in f32 with independent per-lane accumulators, reading four
// contiguous quarters of p at once. It exists to read memory as fast as one core can; the
// order of summation is unspecified.
// Single-threaded, on the caller.
float StreamSum(const float* p, size_t n);

}  // namespace spark

#endif  // SPARK_OPS_STREAM_H_
