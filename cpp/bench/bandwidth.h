// bandwidth.h: the machine's memory read bandwidth, measured the way the weight kernels read:
// SIMD loads over one large buffer, split into contiguous parts, one per thread. A bench helper,
// not a util: it runs an op (ops/stream.h) on a pool (util/threading.h); only the bindings'
// bench module uses it.
#ifndef SPARK_BENCH_BANDWIDTH_H_
#define SPARK_BENCH_BANDWIDTH_H_

#include <stddef.h>

#include <vector>

namespace spark {

// Allocates and first-touches nbytes (rounded down to whole floats), reads it once to warm up,
// then times `repeats` full read passes (StreamSum on `threads` contiguous parts, as
// ParallelFor splits a matvec). Returns each pass's rate in GB/s (1e9 bytes/s), in run order.
// threads <= 0 means DefaultPool().threads(); the probe runs on a pool of its own. Do not run
// kernels concurrently (they would share the bandwidth). Throws std::invalid_argument if nbytes <
// 4 or repeats < 1, std::bad_alloc if the buffer cannot be allocated.
std::vector<double> ReadBandwidthSamples(size_t nbytes, int threads, int repeats);

// Median of ReadBandwidthSamples (the mean of the middle two for an even count).
double ReadBandwidth(size_t nbytes, int threads, int repeats);

}  // namespace spark

#endif  // SPARK_BENCH_BANDWIDTH_H_
