// screen.h: the screened LM head's scores (docs/engine-file.md, "The screened LM head"): every
// row of a screen4 matrix (weights/types.h, ScreenRef) against one hidden state.
#ifndef SPARK_OPS_SCREEN_H_
#define SPARK_OPS_SCREEN_H_

#include <stddef.h>
#include <stdint.h>

#include "util/threading.h"
#include "weights/types.h"

namespace spark {

// out[t * screen.rows + v] = s_v of row t of x, for t < T and v < screen.rows; x: [T,
// screen.cols]. Each row is quantized to int8 on its own, a = max|x|, q = rint(x * (127 / a))
// (0 when a == 0), and
//   s_v = (a / 127) * sum_g d_vg * (c_vg . q_g - 7.5 * sum(q_g))
// with the integer dots exact (python/spark_infer/weights/screen4.py, screen4_logits), so a row's
// scores do not depend on T. A row of x with a NaN or infinity gets NaN scores. The screen is
// read once per call (rows are the kernel's inner loop). Threads split the tiles (no
// cross-thread sums), so results do not depend on the thread count. out must not alias x.
void ScreenScores(ThreadPool& pool, const ScreenRef& screen, const float* x, size_t T, float* out);

// One row of x quantized for the kernel (ops/screen-inl.h): q as int8 and widened to int16,
// step = a / 127, per block 7.5 * sum(q_g) (exact in f32: |sum| <= 128 * 127); not valid: the
// row has a NaN or infinity (its scores are NaN, written by ScreenScores).
struct ScreenX {
  const int8_t* q8;
  const int16_t* q16;
  const float* bias;  // [blocks]
  float step;
  bool valid;
};

}  // namespace spark

#endif  // SPARK_OPS_SCREEN_H_
