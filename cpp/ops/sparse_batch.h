// sparse_batch.h: the Spark FFN kernels for a chunk of T tokens (prefill), neuron by neuron.
//
// Per token, 8 % of the d_ff neurons are active, but over a 64-token chunk nearly every neuron
// is active for some token, so running the per-token kernels T times would read each weight
// row ~5 times per chunk. Instead the active (token, neuron) pairs are grouped by neuron (CSR:
// offsets[i] .. offsets[i+1] list the tokens that activate neuron i, ascending), and each weight
// row is loaded once per chunk and applied to all of its tokens.
#ifndef SPARK_OPS_SPARSE_BATCH_H_
#define SPARK_OPS_SPARSE_BATCH_H_

#include <stddef.h>
#include <stdint.h>

#include "util/threading.h"
#include "weights/types.h"

namespace spark {

// out[k] = W[i, :] . x[tokens[k], :] for every neuron i < w.rows and k in
// [offsets[i], offsets[i+1]). x: [T, w.cols]; offsets: [w.rows + 1]; out: [offsets[w.rows]].
// Threads split the neurons. For bf16 and int8 weights with T > 1, x is rounded to bf16 first,
// as a chunk matmul rounds it (matvec.h RoundsXToBF16): every product is exact, the sums f32,
// on the AVX512_BF16 tile (vdpbf16ps) where the CPU has it.
void CsrMaskedMatMul(ThreadPool& pool, const MatRef& w, const float* x, size_t T,
                     const int32_t* offsets, const int32_t* tokens, float* out);

// out[t, c] = sum over neurons i (ascending) and k in [offsets[i], offsets[i+1]) with
// tokens[k] == t of u[k] * W[i, c]. out: [T, w.cols], fully overwritten. Threads split the
// columns into tiles; each walks every neuron for its tile only (no cross-thread sums). For
// bf16 and int8 weights with T > 1, u is rounded to bf16 first (the x of this product; int8:
// before its row scale), so bf16 weights' products are exact, and bf16 weights run on the
// AVX512_BF16 tile (two neurons per vdpbf16ps) where the CPU has it.
void CsrSparseMatMul(ThreadPool& pool, const MatRef& w, const float* u, const int32_t* offsets,
                     const int32_t* tokens, size_t T, float* out);

// CsrSparseMatMul's working form (sparse_batch.cc): the pairs transposed to token-major lists.
// One (neuron, coefficient) pair of a token's list; u already includes the row's int8 scale.
struct TokenPair {
  int32_t row;
  float u;
};
// Neurons per block of the token-major walk, and its column panel: a block's panel of weights
// (128 x 128: 32 KiB in bf16) stays in L1/L2 while every token's pairs in the block use it
// (measured at 2B shapes, AVX3: 256 x 256 ran ~20 % slower, 64 x 128 and 256 x 128 alike).
constexpr size_t kSparseRowBlock = 128;
constexpr size_t kSparsePanel = 128;

// Single-threaded: out[g, c] = sum_{j < n} u[g * n + j] * W[idx[j], c] for g < G, c in [c0, c1).
// Attention's value sum for the G query heads that share one KV head: each value row is loaded
// once for all of them. out: [G, w.cols], columns [c0, c1) overwritten.
void MultiSparseVecMatRange(const MatRef& w, const float* u, const int32_t* idx, size_t n,
                            size_t G, float* out, size_t c0, size_t c1);

}  // namespace spark

#endif  // SPARK_OPS_SPARSE_BATCH_H_
