// weights.h: typed views of every tensor of an engine file, checked against the config
// (name, dtype, shape) before use. Views point into the memory map; nothing is copied.
#ifndef SPARK_MODEL_WEIGHTS_H_
#define SPARK_MODEL_WEIGHTS_H_

#include <stddef.h>

#include <vector>

#include "model/config.h"
#include "model/safetensors.h"
#include "weights/types.h"

namespace spark {

struct LayerWeights {
  const float* attn_norm = nullptr;       // [d_model]
  const float* attn_post_norm = nullptr;  // [d_model]
  const float* ffn_norm = nullptr;        // [d_model]
  const float* ffn_post_norm = nullptr;   // [d_model]
  const float* q_norm = nullptr;          // [head_dim], qk_norm only
  const float* k_norm = nullptr;          // [head_dim], qk_norm only
  MatRef q;         // [n_heads * head_dim, d_model]
  MatRef k, v;      // [n_kv_heads * head_dim, d_model]
  MatRef o;         // [d_model, n_heads * head_dim]
  MatRef gate, up;  // dense and sparsified FFN: [d_ff, d_model]
  MatRef down;      // dense FFN: [d_model, d_ff]
  MatRef down_t;    // sparsified FFN: [d_ff, d_model] neuron-major (down transposed)
  MatRef gate_a;    // sparsified FFN, ffn_gate_rank R > 0: [R, d_model]
  MatRef gate_b;    //   [d_ff, R]; the predictor p = gate_b (gate_a x)
  const float* select = nullptr;  // sparsified FFN, ffn_select_weighted: [d_ff]
  MatRef rot;       // sparsified attention: [n_kv_heads * head_dim, head_dim] f32, P per KV head
  MatRef k1;        // Spark FFN: [d_ff, r] neuron-major
  MatRef k2;        // Spark FFN: [d_ff, d_model - r] neuron-major
  MatRef v_ffn;     // Spark FFN: [d_ff, d_model] neuron-major
};

struct ModelWeights {
  MatRef embed;                       // [vocab, d_model], also the LM head
  ScreenRef embed_screen;             // lm_head_screen_margin > 0: embed's 4-bit screen (types.h)
  const float* final_norm = nullptr;  // [d_model]
  std::vector<LayerWeights> layers;
  size_t bytes = 0;                   // all weight bytes in use
  // The types of the matrices but token_embd, "+"-joined in WeightType order when they differ
  // (a quantized GGUF's mix, e.g. "int8+q4+q5"); token_embd's when there are no layers.
  std::string matrix_types;

  // Throws FormatError naming the tensor on any mismatch.
  static ModelWeights Load(const SafetensorsFile& file, const ModelConfig& config);
};

}  // namespace spark

#endif  // SPARK_MODEL_WEIGHTS_H_
