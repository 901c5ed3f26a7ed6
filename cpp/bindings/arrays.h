// arrays.h: checked, zero-copy views of numpy arrays for the bindings.
// A wrong dtype is a TypeError; a non-C-contiguous array, a wrong rank or shape, or a read-only
// output is a ValueError. Nothing is ever copied or converted: the kernels read and write the
// caller's buffers. Call these with the GIL held, then release it around the kernel.
#ifndef SPARK_BINDINGS_ARRAYS_H_
#define SPARK_BINDINGS_ARRAYS_H_

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <optional>
#include <string>
#include <vector>

#include "weights/types.h"

namespace spark {
namespace py = pybind11;

inline std::string ShapeString(const py::array& a) {
  std::string s = "(";
  for (py::ssize_t i = 0; i < a.ndim(); ++i) s += (i ? ", " : "") + std::to_string(a.shape(i));
  return s + (a.ndim() == 1 ? ",)" : ")");
}

// Checks dtype T, C-contiguity, rank and the given dims (-1: any). Returns the data pointer.
template <typename T>
T* Checked(const py::array& a, const char* name, std::vector<py::ssize_t> dims,
           bool writable = false) {
  if (!a.dtype().is(py::dtype::of<T>())) {
    throw py::type_error(std::string(name) + ": expected dtype " +
                         std::string(py::str(py::dtype::of<T>())) + ", got " +
                         std::string(py::str(a.dtype())));
  }
  if (!(a.flags() & py::array::c_style)) {
    throw py::value_error(std::string(name) + ": array must be C-contiguous (use np.ascontiguousarray)");
  }
  if (a.ndim() != static_cast<py::ssize_t>(dims.size())) {
    throw py::value_error(std::string(name) + ": expected " + std::to_string(dims.size()) +
                          " dimensions, got shape " + ShapeString(a));
  }
  for (size_t i = 0; i < dims.size(); ++i) {
    if (dims[i] >= 0 && a.shape(i) != dims[i]) {
      std::string want = "(";
      for (size_t j = 0; j < dims.size(); ++j)
        want += (j ? ", " : "") + (dims[j] >= 0 ? std::to_string(dims[j]) : std::string("*"));
      throw py::value_error(std::string(name) + ": expected shape " + want + (dims.size() == 1 ? ",)" : ")") +
                            ", got " + ShapeString(a));
    }
  }
  if (writable && !a.writeable()) throw py::value_error(std::string(name) + ": array is read-only");
  return static_cast<T*>(const_cast<void*>(a.data()));
}

// A weight matrix [rows, cols]: float32, uint16 (bf16 bits), int8 with scale float32 [rows],
// uint8 [rows, cols / 32 * 20]: q4 blocks (weights/types.h), cols = 32 per 20 bytes, or uint8
// [rows, cols / 32, 22]: q5 blocks (the block axis apart, since a row's bytes alone can be
// either type's: 440 bytes are 22 q4 blocks or 20 q5 ones; [rows, cols / 32, 20] is q4).
inline MatRef CheckedWeights(const py::array& w, const std::optional<py::array>& scale) {
  MatRef m;
  const bool blocks3 = w.ndim() == 3 && w.dtype().is(py::dtype::of<uint8_t>());
  if (w.ndim() != 2 && !blocks3)
    throw py::value_error("w: expected a 2-D weight matrix (or uint8 [rows, blocks, 20 or 22] q4 / q5 blocks), got shape " +
                          ShapeString(w));
  m.rows = static_cast<size_t>(w.shape(0));
  m.cols = static_cast<size_t>(w.shape(1));
  const py::ssize_t R = w.shape(0), C = w.shape(1);
  if (blocks3) {
    const py::ssize_t B = w.shape(2);
    if (B != static_cast<py::ssize_t>(kQ4BlockBytes) && B != static_cast<py::ssize_t>(kQ5BlockBytes))
      throw py::value_error("w: uint8 [rows, blocks, bytes] weights are q4 (20-byte) or q5 (22-byte) blocks, got " +
                            std::to_string(B) + "-byte blocks");
    m.type = B == static_cast<py::ssize_t>(kQ4BlockBytes) ? WeightType::kQ4 : WeightType::kQ5;
    m.cols = static_cast<size_t>(C) * kQ4Group;
    m.data = Checked<uint8_t>(w, "w", {R, C, B});
  } else if (w.dtype().is(py::dtype::of<float>())) {
    m.type = WeightType::kF32;
    m.data = Checked<float>(w, "w", {R, C});
  } else if (w.dtype().is(py::dtype::of<uint16_t>())) {
    m.type = WeightType::kBF16;
    m.data = Checked<uint16_t>(w, "w", {R, C});
  } else if (w.dtype().is(py::dtype::of<int8_t>())) {
    m.type = WeightType::kI8;
    m.data = Checked<int8_t>(w, "w", {R, C});
    if (!scale) throw py::value_error("w: int8 weights need scale (float32, one per row)");
  } else if (w.dtype().is(py::dtype::of<uint8_t>())) {
    if (C % static_cast<py::ssize_t>(kQ4BlockBytes) != 0)
      throw py::value_error("w: q4 rows are 20-byte blocks, got rows of " + std::to_string(C) + " bytes");
    m.type = WeightType::kQ4;
    m.cols = static_cast<size_t>(C) / kQ4BlockBytes * kQ4Group;
    m.data = Checked<uint8_t>(w, "w", {R, C});
  } else {
    throw py::type_error("w: expected float32, uint16 (bf16 bits), int8 or uint8 (q4 / q5 blocks) weights, got " +
                         std::string(py::str(w.dtype())));
  }
  if (scale) {
    if (m.type != WeightType::kI8) throw py::value_error("scale is only for int8 weights");
    m.scale = Checked<float>(*scale, "scale", {R});
  }
  return m;
}

}  // namespace spark

#endif  // SPARK_BINDINGS_ARRAYS_H_
