// engine.h: a whole Gemma 2 / Gemma 3 transformer, dense or Spark, over a memory-mapped engine
// file. Activations and the KV cache are allocated once at load; Prefill runs chunks of T tokens
// (each weight row loaded once per chunk), Decode one token. The engine holds no Python objects.
#ifndef SPARK_MODEL_ENGINE_H_
#define SPARK_MODEL_ENGINE_H_

#include <stddef.h>
#include <stdint.h>

#include <map>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <vector>

#include "hwy/aligned_allocator.h"
#include "model/config.h"
#include "model/kv_cache.h"
#include "model/safetensors.h"
#include "model/weights.h"
#include "util/threading.h"

namespace spark {

// Sparsity actually used by the last Prefill/Decode call, per layer.
struct LayerStats {
  double ffn_active = 0;     // sum over tokens of active FFN neurons
  double ffn_tokens = 0;     // tokens
  double attn_attended = 0;  // sum over (token, query head) of attended tokens
  double attn_queries = 0;   // (token, query head) pairs
};

// Wall time of the last call per component, seconds (for the benchmark's breakdown).
struct TimeBreakdown {
  double embed = 0, attention = 0, ffn = 0, logits = 0, other = 0;
};

// A call that changes an engine's state while another thread is inside one (the Python
// bindings release the GIL). Bound to Python as spark_infer._core.EngineBusyError (RuntimeError).
class EngineBusyError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

class Engine {
 public:
  // Throws FormatError (bad file), std::invalid_argument (bad argument, missing file, buffers
  // larger than the machine's memory). max_chunk above context_length is cut to it. Threads:
  // PhysicalCores() until set_threads.
  // kv_type: the KV cache's element type, kBF16 (default) or kF32. swa_full: no ring buffers.
  // use_mmap: map the file instead of reading it into huge pages (util/huge_pages.h).
  Engine(const std::string& path, size_t context_length, size_t max_chunk = 64,
         WeightType kv_type = WeightType::kBF16, bool swa_full = false, bool use_mmap = false);

  const ModelConfig& config() const { return config_; }
  const std::map<std::string, std::string>& metadata() const { return file_.metadata(); }
  size_t context_length() const { return ctx_; }
  size_t pos() const { return pos_; }
  size_t weight_bytes() const { return weights_.bytes; }
  size_t kv_bytes() const { return kv_.Bytes(); }
  WeightType kv_type() const { return kv_.type; }
  const std::string& matrix_types() const { return weights_.matrix_types; }
  size_t max_chunk() const { return T_; }
  int threads() const { return pool_.threads(); }
  // n in [1, ThreadPool::kMaxThreads]; std::invalid_argument otherwise.
  void set_threads(int n);

  // Every call below that changes state throws EngineBusyError while another thread is inside
  // one of them: one caller at a time, never a wait.
  void Reset();
  // Keeps the cache for positions < pos and returns pos; or, when a sliding-window layer's ring
  // has since overwritten a position that continuing at pos would see, empties the cache and
  // returns 0 (the caller prefills from the start). pos > pos() is std::invalid_argument.
  size_t Rewind(size_t pos);
  // What Rewind(pos) would keep, without changing anything (pos above pos() counts as pos()).
  size_t ReusablePrefix(size_t pos) const;
  // Rows of the sliding-window layers' ring buffers (0: every layer keeps the whole context).
  size_t kv_ring_rows() const { return ring_; }

  // Runs tokens at positions pos().. in chunks of `chunk` (<= max_chunk of the constructor is not
  // required: larger chunks grow the buffers, up to n; with ring buffers chunks are cut to the
  // constructor's max_chunk, which the rings are sized for). logits: [n, vocab] if all_logits, else
  // [vocab] for the last token. Throws std::invalid_argument on a bad token, a context overflow
  // or buffers that would not fit in memory, before touching any state.
  void Prefill(const int32_t* tokens, size_t n, size_t chunk, float* logits, bool all_logits);
  void Decode(int32_t token, float* logits) { Prefill(&token, 1, 1, logits, false); }

  // Spark FFN prefill: a layer whose K2 + V take at most this many bytes runs the per-token
  // kernels, a larger one the neuron-grouped ones (default: half the last-level cache).
  size_t chunk_sparse_cache_bytes() const { return chunk_sparse_cache_bytes_; }
  void set_chunk_sparse_cache_bytes(size_t b);

  // The screened LM head (lm_head_screen_margin > 0, docs/engine-file.md) is on by default;
  // off, every logit comes from token_embd. Turning it on without a screen in the file is
  // std::invalid_argument.
  bool lm_head_screen() const { return screen_on_; }
  void set_lm_head_screen(bool on);
  // Logits the screened head recomputed exactly in the last Prefill / Decode (all its rows).
  size_t screen_rescored() const { return screen_rescored_; }

  const std::vector<LayerStats>& stats() const { return stats_; }
  const TimeBreakdown& times() const { return times_; }

 private:
  // Grows the chunk buffers to T tokens (T > T_) and the per-part scratch to the pool's parts.
  // On any failure (too large, allocation) the engine stays as it was: sizes are checked first,
  // and every buffer is either the old one or a larger new one until T_ is set last.
  void AllocateActivations(size_t T);
  // logits [rows, vocab] of xn_'s first rows, through the screen (see lm_head_screen()).
  // At most this many logits per row are recomputed (docs/engine-file.md).
  static constexpr size_t kScreenMaxRescored = 4096;
  void ScreenedLogits(size_t rows, float* logits);
  void EnsureScratch();
  // Bytes of the buffers for chunks of T tokens and `parts` scratch parts, KV cache included;
  // std::invalid_argument if they overflow or exceed the machine's memory.
  size_t CheckedBufferBytes(size_t T, size_t parts) const;
  std::vector<size_t> KvRings() const;  // per layer: ring_ for a sliding-window layer, else 0
  void Forward(const int32_t* tokens, size_t T, float* logits, bool all_logits);
  void RopeTables(size_t T);
  void Attention(size_t layer, size_t T);
  void Ffn(size_t layer, size_t T);
  void SparseFfn(size_t layer, size_t T);
  // The shared tail of the Spark and sparsified FFNs, once ffn_idx_/ffn_count_ hold each token's
  // active neurons: u = gelu(gate value) * (w_in[i] . x_in), out = sum u_i w_out[i] into tmp_.
  // Gate values are ffn_shift_ ([T, d_ff], per active entry), or with w_gate the products
  // w_gate[i] . x_in of the active rows. Without w_in, ffn_shift_ holds the final u.
  void SparseFfnTail(const MatRef* w_in, const float* x_in, const MatRef* w_gate,
                     const MatRef& w_out, size_t T, size_t total);
  void RotatedAttention(size_t layer, size_t T);
  void SplitAttention(size_t layer, size_t T);
  void BlockedAttention(size_t layer, size_t T);
  // Dense attention over a chunk (BlockedAttention) takes blocks of tokens whose query heads of
  // one KV head number at most kAttnBlockRows, so each cached key and value is read once per
  // block rather than once per token. AttnBlockTokens: tokens per block (1 without dense
  // attention, which has no blocks).
  static constexpr size_t kAttnBlockRows = 64;
  size_t AttnBlockTokens() const;
  // Dense attention splits the visible tokens (SplitAttention) when a call has fewer than this
  // many (token, KV head) pairs: enough items for 16 threads without splitting.
  static constexpr size_t kSplitBelowItems = 16;
  static constexpr size_t kSplitBlockTokens = 128;  // at least this many tokens per block
  static constexpr size_t kSplitMaxBlocks = 64;     // at most this many blocks per pair

  SafetensorsFile file_;
  ModelConfig config_;
  ModelWeights weights_;
  KVCache kv_;
  size_t ctx_;
  size_t pos_ = 0;
  // Sliding-window layers keep a ring of ring_ = window + max_chunk - 1 rows when twice that
  // is less than the context (else ring_ = 0: no rings). Positions [ring_lo_, pos_) are intact
  // in the rings (older rows were overwritten).
  size_t ring_ = 0, ring_lo_ = 0;
  ThreadPool pool_;   // this engine's threads; the kernels get it passed down
  std::mutex busy_;   // held by the one caller inside a state-changing call
  float ffn_q_ = 0;                // Spark FFN: Q(1 - ffn_topk_fraction)
  std::vector<float> sparse_ffn_q_;  // sparsified FFN: Q_l per layer
  size_t chunk_sparse_cache_bytes_;

  // Activations for a chunk of up to T_ tokens.
  size_t T_ = 0;
  hwy::AlignedFreeUniquePtr<float[]> x_, xn_, tmp_;        // [T, d_model]
  hwy::AlignedFreeUniquePtr<float[]> q_, k_, v_, att_;     // [T, heads * head_dim]
  hwy::AlignedFreeUniquePtr<float[]> ff_a_, ff_b_;         // [T, d_ff]
  hwy::AlignedFreeUniquePtr<float[]> x1_, x2_;             // Spark FFN: [T, r], [T, d - r]
  hwy::AlignedFreeUniquePtr<float[]> ff_low_;              // sparsified FFN: [T, ffn_gate_rank]
  hwy::AlignedFreeUniquePtr<float[]> rope_cos_, rope_sin_;  // [2 (global, local)][T][head_dim/2]
  std::vector<int32_t> ffn_idx_;                           // [T, d_ff] active neurons per token
  std::vector<int32_t> ffn_count_;                         // [T] active count per token
  std::vector<int32_t> csr_offsets_;                       // [d_ff + 1] chunk: tokens per neuron
  std::vector<int32_t> csr_cursor_;                        // [d_ff] write cursors
  std::vector<int32_t> csr_tokens_;                        // [T * d_ff]
  hwy::AlignedFreeUniquePtr<float[]> csr_shift_, csr_u_;   // [T * d_ff]
  hwy::AlignedFreeUniquePtr<float[]> ffn_shift_, ffn_u_;   // [T, d_ff], [d_ff]
  std::vector<int32_t> iota_;                              // [ctx]: 0, 1, 2, ...
  bool screen_on_ = false;
  size_t screen_rescored_ = 0;
  std::vector<int32_t> screen_idx_;                        // [vocab] logits to recompute
  hwy::AlignedFreeUniquePtr<float[]> screen_exact_;        // [vocab] their exact values
  // SplitAttention's partial results: [kSplitBelowItems, kSplitMaxBlocks, group * (hd + 2)].
  hwy::AlignedFreeUniquePtr<float[]> split_;

  // Per-part attention scratch: s1 [query heads per KV head x AttnBlockTokens(), ctx], s2 [query
  // heads per KV head, ctx], sel [ctx], q_pred [query heads per KV head, r_a], q_rest [query
  // heads per KV head, head_dim - r_a], blk [2, query heads per KV head x AttnBlockTokens(),
  // head_dim] (a block's queries and outputs).
  struct Scratch {
    hwy::AlignedFreeUniquePtr<float[]> s1, sel, s2, q_pred, q_rest, blk;
    std::vector<int32_t> idx;
  };
  std::vector<Scratch> scratch_;

  std::vector<LayerStats> stats_;
  TimeBreakdown times_;
};

}  // namespace spark

#endif  // SPARK_MODEL_ENGINE_H_
