// matvec.cc: dispatch and threading for matvec-inl.h.
#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "ops/matvec.cc"
#include "hwy/foreach_target.h"  // IWYU pragma: keep

#include "hwy/highway.h"
#include "ops/matvec-inl.h"

HWY_BEFORE_NAMESPACE();
namespace spark {
namespace HWY_NAMESPACE {

// Dispatch on the weight type; out: [T, out_stride]. xb: x as bf16 bits when bf16 or int8
// weights take the AVX512_BF16 tile (ChunkInput), else null.
HWY_NOINLINE void MatMulRows(const MatRef& w, const float* HWY_RESTRICT x, const uint16_t* xb, size_t T,
                             float* HWY_RESTRICT out, size_t out_stride, size_t r0, size_t r1) {
#if HWY_TARGET == HWY_AVX3
  if (xb != nullptr && w.type == WeightType::kBF16 && T > 1) {
    return MatMulRowsBF16(static_cast<const hwy::bfloat16_t*>(w.data), w.cols, xb, T, out, out_stride, r0, r1);
  }
  if (xb != nullptr && w.type == WeightType::kI8 && T > 1) {
    return MatMulRowsI8BF16(static_cast<const int8_t*>(w.data), w.scale, w.cols, xb, T, out, out_stride, r0, r1);
  }
#endif
  VisitWeights(w, [&](auto p, const float* scale) {
    MatMulRowsT(p, scale, w.cols, x, T, out, out_stride, r0, r1);
  });
}

// x [n] rounded to bf16 for a bf16 chunk matmul, in the form this target's tile takes: bits
// into xb (returns true) or f32 values into xr (false).
HWY_NOINLINE bool RoundChunkInput(const float* HWY_RESTRICT x, size_t n, float* HWY_RESTRICT xr,
                                  uint16_t* HWY_RESTRICT xb) {
  const bool bits = UseBF16Tile();
  RoundToBF16(x, n, bits ? nullptr : xr, bits ? xb : nullptr);
  return bits;
}

HWY_NOINLINE void RoundValues(const float* HWY_RESTRICT x, size_t n, float* HWY_RESTRICT out) {
  RoundToBF16(x, n, out, nullptr);
}

}  // namespace HWY_NAMESPACE
}  // namespace spark
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
#include <algorithm>
#include <vector>

#include "ops/matvec.h"
#include "util/threading.h"

namespace spark {
HWY_EXPORT(MatMulRows);
HWY_EXPORT(RoundChunkInput);
HWY_EXPORT(RoundValues);

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

bool RoundsXToBF16(WeightType t) { return t == WeightType::kBF16 || t == WeightType::kI8; }

ChunkInput::ChunkInput(const float* x_in, size_t n, bool round) : x(x_in), f32(x_in), bits(nullptr) {
  if (!round) return;
  thread_local std::vector<float> xr;
  thread_local std::vector<uint16_t> xb;
  if (xr.size() < n) xr.resize(n);
  if (xb.size() < n) xb.resize(n);
  if (HWY_DYNAMIC_DISPATCH(RoundChunkInput)(x_in, n, xr.data(), xb.data())) {
    bits = xb.data();
  } else {
    f32 = xr.data();
  }
}

void RoundToBF16Values(const float* x, size_t n, float* out) {
  HWY_DYNAMIC_DISPATCH(RoundValues)(x, n, out);
}

// Attention's products with the KV cache (bf16 keys) keep f32 x: this is not a weight matmul.
void MatMulRange(const MatRef& w, const float* x, size_t T, float* out, size_t out_stride,
                 size_t r0, size_t r1) {
  HWY_DYNAMIC_DISPATCH(MatMulRows)(w, x, nullptr, T, out, out_stride, r0, r1);
}

void MatVec(ThreadPool& pool, const MatRef& w, const float* x, float* out) { MatMul(pool, w, x, 1, out); }

void MatMul(ThreadPool& pool, const MatRef& w, const float* x, size_t T, float* out) {
  const auto fn = HWY_DYNAMIC_DISPATCH(MatMulRows);
  const ChunkInput in(x, T * w.cols, T > 1 && RoundsXToBF16(w.type));
  const float* xw = in.X(w.type);
  const uint16_t* xb = in.Bits(w.type);
  pool.ParallelFor(w.rows, RowGranule(w), [&](size_t r0, size_t r1, int) {
    fn(w, xw, xb, T, out, w.rows, r0, r1);
  });
}

void MatMulMany(ThreadPool& pool, const MatRef* const* ws, float* const* outs, size_t n, const float* x, size_t T) {
  // The matrices' rows, end to end, are one index space [0, total) split between threads.
  size_t total = 0, granule = 4;
  bool bf16 = false;
  for (size_t i = 0; i < n; ++i) {
    total += ws[i]->rows;
    granule = std::max(granule, RowGranule(*ws[i]));
    bf16 |= RoundsXToBF16(ws[i]->type);
  }
  const ChunkInput in(x, T * (n > 0 ? ws[0]->cols : 0), T > 1 && bf16);
  const auto fn = HWY_DYNAMIC_DISPATCH(MatMulRows);
  pool.ParallelFor(total, granule, [&](size_t b, size_t e, int) {
    size_t base = 0;
    for (size_t i = 0; i < n && base < e; base += ws[i]->rows, ++i) {
      const size_t r0 = std::max(b, base), r1 = std::min(e, base + ws[i]->rows);
      const WeightType t = ws[i]->type;
      if (r0 < r1) fn(*ws[i], in.X(t), in.Bits(t), T, outs[i], ws[i]->rows, r0 - base, r1 - base);
    }
  });
}

}  // namespace spark
#endif  // HWY_ONCE
