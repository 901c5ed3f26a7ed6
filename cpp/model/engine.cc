// engine.cc: loading, buffers, and the layer loop (Forward). Attention and FFN live in
// attention.cc and ffn.cc.
#include "model/engine.h"

#include <math.h>
#include <string.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <stdexcept>

#include "model/engine_file.h"
#include "ops/activation.h"
#include "ops/matvec.h"
#include "ops/norm.h"
#include "ops/sparse.h"
#include "ops/screen.h"
#include "ops/topk.h"
#include "util/checked.h"
#include "util/json.h"
#include "util/threading.h"
#include "weights/types.h"

namespace spark {
namespace {

hwy::AlignedFreeUniquePtr<float[]> Floats(size_t n) {
  auto p = hwy::AllocateAligned<float>(n ? n : 1);
  if (!p) throw std::bad_alloc();
  return p;
}

// Last-level cache size from sysfs (0 if unknown).
size_t LastLevelCacheBytes() {
  size_t best = 0;
  for (int i = 0; i < 8; ++i) {
    std::ifstream f("/sys/devices/system/cpu/cpu0/cache/index" + std::to_string(i) + "/size");
    std::string text;
    if (!(f >> text) || text.empty()) continue;
    size_t mult = 1;
    if (text.back() == 'K') mult = size_t{1} << 10;
    if (text.back() == 'M') mult = size_t{1} << 20;
    best = std::max(best, static_cast<size_t>(std::strtoull(text.c_str(), nullptr, 10)) * mult);
  }
  return best;
}

// Physical memory of this machine (0 if unknown).
size_t PhysicalMemoryBytes() {
  const long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGESIZE);
  return pages > 0 && page > 0 ? static_cast<size_t>(pages) * static_cast<size_t>(page) : 0;
}

std::string GiB(size_t bytes) {
  char buf[32];
  snprintf(buf, sizeof(buf), "%.1f GiB", static_cast<double>(bytes) / (1u << 30));
  return buf;
}

// Takes an engine's busy lock for one call, or throws EngineBusyError: a second caller never
// waits on (nor runs beside) the first.
class BusyGuard {
 public:
  explicit BusyGuard(std::mutex& mu) : lock_(mu, std::try_to_lock) {
    if (!lock_.owns_lock())
      throw EngineBusyError("the engine is busy: another thread is running it (one call at a time per engine)");
  }

 private:
  std::unique_lock<std::mutex> lock_;
};

double Now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// f32 copy of row r of an embedding matrix (any weight type), times scale.
void EmbeddingRow(const MatRef& m, size_t r, float scale, float* out) {
  DecodeRow(m, r, out);
  for (size_t c = 0; c < m.cols; ++c) out[c] *= scale;
}

}  // namespace

Engine::Engine(const std::string& path, size_t context_length, size_t max_chunk, WeightType kv_type, bool swa_full,
               bool use_mmap)
    : file_(path, use_mmap ? MappedFile::Access::kMap : MappedFile::Access::kRead), ctx_(context_length), pool_(PhysicalCores()),
      chunk_sparse_cache_bytes_(LastLevelCacheBytes() / 2) {
  config_ = ReadEngineConfig(file_);  // the one reader (model/engine_file.h)
  weights_ = ModelWeights::Load(file_, config_);
  if (context_length == 0) throw std::invalid_argument("context_length must be >= 1");
  if (context_length > (size_t{1} << 24)) throw std::invalid_argument("context_length is too large");
  if (max_chunk == 0) throw std::invalid_argument("max_chunk must be >= 1");
  if (kv_type != WeightType::kF32 && kv_type != WeightType::kBF16)
    throw std::invalid_argument(std::string("the KV cache holds f32 or bf16, not ") + WeightTypeName(kv_type));
  kv_.type = kv_type;  // CheckedBufferBytes counts the cache in this type
  max_chunk = std::min(max_chunk, ctx_);  // a chunk never holds more tokens than the context
  // Ring buffers for the sliding-window layers, where they save memory (kv_cache.h).
  const size_t window = config_.sliding_window;
  if (!swa_full && window > 0 && 2 * (window + max_chunk - 1) < ctx_) {
    ring_ = window + max_chunk - 1;
  }
  CheckedBufferBytes(max_chunk, static_cast<size_t>(pool_.MaxParts()));  // before any allocation
  if (config_.SparkFfn()) ffn_q_ = static_cast<float>(InvNormalCdf(1.0 - config_.ffn_topk_fraction));
  if (config_.SparseFfn()) {
    sparse_ffn_q_ = config_.ffn_sparse_quantiles;
    if (sparse_ffn_q_.empty())
      sparse_ffn_q_.assign(config_.n_layers, static_cast<float>(InvNormalCdf(1.0 - config_.ffn_sparse_fraction)));
  }
  kv_.Allocate(config_.n_layers, config_.n_kv_heads, config_.head_dim, config_.KeySplit(), ctx_, kv_type, KvRings());
  split_ = Floats(kSplitBelowItems * kSplitMaxBlocks * (config_.n_heads / config_.n_kv_heads) * (config_.head_dim + 2));
  iota_.resize(ctx_);
  for (size_t i = 0; i < ctx_; ++i) iota_[i] = static_cast<int32_t>(i);
  ffn_u_ = Floats(config_.d_ff);
  if (config_.lm_head_screen_margin > 0) {
    screen_on_ = true;
    screen_idx_.resize(config_.vocab_size);
    screen_exact_ = Floats(config_.vocab_size);
  }
  stats_.resize(config_.n_layers);
  AllocateActivations(max_chunk);
}

void Engine::set_threads(int n) {
  if (n < 1 || n > ThreadPool::kMaxThreads)
    throw std::invalid_argument("threads must be in [1, " + std::to_string(ThreadPool::kMaxThreads) + "], got " +
                                std::to_string(n));
  const BusyGuard busy(busy_);
  CheckedBufferBytes(T_, static_cast<size_t>(ThreadPool::MaxPartsFor(n)));
  pool_.set_threads(n);  // the scratch for its parts is added by the next Prefill
}

void Engine::set_chunk_sparse_cache_bytes(size_t b) {
  const BusyGuard busy(busy_);
  chunk_sparse_cache_bytes_ = b;
}

std::vector<size_t> Engine::KvRings() const {
  std::vector<size_t> ring(config_.n_layers, 0);
  for (size_t l = 0; l < config_.n_layers; ++l)
    if (config_.layer_is_local[l]) ring[l] = ring_;
  return ring;
}

void Engine::Reset() {
  const BusyGuard busy(busy_);
  pos_ = 0;
  ring_lo_ = 0;
}

size_t Engine::ReusablePrefix(size_t pos) const {
  pos = std::min(pos, pos_);
  // The next token (at pos) sees positions from pos + 1 - window on, in the local layers.
  const size_t window = config_.sliding_window;
  const size_t seen_from = pos + 1 > window ? pos + 1 - window : 0;
  return pos > 0 && seen_from < ring_lo_ ? 0 : pos;
}

size_t Engine::Rewind(size_t pos) {
  const BusyGuard busy(busy_);
  if (pos > pos_)
    throw std::invalid_argument("cannot rewind to position " + std::to_string(pos) + ": only " +
                                std::to_string(pos_) + " positions are cached");
  pos = ReusablePrefix(pos);
  if (pos == 0) ring_lo_ = 0;
  pos_ = pos;
  return pos;
}

size_t Engine::CheckedBufferBytes(size_t T, size_t parts) const {
  const ModelConfig& c = config_;
  const size_t d = c.d_model, hd = c.head_dim, H = c.n_heads, KV = c.n_kv_heads, dff = c.d_ff;
  const size_t group = H / KV, split = c.KeySplit();
  const bool sparse_ffn = c.SparkFfn() || c.SparseFfn();
  size_t words = 0;  // 4-byte floats and int32s
  auto add = [&](std::initializer_list<size_t> factors) {
    words = CheckedSum(words, CheckedProduct(factors, "engine buffers"), "engine buffers");
  };
  try {
    // Chunk activations (AllocateActivations).
    add({3, T, d});
    add({2, T, H, hd});
    add({2, T, KV, hd});
    add({c.SparkFfn() ? size_t{1} : size_t{2}, T, dff});
    add({T, c.ffn_predictor_dim + c.ffn_gate_rank});
    if (c.SparkFfn()) add({T, d - c.ffn_predictor_dim});
    if (sparse_ffn) add({5, T, dff});
    add({2, T, hd});
    // KV cache (in 4-byte words: bf16 is half), iota, split-attention partials, per-part
    // attention scratch (EnsureScratch).
    size_t rows = 0;
    for (size_t ring : KvRings()) rows = CheckedSum(rows, KVCache::RowsFor(ctx_, ring), "KV cache");
    const size_t kv = CheckedProduct({rows, KV, std::max<size_t>(split, 1) + 2 * hd - split,
                                      WeightTypeBytes(kv_.type)}, "KV cache");
    words = CheckedSum(words, kv / 4 + 1, "engine buffers");
    add({ctx_});
    add({kSplitBelowItems * kSplitMaxBlocks, group, hd + 2});
    const size_t blk_rows = group * AttnBlockTokens();  // s1; then s2, sel, idx
    add({parts, blk_rows + group + 2, ctx_});
    add({parts, 2 * blk_rows, hd});
    add({parts, (group + 1) * split + group * (hd - split)});
    add({3 * dff + 1});
    if (c.lm_head_screen_margin > 0) add({2, c.vocab_size});
  } catch (const std::overflow_error&) {
    throw std::invalid_argument("a context of " + std::to_string(ctx_) + " tokens with chunks of " + std::to_string(T) +
                                " tokens needs more memory than can be addressed");
  }
  const size_t bytes = CheckedProduct({words, 4}, "engine buffers");
  const size_t have = PhysicalMemoryBytes();
  if (have && bytes > have)
    throw std::invalid_argument("a context of " + std::to_string(ctx_) + " tokens with chunks of " + std::to_string(T) +
                                " tokens and " + std::to_string(parts) + " thread parts needs " + GiB(bytes) +
                                " of buffers (KV cache and activations), more than this machine's " + GiB(have) +
                                " of memory: use a smaller context_length or chunk_size");
  return bytes;
}

void Engine::AllocateActivations(size_t T) {
  const ModelConfig& c = config_;
  CheckedBufferBytes(T, scratch_.size());
  // Only growing, and T_ set last: a throw part-way leaves every buffer at least T_ tokens large.
  x_ = Floats(T * c.d_model);
  xn_ = Floats(T * c.d_model);
  tmp_ = Floats(T * c.d_model);
  q_ = Floats(T * c.n_heads * c.head_dim);
  att_ = Floats(T * c.n_heads * c.head_dim);
  k_ = Floats(T * c.n_kv_heads * c.head_dim);
  v_ = Floats(T * c.n_kv_heads * c.head_dim);
  ff_a_ = Floats(T * c.d_ff);
  ff_b_ = c.SparkFfn() ? Floats(1) : Floats(T * c.d_ff);
  x1_ = Floats(T * c.ffn_predictor_dim);
  x2_ = Floats(c.SparkFfn() ? T * (c.d_model - c.ffn_predictor_dim) : 1);
  ff_low_ = Floats(T * c.ffn_gate_rank);
  if (c.SparkFfn() || c.SparseFfn()) {
    ffn_idx_.resize(T * c.d_ff);  // resize: on bad_alloc the old vector stays
    ffn_count_.resize(T);
    ffn_shift_ = Floats(T * c.d_ff);
    csr_offsets_.resize(c.d_ff + 1);
    csr_cursor_.resize(c.d_ff);
    csr_tokens_.resize(T * c.d_ff);
    csr_shift_ = Floats(T * c.d_ff);
    csr_u_ = Floats(T * c.d_ff);
  }
  // RopeTables indexes by T_: both tables together, before T_ changes.
  auto cos = Floats(2 * T * c.head_dim / 2), sin = Floats(2 * T * c.head_dim / 2);
  rope_cos_ = std::move(cos);
  rope_sin_ = std::move(sin);
  T_ = T;
}

size_t Engine::AttnBlockTokens() const {
  const size_t group = config_.n_heads / config_.n_kv_heads;
  return config_.KeySplit() == 0 ? std::max<size_t>(1, kAttnBlockRows / group) : 1;
}

void Engine::EnsureScratch() {
  const size_t parts = static_cast<size_t>(pool_.MaxParts());
  if (scratch_.size() >= parts) return;
  CheckedBufferBytes(T_, parts);
  const size_t group = config_.n_heads / config_.n_kv_heads;
  const size_t split = config_.KeySplit();
  while (scratch_.size() < parts) {
    Scratch s;
    s.s1 = Floats(group * AttnBlockTokens() * ctx_);
    s.blk = Floats(2 * group * AttnBlockTokens() * config_.head_dim);
    s.q_pred = Floats((group + 1) * split);  // + the pooled query of sparsified attention
    s.q_rest = Floats(group * (config_.head_dim - split));
    s.sel = Floats(ctx_);
    s.s2 = Floats(group * ctx_);
    s.idx.resize(ctx_);
    scratch_.push_back(std::move(s));
  }
}

void Engine::Prefill(const int32_t* tokens, size_t n, size_t chunk, float* logits, bool all_logits) {
  const BusyGuard busy(busy_);
  if (n == 0) throw std::invalid_argument("no tokens to process");
  if (chunk == 0) throw std::invalid_argument("chunk must be >= 1");
  if (n > ctx_ - pos_)
    throw std::invalid_argument(std::to_string(n) + " tokens do not fit: " + std::to_string(pos_) +
                                " of the context of " + std::to_string(ctx_) + " are in use");
  for (size_t i = 0; i < n; ++i) {
    if (tokens[i] < 0 || static_cast<size_t>(tokens[i]) >= config_.vocab_size)
      throw std::invalid_argument("token id " + std::to_string(tokens[i]) + " at index " + std::to_string(i) +
                                  " is outside the vocabulary [0, " + std::to_string(config_.vocab_size) + ")");
  }
  chunk = std::min(chunk, n);  // so also <= the context: buffers never grow past what runs
  // The rings hold the window and one chunk of the size they were made for.
  if (ring_) chunk = std::min(chunk, ring_ + 1 - config_.sliding_window);
  EnsureScratch();
  if (chunk > T_) AllocateActivations(chunk);
  for (LayerStats& s : stats_) s = LayerStats();
  times_ = TimeBreakdown();
  screen_rescored_ = 0;
  for (size_t done = 0; done < n; done += chunk) {
    const size_t T = std::min(chunk, n - done);
    const bool last = done + T == n;
    float* out = all_logits ? logits + done * config_.vocab_size : (last ? logits : nullptr);
    Forward(tokens + done, T, out, all_logits);
  }
}

void Engine::RopeTables(size_t T) {
  const ModelConfig& c = config_;
  const size_t half = c.head_dim / 2, ra = c.attn_predictor_dim;
  for (int local = 0; local < 2; ++local) {
    const double base = local ? c.rope_base_local : c.rope_base_global;
    const double scale = local ? 1.0 : c.rope_scale_global;
    for (size_t t = 0; t < T; ++t) {
      const double p = static_cast<double>(pos_ + t) / scale;
      float* cs = rope_cos_.get() + (local * T_ + t) * half;
      float* sn = rope_sin_.get() + (local * T_ + t) * half;
      // Spark attention rotates [0, r_a) and [r_a, head_dim) on their own: two angle sets.
      if (ra) {
        RopeAngles(p, base, ra, cs, sn);
        RopeAngles(p, base, c.head_dim - ra, cs + ra / 2, sn + ra / 2);
      } else {
        RopeAngles(p, base, c.head_dim, cs, sn);
      }
    }
  }
}

void Engine::Forward(const int32_t* tokens, size_t T, float* logits, bool all_logits) {
  const ModelConfig& c = config_;
  const size_t d = c.d_model;
  double t0 = Now();
  const float embed_scale = sqrtf(static_cast<float>(d));
  for (size_t t = 0; t < T; ++t) EmbeddingRow(weights_.embed, tokens[t], embed_scale, x_.get() + t * d);
  RopeTables(T);
  double t1 = Now();
  times_.embed += t1 - t0;

  // Gemma's sandwich: x += post_norm(block(pre_norm(x))), for attention, then the FFN.
  auto add_normed = [&](const float* post_norm) {
    for (size_t t = 0; t < T; ++t) {
      float* x = x_.get() + t * d;
      float* y = tmp_.get() + t * d;
      RmsNorm(y, post_norm, d, c.norm_eps, y);
      for (size_t i = 0; i < d; ++i) x[i] += y[i];
    }
  };
  auto pre_norm = [&](const float* norm) {
    for (size_t t = 0; t < T; ++t) RmsNorm(x_.get() + t * d, norm, d, c.norm_eps, xn_.get() + t * d);
  };
  for (size_t l = 0; l < c.n_layers; ++l) {
    const LayerWeights& L = weights_.layers[l];
    t0 = Now();
    pre_norm(L.attn_norm);
    Attention(l, T);
    t1 = Now();
    times_.attention += t1 - t0;
    add_normed(L.attn_post_norm);
    pre_norm(L.ffn_norm);
    t0 = Now();
    times_.other += t0 - t1;
    Ffn(l, T);
    t1 = Now();
    times_.ffn += t1 - t0;
    add_normed(L.ffn_post_norm);
    times_.other += Now() - t1;
  }
  pos_ += T;
  if (ring_ && pos_ > ring_) ring_lo_ = std::max(ring_lo_, pos_ - ring_);  // rows overwritten

  if (logits == nullptr) return;
  t0 = Now();
  const size_t first = all_logits ? 0 : T - 1;
  const size_t rows = T - first;
  for (size_t t = first; t < T; ++t)
    RmsNorm(x_.get() + t * d, weights_.final_norm, d, c.norm_eps, xn_.get() + (t - first) * d);
  if (screen_on_) {
    ScreenedLogits(rows, logits);
  } else {
    MatMul(pool_, weights_.embed, xn_.get(), rows, logits);
    if (c.final_softcap > 0) SoftCap(logits, rows * c.vocab_size, c.final_softcap, logits);
  }
  times_.logits += Now() - t0;
}

void Engine::set_lm_head_screen(bool on) {
  BusyGuard guard(busy_);
  if (on && weights_.embed_screen.data == nullptr)
    throw std::invalid_argument("this model has no LM-head screen (lm_head_screen_margin is 0)");
  screen_on_ = on;
}

// The screen's rows cost 0.53 bytes a weight (screen4; int8 1.0, bf16 2.0), and the few logits that
// can matter, near the largest, are recomputed from the head itself: on real text (Gemma 3
// 270M) a few hundred (margin 10) to a few thousand (margin 14) of 262144 per token. A flat
// distribution (random ids) can put most of the vocabulary within the margin, so at most the
// kScreenMaxRescored largest are (ties at the last one kept; ScreenKept).
void Engine::ScreenedLogits(size_t rows, float* logits) {
  const ModelConfig& c = config_;
  const size_t V = c.vocab_size, d = c.d_model;
  // Each row with its own x quantization (prefill rows get the decode's scores), one pass over
  // the screen for all of them.
  ScreenScores(pool_, weights_.embed_screen, xn_.get(), rows, logits);
  if (c.final_softcap > 0) SoftCap(logits, rows * V, c.final_softcap, logits);
  int32_t* idx = screen_idx_.data();
  float* exact = screen_exact_.get();
  for (size_t r = 0; r < rows; ++r) {
    float* z = logits + r * V;
    const size_t n = ScreenKept(z, V, c.lm_head_screen_margin, kScreenMaxRescored, idx);
    MaskedMatVec(pool_, weights_.embed, xn_.get() + r * d, idx, n, exact);
    if (c.final_softcap > 0) SoftCap(exact, n, c.final_softcap, exact);
    for (size_t j = 0; j < n; ++j) z[idx[j]] = exact[j];
    screen_rescored_ += n;
  }
}

}  // namespace spark
