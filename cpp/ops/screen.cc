// screen.cc: x's quantization, dispatch and threading for screen-inl.h.
#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "ops/screen.cc"
#include "hwy/foreach_target.h"  // IWYU pragma: keep

#include "hwy/highway.h"
#include "ops/screen-inl.h"

HWY_BEFORE_NAMESPACE();
namespace spark {
namespace HWY_NAMESPACE {
HWY_NOINLINE void ScreenTilesK(const ScreenRef& s, const ScreenX* xs, size_t T, size_t t0, size_t t1,
                               float* out, size_t out_stride) {
  ScreenTiles(s, xs, T, t0, t1, out, out_stride);
}
}  // namespace HWY_NAMESPACE
}  // namespace spark
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "ops/screen.h"

namespace spark {
HWY_EXPORT(ScreenTilesK);

void ScreenScores(ThreadPool& pool, const ScreenRef& s, const float* x, size_t T, float* out) {
  const size_t cols = s.cols, blocks = s.Blocks();
  // The caller's buffers; the pool's threads only read them during this call.
  thread_local std::vector<int8_t> q8;
  thread_local std::vector<int16_t> q16;
  thread_local std::vector<float> bias;
  thread_local std::vector<ScreenX> xs;
  q8.resize(T * cols);
  q16.resize(T * cols);
  bias.resize(T * blocks);
  xs.resize(T);
  for (size_t t = 0; t < T; ++t) {
    const float* xt = x + t * cols;
    float a = 0.0f;
    bool finite = true;
    for (size_t i = 0; i < cols; ++i) {
      finite &= std::isfinite(xt[i]);
      a = std::fmax(a, std::fabs(xt[i]));
    }
    xs[t] = ScreenX{q8.data() + t * cols, q16.data() + t * cols, bias.data() + t * blocks, a / 127.0f, finite};
    if (!finite) {
      std::fill(out + t * s.rows, out + (t + 1) * s.rows, std::numeric_limits<float>::quiet_NaN());
      continue;
    }
    const float inv = a > 0.0f ? 127.0f / a : 0.0f;
    for (size_t g = 0; g < blocks; ++g) {
      int32_t sum = 0;
      for (size_t i = g * kScreenGroup; i < (g + 1) * kScreenGroup; ++i) {
        const int32_t q = static_cast<int32_t>(std::nearbyint(xt[i] * inv));  // ties to even
        q8[t * cols + i] = static_cast<int8_t>(q);
        q16[t * cols + i] = static_cast<int16_t>(q);
        sum += q;
      }
      bias[t * blocks + g] = 7.5f * static_cast<float>(sum);
    }
  }
  // Parts of >= 64 KiB of tiles: worth a thread's wake-up.
  const size_t granule = (64 * 1024 + s.TileBytes() - 1) / s.TileBytes();
  const auto fn = HWY_DYNAMIC_DISPATCH(ScreenTilesK);
  const ScreenX* px = xs.data();
  pool.ParallelFor(s.Tiles(), granule, [&](size_t t0, size_t t1, int) { fn(s, px, T, t0, t1, out, s.rows); });
}

}  // namespace spark
#endif  // HWY_ONCE
