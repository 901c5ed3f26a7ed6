// ffn.cc: the feed-forward block of one layer, xn_ [T, d_model] -> tmp_ [T, d_model].
//   dense GeGLU: down . (gelu_tanh(gate . x) * (up . x)), chunk matmuls over all T tokens;
//   Spark FFN (docs/engine-file.md), per token:
//     s = K1 x[:r] (one chunk matmul for all T), theta = statistical top-k of s,
//     u_i = gelu_tanh(s_i - theta) * (K2[i] . x[r:]) for active i (vector-masked matvec),
//     y = sum_i u_i V[i] (tiled sparse vec-mat).
//   sparsified dense FFN (training-free, docs/engine-file.md): the same kernels with W_up in K2's
//   place (input all of x), W_down^T in V's, and GELU of the kept neurons' exact gate values.
//   For a chunk (T > 1) the active (token, neuron) pairs are regrouped by neuron so each K2 and
//   V row is read once per chunk, not once per token that activates it (ops/sparse_batch.h).
#include <algorithm>
#include <cmath>

#include "model/engine.h"
#include "ops/activation.h"
#include "ops/matvec.h"
#include "ops/sparse.h"
#include "ops/sparse_batch.h"
#include "ops/topk.h"

namespace spark {

void Engine::Ffn(size_t layer, size_t T) {
  const ModelConfig& c = config_;
  const LayerWeights& L = weights_.layers[layer];
  const size_t d = c.d_model, dff = c.d_ff;
  LayerStats& st = stats_[layer];
  st.ffn_tokens += static_cast<double>(T);

  if (!c.SparkFfn() && !c.SparseFfn()) {
    const MatRef* ws[2] = {&L.gate, &L.up};
    float* outs[2] = {ff_a_.get(), ff_b_.get()};
    MatMulMany(pool_, ws, outs, 2, xn_.get(), T);
    GeluMul(ff_a_.get(), ff_b_.get(), T * dff, ff_a_.get());
    MatMul(pool_, L.down, ff_a_.get(), T, tmp_.get());
    st.ffn_active += static_cast<double>(T * dff);
    return;
  }

  if (c.SparseFfn()) {
    SparseFfn(layer, T);
    return;
  }

  const size_t r = c.ffn_predictor_dim, rest = d - r;
  for (size_t t = 0; t < T; ++t) {
    const float* x = xn_.get() + t * d;
    std::copy(x, x + r, x1_.get() + t * r);
    std::copy(x + r, x + d, x2_.get() + t * rest);
  }
  MatMul(pool_, L.k1, x1_.get(), T, ff_a_.get());
  size_t total = 0;
  for (size_t t = 0; t < T; ++t) {
    const size_t n = StatisticalTopK(ff_a_.get() + t * dff, dff, ffn_q_, ffn_idx_.data() + t * dff,
                                     ffn_shift_.get() + t * dff).count;
    ffn_count_[t] = static_cast<int32_t>(n);
    total += n;
  }
  st.ffn_active += static_cast<double>(total);
  SparseFfnTail(&L.k2, x2_.get(), nullptr, L.v_ffn, T, total);
}

// Sparsified dense FFN (docs/engine-file.md): p = W_gate x, or the low-rank predictor
// gate_b (gate_a x); the score s_i is p_i, |gelu(p_i)|, |gelu(g_i) (W_up[i] . x)| or its square
// root, times c_i
// if the file has selection weights; keep s_i > theta_l = mean(s) + std(s) * Q_l;
// y = sum_kept gelu(W_gate[i] . x) (W_up[i] . x) W_down^T[i].
void Engine::SparseFfn(size_t layer, size_t T) {
  using Select = ModelConfig::FfnSelect;
  const ModelConfig& c = config_;
  const LayerWeights& L = weights_.layers[layer];
  const size_t dff = c.d_ff;
  const bool low_rank = c.ffn_gate_rank > 0;
  const Select by = c.ffn_select_by;
  const bool products = c.SelectsByProduct();
  if (products) {  // ff_a = gelu(g) * u, the products themselves
    const MatRef* ws[2] = {&L.gate, &L.up};
    float* outs[2] = {ff_a_.get(), ff_b_.get()};
    MatMulMany(pool_, ws, outs, 2, xn_.get(), T);
    GeluMul(ff_a_.get(), ff_b_.get(), T * dff, ff_a_.get());
  } else if (low_rank) {
    MatMul(pool_, L.gate_a, xn_.get(), T, ff_low_.get());
    MatMul(pool_, L.gate_b, ff_low_.get(), T, ff_a_.get());
  } else {
    MatMul(pool_, L.gate, xn_.get(), T, ff_a_.get());
  }
  size_t total = 0;
  for (size_t t = 0; t < T; ++t) {
    const float* p = ff_a_.get() + t * dff;
    const float* score = p;
    if (by != Select::kGate || L.select) {
      float* s = ff_b_.get() + t * dff;
      if (by == Select::kAbsGelu) {
        GeluTanh(p, dff, s);
      } else {
        std::copy(p, p + dff, s);
      }
      if (by == Select::kSqrtAbsAct) {
        for (size_t i = 0; i < dff; ++i) s[i] = std::sqrt(std::fabs(s[i]));
      } else if (by != Select::kGate) {
        for (size_t i = 0; i < dff; ++i) s[i] = std::fabs(s[i]);
      }
      if (L.select)
        for (size_t i = 0; i < dff; ++i) s[i] *= L.select[i];
      score = s;
    }
    int32_t* idx = ffn_idx_.data() + t * dff;
    const size_t n = StatisticalTopK(score, dff, sparse_ffn_q_[layer], idx, nullptr).count;
    // With the exact gate the kept neurons' gate values (or whole products) are already
    // computed: gather them.
    if (!low_rank) {
      float* g = ffn_shift_.get() + t * dff;
      for (size_t j = 0; j < n; ++j) g[j] = p[idx[j]];
    }
    ffn_count_[t] = static_cast<int32_t>(n);
    total += n;
  }
  stats_[layer].ffn_active += static_cast<double>(total);
  SparseFfnTail(products ? nullptr : &L.up, xn_.get(), low_rank ? &L.gate : nullptr,
                L.down_t, T, total);
}

void Engine::SparseFfnTail(const MatRef* w_in, const float* x_in, const MatRef* w_gate,
                           const MatRef& w_out, size_t T, size_t total) {
  const size_t d = config_.d_model, dff = config_.d_ff, cols = w_in ? w_in->cols : 0;
  // Per token, or grouped by neuron? When a layer's K2 and V fit well inside the last-level
  // cache, the per-token kernels read them from DRAM once (for the first tokens) and from cache
  // after, and measured ~2x faster than the grouped ones (bench/results/profile-ffn-2b.txt:
  // 16.5 vs 31.3 ms per 64-token chunk with a 300 MB L3); otherwise grouping reads each row once.
  const size_t bytes = (w_in ? w_in->Bytes() : 0) + w_out.Bytes() + (w_gate ? w_gate->Bytes() : 0);
  if (T == 1 || bytes <= chunk_sparse_cache_bytes_) {
    for (size_t t = 0; t < T; ++t) {
      const size_t n = static_cast<size_t>(ffn_count_[t]);
      const int32_t* idx = ffn_idx_.data() + t * dff;
      const float* x = x_in + t * cols;
      float* gate = ffn_shift_.get() + t * dff;
      if (!w_in) {  // the kept products are final already
        SparseVecMat(pool_, w_out, gate, idx, n, tmp_.get() + t * d);
        continue;
      }
      if (w_gate) MaskedMatVec(pool_, *w_gate, x, idx, n, gate);
      MaskedMatVec(pool_, *w_in, x, idx, n, ffn_u_.get());
      GeluMul(gate, ffn_u_.get(), n, ffn_u_.get());
      SparseVecMat(pool_, w_out, ffn_u_.get(), idx, n, tmp_.get() + t * d);
    }
    return;
  }

  // Regroup by neuron (counting sort; tokens stay ascending within a neuron).
  int32_t* offsets = csr_offsets_.data();
  std::fill(offsets, offsets + dff + 1, 0);
  for (size_t t = 0; t < T; ++t) {
    const int32_t* idx = ffn_idx_.data() + t * dff;
    for (int32_t j = 0; j < ffn_count_[t]; ++j) ++offsets[idx[j] + 1];
  }
  for (size_t i = 0; i < dff; ++i) offsets[i + 1] += offsets[i];
  // Write cursors: csr position of the next pair of each neuron (offsets[i] advanced in a copy).
  int32_t* cursor = csr_cursor_.data();
  std::copy(offsets, offsets + dff, cursor);
  for (size_t t = 0; t < T; ++t) {
    const int32_t* idx = ffn_idx_.data() + t * dff;
    const float* shift = ffn_shift_.get() + t * dff;
    for (int32_t j = 0; j < ffn_count_[t]; ++j) {
      const int32_t k = cursor[idx[j]]++;
      csr_tokens_[k] = static_cast<int32_t>(t);
      if (!w_gate) (w_in ? csr_shift_ : csr_u_)[k] = shift[j];
    }
  }
  if (w_in) {
    if (w_gate) CsrMaskedMatMul(pool_, *w_gate, x_in, T, offsets, csr_tokens_.data(), csr_shift_.get());
    CsrMaskedMatMul(pool_, *w_in, x_in, T, offsets, csr_tokens_.data(), csr_u_.get());
    GeluMul(csr_shift_.get(), csr_u_.get(), total, csr_u_.get());
  }
  CsrSparseMatMul(pool_, w_out, csr_u_.get(), offsets, csr_tokens_.data(), T, tmp_.get());
}

}  // namespace spark
