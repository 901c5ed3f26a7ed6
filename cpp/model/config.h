// config.h: the model config (docs/engine-file.md), parsed from the engine file's JSON and
// validated before any buffer is sized from it.
#ifndef SPARK_MODEL_CONFIG_H_
#define SPARK_MODEL_CONFIG_H_

#include <stddef.h>

#include <string>
#include <vector>

namespace spark {

struct ModelConfig {
  std::string arch;
  size_t vocab_size = 0, d_model = 0, n_layers = 0, n_heads = 0, n_kv_heads = 0, head_dim = 0,
         d_ff = 0;
  float norm_eps = 1e-6f;
  float query_scale = 1.0f;
  float attn_softcap = 0.0f;   // 0: none
  float final_softcap = 0.0f;  // 0: none
  // > 0: the LM head is screened (docs/engine-file.md, "The screened LM head"): logits from the
  // q4 copy token_embd_screen, those within this margin of the largest recomputed exactly.
  float lm_head_screen_margin = 0.0f;
  bool qk_norm = false;
  std::vector<bool> layer_is_local;  // [n_layers]
  size_t sliding_window = 0;
  double rope_base_global = 10000.0, rope_base_local = 10000.0, rope_scale_global = 1.0;
  size_t ffn_predictor_dim = 0;  // 0: dense GeGLU FFN
  float ffn_topk_fraction = 0.08f;
  size_t attn_predictor_dim = 0;  // 0: dense attention
  size_t attn_topk = 256;
  // Sparsified dense FFN (training-free, docs/engine-file.md): 0 = off.
  float ffn_sparse_fraction = 0.0f;
  std::vector<float> ffn_sparse_quantiles;  // [n_layers] Q_l, or empty: Q(1 - fraction) for all
  size_t ffn_gate_rank = 0;                 // 0: select on the exact gate; R: on B (A x)
  bool ffn_select_weighted = false;         // selection score times c_i (tensor ffn_select)
  // What the sparsified FFN ranks neurons by: p (the gate, or its predictor), |gelu(p)|,
  // |gelu(g) * (W_up x)| (the whole product; needs the dense gate and up, only down is sparse),
  // or the square root of that product's magnitude (same order, a less heavy-tailed score for
  // the statistical threshold). Names as in the file: kFfnSelectNames.
  enum class FfnSelect { kGate, kAbsGelu, kAbsAct, kSqrtAbsAct };
  static constexpr const char* kFfnSelectNames[] = {"gate", "abs_gelu", "abs_act", "sqrt_abs_act"};
  FfnSelect ffn_select_by = FfnSelect::kGate;
  // The selection scores are the whole products gelu(g) * u (gate and up read whole).
  bool SelectsByProduct() const {
    return ffn_select_by == FfnSelect::kAbsAct || ffn_select_by == FfnSelect::kSqrtAbsAct;
  }
  // Sparsified dense attention (rotated keys, pooled predictor): attn_sparse_topk 0 = off.
  size_t attn_sparse_topk = 0, attn_sparse_dim = 0, attn_sparse_recent = 0;
  // Special token ids (the engine runs ids; these are for the caller).
  size_t bos_id = 2, eos_id = 1, pad_id = 0, start_of_turn_id = 105, end_of_turn_id = 106;

  bool SparkFfn() const { return ffn_predictor_dim > 0; }
  bool SparkAttn() const { return attn_predictor_dim > 0; }
  bool SparseFfn() const { return ffn_sparse_fraction > 0; }
  bool SparseAttn() const { return attn_sparse_topk > 0; }
  // Keys are cached split at this dim (predictor part, rest); 0 for dense attention.
  size_t KeySplit() const { return SparkAttn() ? attn_predictor_dim : attn_sparse_dim; }

  // Throws FormatError naming the field. Required fields, defaults and rules: docs/engine-file.md.
  static ModelConfig FromJson(const std::string& json);
};

}  // namespace spark

#endif  // SPARK_MODEL_CONFIG_H_
