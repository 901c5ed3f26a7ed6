"""The neuron-grouped (CSR) Spark FFN chunk kernels alone: K2 masked matmul and V sparse matmul.

    python bench/spark_chunk.py --preset spark-2b --dtype bf16 --threads 2 --chunk 64

Times `_core.csr_masked_matmul` over K2 [d_ff, d - r] and `_core.csr_sparse_matmul` over V
[d_ff, d] for one chunk of T tokens, with ~ffn_topk_fraction of the neurons kept per token
(independent random selections), on random weights of --layers distinct layers (cycled, so the
weights come from DRAM: 4 layers of spark-2b bf16 are ~400 MB); prints the median ms per chunk,
GFLOP/s (FMA = 2, kept pairs only) and GB/s of weight rows read (each touched row once), and
the floor the read rate sets (--read-gbps). `--bf16-tile off` runs AVX3 without the
AVX512_BF16 tile (`_core.set_avx512_bf16(False)`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from profile_ffn import _time  # noqa: E402  (median of one pass per layer, one warm-up)

from spark_infer import _core  # noqa: E402
from spark_infer.config import preset  # noqa: E402
from spark_infer.weights import f32_to_bf16, quantize_int8, quantize_q4  # noqa: E402


def make(rng: np.random.Generator, rows: int, cols: int, dtype: str):
    w = (rng.random((rows, cols), dtype=np.float32) - 0.5) * np.float32(2 * 3 ** 0.5 / cols ** 0.5)
    if dtype == "bf16":
        return f32_to_bf16(w), None, 2 * cols
    if dtype == "int8":
        q, s = quantize_int8(w)
        return q, s, cols
    if dtype == "q4":
        return quantize_q4(w), None, cols // 32 * 20
    return w, None, 4 * cols


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="spark-2b")
    ap.add_argument("--dtype", default="bf16", choices=["f32", "bf16", "int8", "q4"])
    ap.add_argument("--chunk", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--bf16-tile", choices=["on", "off"], default="on")
    ap.add_argument("--read-gbps", type=float, default=27.0, help="DRAM read rate for the floor")
    args = ap.parse_args()
    _core.set_num_threads(args.threads)
    if args.bf16_tile == "off" and _core.has_avx512_bf16():
        _core.set_avx512_bf16(False)
    c = preset(args.preset)
    d, ff, r, T = c.d_model, c.d_ff, c.ffn_predictor_dim, args.chunk
    rng = np.random.default_rng(0)
    active = rng.random((T, ff)) < c.ffn_topk_fraction
    offsets = np.concatenate([[0], np.cumsum(active.sum(0))]).astype(np.int32)
    tokens = np.concatenate([np.nonzero(active[:, i])[0] for i in range(ff)]).astype(np.int32)
    nnz, touched = len(tokens), int(np.count_nonzero(active.any(0)))
    x = rng.standard_normal((T, d - r), dtype=np.float32)
    u = rng.standard_normal(nnz, dtype=np.float32)
    k2 = [make(rng, ff, d - r, args.dtype) for _ in range(args.layers)]
    v = [make(rng, ff, d, args.dtype) for _ in range(args.layers)]
    out_k = np.empty(nnz, np.float32)
    out_v = np.empty((T, d), np.float32)
    t_k2 = _time(lambda i: _core.csr_masked_matmul(k2[i][0], x, offsets, tokens, out_k,
                                                         scale=k2[i][1]), args.layers, args.repeats)
    t_v = _time(lambda i: _core.csr_sparse_matmul(v[i][0], u, offsets, tokens, out_v,
                                                        scale=v[i][1]), args.layers, args.repeats)
    tile = "on" if _core.use_avx512_bf16() else "off"
    print(f"{args.preset} {args.dtype}, chunk {T}, {args.threads} threads, Highway "
          f"{_core.current_target()}, AVX512_BF16 tile {tile}; kept {nnz / T:.0f} of {ff} per "
          f"token, {touched} neurons kept by some token; median of {args.repeats} x "
          f"{args.layers} layers")
    print(f"{'kernel':<28} {'ms/chunk':>9} {'GFLOP/s':>8} {'GB/s':>7} {'floor ms':>9}")
    for name, sec, cols, row_bytes in (("K2 csr_masked_matmul", t_k2, d - r, k2[0][2]),
                                       ("V csr_sparse_matmul", t_v, d, v[0][2])):
        nbytes = touched * row_bytes
        print(f"{name:<28} {1e3 * sec:9.2f} {2.0 * nnz * cols / sec / 1e9:8.1f} "
              f"{nbytes / sec / 1e9:7.1f} {1e3 * nbytes / args.read_gbps / 1e9:9.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
