// sparse_batch.cc: dispatch and threading for sparse_batch-inl.h.
#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "ops/sparse_batch.cc"
#include "hwy/foreach_target.h"  // IWYU pragma: keep

#include "hwy/highway.h"
#include "ops/sparse_batch-inl.h"

HWY_BEFORE_NAMESPACE();
namespace spark {
namespace HWY_NAMESPACE {

HWY_NOINLINE void CsrMaskedRows(const MatRef& w, const float* x, const int32_t* offsets,
                                const int32_t* tokens, size_t r0, size_t r1, float* out) {
  VisitWeights(w, [&](auto p, const float* scale) {
    CsrMaskedRowsT(p, scale, w.cols, x, offsets, tokens, r0, r1, out);
  });
}

HWY_NOINLINE void CsrSparseCols(const MatRef& w, const float* u, const int32_t* offsets,
                                const int32_t* tokens, size_t T, float* out, size_t c0,
                                size_t c1) {
  VisitWeights(w, [&](auto p, const float* scale) {
    CsrSparseColsT(p, scale, w.rows, w.cols, u, offsets, tokens, T, out, c0, c1);
  });
}

HWY_NOINLINE void MultiSparseCols(const MatRef& w, const float* u, const int32_t* idx, size_t n,
                                  size_t G, float* out, size_t c0, size_t c1) {
  VisitWeights(w, [&](auto p, const float* scale) {
    MultiSparseVecMatT(p, scale, w.cols, u, idx, n, G, out, c0, c1);
  });
}

}  // namespace HWY_NAMESPACE
}  // namespace spark
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
#include "ops/sparse_batch.h"
#include "util/threading.h"

namespace spark {
HWY_EXPORT(CsrMaskedRows);
HWY_EXPORT(CsrSparseCols);
HWY_EXPORT(MultiSparseCols);

void MultiSparseVecMatRange(const MatRef& w, const float* u, const int32_t* idx, size_t n,
                            size_t G, float* out, size_t c0, size_t c1) {
  HWY_DYNAMIC_DISPATCH(MultiSparseCols)(w, u, idx, n, G, out, c0, c1);
}

void CsrMaskedMatMul(ThreadPool& pool, const MatRef& w, const float* x, const int32_t* offsets,
                     const int32_t* tokens, float* out) {
  const auto fn = HWY_DYNAMIC_DISPATCH(CsrMaskedRows);
  pool.ParallelFor(w.rows, 64, [&](size_t r0, size_t r1, int) { fn(w, x, offsets, tokens, r0, r1, out); });
}

void CsrSparseMatMul(ThreadPool& pool, const MatRef& w, const float* u, const int32_t* offsets,
                     const int32_t* tokens, size_t T, float* out) {
  const auto fn = HWY_DYNAMIC_DISPATCH(CsrSparseCols);
  // 64-column tiles: whole cache lines of every weight type (see sparse.cc).
  pool.ParallelFor(w.cols, 64, [&](size_t c0, size_t c1, int) {
    fn(w, u, offsets, tokens, T, out, c0, c1);
  });
}

}  // namespace spark
#endif  // HWY_ONCE
