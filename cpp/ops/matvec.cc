// matvec.cc: dispatch and threading for matvec-inl.h.
#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "ops/matvec.cc"
#include "hwy/foreach_target.h"  // IWYU pragma: keep

#include "hwy/highway.h"
#include "ops/matvec-inl.h"

HWY_BEFORE_NAMESPACE();
namespace spark {
namespace HWY_NAMESPACE {

// Dispatch on the weight type; out: [T, out_stride].
HWY_NOINLINE void MatMulRows(const MatRef& w, const float* HWY_RESTRICT x, size_t T,
                             float* HWY_RESTRICT out, size_t out_stride, size_t r0, size_t r1) {
  VisitWeights(w, [&](auto p, const float* scale) {
    MatMulRowsT(p, scale, w.cols, x, T, out, out_stride, r0, r1);
  });
}

}  // namespace HWY_NAMESPACE
}  // namespace spark
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
#include <algorithm>

#include "ops/matvec.h"
#include "util/threading.h"

namespace spark {
HWY_EXPORT(MatMulRows);

namespace {
// Rows per thread part: a multiple of the 4-row decode tile, and enough work (>= 64 KiB of
// weights) that a part is worth a thread wake-up.
size_t RowGranule(const MatRef& w) {
  // max(1, ..): cols == 0 is valid (every output is 0) and must not divide by zero.
  const size_t row_bytes = w.RowBytes() + (w.cols == 0);
  size_t g = (64 * 1024 + row_bytes - 1) / row_bytes;
  return (g + 3) / 4 * 4;
}
}  // namespace

void MatMulRange(const MatRef& w, const float* x, size_t T, float* out, size_t out_stride,
                 size_t r0, size_t r1) {
  HWY_DYNAMIC_DISPATCH(MatMulRows)(w, x, T, out, out_stride, r0, r1);
}

void MatVec(ThreadPool& pool, const MatRef& w, const float* x, float* out) { MatMul(pool, w, x, 1, out); }

void MatMul(ThreadPool& pool, const MatRef& w, const float* x, size_t T, float* out) {
  const auto fn = HWY_DYNAMIC_DISPATCH(MatMulRows);
  pool.ParallelFor(w.rows, RowGranule(w), [&](size_t r0, size_t r1, int) {
    fn(w, x, T, out, w.rows, r0, r1);
  });
}

void MatMulMany(ThreadPool& pool, const MatRef* const* ws, float* const* outs, size_t n, const float* x, size_t T) {
  // The matrices' rows, end to end, are one index space [0, total) split between threads.
  size_t total = 0, granule = 4;
  for (size_t i = 0; i < n; ++i) {
    total += ws[i]->rows;
    granule = std::max(granule, RowGranule(*ws[i]));
  }
  const auto fn = HWY_DYNAMIC_DISPATCH(MatMulRows);
  pool.ParallelFor(total, granule, [&](size_t b, size_t e, int) {
    size_t base = 0;
    for (size_t i = 0; i < n && base < e; base += ws[i]->rows, ++i) {
      const size_t r0 = std::max(b, base), r1 = std::min(e, base + ws[i]->rows);
      if (r0 < r1) fn(*ws[i], x, T, outs[i], ws[i]->rows, r0 - base, r1 - base);
    }
  });
}

}  // namespace spark
#endif  // HWY_ONCE
