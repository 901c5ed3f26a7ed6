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

// Writes the indices (ascending) of x_i >= max(x) - margin into idx (room for n entries) and
// returns their count; NaN entries are never kept nor the max. The screened LM head's first
// cut (docs/engine-file.md): two vector passes, no sort.
size_t WithinOfMax(const float* x, size_t n, float margin, int32_t* idx);

}  // namespace spark

#endif  // SPARK_OPS_TOPK_H_
