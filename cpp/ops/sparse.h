// sparse.h: the two Spark FFN kernels over a neuron-major matrix W: [d_ff, cols].
// Only rows listed in idx are read; rows not listed are never loaded.
#ifndef SPARK_OPS_SPARSE_H_
#define SPARK_OPS_SPARSE_H_

#include <stddef.h>
#include <stdint.h>

#include "util/threading.h"
#include "weights/types.h"

namespace spark {

// Vector-masked matvec (Spark K2): out[j] = W[idx[j], :] . x for j < n_idx.
// idx entries must be < w.rows (checked at the Python boundary). Threads split j.
void MaskedMatVec(ThreadPool& pool, const MatRef& w, const float* x, const int32_t* idx, size_t n_idx, float* out);

// Tiled sparse vec-mat (Spark V): out[c] = sum_j u[j] * W[idx[j], c] for c < w.cols.
// The columns are split into one tile per thread; every thread walks the whole index list for
// its tile only, so no thread waits on another's partial sums. Summation order over j is fixed,
// so the result does not depend on the thread count.
void SparseVecMat(ThreadPool& pool, const MatRef& w, const float* u, const int32_t* idx, size_t n_idx, float* out);

// Single-threaded, on the caller: entries [j0, j1) of MaskedMatVec.
void MaskedMatVecRange(const MatRef& w, const float* x, const int32_t* idx, size_t j0, size_t j1,
                       float* out);

// Single-threaded, on the caller: columns [c0, c1) of SparseVecMat.
void SparseVecMatRange(const MatRef& w, const float* u, const int32_t* idx, size_t n_idx,
                       float* out, size_t c0, size_t c1);

}  // namespace spark

#endif  // SPARK_OPS_SPARSE_H_
