// attention.cc: QKV projections, QK-norm, RoPE, the KV-cache write, and per-(token, head)
// attention: dense softmax attention, or Spark attention (DESIGN.md section 5):
//   s1_j = q[:r_a] . k_j[:r_a] (q already times query_scale; soft-capped if the model has one);
//   n <= attn_topk: keep all visible tokens; else statistical top-k over s1 with k/n;
//   w_j = softmax_S(s1)_j * softplus(q[r_a:] . k_j[r_a:]);  out = sum_{j in S} w_j v_j.
// Threads split the (token, query head) pairs; each pair reads its KV head's cache only.
#include <algorithm>

#include "model/engine.h"
#include "ops/activation.h"
#include "ops/matvec.h"
#include "ops/norm.h"
#include "ops/sparse.h"
#include "ops/topk.h"
#include "util/threading.h"

namespace spark {

void Engine::Attention(size_t layer, size_t T) {
  const ModelConfig& c = config_;
  const LayerWeights& L = weights_.layers[layer];
  const size_t d = c.d_model, hd = c.head_dim, H = c.n_heads, KV = c.n_kv_heads;
  const size_t ra = c.attn_predictor_dim, rb = hd - ra, group = H / KV;
  const bool local = c.layer_is_local[layer];
  const size_t half = hd / 2;

  MatMul(L.q, xn_.get(), T, q_.get());
  MatMul(L.k, xn_.get(), T, k_.get());
  MatMul(L.v, xn_.get(), T, v_.get());

  // QK-norm, RoPE (each part on its own), query scale; then append k, v to the cache.
  const float* cos_all = rope_cos_.get() + (local ? T_ : 0) * half;
  const float* sin_all = rope_sin_.get() + (local ? T_ : 0) * half;
  auto rotate = [&](float* head, size_t t) {
    const float* cs = cos_all + t * half;
    const float* sn = sin_all + t * half;
    if (ra) {
      Rope(head, ra, cs, sn);
      Rope(head + ra, rb, cs + ra / 2, sn + ra / 2);
    } else {
      Rope(head, hd, cs, sn);
    }
  };
  for (size_t t = 0; t < T; ++t) {
    for (size_t h = 0; h < H; ++h) {
      float* qh = q_.get() + (t * H + h) * hd;
      if (L.q_norm) RmsNorm(qh, L.q_norm, hd, c.norm_eps, qh);
      rotate(qh, t);
      for (size_t i = 0; i < hd; ++i) qh[i] *= c.query_scale;
    }
    for (size_t g = 0; g < KV; ++g) {
      float* kh = k_.get() + (t * KV + g) * hd;
      if (L.k_norm) RmsNorm(kh, L.k_norm, hd, c.norm_eps, kh);
      rotate(kh, t);
      const size_t p = pos_ + t;
      std::copy(kh, kh + ra, kv_.KPred(layer, g, p));
      std::copy(kh + ra, kh + hd, kv_.KRest(layer, g, p));
      const float* vh = v_.get() + (t * KV + g) * hd;
      std::copy(vh, vh + hd, kv_.V(layer, g, p));
    }
  }

  const size_t topk = c.attn_topk;
  std::vector<double> attended(MaxParts(), 0.0);
  ParallelFor(T * H, 1, [&](size_t begin, size_t end, int part) {
    Scratch& s = scratch_[part];
    for (size_t item = begin; item < end; ++item) {
      const size_t t = item / H, h = item % H, g = h / group;
      const size_t p = pos_ + t;
      const size_t lo = (local && p + 1 > c.sliding_window) ? p + 1 - c.sliding_window : 0;
      const size_t n = p - lo + 1;
      const float* qh = q_.get() + (t * H + h) * hd;
      float* out = att_.get() + (t * H + h) * hd;
      MatRef rest{kv_.KRest(layer, g, lo), nullptr, WeightType::kF32, n, rb};
      const MatRef values{kv_.V(layer, g, lo), nullptr, WeightType::kF32, n, hd};
      if (!ra) {
        float* sc = s.s1.get();
        MatMulRange(rest, qh, 1, sc, n, 0, n);
        if (c.attn_softcap > 0) SoftCap(sc, n, c.attn_softcap, sc);
        Softmax(sc, n, sc);
        SparseVecMatRange(values, sc, iota_.data(), n, out, 0, hd);
        attended[part] += static_cast<double>(n);
        continue;
      }
      const MatRef pred{kv_.KPred(layer, g, lo), nullptr, WeightType::kF32, n, ra};
      float* s1 = s.s1.get();
      MatMulRange(pred, qh, 1, s1, n, 0, n);
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
      for (size_t i = 0; i < count; ++i) w[i] = s1[idx[i]];
      Softmax(w, count, w);
      float* s2 = s.s2.get();
      MaskedMatVecRange(rest, qh + ra, idx, 0, count, s2);
      Softplus(s2, count, s2);
      for (size_t i = 0; i < count; ++i) w[i] *= s2[i];
      SparseVecMatRange(values, w, idx, count, out, 0, hd);
      attended[part] += static_cast<double>(count);
    }
  });
  for (double a : attended) stats_[layer].attn_attended += a;
  stats_[layer].attn_queries += static_cast<double>(T * H);

  MatMul(L.o, att_.get(), T, tmp_.get());
  (void)d;
}

}  // namespace spark
