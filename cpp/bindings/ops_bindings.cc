// ops_bindings.cc: every kernel, reachable from Python for tests and benchmarks.
// Outputs are caller-provided arrays (zero-copy); the GIL is released while a kernel runs.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cmath>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "bindings/arrays.h"
#include "hwy/highway.h"
#include "hwy/targets.h"
#include "ops/activation.h"
#include "ops/matvec.h"
#include "ops/norm.h"
#include "ops/screen.h"
#include "ops/sparse.h"
#include "ops/sparse_batch.h"
#include "ops/topk.h"
#include "util/cpu_features.h"
#include "util/threading.h"
#include "weights/types.h"

namespace spark {
namespace py = pybind11;
using py::arg;
using OptArray = std::optional<py::array>;

namespace {

void CheckIndices(const int32_t* idx, size_t n, size_t rows) {
  for (size_t j = 0; j < n; ++j) {
    if (idx[j] < 0 || static_cast<size_t>(idx[j]) >= rows) {
      throw py::index_error("idx[" + std::to_string(j) + "] = " + std::to_string(idx[j]) +
                            " is outside [0, " + std::to_string(rows) + ")");
    }
  }
}

// Unary map binding: out = f(x), same 1-D shape.
template <class F>
void Unary(py::array x, py::array out, F f) {
  const float* px = Checked<float>(x, "x", {-1});
  const size_t n = static_cast<size_t>(x.shape(0));
  float* po = Checked<float>(out, "out", {static_cast<py::ssize_t>(n)}, true);
  py::gil_scoped_release release;
  f(px, n, po);
}

// Targets compiled and supported, read once before any test forces one (forcing shrinks what
// hwy::SupportedAndGeneratedTargets reports).
const std::vector<int64_t>& AllTargets() {
  static const std::vector<int64_t> targets = hwy::SupportedAndGeneratedTargets();
  return targets;
}

std::vector<std::pair<std::string, int64_t>> SupportedTargetList() {
  std::vector<std::pair<std::string, int64_t>> out;
  for (int64_t t : AllTargets()) out.emplace_back(hwy::TargetName(t), t);
  return out;
}

}  // namespace

void RegisterOps(py::module_& m) {
  AllTargets();
  // --- threads and SIMD targets
  m.def("physical_cores", &PhysicalCores, "Physical cores of this machine.");
  m.def("num_threads", [] { return DefaultPool().threads(); },
        "Threads of the kernels called here (an Engine has its own: Engine.threads).");
  m.def("set_num_threads", [](int n) {
    if (n < 1) throw py::value_error("threads must be >= 1, got " + std::to_string(n));
    DefaultPool().set_threads(n);
  }, arg("n"), "Set the number of threads of the kernels called here (>= 1; not an Engine's).");
  m.def("supported_targets", &SupportedTargetList,
        "SIMD targets compiled into this build and supported by this CPU: [(name, bit)], best first.");
  m.def("set_target", [](int64_t bit) {
    if (bit != 0) {
      bool ok = false;
      for (int64_t t : AllTargets()) ok |= (t == bit);
      if (!ok) throw py::value_error("target " + std::to_string(bit) + " is not compiled or not supported here");
    }
    hwy::SetSupportedTargetsForTest(bit);
  }, arg("bit"), "Force one SIMD target for all kernels (a bit from supported_targets()); 0 restores the best.");
  // Each CPU feature the kernels test themselves (util/cpu_features.h): has_<f>, use_<f> and
  // set_<f>(on), the switch of its kernel path (tests run the plain AVX3 path on such a CPU).
  auto feature = [&m](const std::string& f, const std::string& name, bool (*has)(),
                      bool (*use)(), std::atomic<bool>& (*sw)(), const std::string& what) {
    m.def(("has_" + f).c_str(), has, ("Whether this CPU has " + name + ".").c_str());
    m.def(("use_" + f).c_str(), use, ("Whether " + what + " take the " + name + " path now.").c_str());
    m.def(("set_" + f).c_str(), [has, sw, name](bool on) {
      if (on && !has()) throw py::value_error("this CPU has no " + name);
      sw().store(on);
    }, arg("on"), ("Switch the " + name + " path of " + what + " on (CPU permitting) or off.").c_str());
  };
  feature("avx512_vnni", "AVX512_VNNI", &CpuHasAvx512Vnni, &UseAvx512Vnni, &Avx512VnniSwitch,
          "the AVX3 q4 / q5 decode tiles");
  feature("avx512_bf16", "AVX512_BF16", &CpuHasAvx512Bf16, &UseAvx512Bf16, &Avx512Bf16Switch,
          "the AVX3 bf16 chunk matmul (vdpbf16ps)");
  m.def("current_target", []() -> std::string {
    const std::vector<int64_t> targets = hwy::SupportedAndGeneratedTargets();  // best first
    return targets.empty() ? "none" : hwy::TargetName(targets[0]);
  }, "Name of the SIMD target the kernels dispatch to now.");

  // --- dense
  m.def("matvec", [](py::array w, py::array x, py::array out, OptArray scale) {
    const MatRef mw = CheckedWeights(w, scale);
    const float* px = Checked<float>(x, "x", {static_cast<py::ssize_t>(mw.cols)});
    float* po = Checked<float>(out, "out", {static_cast<py::ssize_t>(mw.rows)}, true);
    py::gil_scoped_release release;
    MatVec(DefaultPool(), mw, px, po);
  }, arg("w").noconvert(), arg("x").noconvert(), arg("out").noconvert(), arg("scale").noconvert() = py::none(),
     "out[r] = w[r, :] . x. w: [rows, cols] float32 | uint16 (bf16) | int8 (+ scale [rows]).");
  m.def("matmul", [](py::array w, py::array x, py::array out, OptArray scale) {
    const MatRef mw = CheckedWeights(w, scale);
    const float* px = Checked<float>(x, "x", {-1, static_cast<py::ssize_t>(mw.cols)});
    const py::ssize_t T = x.shape(0);
    float* po = Checked<float>(out, "out", {T, static_cast<py::ssize_t>(mw.rows)}, true);
    py::gil_scoped_release release;
    MatMul(DefaultPool(), mw, px, static_cast<size_t>(T), po);
  }, arg("w").noconvert(), arg("x").noconvert(), arg("out").noconvert(), arg("scale").noconvert() = py::none(),
     "out[t, r] = w[r, :] . x[t, :] for a chunk of T tokens. x: [T, cols], out: [T, rows].");

  m.def("screen_scores", [](py::array packed, size_t rows, py::array x, py::array out) {
    if (rows == 0) throw py::value_error("rows must be > 0");
    // x: [cols] (one row) or [T, cols]; out: [rows] or [T, rows] to match.
    const bool one = x.ndim() == 1;
    const py::ssize_t cols = one ? x.shape(0) : x.ndim() == 2 ? x.shape(1) : -1;
    if (cols <= 0 || cols % static_cast<py::ssize_t>(kScreenGroup) != 0)
      throw py::value_error("x must be float32 [cols] or [T, cols], cols a positive multiple of " +
                            std::to_string(kScreenGroup));
    ScreenRef s;
    s.rows = rows;
    s.cols = static_cast<size_t>(cols);
    s.data = Checked<uint8_t>(packed, "packed", {static_cast<py::ssize_t>(s.Tiles()),
                                                 static_cast<py::ssize_t>(s.TileBytes())});
    const py::ssize_t T = one ? 1 : x.shape(0);
    const float* px = one ? Checked<float>(x, "x", {cols}) : Checked<float>(x, "x", {T, cols});
    float* po = one ? Checked<float>(out, "out", {static_cast<py::ssize_t>(rows)}, true)
                    : Checked<float>(out, "out", {T, static_cast<py::ssize_t>(rows)}, true);
    py::gil_scoped_release release;
    ScreenScores(DefaultPool(), s, px, static_cast<size_t>(T), po);
  }, arg("packed").noconvert(), arg("rows"), arg("x").noconvert(), arg("out").noconvert(),
     "The LM-head screen's scores (ops/screen.h): out[v] = s_v of x, per row of x. packed: uint8 "
     "screen4 tiles [ceil(rows / 4), cols / 128 * 272] (spark_infer.weights.screen4), x: [cols] "
     "or [T, cols], out: [rows] or [T, rows].");

  // --- sparse
  m.def("masked_matvec", [](py::array w, py::array x, py::array idx, py::array out, OptArray scale) {
    const MatRef mw = CheckedWeights(w, scale);
    const float* px = Checked<float>(x, "x", {static_cast<py::ssize_t>(mw.cols)});
    const int32_t* pi = Checked<int32_t>(idx, "idx", {-1});
    const size_t n = static_cast<size_t>(idx.shape(0));
    float* po = Checked<float>(out, "out", {static_cast<py::ssize_t>(n)}, true);
    CheckIndices(pi, n, mw.rows);
    py::gil_scoped_release release;
    MaskedMatVec(DefaultPool(), mw, px, pi, n, po);
  }, arg("w").noconvert(), arg("x").noconvert(), arg("idx").noconvert(), arg("out").noconvert(),
     arg("scale").noconvert() = py::none(),
     "out[j] = w[idx[j], :] . x; rows not in idx are never read. idx: int32 [n], out: [n].");
  m.def("sparse_vecmat", [](py::array w, py::array u, py::array idx, py::array out, OptArray scale) {
    const MatRef mw = CheckedWeights(w, scale);
    const int32_t* pi = Checked<int32_t>(idx, "idx", {-1});
    const size_t n = static_cast<size_t>(idx.shape(0));
    const float* pu = Checked<float>(u, "u", {static_cast<py::ssize_t>(n)});
    float* po = Checked<float>(out, "out", {static_cast<py::ssize_t>(mw.cols)}, true);
    CheckIndices(pi, n, mw.rows);
    py::gil_scoped_release release;
    SparseVecMat(DefaultPool(), mw, pu, pi, n, po);
  }, arg("w").noconvert(), arg("u").noconvert(), arg("idx").noconvert(), arg("out").noconvert(),
     arg("scale").noconvert() = py::none(),
     "out = sum_j u[j] * w[idx[j], :] (column tiles per thread). u: [n], out: [cols].");

  // --- sparse, a chunk of tokens grouped by neuron (CSR)
  auto check_csr = [](py::array offsets, py::array tokens, size_t rows, size_t T) {
    const int32_t* po = Checked<int32_t>(offsets, "offsets", {static_cast<py::ssize_t>(rows + 1)});
    const int32_t* pt = Checked<int32_t>(tokens, "tokens", {-1});
    const size_t nnz = static_cast<size_t>(tokens.shape(0));
    if (po[0] != 0 || static_cast<size_t>(po[rows]) != nnz)
      throw py::value_error("offsets must start at 0 and end at len(tokens)");
    for (size_t i = 0; i < rows; ++i)
      if (po[i + 1] < po[i]) throw py::value_error("offsets must be non-decreasing");
    CheckIndices(pt, nnz, T);
    return std::make_pair(po, pt);
  };
  m.def("csr_masked_matmul", [check_csr](py::array w, py::array x, py::array offsets, py::array tokens,
                                         py::array out, OptArray scale) {
    const MatRef mw = CheckedWeights(w, scale);
    const float* px = Checked<float>(x, "x", {-1, static_cast<py::ssize_t>(mw.cols)});
    const auto [po, pt] = check_csr(offsets, tokens, mw.rows, static_cast<size_t>(x.shape(0)));
    float* pout = Checked<float>(out, "out", {tokens.shape(0)}, true);
    py::gil_scoped_release release;
    CsrMaskedMatMul(DefaultPool(), mw, px, static_cast<size_t>(x.shape(0)), po, pt, pout);
  }, arg("w").noconvert(), arg("x").noconvert(), arg("offsets").noconvert(), arg("tokens").noconvert(),
     arg("out").noconvert(), arg("scale").noconvert() = py::none(),
     "out[k] = w[i, :] . x[tokens[k], :] for k in [offsets[i], offsets[i+1]); bf16 / int8 w with "
     "2 or more tokens: x rounded to bf16 first.");
  m.def("csr_sparse_matmul", [check_csr](py::array w, py::array u, py::array offsets, py::array tokens,
                                         py::array out, OptArray scale) {
    const MatRef mw = CheckedWeights(w, scale);
    float* pout = Checked<float>(out, "out", {-1, static_cast<py::ssize_t>(mw.cols)}, true);
    const size_t T = static_cast<size_t>(out.shape(0));
    const auto [po, pt] = check_csr(offsets, tokens, mw.rows, T);
    const float* pu = Checked<float>(u, "u", {tokens.shape(0)});
    py::gil_scoped_release release;
    CsrSparseMatMul(DefaultPool(), mw, pu, po, pt, T, pout);
  }, arg("w").noconvert(), arg("u").noconvert(), arg("offsets").noconvert(), arg("tokens").noconvert(),
     arg("out").noconvert(), arg("scale").noconvert() = py::none(),
     "out[t, :] = sum over k with tokens[k] == t of u[k] * w[i(k), :]; out: [T, cols]; bf16 / "
     "int8 w with T >= 2: u rounded to bf16 first (int8: before the scale).");

  // --- statistical top-k
  m.def("inv_normal_cdf", [](double p) {
    if (!(p > 0.0 && p < 1.0)) throw py::value_error("p must be in (0, 1), got " + std::to_string(p));
    return InvNormalCdf(p);
  }, arg("p"), "Q(p): the inverse standard-normal CDF.");
  m.def("screen_kept", [](py::array x, float margin, size_t cap) {
    const float* px = Checked<float>(x, "x", {-1});
    const size_t n = static_cast<size_t>(x.shape(0));
    if (!(margin >= 0) || !std::isfinite(margin)) throw py::value_error("margin must be finite and >= 0");
    if (cap < 1) throw py::value_error("cap must be >= 1");
    std::vector<int32_t> idx(n);
    size_t kept;
    {
      py::gil_scoped_release release;
      kept = ScreenKept(px, n, margin, cap, idx.data());
    }
    return py::array_t<int32_t>(static_cast<py::ssize_t>(kept), idx.data());
  }, arg("x").noconvert(), arg("margin"), arg("cap"),
     "Indices (ascending) of the logits the screened LM head recomputes (ops/topk.h).");
  m.def("kth_largest", [](py::array x, size_t k) {
    const float* px = Checked<float>(x, "x", {-1});
    const size_t n = static_cast<size_t>(x.shape(0));
    if (k < 1 || k > n) throw py::value_error("k must be in [1, len(x)]");
    for (size_t i = 0; i < n; ++i)
      if (std::isnan(px[i])) throw py::value_error("x has a NaN");
    py::gil_scoped_release release;
    return KthLargest(px, n, k);
  }, arg("x").noconvert(), arg("k"), "The k-th largest of x (float32 [n], no NaN), exactly (ops/topk.h).");
  m.def("statistical_topk", [](py::array x, double fraction) {
    if (!(fraction > 0.0 && fraction < 1.0))
      throw py::value_error("fraction must be in (0, 1), got " + std::to_string(fraction));
    const float* px = Checked<float>(x, "x", {-1});
    const size_t n = static_cast<size_t>(x.shape(0));
    py::array_t<int32_t> idx(static_cast<py::ssize_t>(n));
    py::array_t<float> shifted(static_cast<py::ssize_t>(n));
    const float q = static_cast<float>(InvNormalCdf(1.0 - fraction));
    TopKStats s;
    {
      py::gil_scoped_release release;
      s = StatisticalTopK(px, n, q, idx.mutable_data(), shifted.mutable_data());
    }
    idx.resize({static_cast<py::ssize_t>(s.count)});
    shifted.resize({static_cast<py::ssize_t>(s.count)});
    return py::make_tuple(idx, shifted, s.theta);
  }, arg("x").noconvert(), arg("fraction"),
     "theta = mean(x) + std(x) * Q(1 - fraction) (population std). Returns (idx of x > theta, "
     "x[idx] - theta, theta).");

  // --- norms, RoPE, activations
  m.def("rms_norm", [](py::array x, py::array w, py::array out, float eps) {
    const float* px = Checked<float>(x, "x", {-1});
    const py::ssize_t n = x.shape(0);
    const float* pw = Checked<float>(w, "w", {n});
    float* po = Checked<float>(out, "out", {n}, true);
    py::gil_scoped_release release;
    RmsNorm(px, pw, static_cast<size_t>(n), eps, po);
  }, arg("x").noconvert(), arg("w").noconvert(), arg("out").noconvert(), arg("eps") = 1e-6f,
     "out = x / sqrt(mean(x^2) + eps) * (1 + w).");
  m.def("rope_angles", [](double pos, double base, size_t m) {
    if (m == 0 || m % 2) throw py::value_error("m must be even and > 0");
    py::array_t<float> c(static_cast<py::ssize_t>(m / 2)), s(static_cast<py::ssize_t>(m / 2));
    RopeAngles(pos, base, m, c.mutable_data(), s.mutable_data());
    return py::make_tuple(c, s);
  }, arg("pos"), arg("base"), arg("m"), "(cos, sin) of pos * base^(-2i/m), i < m/2.");
  m.def("rope", [](py::array x, py::array cos, py::array sin) {
    float* px = Checked<float>(x, "x", {-1}, true);
    const py::ssize_t m = x.shape(0);
    if (m % 2) throw py::value_error("x: length must be even");
    const float* pc = Checked<float>(cos, "cos", {m / 2});
    const float* ps = Checked<float>(sin, "sin", {m / 2});
    py::gil_scoped_release release;
    Rope(px, static_cast<size_t>(m), pc, ps);
  }, arg("x").noconvert(), arg("cos").noconvert(), arg("sin").noconvert(),
     "In place: rotate pairs (i, i + m/2) of x by the angles given as cos/sin [m/2].");
  m.def("gelu_tanh", [](py::array x, py::array out) { Unary(x, out, GeluTanh); },
        arg("x").noconvert(), arg("out").noconvert(), "out = tanh-GELU(x).");
  m.def("softplus", [](py::array x, py::array out) { Unary(x, out, Softplus); },
        arg("x").noconvert(), arg("out").noconvert(), "out = log(1 + exp(x)).");
  m.def("softmax", [](py::array x, py::array out) {
    if (x.ndim() == 1 && x.shape(0) == 0) throw py::value_error("x: softmax of an empty vector");
    Unary(x, out, Softmax);
  }, arg("x").noconvert(), arg("out").noconvert(), "out = softmax(x).");
  m.def("softcap", [](py::array x, float cap, py::array out) {
    if (!(cap > 0.0f)) throw py::value_error("cap must be > 0");
    Unary(x, out, [cap](const float* a, size_t n, float* o) { SoftCap(a, n, cap, o); });
  }, arg("x").noconvert(), arg("cap"), arg("out").noconvert(), "out = cap * tanh(x / cap).");
  m.def("gelu_mul", [](py::array gate, py::array up, py::array out) {
    const float* pg = Checked<float>(gate, "gate", {-1});
    const py::ssize_t n = gate.shape(0);
    const float* pu = Checked<float>(up, "up", {n});
    float* po = Checked<float>(out, "out", {n}, true);
    py::gil_scoped_release release;
    GeluMul(pg, pu, static_cast<size_t>(n), po);
  }, arg("gate").noconvert(), arg("up").noconvert(), arg("out").noconvert(),
     "out = tanh-GELU(gate) * up.");

  // --- scalar weight codecs (the KV cache's bf16 rounding)
  m.def("bf16_bits", [](py::array x) {
    const float* px = Checked<float>(x, "x", {-1});
    py::array_t<uint16_t> out(x.shape(0));
    uint16_t* po = out.mutable_data();
    for (py::ssize_t i = 0; i < x.shape(0); ++i) po[i] = BF16BitsFromF32(px[i]);
    return out;
  }, arg("x").noconvert(), "bf16 bits of x [n] f32, rounded as the KV cache rounds (uint16 [n]).");
}

}  // namespace spark
