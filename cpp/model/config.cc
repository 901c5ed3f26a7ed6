#include "model/config.h"

#include <cmath>
#include <iterator>
#include <string>

#include "util/json.h"

namespace spark {
namespace {

// Dimensions above this are certainly a corrupt file (and would overflow size arithmetic).
constexpr int64_t kMaxDim = int64_t{1} << 24;

size_t Dim(const Json& j, const char* key, bool allow_zero = false) {
  const int64_t v = j.At(key).Int(std::string("config.") + key);
  if (v < (allow_zero ? 0 : 1) || v > kMaxDim)
    throw FormatError(std::string("config.") + key + " = " + std::to_string(v) + " is out of range");
  return static_cast<size_t>(v);
}

double Real(const Json& j, const char* key, double def) {
  if (!j.Has(key)) return def;  // null is no number: refused, as config.py refuses None
  return j.At(key).Number(std::string("config.") + key);
}

void Require(bool ok, const std::string& msg) {
  if (!ok) throw FormatError("config: " + msg);
}

// Every field of the schema (python/spark_infer/config.py, one row each in docs/engine-file.md);
// any other name is refused, so a misspelt field is an error, not a silent default.
const char* const kFields[] = {
    "arch", "vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads", "head_dim", "d_ff",
    "query_scale", "layer_types", "norm_eps", "attn_softcap", "final_softcap",
    "lm_head_screen_margin", "qk_norm",
    "sliding_window", "rope_base_global", "rope_base_local", "rope_scale_global",
    "ffn_predictor_dim", "ffn_topk_fraction", "attn_predictor_dim", "attn_topk",
    "ffn_sparse_fraction", "ffn_sparse_quantiles", "ffn_gate_rank", "ffn_select_weighted",
    "ffn_select_by", "attn_sparse_topk", "attn_sparse_dim", "attn_sparse_recent", "bos_id",
    "eos_id", "pad_id", "start_of_turn_id", "end_of_turn_id"};
// Fields without a default (the rest default as in config.py).
const char* const kRequired[] = {"arch",     "vocab_size", "d_model", "n_layers",    "n_heads",
                                 "n_kv_heads", "head_dim",  "d_ff",    "query_scale", "layer_types"};

// A special token id: default `def`, in [0, vocab_size).
size_t TokenId(const Json& j, const char* key, int64_t def, size_t vocab) {
  const int64_t v = j.Has(key) ? j.At(key).Int(std::string("config.") + key) : def;
  Require(v >= 0 && static_cast<uint64_t>(v) < vocab,
          std::string(key) + " must be a token id in [0, vocab_size=" + std::to_string(vocab) + "), got " +
              std::to_string(v));
  return static_cast<size_t>(v);
}

}  // namespace

ModelConfig ModelConfig::FromJson(const std::string& text) {
  const Json j = Json::Parse(text.data(), text.size());
  if (!j.IsObject()) throw FormatError("config: not a JSON object");
  for (const auto& [key, value] : j.Object("config")) {
    bool known = false;
    for (const char* f : kFields) known = known || key == f;
    Require(known, "unknown config field(s): " + key);
  }
  for (const char* f : kRequired) Require(j.Has(f), std::string("missing config field(s): ") + f);
  ModelConfig c;
  c.arch = j.At("arch").String("config.arch");
  Require(c.arch == "gemma2" || c.arch == "gemma3", "arch must be \"gemma2\" or \"gemma3\", got \"" + c.arch + "\"");
  c.vocab_size = Dim(j, "vocab_size");
  c.d_model = Dim(j, "d_model");
  c.n_layers = Dim(j, "n_layers");
  c.n_heads = Dim(j, "n_heads");
  c.n_kv_heads = Dim(j, "n_kv_heads");
  c.head_dim = Dim(j, "head_dim");
  c.d_ff = Dim(j, "d_ff");
  c.norm_eps = static_cast<float>(Real(j, "norm_eps", 1e-6));
  c.query_scale = static_cast<float>(j.At("query_scale").Number("config.query_scale"));
  c.attn_softcap = static_cast<float>(Real(j, "attn_softcap", 0.0));
  c.final_softcap = static_cast<float>(Real(j, "final_softcap", 0.0));
  c.lm_head_screen_margin = static_cast<float>(Real(j, "lm_head_screen_margin", 0.0));
  c.qk_norm = j.Has("qk_norm") && j.At("qk_norm").Bool("config.qk_norm");
  // 0 only when no layer is local (checked below); absent: config.py's default.
  c.sliding_window = j.Has("sliding_window") ? Dim(j, "sliding_window", true) : 4096;
  c.rope_base_global = Real(j, "rope_base_global", 10000.0);
  c.rope_base_local = Real(j, "rope_base_local", 10000.0);
  c.rope_scale_global = Real(j, "rope_scale_global", 1.0);
  c.ffn_predictor_dim = j.Has("ffn_predictor_dim") ? Dim(j, "ffn_predictor_dim", true) : 0;
  c.ffn_topk_fraction = static_cast<float>(Real(j, "ffn_topk_fraction", 0.08));
  c.attn_predictor_dim = j.Has("attn_predictor_dim") ? Dim(j, "attn_predictor_dim", true) : 0;
  c.attn_topk = j.Has("attn_topk") ? Dim(j, "attn_topk") : 256;
  c.ffn_sparse_fraction = static_cast<float>(Real(j, "ffn_sparse_fraction", 0.0));
  if (j.Has("ffn_sparse_quantiles")) {
    for (const Json& q : j.At("ffn_sparse_quantiles").Array("config.ffn_sparse_quantiles"))
      c.ffn_sparse_quantiles.push_back(static_cast<float>(q.Number("config.ffn_sparse_quantiles[]")));
  }
  c.ffn_gate_rank = j.Has("ffn_gate_rank") ? Dim(j, "ffn_gate_rank", true) : 0;
  c.ffn_select_weighted = j.Has("ffn_select_weighted") && j.At("ffn_select_weighted").Bool("config.ffn_select_weighted");
  if (j.Has("ffn_select_by")) {
    const std::string& by = j.At("ffn_select_by").String("config.ffn_select_by");
    std::string known;
    bool found = false;
    for (size_t i = 0; i < std::size(ModelConfig::kFfnSelectNames); ++i) {
      const std::string name = ModelConfig::kFfnSelectNames[i];
      known += (i ? ", \"" : "\"") + name + "\"";
      if (by == name) {
        c.ffn_select_by = static_cast<FfnSelect>(i);
        found = true;
      }
    }
    Require(found, "ffn_select_by must be one of " + known + ", got \"" + by + "\"");
  }
  c.attn_sparse_topk = j.Has("attn_sparse_topk") ? Dim(j, "attn_sparse_topk", true) : 0;
  c.attn_sparse_dim = j.Has("attn_sparse_dim") ? Dim(j, "attn_sparse_dim", true) : 0;
  c.attn_sparse_recent = j.Has("attn_sparse_recent") ? Dim(j, "attn_sparse_recent", true) : 0;

  for (const Json& t : j.At("layer_types").Array("config.layer_types")) {
    const std::string where = "layer_types[" + std::to_string(c.layer_is_local.size()) + "]";
    const std::string& s = t.String("config." + where);
    Require(s == "local" || s == "global", where + " must be 'global' or 'local', got '" + s + "'");
    c.layer_is_local.push_back(s == "local");
  }
  c.bos_id = TokenId(j, "bos_id", 2, c.vocab_size);
  c.eos_id = TokenId(j, "eos_id", 1, c.vocab_size);
  c.pad_id = TokenId(j, "pad_id", 0, c.vocab_size);
  c.start_of_turn_id = TokenId(j, "start_of_turn_id", 105, c.vocab_size);
  c.end_of_turn_id = TokenId(j, "end_of_turn_id", 106, c.vocab_size);

  Require(c.layer_is_local.size() == c.n_layers, "layer_types has " + std::to_string(c.layer_is_local.size()) +
                                                     " entries but n_layers is " + std::to_string(c.n_layers));
  Require(c.n_heads % c.n_kv_heads == 0, "n_heads must be a multiple of n_kv_heads");
  Require(c.head_dim % 2 == 0, "head_dim must be even (RoPE rotates pairs)");
  Require(c.norm_eps > 0 && std::isfinite(c.norm_eps), "norm_eps must be > 0");
  Require(c.query_scale > 0, "query_scale must be > 0");
  Require(c.attn_softcap >= 0, "attn_softcap must be >= 0 (0 means none)");
  Require(c.final_softcap >= 0, "final_softcap must be >= 0 (0 means none)");
  Require(c.lm_head_screen_margin >= 0, "lm_head_screen_margin must be >= 0 (0 means an exact LM head)");
  Require(c.rope_base_global > 1, "rope_base_global must be a finite number > 1");
  Require(c.rope_base_local > 1, "rope_base_local must be a finite number > 1");
  Require(c.rope_scale_global > 0, "rope_scale_global must be > 0");
  for (bool local : c.layer_is_local) {
    Require(!local || c.sliding_window > 0, "local layers need sliding_window > 0");
  }
  // Even, as config.py has always required, so no file holds an odd one (docs/engine-file.md).
  Require(c.ffn_predictor_dim < c.d_model && c.ffn_predictor_dim % 2 == 0,
          "ffn_predictor_dim must be 0 (dense FFN) or an even number < d_model");
  Require(c.ffn_topk_fraction > 0 && c.ffn_topk_fraction < 1, "ffn_topk_fraction must be in (0, 1)");
  if (c.SparkAttn()) {
    Require(c.attn_predictor_dim < c.head_dim && c.attn_predictor_dim % 2 == 0 &&
                (c.head_dim - c.attn_predictor_dim) % 2 == 0,
            "attn_predictor_dim must be even and < head_dim");
  }
  Require(c.ffn_sparse_fraction >= 0 && c.ffn_sparse_fraction < 1, "ffn_sparse_fraction must be in [0, 1)");
  if (c.SparseFfn()) {
    Require(!c.SparkFfn(), "ffn_sparse_fraction and ffn_predictor_dim exclude each other");
    Require(c.ffn_sparse_quantiles.empty() || c.ffn_sparse_quantiles.size() == c.n_layers,
            "ffn_sparse_quantiles needs one entry per layer (or none)");
    for (float q : c.ffn_sparse_quantiles) Require(std::isfinite(q), "ffn_sparse_quantiles must be finite");
    Require(c.ffn_gate_rank < c.d_model && c.ffn_gate_rank < c.d_ff, "ffn_gate_rank must be < d_model and d_ff");
    Require(!c.SelectsByProduct() || c.ffn_gate_rank == 0,
            "ffn_select_by \"abs_act\" / \"sqrt_abs_act\" read the exact gate: ffn_gate_rank must be 0");
  } else {
    Require(c.ffn_sparse_quantiles.empty() && c.ffn_gate_rank == 0 && !c.ffn_select_weighted &&
                c.ffn_select_by == FfnSelect::kGate,
            "ffn_sparse_quantiles, ffn_gate_rank, ffn_select_weighted and ffn_select_by need ffn_sparse_fraction > 0");
  }
  if (c.SparseAttn()) {
    Require(!c.SparkAttn(), "attn_sparse_topk and attn_predictor_dim exclude each other");
    Require(c.attn_sparse_dim > 0 && c.attn_sparse_dim < c.head_dim, "attn_sparse_dim must be in (0, head_dim)");
  } else {
    Require(c.attn_sparse_dim == 0 && c.attn_sparse_recent == 0,
            "attn_sparse_dim and attn_sparse_recent need attn_sparse_topk > 0");
  }
  return c;
}

}  // namespace spark
