// topk.h: statistical top-k (Spark Transformer, You et al. 2025), linear time, no sort.
//   theta = mean(x) + std(x) * q,   q = Q(1 - k/d),  Q the inverse standard-normal CDF;
//   std is the population std (divide by d); mean and variance accumulate in f32, two passes.
// Kept entries are those with x_i > theta (strictly); their count is random around k.
#ifndef SPARK_OPS_TOPK_H_
#define SPARK_OPS_TOPK_H_

#include <stddef.h>
#include <stdint.h>

namespace spark {

// Q(p): the inverse standard-normal CDF for p in (0, 1); NaN outside. Acklam's rational
// approximation refined by one Halley step on erfc: |error| < 1e-13 over (1e-300, 1 - 1e-16).
double InvNormalCdf(double p);

struct TopKStats {
  float mean = 0, std = 0, theta = 0;
  size_t count = 0;
};

// Writes the indices (ascending) of x_i > theta into idx and x_i - theta into shifted (either
// may be null); both need room for n entries. Single-threaded: O(n) and small next to the
// matvecs around it.
TopKStats StatisticalTopK(const float* x, size_t n, float q, int32_t* idx, float* shifted);

// The screened LM head's kept logits (docs/engine-file.md): writes the indices (ascending) of
// x_i >= max(max(x) - margin, x_(cap)) into idx (room for n entries) and returns their count,
// x_(cap) the cap-th largest (ties at it kept; none when cap >= n). NaN entries are never kept
// nor the max. Vector passes over x; where the cap binds (flat distributions: most of a
// 262144-token vocabulary within the margin) a strided sample first narrows the candidates.
// Single-threaded.
size_t ScreenKept(const float* x, size_t n, float margin, size_t cap, int32_t* idx);

// The k-th largest of x[0, n) (1 <= k <= n; no NaN), exactly: a 2048-bin histogram over
// [min, max] finds the bin holding it, and nth_element runs on that bin's values only. The
// screened LM head's cap on flat distributions (tens of thousands of candidates): ~3 linear
// passes instead of nth_element's branchy partitioning of all of them. Single-threaded.
float KthLargest(const float* x, size_t n, size_t k);

}  // namespace spark

#endif  // SPARK_OPS_TOPK_H_
