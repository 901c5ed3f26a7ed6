// kv_cache.h: per-layer key/value cache, f32, allocated once for the context length.
// Per KV head, keys are split at the attention predictor dim r_a (0 for dense attention):
//   k_pred [ctx, r_a]      the predictor part, contiguous so Spark's dense scan streams it;
//   k_rest [ctx, hd - r_a] the rest, and v [ctx, hd], read by token (gathered for Spark).
#ifndef SPARK_MODEL_KV_CACHE_H_
#define SPARK_MODEL_KV_CACHE_H_

#include <stddef.h>

#include <vector>

#include "hwy/aligned_allocator.h"

namespace spark {

struct LayerCache {
  hwy::AlignedFreeUniquePtr<float[]> k_pred, k_rest, v;  // [n_kv][ctx][...]
};

struct KVCache {
  size_t ctx = 0, n_kv = 0, r_a = 0, head_dim = 0;
  std::vector<LayerCache> layers;

  void Allocate(size_t n_layers, size_t n_kv_heads, size_t head_dim_, size_t r_a_, size_t ctx_) {
    ctx = ctx_;
    n_kv = n_kv_heads;
    r_a = r_a_;
    head_dim = head_dim_;
    layers.resize(n_layers);
    for (LayerCache& l : layers) {
      l.k_pred = hwy::AllocateAligned<float>(n_kv * ctx * (r_a ? r_a : 1));
      l.k_rest = hwy::AllocateAligned<float>(n_kv * ctx * (head_dim - r_a));
      l.v = hwy::AllocateAligned<float>(n_kv * ctx * head_dim);
      if (!l.k_pred || !l.k_rest || !l.v) throw std::bad_alloc();
    }
  }
  size_t Bytes() const { return layers.size() * n_kv * ctx * (2 * head_dim) * sizeof(float); }

  float* KPred(size_t layer, size_t g, size_t pos) const {
    return layers[layer].k_pred.get() + (g * ctx + pos) * r_a;
  }
  float* KRest(size_t layer, size_t g, size_t pos) const {
    return layers[layer].k_rest.get() + (g * ctx + pos) * (head_dim - r_a);
  }
  float* V(size_t layer, size_t g, size_t pos) const {
    return layers[layer].v.get() + (g * ctx + pos) * head_dim;
  }
};

}  // namespace spark

#endif  // SPARK_MODEL_KV_CACHE_H_
