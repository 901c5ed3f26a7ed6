// matvec.h: dense products with a weight matrix W: [rows, cols] (f32, bf16 or int8 + row scale).
// Activations and accumulation are f32. Threads split the output rows (no cross-thread sums),
// so results are identical for any thread count.
#ifndef SPARK_OPS_MATVEC_H_
#define SPARK_OPS_MATVEC_H_

#include <stddef.h>
#include <stdint.h>

#include "util/threading.h"
#include "weights/types.h"

namespace spark {

// out[r] = W[r, :] . x for r < rows.  x: [cols], out: [rows]. out must not alias x.
void MatVec(ThreadPool& pool, const MatRef& w, const float* x, float* out);

// Chunk matmul for T tokens: out[t, r] = W[r, :] . x[t, :].  x: [T, cols], out: [T, rows].
// Each weight row is loaded once per group of tokens, not once per token. With bf16 weights and
// T > 1, x is rounded to bf16 first (every target; matvec-inl.h RoundToBF16), so that CPUs with
// AVX512_BF16 multiply bf16 pairs (vdpbf16ps); MatVec and T == 1 keep f32 x.
void MatMul(ThreadPool& pool, const MatRef& w, const float* x, size_t T, float* out);

// Several matrices with the same input and cols, in one parallel job: out_i = MatMul(*ws[i], x,
// T), out_i: [T, ws[i]->rows]. Fewer, longer jobs than n separate MatMul calls (Q/K/V, gate/up).
void MatMulMany(ThreadPool& pool, const MatRef* const* ws, float* const* outs, size_t n, const float* x, size_t T);

// Single-threaded, on the caller: out[t * out_stride + r] = W[r, :] . x[t, :] for r in [r0, r1).
// For callers that already split work between threads (attention over heads). x stays f32
// for every weight type (attention's q against the bf16 KV cache).
void MatMulRange(const MatRef& w, const float* x, size_t T, float* out, size_t out_stride,
                 size_t r0, size_t r1);

// Whether a chunk product (T > 1) with weights of type t rounds its input to bf16: bf16
// weights, and int8 ones, whose values are exact in bf16 (before the row scale), so both run the
// AVX512_BF16 tile where the CPU has it (docs/engine-file.md). The neuron-grouped Spark FFN
// kernels (sparse_batch.h) follow the same rule.
bool RoundsXToBF16(WeightType t);

// The input of a chunk product: x, and when `round` x [n] rounded to bf16 once per call, not
// once per thread part (matvec-inl.h, RoundToBF16): f32 values in `f32` or bits in `bits`, per
// the target's tile (bits: the AVX512_BF16 tile). The buffers are the calling thread's, valid
// until its next ChunkInput; the parts only read them.
struct ChunkInput {
  const float* x;
  const float* f32;
  const uint16_t* bits;
  ChunkInput(const float* x_in, size_t n, bool round);
  // What a kernel takes for a matrix of type t.
  const float* X(WeightType t) const { return RoundsXToBF16(t) ? f32 : x; }
  const uint16_t* Bits(WeightType t) const { return RoundsXToBF16(t) ? bits : nullptr; }
};

// out[i] = x[i] rounded to bf16 (nearest even; NaN stays NaN), as f32 values, on every target.
void RoundToBF16Values(const float* x, size_t n, float* out);

}  // namespace spark

#endif  // SPARK_OPS_MATVEC_H_
