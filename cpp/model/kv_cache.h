// kv_cache.h: per-layer key/value cache, allocated once for the context length, in f32 or bf16
// (bf16 halves the bytes attention reads per token; the kernels widen it to f32 as they load).
// Per KV head, keys are split at the attention predictor dim r_a (0 for dense attention):
//   k_pred [ctx, r_a]      the predictor part, contiguous so Spark's dense scan streams it;
//   k_rest [ctx, hd - r_a] the rest, and v [ctx, hd], read by token (gathered for Spark).
// Readers get MatRef views (rows = positions), so every weight kernel reads the cache as is.
//
// Sliding-window layers may keep a ring of R rows instead of ctx (Allocate's `ring`, R >= the
// window + the largest chunk - 1, so a chunk never overwrites a row one of its own tokens still
// sees): position p lives in row p mod R, written twice, at that row and R rows further (a
// mirrored ring of 2R rows), so any R consecutive positions are one contiguous view and the
// attention kernels never see the wrap. The engine tracks which positions the ring still holds.
#ifndef SPARK_MODEL_KV_CACHE_H_
#define SPARK_MODEL_KV_CACHE_H_

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <new>
#include <vector>

#include "hwy/aligned_allocator.h"
#include "util/huge_pages.h"
#include "weights/types.h"

namespace spark {

struct KVCache {
  size_t ctx = 0, n_kv = 0, r_a = 0, head_dim = 0;
  WeightType type = WeightType::kF32;  // kF32 or kBF16

  // Sizes are checked by the engine (CheckedBufferBytes) before this is called. ring[layer]: 0
  // for a full layer (ctx rows), else the ring's R rows (RowsFor gives what it allocates).
  void Allocate(size_t n_layers, size_t n_kv_heads, size_t head_dim_, size_t r_a_, size_t ctx_,
                WeightType type_, const std::vector<size_t>& ring) {
    ctx = ctx_;
    n_kv = n_kv_heads;
    r_a = r_a_;
    head_dim = head_dim_;
    type = type_;
    const size_t esize = WeightTypeBytes(type);
    layers_.resize(n_layers);
    for (size_t i = 0; i < n_layers; ++i) {
      Layer& l = layers_[i];
      l.ring = ring[i] ? ring[i] : ctx;
      l.rows = RowsFor(ctx, ring[i]);
      l.k_pred = Bytes(n_kv * l.rows * (r_a ? r_a : 1) * esize);
      l.k_rest = Bytes(n_kv * l.rows * (head_dim - r_a) * esize);
      l.v = Bytes(n_kv * l.rows * head_dim * esize);
    }
  }
  // Rows a layer allocates per KV head: ctx, or 2R for a mirrored ring of R rows.
  static size_t RowsFor(size_t ctx, size_t ring) { return ring ? 2 * ring : ctx; }
  size_t Bytes() const {
    size_t rows = 0;
    for (const Layer& l : layers_) rows += l.rows;
    return rows * n_kv * 2 * head_dim * WeightTypeBytes(type);
  }

  // Positions [lo, lo + n) of KV head g as [n, cols] matrices (n <= R for a ring layer).
  MatRef KPred(size_t layer, size_t g, size_t lo, size_t n) const {
    const Layer& l = layers_[layer];
    return View(l, l.k_pred.get(), g, lo, n, r_a);
  }
  MatRef KRest(size_t layer, size_t g, size_t lo, size_t n) const {
    const Layer& l = layers_[layer];
    return View(l, l.k_rest.get(), g, lo, n, head_dim - r_a);
  }
  MatRef V(size_t layer, size_t g, size_t lo, size_t n) const {
    const Layer& l = layers_[layer];
    return View(l, l.v.get(), g, lo, n, head_dim);
  }

  // Writes position pos of KV head g: k [head_dim] (split at r_a), v [head_dim].
  void Store(size_t layer, size_t g, size_t pos, const float* k, const float* v) {
    Layer& l = layers_[layer];
    const size_t row = pos % l.ring;
    for (size_t r = row; r < l.rows; r += l.ring) {  // once, or twice in a mirrored ring
      Put(k, r_a, Row(l, l.k_pred.get(), g, r, r_a));
      Put(k + r_a, head_dim - r_a, Row(l, l.k_rest.get(), g, r, head_dim - r_a));
      Put(v, head_dim, Row(l, l.v.get(), g, r, head_dim));
    }
  }

 private:
  struct Layer {
    size_t ring = 0, rows = 0;  // position p is in row p mod ring; rows allocated per KV head
    hwy::AlignedFreeUniquePtr<uint8_t[]> k_pred, k_rest, v;  // [n_kv][rows][cols]
  };

  static hwy::AlignedFreeUniquePtr<uint8_t[]> Bytes(size_t n) {
    auto p = hwy::AllocateAligned<uint8_t>(n ? n : 1);
    if (!p) throw std::bad_alloc();
    AdviseHugePages(p.get(), n);  // before the first touch (util/huge_pages.h)
    return p;
  }
  uint8_t* Row(const Layer& l, uint8_t* base, size_t g, size_t row, size_t cols) const {
    return base + (g * l.rows + row) * cols * WeightTypeBytes(type);
  }
  MatRef View(const Layer& l, uint8_t* base, size_t g, size_t lo, size_t n, size_t cols) const {
    return MatRef{Row(l, base, g, lo % l.ring, cols), nullptr, type, n, cols};
  }
  // f32 -> the cache's type; bf16 rounds to nearest, ties to even (as the converter does).
  void Put(const float* src, size_t n, uint8_t* dst) const {
    if (type == WeightType::kF32) {
      memcpy(dst, src, n * sizeof(float));
      return;
    }
    for (size_t i = 0; i < n; ++i) {
      const uint16_t b = BF16BitsFromF32(src[i]);
      memcpy(dst + 2 * i, &b, 2);
    }
  }

  std::vector<Layer> layers_;
};

}  // namespace spark

#endif  // SPARK_MODEL_KV_CACHE_H_
