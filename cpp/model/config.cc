#include "model/config.h"

#include <cmath>

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
  if (!j.Has(key) || j.At(key).type() == Json::Type::kNull) return def;
  return j.At(key).Number(std::string("config.") + key);
}

void Require(bool ok, const std::string& msg) {
  if (!ok) throw FormatError("config: " + msg);
}

}  // namespace

ModelConfig ModelConfig::FromJson(const std::string& text) {
  const Json j = Json::Parse(text.data(), text.size());
  if (!j.IsObject()) throw FormatError("config: not a JSON object");
  ModelConfig c;
  c.arch = j.Has("arch") ? j.At("arch").String("config.arch") : "";
  c.vocab_size = Dim(j, "vocab_size");
  c.d_model = Dim(j, "d_model");
  c.n_layers = Dim(j, "n_layers");
  c.n_heads = Dim(j, "n_heads");
  c.n_kv_heads = Dim(j, "n_kv_heads");
  c.head_dim = Dim(j, "head_dim");
  c.d_ff = Dim(j, "d_ff");
  c.norm_eps = static_cast<float>(Real(j, "norm_eps", 1e-6));
  c.query_scale = static_cast<float>(Real(j, "query_scale", 1.0 / std::sqrt(double(c.head_dim))));
  c.attn_softcap = static_cast<float>(Real(j, "attn_softcap", 0.0));
  c.final_softcap = static_cast<float>(Real(j, "final_softcap", 0.0));
  c.qk_norm = j.Has("qk_norm") && j.At("qk_norm").Bool("config.qk_norm");
  c.sliding_window = j.Has("sliding_window") && j.At("sliding_window").type() != Json::Type::kNull
                         ? Dim(j, "sliding_window", true) : 0;
  c.rope_base_global = Real(j, "rope_base_global", 10000.0);
  c.rope_base_local = Real(j, "rope_base_local", c.rope_base_global);
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
    Require(by == "gate" || by == "abs_gelu" || by == "abs_act",
            "ffn_select_by must be \"gate\", \"abs_gelu\" or \"abs_act\", got \"" + by + "\"");
    c.ffn_select_by = by == "gate" ? FfnSelect::kGate : by == "abs_gelu" ? FfnSelect::kAbsGelu : FfnSelect::kAbsAct;
  }
  c.attn_sparse_topk = j.Has("attn_sparse_topk") ? Dim(j, "attn_sparse_topk", true) : 0;
  c.attn_sparse_dim = j.Has("attn_sparse_dim") ? Dim(j, "attn_sparse_dim", true) : 0;
  c.attn_sparse_recent = j.Has("attn_sparse_recent") ? Dim(j, "attn_sparse_recent", true) : 0;

  if (j.Has("layer_types")) {
    for (const Json& t : j.At("layer_types").Array("config.layer_types")) {
      const std::string& s = t.String("config.layer_types[]");
      Require(s == "local" || s == "global", "layer_types entries must be \"local\" or \"global\", got \"" + s + "\"");
      c.layer_is_local.push_back(s == "local");
    }
  } else {
    c.layer_is_local.assign(c.n_layers, false);
  }

  Require(c.layer_is_local.size() == c.n_layers, "layer_types has " + std::to_string(c.layer_is_local.size()) +
                                                     " entries for " + std::to_string(c.n_layers) + " layers");
  Require(c.n_heads % c.n_kv_heads == 0, "n_heads must be a multiple of n_kv_heads");
  Require(c.head_dim % 2 == 0, "head_dim must be even (RoPE rotates pairs)");
  Require(c.norm_eps > 0 && std::isfinite(c.norm_eps), "norm_eps must be > 0");
  Require(c.query_scale > 0, "query_scale must be > 0");
  Require(c.attn_softcap >= 0 && c.final_softcap >= 0, "soft-caps must be >= 0");
  Require(c.rope_base_global > 1 && c.rope_base_local > 1, "RoPE bases must be > 1");
  Require(c.rope_scale_global > 0, "rope_scale_global must be > 0");
  for (bool local : c.layer_is_local) {
    Require(!local || c.sliding_window > 0, "local layers need sliding_window > 0");
  }
  if (c.SparkFfn()) {
    Require(c.ffn_predictor_dim < c.d_model, "ffn_predictor_dim must be < d_model");
    Require(c.ffn_topk_fraction > 0 && c.ffn_topk_fraction < 1, "ffn_topk_fraction must be in (0, 1)");
  }
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
    Require(c.ffn_select_by != FfnSelect::kAbsAct || c.ffn_gate_rank == 0,
            "ffn_select_by \"abs_act\" reads the exact gate: ffn_gate_rank must be 0");
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
