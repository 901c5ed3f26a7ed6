// engine_file_bindings.cc: spark_infer._core.EngineFile and validate_config, the one reader and
// validator of engine files (model/engine_file.h) for the Python side (fileformat.py builds
// read_engine_file and read_engine_header on them). Tensors are read-only numpy views over the
// memory map (nothing is copied); each view keeps its EngineFile, and so the map, alive.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <memory>
#include <string>

#include "model/engine_file.h"
#include "util/json.h"

namespace spark {
namespace py = pybind11;
using py::arg;

namespace {

py::dtype NumpyDtype(const std::string& dtype) {
  // BF16 has no numpy dtype: its bit patterns come back as uint16 (fileformat.bf16_to_f32).
  if (dtype == "F32") return py::dtype::of<float>();
  if (dtype == "BF16") return py::dtype::of<uint16_t>();
  if (dtype == "I8") return py::dtype::of<int8_t>();
  if (dtype == "U8") return py::dtype::of<uint8_t>();
  // EngineFile has checked every tensor against the table, which holds no other dtype.
  throw FormatError("tensor dtype " + dtype + " is not an engine file's");
}

}  // namespace

void RegisterEngineFile(py::module_& m) {
  m.def("validate_config", [](const std::string& json) { ModelConfig::FromJson(json); },
        arg("json"),
        "Validate a model config (JSON text) as the engine does; raises FormatError naming the "
        "field.");

  py::class_<EngineFile, std::shared_ptr<EngineFile>>(m, "EngineFile", R"doc(
An engine file opened and checked as the engine opens it: format and version, the config, and
every tensor's name, dtype and shape against the config's table (docs/engine-file.md). Raises
FormatError naming the field or tensor, FileNotFoundError for a missing file.
)doc")
      .def(py::init([](const std::string& path) {
             py::gil_scoped_release release;
             return std::make_shared<EngineFile>(path);
           }),
           arg("path"))
      .def_property_readonly("path", [](const EngineFile& f) { return f.file.path(); })
      .def_property_readonly("file_bytes", [](const EngineFile& f) { return f.file.size(); })
      .def_property_readonly("metadata", [](const EngineFile& f) {
        py::dict d;
        for (const auto& [k, v] : f.file.metadata()) d[py::str(k)] = py::str(v);
        return d;
      }, "The __metadata__ entries (str -> str); 'config' is the validated config's JSON.")
      .def("tensor_dtypes", [](const EngineFile& f) {
        py::dict d;
        for (const auto& [name, t] : f.file.tensors()) d[py::str(name)] = py::str(t.dtype);
        return d;
      }, "Each tensor's safetensors dtype (F32, BF16, I8 or U8), by name.")
      .def("tensors", [](py::object self) {
        const EngineFile& f = self.cast<const EngineFile&>();
        py::dict d;
        for (const auto& [name, t] : f.file.tensors()) {
          std::vector<py::ssize_t> shape(t.shape.begin(), t.shape.end());
          py::array a(NumpyDtype(t.dtype), shape, t.data, self);
          py::detail::array_proxy(a.ptr())->flags &= ~py::detail::npy_api::NPY_ARRAY_WRITEABLE_;
          d[py::str(name)] = a;
        }
        return d;
      }, "Every tensor as a read-only numpy view over the map: F32 float32, BF16 uint16 bit "
         "patterns, I8 int8, U8 (q4 blocks) uint8, in the stored shape.");
}

}  // namespace spark
