// engine_bindings.cc: spark_infer._core.Engine. Arguments are checked with the GIL held; the GIL
// is released while the engine runs. Errors: FormatError (ValueError) for bad files,
// ValueError for bad arguments, FileNotFoundError for a missing file, EngineBusyError
// (RuntimeError) for a call while another thread is inside the same engine.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <memory>
#include <stdexcept>
#include <string>

#include "bindings/arrays.h"
#include "bindings/config_fields.h"
#include "model/engine.h"
#include "model/safetensors.h"
#include "util/json.h"

namespace spark {
namespace py = pybind11;
using py::arg;

namespace {

// The shapes among the config's fields.
py::dict ConfigDict(const ModelConfig& c) {
  const py::dict all = ConfigFields(c);
  py::dict d;
  for (const char* k : {"vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads", "head_dim", "d_ff",
                        "ffn_predictor_dim", "attn_predictor_dim"})
    d[k] = all[k];
  return d;
}

}  // namespace

void RegisterEngine(py::module_& m) {
  static py::exception<FormatError> format_error(m, "FormatError", PyExc_ValueError);
  static py::exception<EngineBusyError> busy_error(m, "EngineBusyError", PyExc_RuntimeError);
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const FormatError& e) {
      PyErr_SetString(format_error.ptr(), e.what());
    } catch (const EngineBusyError& e) {
      PyErr_SetString(busy_error.ptr(), e.what());
    } catch (const std::invalid_argument& e) {
      const std::string msg = e.what();
      if (msg.rfind("No such file or directory: ", 0) == 0) {
        PyErr_SetString(PyExc_FileNotFoundError, msg.c_str());
      } else {
        PyErr_SetString(PyExc_ValueError, msg.c_str());
      }
    }
  });

  // The reader's limits, so the Python readers (spark_infer/limits.py) can be tested against them.
  m.attr("MAX_HEADER_BYTES") = kMaxHeaderBytes;
  m.attr("MAX_JSON_VALUES") = Json::kMaxValues;
  m.attr("MAX_JSON_DEPTH") = Json::kMaxDepth;

  py::class_<Engine>(m, "Engine", R"doc(
A Gemma 2 / Gemma 3 transformer (dense or Spark) over a memory-mapped engine file.

Arguments:
  path: the engine file (.spark).
  context_length: positions the KV cache holds (allocated once).
  max_chunk: tokens per prefill chunk the buffers are sized for (grows if needed, up to the
    context length).
  kv_dtype: the KV cache's element type, "bf16" (half the bytes attention reads) or "f32".
  swa_full: keep the whole context for sliding-window layers too; by default they keep a ring
    of window + max_chunk - 1 positions where that is less than half the context (less memory,
    but a rewind past what the ring holds re-runs the prompt: see rewind).
)doc")
      .def(py::init([](const std::string& path, size_t context_length, size_t max_chunk,
                       const std::string& kv_dtype, bool swa_full, bool use_mmap) {
             if (kv_dtype != "bf16" && kv_dtype != "f32")
               throw py::value_error("kv_dtype must be 'bf16' or 'f32', got '" + kv_dtype + "'");
             const WeightType kv = kv_dtype == "f32" ? WeightType::kF32 : WeightType::kBF16;
             py::gil_scoped_release release;
             return std::make_unique<Engine>(path, context_length, max_chunk, kv, swa_full, use_mmap);
           }),
           arg("path"), arg("context_length"), arg("max_chunk") = 64, arg("kv_dtype") = "bf16",
           py::kw_only(), arg("swa_full") = false, arg("use_mmap") = false)
      .def_property_readonly("metadata", [](const Engine& e) {
        py::dict d;
        for (const auto& [k, v] : e.metadata()) d[py::str(k)] = py::bytes(v);
        return d;
      }, "The file's metadata, as bytes values.")
      .def_property_readonly("shape", [](const Engine& e) { return ConfigDict(e.config()); },
                             "The model's shapes as the engine read them.")
      .def_property_readonly("vocab_size", [](const Engine& e) { return e.config().vocab_size; })
      .def_property_readonly("context_length", &Engine::context_length)
      .def_property_readonly("pos", &Engine::pos, "Positions in the KV cache now.")
      .def_property_readonly("max_chunk", &Engine::max_chunk,
                             "Tokens per chunk the buffers hold now (grown by larger chunks, never "
                             "past the context length).")
      .def_property_readonly("weight_bytes", &Engine::weight_bytes)
      .def_property_readonly("kv_bytes", &Engine::kv_bytes)
      .def_property_readonly("kv_ring_rows", &Engine::kv_ring_rows,
                             "Rows of the sliding-window layers' ring buffers (0: no rings).")
      .def_property_readonly("kv_dtype", [](const Engine& e) { return WeightTypeName(e.kv_type()); })
      .def_property_readonly("weight_type", &Engine::matrix_types,
                             "The matrices' type (token_embd aside): \"q4\", or a mix \"int8+q4+q5\".")
      .def_property("threads", &Engine::threads, &Engine::set_threads, "Kernel threads of this engine (its own pool; default: the physical cores).")
      .def_property("chunk_sparse_cache_bytes", &Engine::chunk_sparse_cache_bytes,
                    &Engine::set_chunk_sparse_cache_bytes,
                    "Spark FFN prefill: layers whose K2 + V fit in this many bytes use the per-token "
                    "kernels, larger ones the neuron-grouped kernels (default: half the LLC).")
      .def_property("lm_head_screen", &Engine::lm_head_screen, &Engine::set_lm_head_screen,
                    "The screened LM head (files with lm_head_screen_margin > 0; on by default): "
                    "logits from the screen (screen4), those within the margin of the largest recomputed "
                    "from token_embd. False: every logit from token_embd.")
      .def_property_readonly("screen_rescored", &Engine::screen_rescored,
                             "Logits the screened head recomputed exactly in the last prefill / "
                             "decode call, over all its rows.")
      .def("reset", &Engine::Reset, "Forget the whole cache (position 0).")
      .def("rewind", &Engine::Rewind, arg("pos"),
           "Keep the cache for positions < pos; returns pos, or 0 (the cache emptied) when a "
           "sliding-window layer's ring buffer has overwritten a position that pos would see.")
      .def("reusable_prefix", &Engine::ReusablePrefix, arg("pos"),
           "What rewind(pos) would keep (pos above .pos counts as .pos), changing nothing.")
      .def("prefill", [](Engine& e, py::array tokens, size_t chunk, bool all_logits) {
        const int32_t* pt = Checked<int32_t>(tokens, "tokens", {-1});
        const size_t n = static_cast<size_t>(tokens.shape(0));
        const size_t V = e.config().vocab_size;
        py::array_t<float> logits = all_logits
            ? py::array_t<float>({static_cast<py::ssize_t>(n), static_cast<py::ssize_t>(V)})
            : py::array_t<float>(static_cast<py::ssize_t>(V));
        float* pl = logits.mutable_data();
        {
          py::gil_scoped_release release;
          e.Prefill(pt, n, chunk, pl, all_logits);
        }
        return logits;
      }, arg("tokens").noconvert(), arg("chunk") = 64, arg("all_logits") = false,
         "Run int32 tokens at the current position in chunks; returns the last token's logits "
         "[vocab], or every token's [n, vocab] with all_logits=True.")
      .def("decode", [](Engine& e, int64_t token) {
        if (token < 0 || static_cast<size_t>(token) >= e.config().vocab_size)
          throw py::value_error("token id " + std::to_string(token) + " is outside the vocabulary [0, " +
                                std::to_string(e.config().vocab_size) + ")");
        py::array_t<float> logits(static_cast<py::ssize_t>(e.config().vocab_size));
        float* pl = logits.mutable_data();
        {
          py::gil_scoped_release release;
          e.Decode(static_cast<int32_t>(token), pl);
        }
        return logits;
      }, arg("token"), "Run one token; returns its logits [vocab].")
      .def("stats", [](const Engine& e) {
        const auto& s = e.stats();
        const size_t L = s.size();
        py::array_t<double> ffn(static_cast<py::ssize_t>(L)), att(static_cast<py::ssize_t>(L));
        for (size_t i = 0; i < L; ++i) {
          ffn.mutable_data()[i] = s[i].ffn_tokens > 0 ? s[i].ffn_active / (s[i].ffn_tokens * e.config().d_ff) : 0.0;
          att.mutable_data()[i] = s[i].attn_queries > 0 ? s[i].attn_attended / s[i].attn_queries : 0.0;
        }
        py::dict d;
        d["ffn_active_fraction"] = ffn;
        d["attn_mean_tokens"] = att;
        return d;
      }, "Per layer, for the last prefill/decode call: the fraction of FFN neurons active "
         "(mean over tokens) and the mean number of attended tokens per (token, query head).")
      .def("times", [](const Engine& e) {
        const TimeBreakdown& t = e.times();
        py::dict d;
        d["embed"] = t.embed;
        d["attention"] = t.attention;
        d["ffn"] = t.ffn;
        d["logits"] = t.logits;
        d["other"] = t.other;
        return d;
      }, "Seconds per component in the last call.");
}

}  // namespace spark
