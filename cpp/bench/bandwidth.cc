#include "bench/bandwidth.h"

#include <algorithm>
#include <chrono>
#include <stdexcept>
#include <vector>

#include "hwy/aligned_allocator.h"
#include "ops/stream.h"
#include "util/threading.h"

namespace spark {
namespace {

// Granules of 64 KiB, as the matvec kernels' (RowGranule): the probe splits memory as they do.
constexpr size_t kGranuleFloats = 64 * 1024 / sizeof(float);

}  // namespace

std::vector<double> ReadBandwidthSamples(size_t nbytes, int threads, int repeats) {
  if (nbytes < sizeof(float)) throw std::invalid_argument("nbytes must be >= 4");
  if (repeats < 1) throw std::invalid_argument("repeats must be >= 1");
  ThreadPool pool(threads > 0 ? threads : DefaultPool().threads());
  const size_t n = nbytes / sizeof(float);
  hwy::AlignedFreeUniquePtr<float[]> buf = hwy::AllocateAligned<float>(n);
  if (!buf) throw std::bad_alloc();
  float* p = buf.get();
  // First touch in parallel, split as the passes are (pages spread over the threads' memory
  // nodes as the kernels' weights would be), with values whose sum stays finite.
  pool.ParallelFor(n, kGranuleFloats, [p](size_t b, size_t e, int) {
    std::fill(p + b, p + e, 1.0f);
  });
  // One slot per granule: ParallelFor makes at most that many parts, whatever its policy for
  // parts per thread.
  std::vector<float> sums((n + kGranuleFloats - 1) / kGranuleFloats, 0.0f);
  auto pass = [&] {
    pool.ParallelFor(n, kGranuleFloats, [&](size_t b, size_t e, int part) {
      sums[static_cast<size_t>(part)] += StreamSum(p + b, e - b);
    });
  };
  pass();  // warm-up: page tables, the pool's threads start
  std::vector<double> gbps;
  for (int r = 0; r < repeats; ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    pass();
    const std::chrono::duration<double> dt = std::chrono::steady_clock::now() - t0;
    gbps.push_back(static_cast<double>(n * sizeof(float)) / dt.count() * 1e-9);
  }
  // The sums are results nobody reads; a volatile store keeps the passes from being elided.
  volatile float sink = 0.0f;
  for (float s : sums) sink = sink + s;
  (void)sink;
  return gbps;
}

double ReadBandwidth(size_t nbytes, int threads, int repeats) {
  std::vector<double> v = ReadBandwidthSamples(nbytes, threads, repeats);
  std::sort(v.begin(), v.end());
  const size_t m = v.size() / 2;
  return v.size() % 2 ? v[m] : 0.5 * (v[m - 1] + v[m]);
}

}  // namespace spark
