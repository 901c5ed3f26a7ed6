"""How much each q4 matrix group costs, and whether GPTQ helps, on Gemma 3 270M.

The matrices are quantized to q4 (the weighted least-squares fit of `convert --dtype q4`, or
GPTQ with the same fit per block), written back as float32 into an f32 engine file with an int8
LM head, and scored with the bench's perplexity (bench/sparsity.py: both shipped texts, windows
of 1024, stride 512). Computing in f32 isolates the weights' rounding from the q4 kernels'.

- `fit` (what the converter does): each block fitted by least squares weighted by its columns'
  input mean square on the calibration text.
- `gptq`: columns quantized left to right, each one's rounding error spread over the columns
  not yet quantized through the inverse Hessian H = E[x x^T] of the layer's inputs (Frantar et
  al., 2022), the block's (d, m) fitted on the updated weights when the walk reaches the block.
Both walk the layers in order on the already-quantized model (`walk_matrix_inputs`).

    python bench/q4_methods.py --method fit                       # all matrices
    python bench/q4_methods.py --method gptq --damp 0.01
    python bench/q4_methods.py --method fit --only ffn_gate,ffn_up # one group, the rest f32
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from sparsity import perplexities  # noqa: E402

from spark_infer import models  # noqa: E402
from spark_infer.convert.importance import walk_matrix_inputs  # noqa: E402
from spark_infer.data import calibration_text_path  # noqa: E402
from spark_infer.fileformat import read_engine_file, write_engine_file  # noqa: E402
from spark_infer.tokenizer import Tokenizer  # noqa: E402
from spark_infer.weights import (Q4_GROUP, dequantize_q4, q4_codes, q4_fit,  # noqa: E402
                                 q4_stored_params, quantize_q4)


def fit_weights(imp: np.ndarray) -> np.ndarray:
    """The converter's column weights for the fit (weights.quantize_q4's importance rule)."""
    return (imp / max(float(imp.mean()), 1e-30) + 1e-3).astype(np.float32)


def gptq_q4(w: np.ndarray, h: np.ndarray, damp: float, block: int = 128) -> np.ndarray:
    """q4 values (dequantized, float32) of w [rows, cols] by GPTQ with Hessian h [cols, cols]."""
    W = w.astype(np.float32).copy()
    rows, cols = W.shape
    H = h.astype(np.float64).copy()
    diag = np.diag(H).copy()
    dead = diag == 0
    H[dead, dead] = 1.0
    W[:, dead] = 0.0
    H[np.diag_indices(cols)] += damp * diag.mean()
    U = np.linalg.cholesky(np.linalg.inv(H)).T.astype(np.float32)   # H^-1 = U^T U
    wt = fit_weights(diag)
    out = np.empty_like(W)
    for i1 in range(0, cols, block):          # block % Q4_GROUP == 0: groups lie in one block
        i2 = min(i1 + block, cols)
        W1, E = W[:, i1:i2].copy(), np.zeros((rows, i2 - i1), np.float32)
        for i in range(i2 - i1):
            c = i1 + i
            if c % Q4_GROUP == 0:
                g = np.ascontiguousarray(W1[:, i:i + Q4_GROUP])
                d, m = q4_stored_params(*q4_fit(g, np.broadcast_to(wt[c:c + Q4_GROUP], g.shape)))
            q = q4_codes(W1[:, i:i + 1], d, m)[:, 0] * d + m
            out[:, c] = q
            err = (W1[:, i] - q) / U[c, c]
            W1[:, i:] -= np.outer(err, U[c, c:i2])
            E[:, i] = err
        W[:, i2:] -= E @ U[i1:i2, i2:]
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--method", choices=["fit", "gptq"], default="fit")
    ap.add_argument("--only", default="", help="comma-separated name parts: only those matrices")
    ap.add_argument("--tokens", type=int, default=1024, help="calibration tokens")
    ap.add_argument("--damp", type=float, default=0.01, help="GPTQ: H += damp mean(diag H) I")
    ap.add_argument("--window", type=int, default=1024)
    args = ap.parse_args(argv)
    src = models.resolve_model("gemma3-270m", "f32", progress=False, embed_dtype="f32")
    cfg, proto, t = read_engine_file(src, dequantize=True)
    cur = dict(t)
    ids = Tokenizer(proto).encode(calibration_text_path().read_text(encoding="utf-8"),
                                  add_bos=True)[:args.tokens]
    only = [s for s in args.only.split(",") if s]

    def quantize(names: list[str], x: np.ndarray) -> None:
        names = [n for n in names if n != "token_embd" and (not only or any(o in n for o in only))]
        if not names:
            return
        x64 = x.astype(np.float64)
        h = x64.T @ x64 / x.shape[0]
        for n in names:
            cur[n] = (gptq_q4(t[n], h, args.damp) if args.method == "gptq"
                      else dequantize_q4(quantize_q4(t[n], np.diag(h))))

    t0 = time.perf_counter()
    walk_matrix_inputs(cfg, cur.__getitem__, ids, quantize)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "q4-as-f32.spark"
        write_engine_file(out, cfg, cur, dtype="f32", tokenizer_proto=proto, embed_dtype="int8")
        ppl = perplexities(out, args.window)
    print(json.dumps({"command": "python bench/q4_methods.py " + " ".join(argv or sys.argv[1:]),
                      "method": args.method, "only": only or "all", "tokens": len(ids),
                      "quantize_s": round(time.perf_counter() - t0, 1), "perplexity": ppl}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
