// weights.h: a typed, non-owning view of a weight matrix, shared by every kernel.
//
// Matrices are row-major [rows, cols]. Types:
//   kF32  float
//   kBF16 hwy::bfloat16_t (upper 16 bits of an f32)
//   kI8   int8_t with one f32 scale per row: w[r, c] = scale[r] * q[r, c]
// Rows stay contiguous in every type, so a kernel that skips rows never touches their bytes.
#ifndef SPARK_OPS_WEIGHTS_H_
#define SPARK_OPS_WEIGHTS_H_

#include <stddef.h>
#include <stdint.h>

namespace spark {

enum class WeightType : int { kF32 = 0, kBF16 = 1, kI8 = 2 };

inline size_t WeightTypeBytes(WeightType t) {
  return t == WeightType::kF32 ? 4 : t == WeightType::kBF16 ? 2 : 1;
}
inline const char* WeightTypeName(WeightType t) {
  return t == WeightType::kF32 ? "f32" : t == WeightType::kBF16 ? "bf16" : "int8";
}

struct MatRef {
  const void* data = nullptr;
  const float* scale = nullptr;  // [rows], kI8 only
  WeightType type = WeightType::kF32;
  size_t rows = 0;
  size_t cols = 0;

  const uint8_t* Row(size_t r) const {
    return static_cast<const uint8_t*>(data) + r * cols * WeightTypeBytes(type);
  }
  size_t Bytes() const { return rows * cols * WeightTypeBytes(type) + (scale ? rows * 4 : 0); }
};

}  // namespace spark

#endif  // SPARK_OPS_WEIGHTS_H_
