// types.h: the weight types (each one's layout, its file dtype and its scalar encoder/decoder)
// and a typed, non-owning view of a weight matrix, shared by every kernel. The per-target
// (SIMD) decoders are load-inl.h; Python's encoders of the same layouts are spark_infer/weights/.
//
// Matrices are row-major [rows, cols]. Types (safetensors dtype in the engine file):
//   kF32  float (F32)
//   kBF16 hwy::bfloat16_t, the upper 16 bits of an f32 (BF16)
//   kI8   int8_t with one f32 scale per row: w[r, c] = scale[r] * q[r, c] (I8, + F32 scales)
//   kQ4   (U8 [rows, cols / 32 * 20]) 4-bit, asymmetric, in blocks of 32 weights along a row (GGML's Q4_1 block): each
//         block is 20 bytes, f16 d, f16 m (little-endian), then 16 bytes of codes; byte j
//         holds weight j in its low nibble and weight j + 16 in its high nibble; w = d * q + m.
//         cols % 32 == 0, so row r is blocks [r * cols / 32, (r + 1) * cols / 32).
//   kQ5   (U8 [rows, cols / 32 * 22]) 5-bit, symmetric, in blocks of 32 (GGML's Q5_0 block): each
//         block is 22 bytes, f16 d, 4 bytes qh (a little-endian u32: bit j is the fifth bit of
//         weight j), then 16 code bytes as in kQ4 (low nibble weight j, high nibble j + 16);
//         w = d * (q - 16), q in 0..31. Told apart from kQ4 (also U8) by the row bytes.
// Rows stay contiguous in every type, so a kernel that skips rows never touches their bytes.
#ifndef SPARK_WEIGHTS_TYPES_H_
#define SPARK_WEIGHTS_TYPES_H_

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <string>

namespace spark {

enum class WeightType : int { kF32 = 0, kBF16 = 1, kI8 = 2, kQ4 = 3, kQ5 = 4 };

// kQ4 block geometry.
constexpr size_t kQ4Group = 32;       // weights per block
constexpr size_t kQ4BlockBytes = 20;  // f16 d, f16 m, 16 code bytes
// kQ5: blocks of kQ4Group weights too.
constexpr size_t kQ5BlockBytes = 22;  // f16 d, u32 qh, 16 code bytes

// Bytes of one element; kQ4 and kQ5 have no whole-byte element (see RowBytes).
inline size_t WeightTypeBytes(WeightType t) {
  return t == WeightType::kF32 ? 4 : t == WeightType::kBF16 ? 2 : 1;
}
// Bytes of a row of `cols` weights (kQ4, kQ5: cols must be a multiple of kQ4Group).
inline size_t RowBytes(WeightType t, size_t cols) {
  return t == WeightType::kQ4   ? cols / kQ4Group * kQ4BlockBytes
         : t == WeightType::kQ5 ? cols / kQ4Group * kQ5BlockBytes
                                : cols * WeightTypeBytes(t);
}
inline const char* WeightTypeName(WeightType t) {
  return t == WeightType::kF32    ? "f32"
         : t == WeightType::kBF16 ? "bf16"
         : t == WeightType::kI8   ? "int8"
         : t == WeightType::kQ4   ? "q4"
                                  : "q5";
}
// The safetensors dtype an engine file stores a type as, and back (false for any other dtype).
// U8 reads back as kQ4; its reader tells kQ5 apart by the row bytes (BlockTypeOfRowBytes).
inline const char* WeightTypeDtype(WeightType t) {
  return t == WeightType::kF32 ? "F32" : t == WeightType::kBF16 ? "BF16" : t == WeightType::kI8 ? "I8" : "U8";
}
// The block type (kQ4 or kQ5) whose rows of `cols` weights take `row_bytes`; false for none.
inline bool BlockTypeOfRowBytes(size_t cols, size_t row_bytes, WeightType* t) {
  if (cols % kQ4Group != 0) return false;
  for (WeightType c : {WeightType::kQ4, WeightType::kQ5}) {
    if (row_bytes == RowBytes(c, cols)) {
      *t = c;
      return true;
    }
  }
  return false;
}
inline bool WeightTypeFromDtype(const std::string& dtype, WeightType* t) {
  for (WeightType c : {WeightType::kF32, WeightType::kBF16, WeightType::kI8, WeightType::kQ4}) {
    if (dtype == WeightTypeDtype(c)) {
      *t = c;
      return true;
    }
  }
  return false;
}

// f32 value of bf16 bits (exact), and bf16 bits of an f32 rounded to nearest, ties to even (as
// spark_infer.weights.f32_to_bf16 does, NaN included).
inline float F32FromBF16Bits(uint16_t b) {
  const uint32_t bits = static_cast<uint32_t>(b) << 16;
  float f;
  memcpy(&f, &bits, 4);
  return f;
}
inline uint16_t BF16BitsFromF32(float f) {
  uint32_t bits;
  memcpy(&bits, &f, 4);
  // NaN stays a quiet NaN of its sign: rounding its payload could carry into the exponent
  // (an infinity) or past the sign bit (-0), as weights/bf16.py's encoder also avoids.
  if ((bits & 0x7FFFFFFFu) > 0x7F800000u) return static_cast<uint16_t>((bits >> 16) | 0x0040u);
  return static_cast<uint16_t>((bits + 0x7FFFu + ((bits >> 16) & 1u)) >> 16);
}

// f32 value of IEEE half bits. Subnormal halves are converted by an exact integer multiply
// rather than through a subnormal f32, which a flush-to-zero/denormals-are-zero mode would lose.
inline float F32FromF16Bits(uint16_t h) {
  const uint32_t exp = (h >> 10) & 31, man = h & 0x3FF;
  float f;
  if (exp == 0) {
    f = static_cast<float>(man) * 0x1p-24f;
  } else {
    const uint32_t bits = (exp == 31 ? 0x7F800000u : (exp + 112) << 23) | (man << 13);  // Inf/NaN
    memcpy(&f, &bits, 4);
  }
  return (h & 0x8000) ? -f : f;
}

// A position in a kQ4 matrix: `base` points at its first block, `e` is the element index in
// the row-major [rows, cols] order (cols % 32 == 0, so element e lies in block e / 32). Behaves
// like a `const W*` in the kernels: p + k, p[k].
struct Q4Ptr {
  const uint8_t* base = nullptr;
  size_t e = 0;

  Q4Ptr operator+(size_t k) const { return Q4Ptr{base, e + k}; }
  const uint8_t* Block() const { return base + (e / kQ4Group) * kQ4BlockBytes; }
  float operator[](size_t k) const {
    const size_t i = e + k;
    const uint8_t* b = base + (i / kQ4Group) * kQ4BlockBytes;
    const size_t j = i % kQ4Group;
    const uint8_t byte = b[4 + (j & 15)];
    const float q = static_cast<float>(j < 16 ? (byte & 15) : (byte >> 4));
    uint16_t d, m;
    memcpy(&d, b, 2);
    memcpy(&m, b + 2, 2);
    return F32FromF16Bits(d) * q + F32FromF16Bits(m);
  }
};

// A position in a kQ5 matrix, as Q4Ptr.
struct Q5Ptr {
  const uint8_t* base = nullptr;
  size_t e = 0;

  Q5Ptr operator+(size_t k) const { return Q5Ptr{base, e + k}; }
  const uint8_t* Block() const { return base + (e / kQ4Group) * kQ5BlockBytes; }
  float operator[](size_t k) const {
    const size_t i = e + k;
    const uint8_t* b = base + (i / kQ4Group) * kQ5BlockBytes;
    const size_t j = i % kQ4Group;
    const uint8_t byte = b[6 + (j & 15)];
    uint16_t d;
    uint32_t qh;
    memcpy(&d, b, 2);
    memcpy(&qh, b + 2, 4);
    const int q = (j < 16 ? (byte & 15) : (byte >> 4)) | static_cast<int>(((qh >> j) & 1u) << 4);
    return F32FromF16Bits(d) * static_cast<float>(q - 16);
  }
};

struct MatRef {
  const void* data = nullptr;
  const float* scale = nullptr;  // [rows], kI8 only
  WeightType type = WeightType::kF32;
  size_t rows = 0;
  size_t cols = 0;

  size_t RowBytes() const { return spark::RowBytes(type, cols); }
  const uint8_t* Row(size_t r) const { return static_cast<const uint8_t*>(data) + r * RowBytes(); }
  size_t Bytes() const { return rows * RowBytes() + (scale ? rows * 4 : 0); }
};

// The LM-head screen (docs/engine-file.md, "The screened LM head"; the layout's definition and
// encoder: python/spark_infer/weights/screen4.py). 4-bit symmetric codes c (w = d * (c - 7.5)) in
// blocks of kScreenGroup weights along a row, one f32 d per block; rows in tiles of kScreenRows,
// interleaved block by block so the decode kernel streams one contiguous tile at a time. A tile
// of G = cols / 128 blocks is G * 256 code bytes ([block g][row r][64 bytes]: byte j has column
// 128 g + j in its low nibble, 128 g + 64 + j in its high one), then G * 4 f32 d ([g][r]).
constexpr size_t kScreenGroup = 128;
constexpr size_t kScreenRows = 4;
constexpr size_t kScreenBlockBytes = kScreenGroup / 2 * kScreenRows + 4 * kScreenRows;  // 272

struct ScreenRef {
  const uint8_t* data = nullptr;  // [Tiles(), TileBytes()]
  size_t rows = 0;                // rows past `rows` in the last tile are padding
  size_t cols = 0;                // a multiple of kScreenGroup

  size_t Blocks() const { return cols / kScreenGroup; }
  size_t Tiles() const { return (rows + kScreenRows - 1) / kScreenRows; }
  size_t TileBytes() const { return Blocks() * kScreenBlockBytes; }
  size_t Bytes() const { return Tiles() * TileBytes(); }
  const uint8_t* Tile(size_t t) const { return data + t * TileBytes(); }
};

// f32 copy of row r of m, any type (the scalar decoder; kernels use load-inl.h).
inline void DecodeRow(const MatRef& m, size_t r, float* out) {
  const uint8_t* row = m.Row(r);
  switch (m.type) {
    case WeightType::kF32:
      memcpy(out, row, m.cols * sizeof(float));
      break;
    case WeightType::kBF16:
      for (size_t c = 0; c < m.cols; ++c) {
        uint16_t b;
        memcpy(&b, row + 2 * c, 2);
        out[c] = F32FromBF16Bits(b);
      }
      break;
    case WeightType::kI8:
      for (size_t c = 0; c < m.cols; ++c)
        out[c] = static_cast<float>(reinterpret_cast<const int8_t*>(row)[c]) * m.scale[r];
      break;
    case WeightType::kQ4: {
      const Q4Ptr p{row, 0};
      for (size_t c = 0; c < m.cols; ++c) out[c] = p[c];
      break;
    }
    case WeightType::kQ5: {
      const Q5Ptr p{row, 0};
      for (size_t c = 0; c < m.cols; ++c) out[c] = p[c];
      break;
    }
  }
}

}  // namespace spark

#endif  // SPARK_WEIGHTS_TYPES_H_
