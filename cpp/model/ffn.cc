// ffn.cc: the feed-forward block of one layer, xn_ [T, d_model] -> tmp_ [T, d_model].
//   dense GeGLU: down . (gelu_tanh(gate . x) * (up . x)), chunk matmuls over all T tokens;
//   Spark FFN (DESIGN.md section 5), per token:
//     s = K1 x[:r] (one chunk matmul for all T), theta = statistical top-k of s,
//     u_i = gelu_tanh(s_i - theta) * (K2[i] . x[r:]) for active i (vector-masked matvec),
//     y = sum_i u_i V[i] (tiled sparse vec-mat).
#include <algorithm>

#include "model/engine.h"
#include "ops/activation.h"
#include "ops/matvec.h"
#include "ops/sparse.h"
#include "ops/topk.h"

namespace spark {

void Engine::Ffn(size_t layer, size_t T) {
  const ModelConfig& c = config_;
  const LayerWeights& L = weights_.layers[layer];
  const size_t d = c.d_model, dff = c.d_ff;
  LayerStats& st = stats_[layer];
  st.ffn_tokens += static_cast<double>(T);

  if (!c.SparkFfn()) {
    MatMul(L.gate, xn_.get(), T, ff_a_.get());
    MatMul(L.up, xn_.get(), T, ff_b_.get());
    GeluMul(ff_a_.get(), ff_b_.get(), T * dff, ff_a_.get());
    MatMul(L.down, ff_a_.get(), T, tmp_.get());
    st.ffn_active += static_cast<double>(T * dff);
    return;
  }

  const size_t r = c.ffn_predictor_dim, rest = d - r;
  for (size_t t = 0; t < T; ++t) {
    const float* x = xn_.get() + t * d;
    std::copy(x, x + r, x1_.get() + t * r);
    std::copy(x + r, x + d, x2_.get() + t * rest);
  }
  MatMul(L.k1, x1_.get(), T, ff_a_.get());
  for (size_t t = 0; t < T; ++t) {
    const float* s = ff_a_.get() + t * dff;
    const size_t n = StatisticalTopK(s, dff, ffn_q_, ffn_idx_.data(), ffn_shift_.get()).count;
    MaskedMatVec(L.k2, x2_.get() + t * rest, ffn_idx_.data(), n, ffn_u_.get());
    GeluMul(ffn_shift_.get(), ffn_u_.get(), n, ffn_u_.get());
    SparseVecMat(L.v_ffn, ffn_u_.get(), ffn_idx_.data(), n, tmp_.get() + t * d);
    st.ffn_active += static_cast<double>(n);
  }
}

}  // namespace spark
