// activation.h: element-wise maps and softmax over f32 vectors. All allow in-place use
// (out == x); no other aliasing. Error vs float64: a few f32 ulp (Highway contrib/math Tanh,
// Exp, Log1p are within 4 ulp).
#ifndef SPARK_OPS_ACTIVATION_H_
#define SPARK_OPS_ACTIVATION_H_

#include <stddef.h>

namespace spark {

// Gemma's GELU, tanh form: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))).
void GeluTanh(const float* x, size_t n, float* out);
// out = GeluTanh(gate) * up (GeGLU); out may alias gate or up.
void GeluMul(const float* gate, const float* up, size_t n, float* out);
// softplus(x) = log(1 + exp(x)), computed as max(x, 0) + log1p(exp(-|x|)) (no overflow).
void Softplus(const float* x, size_t n, float* out);
// cap * tanh(x / cap), cap > 0 (Gemma 2 attention and final-logit soft-caps).
void SoftCap(const float* x, size_t n, float cap, float* out);
// out = exp(x - max x) / sum: the max is subtracted only for numerical stability. n >= 1.
// Returns max x and sum = sum_i exp(x_i - max x), which merge softmaxes of split ranges.
struct SoftmaxStats {
  float max, sum;
};
SoftmaxStats Softmax(const float* x, size_t n, float* out);

}  // namespace spark

#endif  // SPARK_OPS_ACTIVATION_H_
