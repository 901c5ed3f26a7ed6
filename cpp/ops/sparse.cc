// sparse.cc: dispatch and threading for sparse-inl.h.
#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "ops/sparse.cc"
#include "hwy/foreach_target.h"  // IWYU pragma: keep

#include "hwy/highway.h"
#include "ops/sparse-inl.h"

HWY_BEFORE_NAMESPACE();
namespace spark {
namespace HWY_NAMESPACE {

HWY_NOINLINE void MaskedMatVecRows(const MatRef& w, const float* HWY_RESTRICT x,
                                    const int32_t* HWY_RESTRICT idx, size_t j0, size_t j1,
                                    float* HWY_RESTRICT out) {
  VisitWeights(w, [&](auto p, const float* scale) {
    MaskedMatVecT(p, scale, w.cols, x, idx, j0, j1, out);
  });
}

HWY_NOINLINE void SparseVecMatCols(const MatRef& w, const float* HWY_RESTRICT u,
                                   const int32_t* HWY_RESTRICT idx, size_t n,
                                   float* HWY_RESTRICT out, size_t c0, size_t c1) {
  VisitWeights(w, [&](auto p, const float* scale) {
    SparseVecMatT(p, scale, w.cols, u, idx, n, out, c0, c1);
  });
}

}  // namespace HWY_NAMESPACE
}  // namespace spark
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
#include "ops/sparse.h"
#include "util/threading.h"

namespace spark {
HWY_EXPORT(MaskedMatVecRows);
HWY_EXPORT(SparseVecMatCols);

void MaskedMatVec(ThreadPool& pool, const MatRef& w, const float* x, const int32_t* idx, size_t n_idx, float* out) {
  const auto fn = HWY_DYNAMIC_DISPATCH(MaskedMatVecRows);
  // 16 rows per part at least: a part below ~32 KiB of weights is not worth a thread.
  pool.ParallelFor(n_idx, 16, [&](size_t j0, size_t j1, int) { fn(w, x, idx, j0, j1, out); });
}

void MaskedMatVecRange(const MatRef& w, const float* x, const int32_t* idx, size_t j0, size_t j1,
                       float* out) {
  HWY_DYNAMIC_DISPATCH(MaskedMatVecRows)(w, x, idx, j0, j1, out);
}

void SparseVecMatRange(const MatRef& w, const float* u, const int32_t* idx, size_t n_idx,
                       float* out, size_t c0, size_t c1) {
  HWY_DYNAMIC_DISPATCH(SparseVecMatCols)(w, u, idx, n_idx, out, c0, c1);
}

void SparseVecMat(ThreadPool& pool, const MatRef& w, const float* u, const int32_t* idx, size_t n_idx, float* out) {
  const auto fn = HWY_DYNAMIC_DISPATCH(SparseVecMatCols);
  // One tile of columns per thread, a multiple of 64 columns: whole cache lines of every weight
  // type and a multiple of any vector width, so only the last tile has a scalar tail and the
  // result does not depend on the split. Not smaller tiles: each tile reads a segment of every
  // gathered row, and short scattered segments waste DRAM bursts (V [13824, 2304] int8, 8 %,
  // 2 threads: 0.26 ms with 64-column tiles, 4 per thread; 0.19 ms with one tile per thread).
  const size_t threads = static_cast<size_t>(pool.threads());
  const size_t granule = ((w.cols + threads - 1) / threads + 63) / 64 * 64;
  pool.ParallelFor(w.cols, granule, [&](size_t c0, size_t c1, int) { fn(w, u, idx, n_idx, out, c0, c1); });
}

}  // namespace spark
#endif  // HWY_ONCE
