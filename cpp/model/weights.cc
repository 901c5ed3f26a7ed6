#include "model/weights.h"

#include <set>
#include <string>

#include "util/json.h"

namespace spark {
namespace {

std::string ShapeStr(const std::vector<size_t>& s) {
  std::string out = "[";
  for (size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
  return out + "]";
}

class Loader {
 public:
  explicit Loader(const SafetensorsFile& f) : f_(f) {}

  const TensorInfo& Checked(const std::string& name, const std::vector<size_t>& shape) {
    const TensorInfo& t = f_.Get(name);
    used_.insert(name);
    if (t.shape != shape)
      throw FormatError(f_.path() + ": tensor '" + name + "' has shape " + ShapeStr(t.shape) +
                        ", the config needs " + ShapeStr(shape));
    bytes_ += t.bytes;
    return t;
  }

  const float* Vector(const std::string& name, size_t n) {
    const TensorInfo& t = Checked(name, {n});
    if (t.dtype != "F32") throw FormatError(f_.path() + ": tensor '" + name + "' must be F32, got " + t.dtype);
    return reinterpret_cast<const float*>(t.data);
  }

  MatRef Matrix(const std::string& name, size_t rows, size_t cols) {
    // q4 and q5 are stored as U8 [rows, cols / 32 * 20 or 22] (their blocks; the row bytes tell
    // which), every other type as [rows, cols].
    const TensorInfo& info = f_.Get(name);
    MatRef m;
    m.rows = rows;
    m.cols = cols;
    size_t stored_cols = cols;
    if (info.dtype == "U8") {
      const size_t row_bytes = info.shape.size() == 2 ? info.shape[1] : 0;
      if (!BlockTypeOfRowBytes(cols, row_bytes, &m.type))
        throw FormatError(f_.path() + ": tensor '" + name + "' is U8 (q4 or q5 blocks) of shape " +
                          ShapeStr(info.shape) + ", but rows of " + std::to_string(cols) + " weights need " +
                          (cols % kQ4Group != 0
                               ? std::string("a multiple of 32 weights")
                               : std::to_string(RowBytes(WeightType::kQ4, cols)) + " (q4) or " +
                                     std::to_string(RowBytes(WeightType::kQ5, cols)) + " (q5) bytes"));
      stored_cols = RowBytes(m.type, cols);
    } else if (!WeightTypeFromDtype(info.dtype, &m.type)) {
      throw FormatError(f_.path() + ": tensor '" + name + "' has dtype " + info.dtype +
                        "; matrices must be F32, BF16, I8 or U8 (q4 / q5)");
    }
    const TensorInfo& t = Checked(name, {rows, stored_cols});
    m.data = t.data;
    if (m.type == WeightType::kI8) m.scale = Scale(name + ".scale", rows);
    if (name != "token_embd") types_.insert(m.type);
    return m;
  }

  // An F32 matrix that is not a weight of the matrix dtype (e.g. attention rotations).
  MatRef F32Matrix(const std::string& name, size_t rows, size_t cols) {
    const TensorInfo& t = Checked(name, {rows, cols});
    if (t.dtype != "F32") throw FormatError(f_.path() + ": tensor '" + name + "' must be F32, got " + t.dtype);
    MatRef m;
    m.data = t.data;
    m.rows = rows;
    m.cols = cols;
    return m;
  }

  // The LM-head screen: U8 [tiles, tile bytes] in the screen4 layout (weights/types.h). Files
  // from before that layout hold q4 rows [rows, cols / 32 * 20] here: refused by shape.
  ScreenRef Screen(const std::string& name, size_t rows, size_t cols) {
    ScreenRef s;
    s.rows = rows;
    s.cols = cols;
    if (cols % kScreenGroup != 0)
      throw FormatError(f_.path() + ": the LM-head screen needs d_model a multiple of " +
                        std::to_string(kScreenGroup) + ", got " + std::to_string(cols));
    const TensorInfo& info = f_.Get(name);
    const std::vector<size_t> shape = {s.Tiles(), s.TileBytes()};
    if (info.dtype != "U8" || info.shape != shape)
      throw FormatError(f_.path() + ": tensor '" + name + "' must be U8 " + ShapeStr(shape) +
                        " (the screen4 layout), got " + info.dtype + " " + ShapeStr(info.shape) +
                        "; a file converted before that layout: convert the model again");
    s.data = static_cast<const uint8_t*>(Checked(name, shape).data);
    return s;
  }

  // The I8 companion `<name>.scale`: F32 [rows].
  const float* Scale(const std::string& name, size_t rows) {
    const TensorInfo& t = f_.Get(name);
    if (t.dtype != "F32" || t.shape != std::vector<size_t>{rows})
      throw FormatError(f_.path() + ": tensor '" + name + "' must be F32 [" + std::to_string(rows) + "], got " +
                        t.dtype + " " + ShapeStr(t.shape));
    return Vector(name, rows);
  }

  // A tensor the config's table does not name is a FormatError (a writer bug or another format).
  void CheckNothingElse() const {
    for (const auto& [name, info] : f_.tensors()) {
      if (!used_.count(name))
        throw FormatError(f_.path() + ": tensor '" + name + "' is not in the table for this config");
    }
  }

  size_t bytes() const { return bytes_; }
  const std::set<WeightType>& types() const { return types_; }

 private:
  const SafetensorsFile& f_;
  size_t bytes_ = 0;
  std::set<std::string> used_;
  std::set<WeightType> types_;  // of the matrices but token_embd (and its screen)
};

}  // namespace

ModelWeights ModelWeights::Load(const SafetensorsFile& file, const ModelConfig& c) {
  Loader ld(file);
  ModelWeights w;
  const size_t d = c.d_model, hd = c.head_dim;
  w.embed = ld.Matrix("token_embd", c.vocab_size, d);
  if (c.lm_head_screen_margin > 0) w.embed_screen = ld.Screen("token_embd_screen", c.vocab_size, d);
  w.final_norm = ld.Vector("output_norm", d);
  for (size_t i = 0; i < c.n_layers; ++i) {
    const std::string p = "blk." + std::to_string(i) + ".";
    LayerWeights L;
    L.attn_norm = ld.Vector(p + "attn_norm", d);
    L.attn_post_norm = ld.Vector(p + "attn_post_norm", d);
    L.ffn_norm = ld.Vector(p + "ffn_norm", d);
    L.ffn_post_norm = ld.Vector(p + "ffn_post_norm", d);
    if (c.qk_norm) {
      L.q_norm = ld.Vector(p + "attn_q_norm", hd);
      L.k_norm = ld.Vector(p + "attn_k_norm", hd);
    }
    L.q = ld.Matrix(p + "attn_q", c.n_heads * hd, d);
    L.k = ld.Matrix(p + "attn_k", c.n_kv_heads * hd, d);
    L.v = ld.Matrix(p + "attn_v", c.n_kv_heads * hd, d);
    L.o = ld.Matrix(p + "attn_output", d, c.n_heads * hd);
    if (c.SparkFfn()) {
      const size_t r = c.ffn_predictor_dim;
      L.k1 = ld.Matrix(p + "ffn_k1", c.d_ff, r);
      L.k2 = ld.Matrix(p + "ffn_k2", c.d_ff, d - r);
      L.v_ffn = ld.Matrix(p + "ffn_v", c.d_ff, d);
    } else if (c.SparseFfn()) {
      L.gate = ld.Matrix(p + "ffn_gate", c.d_ff, d);
      L.up = ld.Matrix(p + "ffn_up", c.d_ff, d);
      L.down_t = ld.Matrix(p + "ffn_down_t", c.d_ff, d);
      if (c.ffn_gate_rank) {
        L.gate_a = ld.Matrix(p + "ffn_gate_a", c.ffn_gate_rank, d);
        L.gate_b = ld.Matrix(p + "ffn_gate_b", c.d_ff, c.ffn_gate_rank);
      }
      if (c.ffn_select_weighted) L.select = ld.Vector(p + "ffn_select", c.d_ff);
    } else {
      L.gate = ld.Matrix(p + "ffn_gate", c.d_ff, d);
      L.up = ld.Matrix(p + "ffn_up", c.d_ff, d);
      L.down = ld.Matrix(p + "ffn_down", d, c.d_ff);
    }
    if (c.SparseAttn()) L.rot = ld.F32Matrix(p + "attn_rot", c.n_kv_heads * hd, hd);
    w.layers.push_back(L);
  }
  ld.CheckNothingElse();
  for (WeightType t : ld.types()) w.matrix_types += (w.matrix_types.empty() ? "" : "+") + std::string(WeightTypeName(t));
  if (w.matrix_types.empty()) w.matrix_types = WeightTypeName(w.embed.type);
  w.bytes = ld.bytes();
  return w;
}

}  // namespace spark
