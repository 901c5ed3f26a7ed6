// screen.cc: x's quantization, dispatch and threading for screen-inl.h.
#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "ops/screen.cc"
#include "hwy/foreach_target.h"  // IWYU pragma: keep

#include "hwy/highway.h"
#include "ops/screen-inl.h"

HWY_BEFORE_NAMESPACE();
namespace spark {
namespace HWY_NAMESPACE {
HWY_NOINLINE void ScreenTilesK(const ScreenRef& s, const ScreenX& x, size_t t0, size_t t1, float* out) {
  ScreenTiles(s, x, t0, t1, out);
}
}  // namespace HWY_NAMESPACE
}  // namespace spark
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
#include <cmath>
#include <limits>
#include <vector>

#include "ops/screen.h"

namespace spark {
HWY_EXPORT(ScreenTilesK);

void ScreenScores(ThreadPool& pool, const ScreenRef& s, const float* x, float* out) {
  const size_t cols = s.cols, blocks = s.Blocks();
  float a = 0.0f;
  for (size_t i = 0; i < cols; ++i) a = std::fmax(a, std::fabs(x[i]));  // fmax: NaN does not win
  bool finite = std::isfinite(a);
  for (size_t i = 0; i < cols && finite; ++i) finite = !std::isnan(x[i]);
  if (!finite) {
    for (size_t v = 0; v < s.rows; ++v) out[v] = std::numeric_limits<float>::quiet_NaN();
    return;
  }
  // The caller's buffers; the pool's threads only read them during this call.
  thread_local std::vector<int8_t> q8;
  thread_local std::vector<int16_t> q16;
  thread_local std::vector<float> bias;
  q8.resize(cols);
  q16.resize(cols);
  bias.resize(blocks);
  const float inv = a > 0.0f ? 127.0f / a : 0.0f;
  for (size_t g = 0; g < blocks; ++g) {
    int32_t sum = 0;
    for (size_t i = g * kScreenGroup; i < (g + 1) * kScreenGroup; ++i) {
      const int32_t q = static_cast<int32_t>(std::nearbyint(x[i] * inv));  // ties to even
      q8[i] = static_cast<int8_t>(q);
      q16[i] = static_cast<int16_t>(q);
      sum += q;
    }
    bias[g] = 7.5f * static_cast<float>(sum);
  }
  const ScreenX xq{q8.data(), q16.data(), bias.data(), a / 127.0f};
  // Parts of >= 64 KiB of tiles: worth a thread's wake-up.
  const size_t granule = (64 * 1024 + s.TileBytes() - 1) / s.TileBytes();
  const auto fn = HWY_DYNAMIC_DISPATCH(ScreenTilesK);
  pool.ParallelFor(s.Tiles(), granule, [&](size_t t0, size_t t1, int) { fn(s, xq, t0, t1, out); });
}

}  // namespace spark
#endif  // HWY_ONCE
