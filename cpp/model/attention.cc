// attention.cc: QKV projections, QK-norm, RoPE, the KV-cache write, and per-(token, head)
// attention: dense softmax attention, or Spark attention (docs/engine-file.md):
//   s1_j = q[:r_a] . k_j[:r_a] (q already times query_scale; soft-capped if the model has one);
//   n <= attn_topk: keep all visible tokens; else statistical top-k over s1 with k/n;
//   w_j = softmax_S(s1)_j * softplus(q[r_a:] . k_j[r_a:]);  out = sum_{j in S} w_j v_j.
// Sparsified attention (training-free, docs/engine-file.md) rotates q and k by a per-KV-head
// orthogonal P after RoPE and keeps a pooled top-k of tokens (RotatedAttention).
// Threads split the (token, query head) pairs; each pair reads its KV head's cache only.
#include <math.h>

#include <algorithm>

#include "model/engine.h"
#include "ops/activation.h"
#include "ops/matvec.h"
#include "ops/norm.h"
#include "ops/sparse.h"
#include "ops/sparse_batch.h"
#include "ops/topk.h"
#include "util/threading.h"

namespace spark {

void Engine::Attention(size_t layer, size_t T) {
  const ModelConfig& c = config_;
  const LayerWeights& L = weights_.layers[layer];
  const size_t d = c.d_model, hd = c.head_dim, H = c.n_heads, KV = c.n_kv_heads;
  // ra: where cached keys split (Spark: also where RoPE splits; sparsified: after rotation).
  const size_t ra = c.KeySplit(), rb = hd - ra, group = H / KV;
  const bool spark = c.SparkAttn();
  const bool local = c.layer_is_local[layer];
  const size_t half = hd / 2;

  const MatRef* ws[3] = {&L.q, &L.k, &L.v};
  float* outs[3] = {q_.get(), k_.get(), v_.get()};
  MatMulMany(pool_, ws, outs, 3, xn_.get(), T);

  // QK-norm, RoPE (each part on its own), query scale; then append k, v to the cache.
  const float* cos_all = rope_cos_.get() + (local ? T_ : 0) * half;
  const float* sin_all = rope_sin_.get() + (local ? T_ : 0) * half;
  auto rotate = [&](float* head, size_t t) {
    const float* cs = cos_all + t * half;
    const float* sn = sin_all + t * half;
    if (spark) {
      Rope(head, ra, cs, sn);
      Rope(head + ra, rb, cs + ra / 2, sn + ra / 2);
    } else {
      Rope(head, hd, cs, sn);
    }
  };
  // Sparsified attention: x <- P_g x for the rows of q or k of KV head g (q.k is unchanged, and
  // the first r_a rotated dims carry most of it). rows: [n <= group, hd] in place, through att_
  // (free until the work items below fill it).
  auto project = [&](size_t g, float* rows, size_t n) {
    const MatRef P{static_cast<const float*>(L.rot.data) + g * hd * hd, nullptr, WeightType::kF32, hd, hd};
    float* tmp = att_.get();
    MatMulRange(P, rows, n, tmp, hd, 0, hd);
    std::copy(tmp, tmp + n * hd, rows);
  };
  for (size_t t = 0; t < T; ++t) {
    for (size_t h = 0; h < H; ++h) {
      float* qh = q_.get() + (t * H + h) * hd;
      if (L.q_norm) RmsNorm(qh, L.q_norm, hd, c.norm_eps, qh);
      rotate(qh, t);
      for (size_t i = 0; i < hd; ++i) qh[i] *= c.query_scale;
    }
    if (c.SparseAttn())
      for (size_t g = 0; g < KV; ++g) project(g, q_.get() + (t * H + g * group) * hd, group);
    for (size_t g = 0; g < KV; ++g) {
      float* kh = k_.get() + (t * KV + g) * hd;
      if (L.k_norm) RmsNorm(kh, L.k_norm, hd, c.norm_eps, kh);
      rotate(kh, t);
      if (c.SparseAttn()) project(g, kh, 1);
      kv_.Store(layer, g, pos_ + t, kh, v_.get() + (t * KV + g) * hd);
    }
  }

  if (c.SparseAttn()) {
    RotatedAttention(layer, T);
    MatMul(pool_, L.o, att_.get(), T, tmp_.get());
    return;
  }

  if (!ra) {
    if (T * KV < kSplitBelowItems) {
      SplitAttention(layer, T);
    } else {
      BlockedAttention(layer, T);
    }
    MatMul(pool_, L.o, att_.get(), T, tmp_.get());
    return;
  }

  // Spark attention. Work items: (token, KV head, sub-group of its query heads). The heads of a
  // sub-group share one pass over the cached predictor keys, so GQA reads them once per item
  // instead of once per query head. Sub-groups shrink only while there are fewer than
  // kMinAttentionItems items (decode of a single-KV-head model), so that two threads share the
  // work; more items would read the cache more often. The split depends on the shapes only, never on the thread count:
  // the kernels it picks (rows per MatMulRange) and so the results are the same for any count.
  constexpr size_t kMinAttentionItems = 2;
  size_t sub = group;
  while (sub > 1 && sub % 2 == 0 && T * KV * (group / sub) < kMinAttentionItems) sub /= 2;
  const size_t subs = group / sub;
  const size_t topk = c.attn_topk;
  std::vector<double> attended(pool_.MaxParts(), 0.0);
  pool_.ParallelFor(T * KV * subs, 1, [&](size_t begin, size_t end, int part) {
    Scratch& s = scratch_[part];
    for (size_t item = begin; item < end; ++item) {
      const size_t t = item / (KV * subs), g = (item / subs) % KV, h0 = g * group + (item % subs) * sub;
      const size_t p = pos_ + t;
      const size_t lo = (local && p + 1 > c.sliding_window) ? p + 1 - c.sliding_window : 0;
      const size_t n = p - lo + 1;
      const float* q0 = q_.get() + (t * H + h0) * hd;  // [sub, hd]
      float* out0 = att_.get() + (t * H + h0) * hd;    // [sub, hd]
      const MatRef rest = kv_.KRest(layer, g, lo, n);
      const MatRef values = kv_.V(layer, g, lo, n);
      float* scores = s.s1.get();  // [sub, n]
      // Spark: one pass over the predictor keys for the sub-group, then each head selects its
      // own tokens.
      float* qp = s.q_pred.get();  // [sub, r_a]
      for (size_t i = 0; i < sub; ++i) std::copy(q0 + i * hd, q0 + i * hd + ra, qp + i * ra);
      const MatRef pred = kv_.KPred(layer, g, lo, n);
      MatMulRange(pred, qp, sub, scores, n, 0, n);
      for (size_t i = 0; i < sub; ++i) {
        const float* qh = q0 + i * hd;
        float* out = out0 + i * hd;
        float* s1 = scores + i * n;
        if (c.attn_softcap > 0) SoftCap(s1, n, c.attn_softcap, s1);
        const int32_t* idx = iota_.data();
        size_t count = n;
        if (n > topk) {
          const float q = static_cast<float>(InvNormalCdf(1.0 - static_cast<double>(topk) / n));
          count = StatisticalTopK(s1, n, q, s.idx.data(), nullptr).count;
          idx = s.idx.data();
          if (count == 0) {  // all scores equal (std 0): an empty sum, as the definition says
            std::fill(out, out + hd, 0.0f);
            continue;
          }
        }
        float* w = s.sel.get();
        for (size_t k = 0; k < count; ++k) w[k] = s1[idx[k]];
        Softmax(w, count, w);
        float* s2 = s.s2.get();
        MaskedMatVecRange(rest, qh + ra, idx, 0, count, s2);
        Softplus(s2, count, s2);
        for (size_t k = 0; k < count; ++k) w[k] *= s2[k];
        SparseVecMatRange(values, w, idx, count, out, 0, hd);
        attended[part] += static_cast<double>(count);
      }
    }
  });
  for (double a : attended) stats_[layer].attn_attended += a;
  stats_[layer].attn_queries += static_cast<double>(T * H);

  MatMul(pool_, L.o, att_.get(), T, tmp_.get());
  (void)d;
}

// Dense attention with the visible tokens split into blocks (flash-decoding), for decode and
// other calls with few (token, KV head) pairs: one work item per (token, KV head, block) reads
// its block of keys and values once for all the group's query heads, so a single-KV-head model
// reads its cache once per token however many threads share it. Per item and head: scores s_j
// (soft-capped), m = max s, z = sum exp(s_j - m), o = sum softmax_block(s)_j v_j; then the
// merge, in block order: out = sum_b z_b e^(m_b - M) o_b / sum_b z_b e^(m_b - M), M = max m_b.
// The blocks depend on the visible count only, so results do not depend on the thread count.
void Engine::SplitAttention(size_t layer, size_t T) {
  const ModelConfig& c = config_;
  const size_t hd = c.head_dim, H = c.n_heads, KV = c.n_kv_heads, group = H / KV;
  const bool local = c.layer_is_local[layer];
  // Per token: visible range [lo, lo + n), blocks of len tokens (at least kSplitBlockTokens,
  // at most kSplitMaxBlocks of them), and its first item; items (t, g, b) are numbered
  // first[t] + g * blocks[t] + b.
  size_t lo[kSplitBelowItems], len[kSplitBelowItems], blocks[kSplitBelowItems];
  size_t first[kSplitBelowItems + 1] = {0};
  for (size_t t = 0; t < T; ++t) {
    const size_t p = pos_ + t;
    lo[t] = (local && p + 1 > c.sliding_window) ? p + 1 - c.sliding_window : 0;
    const size_t n = p - lo[t] + 1;
    len[t] = std::max(kSplitBlockTokens, (n + kSplitMaxBlocks - 1) / kSplitMaxBlocks);
    blocks[t] = (n + len[t] - 1) / len[t];
    first[t + 1] = first[t] + KV * blocks[t];
  }
  const size_t slot = group * (hd + 2);  // per item: o [group, hd], then (m, z) per head
  std::vector<double> attended(pool_.MaxParts(), 0.0);
  pool_.ParallelFor(first[T], 1, [&](size_t begin, size_t end, int part) {
    Scratch& s = scratch_[part];
    size_t t = 0;
    for (size_t item = begin; item < end; ++item) {
      while (item >= first[t + 1]) ++t;
      const size_t g = (item - first[t]) / blocks[t], b = (item - first[t]) % blocks[t];
      const size_t n = pos_ + t - lo[t] + 1;
      const size_t a = lo[t] + b * len[t], m = std::min(len[t], n - b * len[t]);
      const float* q0 = q_.get() + (t * H + g * group) * hd;  // [group, hd]
      float* o = split_.get() + item * slot;
      float* scores = s.s1.get();  // [group, m]
      MatMulRange(kv_.KRest(layer, g, a, m), q0, group, scores, m, 0, m);
      for (size_t i = 0; i < group; ++i) {
        float* sc = scores + i * m;
        if (c.attn_softcap > 0) SoftCap(sc, m, c.attn_softcap, sc);
        const SoftmaxStats st = Softmax(sc, m, sc);
        o[group * hd + 2 * i] = st.max;
        o[group * hd + 2 * i + 1] = st.sum;
      }
      MultiSparseVecMatRange(kv_.V(layer, g, a, m), scores, iota_.data(), m, group, o, 0, hd);
      attended[part] += static_cast<double>(m * group);
    }
  });
  for (size_t t = 0; t < T; ++t) {
    for (size_t g = 0; g < KV; ++g) {
      const float* base = split_.get() + (first[t] + g * blocks[t]) * slot;
      for (size_t i = 0; i < group; ++i) {
        const size_t si = group * hd + 2 * i;  // (m, z) of head i within a slot
        float M = base[si];
        for (size_t b = 1; b < blocks[t]; ++b) M = std::max(M, base[b * slot + si]);
        float* out = att_.get() + (t * H + g * group + i) * hd;
        std::fill(out, out + hd, 0.0f);
        float total = 0;
        for (size_t b = 0; b < blocks[t]; ++b) {
          const float w = base[b * slot + si + 1] * expf(base[b * slot + si] - M);
          total += w;
          const float* ob = base + b * slot + i * hd;
          for (size_t k = 0; k < hd; ++k) out[k] += w * ob[k];
        }
        const float inv = 1.0f / total;
        for (size_t k = 0; k < hd; ++k) out[k] *= inv;
      }
    }
  }
  for (double x : attended) stats_[layer].attn_attended += x;
  stats_[layer].attn_queries += static_cast<double>(T * H);
}

// Dense attention for chunks with many (token, KV head) pairs (prefill): one work item per
// (block of AttnBlockTokens() tokens, KV head). The block's query rows (its tokens x the group's
// heads) meet the keys [a, e) that any of its tokens sees in one matmul, and the values in one
// multi-row sum, so each cached row is read once per block, not once per token (per token, the
// keys sat in L2 but every row was converted and loaded again for 4 query heads only). Each row
// keeps its own visible range [lo, p]: its softmax runs over that range and the rest of the row
// is 0, which adds nothing to the value sums (the cached values are finite). Per (token, head)
// the scores, their softmax and the value sum are the same arithmetic as one item per token.
// Items run blocks in the order 0, nb - 1, 1, nb - 2, ..., so that the pool's contiguous parts
// mix short (early) and long (late) causal ranges.
void Engine::BlockedAttention(size_t layer, size_t T) {
  const ModelConfig& c = config_;
  const size_t hd = c.head_dim, H = c.n_heads, KV = c.n_kv_heads, group = H / KV;
  const bool local = c.layer_is_local[layer];
  const size_t B = AttnBlockTokens(), nb = (T + B - 1) / B;
  auto lo_of = [&](size_t p) {
    return (local && p + 1 > c.sliding_window) ? p + 1 - c.sliding_window : size_t{0};
  };
  std::vector<double> attended(pool_.MaxParts(), 0.0);
  pool_.ParallelFor(nb * KV, 1, [&](size_t begin, size_t end, int part) {
    Scratch& s = scratch_[part];
    for (size_t item = begin; item < end; ++item) {
      const size_t k = item / KV, g = item % KV;
      const size_t blk = k % 2 == 0 ? k / 2 : nb - 1 - k / 2;
      const size_t t0 = blk * B, nt = std::min(B, T - t0), rows = nt * group;
      const size_t a = lo_of(pos_ + t0), n = pos_ + t0 + nt - a;  // keys [a, a + n)
      float* q = s.blk.get();                        // [rows, hd]: token-major, then heads
      float* o = q + group * B * hd;                 // [rows, hd]
      for (size_t t = 0; t < nt; ++t) {
        const float* src = q_.get() + ((t0 + t) * H + g * group) * hd;
        std::copy(src, src + group * hd, q + t * group * hd);
      }
      float* scores = s.s1.get();  // [rows, n]
      MatMulRange(kv_.KRest(layer, g, a, n), q, rows, scores, n, 0, n);
      for (size_t t = 0; t < nt; ++t) {
        const size_t p = pos_ + t0 + t, first = lo_of(p) - a, count = p + 1 - lo_of(p);
        for (size_t i = 0; i < group; ++i) {
          float* sc = scores + (t * group + i) * n;
          std::fill(sc, sc + first, 0.0f);
          if (c.attn_softcap > 0) SoftCap(sc + first, count, c.attn_softcap, sc + first);
          Softmax(sc + first, count, sc + first);
          std::fill(sc + first + count, sc + n, 0.0f);
        }
        attended[part] += static_cast<double>(count * group);
      }
      MultiSparseVecMatRange(kv_.V(layer, g, a, n), scores, iota_.data(), n, rows, o, 0, hd);
      for (size_t t = 0; t < nt; ++t) {
        float* dst = att_.get() + ((t0 + t) * H + g * group) * hd;
        std::copy(o + t * group * hd, o + (t + 1) * group * hd, dst);
      }
    }
  });
  for (double x : attended) stats_[layer].attn_attended += x;
  stats_[layer].attn_queries += static_cast<double>(T * H);
}

// Sparsified attention over the rotated cache, one work item per (token, KV head); the group's
// query heads share one selection, so each kept key and value row is read once per item:
//   n <= attn_sparse_topk + attn_sparse_recent: every visible token;
//   else candidates C = all but the `recent` newest; pooled_j = qbar[:r_a] . k_j[:r_a] with
//   qbar the mean of the group's rotated queries; keep {j in C : pooled_j > statistical
//   threshold with f = topk / |C|} and the recent ones; exact scores (both parts), softmax, V.
void Engine::RotatedAttention(size_t layer, size_t T) {
  const ModelConfig& c = config_;
  const size_t hd = c.head_dim, H = c.n_heads, KV = c.n_kv_heads, group = H / KV;
  const size_t ra = c.attn_sparse_dim, rb = hd - ra;
  const size_t topk = c.attn_sparse_topk, recent = c.attn_sparse_recent;
  const bool local = c.layer_is_local[layer];
  std::vector<double> attended(pool_.MaxParts(), 0.0);
  pool_.ParallelFor(T * KV, 1, [&](size_t begin, size_t end, int part) {
    Scratch& s = scratch_[part];
    for (size_t item = begin; item < end; ++item) {
      const size_t t = item / KV, g = item % KV, h0 = g * group;
      const size_t p = pos_ + t;
      const size_t lo = (local && p + 1 > c.sliding_window) ? p + 1 - c.sliding_window : 0;
      const size_t n = p - lo + 1;
      const float* q0 = q_.get() + (t * H + h0) * hd;  // [group, hd]
      float* out0 = att_.get() + (t * H + h0) * hd;    // [group, hd]
      const MatRef pred = kv_.KPred(layer, g, lo, n);
      const MatRef rest = kv_.KRest(layer, g, lo, n);
      const MatRef values = kv_.V(layer, g, lo, n);
      float* qp = s.q_pred.get();  // [group, r_a]
      float* qr = s.q_rest.get();  // [group, hd - r_a]
      for (size_t i = 0; i < group; ++i) {
        std::copy(q0 + i * hd, q0 + i * hd + ra, qp + i * ra);
        std::copy(q0 + i * hd + ra, q0 + (i + 1) * hd, qr + i * rb);
      }
      const int32_t* idx = iota_.data();
      size_t m = n;
      if (n > topk + recent) {
        const size_t nc = n - recent;
        float* qbar = qp + group * ra;  // [r_a]
        for (size_t k = 0; k < ra; ++k) {
          float sum = 0;
          for (size_t i = 0; i < group; ++i) sum += qp[i * ra + k];
          qbar[k] = sum / static_cast<float>(group);
        }
        float* pooled = s.s2.get();  // [nc]
        MatMulRange(pred, qbar, 1, pooled, nc, 0, nc);
        const float q = static_cast<float>(InvNormalCdf(1.0 - static_cast<double>(topk) / nc));
        int32_t* sel = s.idx.data();
        m = StatisticalTopK(pooled, nc, q, sel, nullptr).count;
        for (size_t j = nc; j < n; ++j) sel[m++] = static_cast<int32_t>(j);
        idx = sel;
        if (m == 0) {  // all scores equal and nothing recent kept: an empty sum
          std::fill(out0, out0 + group * hd, 0.0f);
          continue;
        }
      }
      // Exact scores of the kept tokens for every head of the group: [group, m].
      float* w = s.s1.get();
      float* part2 = s.s2.get();
      for (size_t i = 0; i < group; ++i) {
        MaskedMatVecRange(pred, qp + i * ra, idx, 0, m, w + i * m);
        MaskedMatVecRange(rest, qr + i * rb, idx, 0, m, part2);
        float* wi = w + i * m;
        for (size_t k = 0; k < m; ++k) wi[k] += part2[k];
        if (c.attn_softcap > 0) SoftCap(wi, m, c.attn_softcap, wi);
        Softmax(wi, m, wi);
      }
      MultiSparseVecMatRange(values, w, idx, m, group, out0, 0, hd);
      attended[part] += static_cast<double>(m * group);
    }
  });
  for (double a : attended) stats_[layer].attn_attended += a;
  stats_[layer].attn_queries += static_cast<double>(T * H);
}

}  // namespace spark
