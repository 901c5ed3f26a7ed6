// norm.h: RMSNorm with Gemma's (1 + w) and rotary position embedding (split-half rotation).
#ifndef SPARK_OPS_NORM_H_
#define SPARK_OPS_NORM_H_

#include <stddef.h>

namespace spark {

// out = x / sqrt(mean(x^2) + eps) * (1 + w).  x, w, out: [n]; out may alias x. Sum of squares
// accumulates in f32.
void RmsNorm(const float* x, const float* w, size_t n, float eps, float* out);

// cos[i], sin[i] of the angle pos * base^(-2i/m) for i < m/2, in double, then f32.
void RopeAngles(double pos, double base, size_t m, float* cos, float* sin);

// In place on x: [m] (one part of one head), m even, h = m/2:
//   x[i] <- x[i] cos[i] - x[i+h] sin[i];  x[i+h] <- x[i+h] cos[i] + x[i] sin[i].
void Rope(float* x, size_t m, const float* cos, const float* sin);

}  // namespace spark

#endif  // SPARK_OPS_NORM_H_
