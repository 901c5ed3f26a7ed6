// engine_file_bindings.cc: spark_infer._core.EngineFile and validate_config, the one reader and
// validator of engine files (model/engine_file.h) for the Python side (fileformat.py builds
// read_engine_file and read_engine_header on them). Tensors are read-only numpy views over the
// memory map (nothing is copied); each view keeps its EngineFile, and so the map, alive.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <memory>
#include <string>

#include "bindings/config_fields.h"
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

// Every field as the engine read it, under config.py's names (floats the engine keeps as float32
// come back as those float32 values).
py::dict ConfigFields(const ModelConfig& c) {
  py::dict d;
  d["arch"] = c.arch;
  d["vocab_size"] = c.vocab_size;
  d["d_model"] = c.d_model;
  d["n_layers"] = c.n_layers;
  d["n_heads"] = c.n_heads;
  d["n_kv_heads"] = c.n_kv_heads;
  d["head_dim"] = c.head_dim;
  d["d_ff"] = c.d_ff;
  d["query_scale"] = c.query_scale;
  py::list layer_types;
  for (bool local : c.layer_is_local) layer_types.append(local ? "local" : "global");
  d["layer_types"] = layer_types;
  d["norm_eps"] = c.norm_eps;
  d["attn_softcap"] = c.attn_softcap;
  d["final_softcap"] = c.final_softcap;
  d["lm_head_screen_margin"] = c.lm_head_screen_margin;
  d["qk_norm"] = c.qk_norm;
  d["sliding_window"] = c.sliding_window;
  d["rope_base_global"] = c.rope_base_global;
  d["rope_base_local"] = c.rope_base_local;
  d["rope_scale_global"] = c.rope_scale_global;
  d["ffn_predictor_dim"] = c.ffn_predictor_dim;
  d["ffn_topk_fraction"] = c.ffn_topk_fraction;
  d["attn_predictor_dim"] = c.attn_predictor_dim;
  d["attn_topk"] = c.attn_topk;
  d["ffn_sparse_fraction"] = c.ffn_sparse_fraction;
  py::list quantiles;
  for (float q : c.ffn_sparse_quantiles) quantiles.append(q);
  d["ffn_sparse_quantiles"] = quantiles;
  d["ffn_gate_rank"] = c.ffn_gate_rank;
  d["ffn_select_weighted"] = c.ffn_select_weighted;
  d["ffn_select_by"] = ModelConfig::kFfnSelectNames[static_cast<size_t>(c.ffn_select_by)];
  d["attn_sparse_topk"] = c.attn_sparse_topk;
  d["attn_sparse_dim"] = c.attn_sparse_dim;
  d["attn_sparse_recent"] = c.attn_sparse_recent;
  d["bos_id"] = c.bos_id;
  d["eos_id"] = c.eos_id;
  d["pad_id"] = c.pad_id;
  d["start_of_turn_id"] = c.start_of_turn_id;
  d["end_of_turn_id"] = c.end_of_turn_id;
  return d;
}

void RegisterEngineFile(py::module_& m) {
  m.def("validate_config", [](const std::string& json) { return ConfigFields(ModelConfig::FromJson(json)); },
        arg("json"),
        "Validate a model config (JSON text) as the engine does; returns every field as the "
        "engine read it (defaults filled in), or raises FormatError naming the field.");

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
      .def_property_readonly("config", [](const EngineFile& f) { return ConfigFields(f.config); },
                             "The config as the engine read it (validate_config's dict).")
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
