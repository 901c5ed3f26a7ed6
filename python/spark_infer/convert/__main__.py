"""python -m spark_infer.convert SRC OUT [--dtype bf16] [--embed-dtype D] [--sparsify SPEC]
[--calibrate TEXT] [--lm-head-screen MARGIN] [--quiet]"""

from __future__ import annotations

import argparse
import sys
import time

from . import ConversionError, convert


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m spark_infer.convert",
                                 description="Convert a Gemma 2/3 GGUF file or Hugging Face "
                                             "checkpoint directory into an engine file.")
    ap.add_argument("src", help="a .gguf file or a directory with config.json + *.safetensors")
    ap.add_argument("out", help="the engine file to write (*.spark)")
    ap.add_argument("--dtype", default="bf16", choices=["f32", "bf16", "int8", "q4", "q5"],
                    help="matrix dtype (default bf16)")
    ap.add_argument("--embed-dtype", default=None, choices=["f32", "bf16", "int8", "q4", "q5"],
                    help="token_embd dtype (default: --dtype)")
    ap.add_argument("--sparsify", default=None, metavar="SPEC",
                    help="training-free sparsity, e.g. ffn=0.5 or ffn=0.5,attn=128")
    ap.add_argument("--calibrate", default=None, metavar="TEXT",
                    help="text file for the per-layer FFN quantiles, or weighing the q4 fit")
    ap.add_argument("--lm-head-screen", type=float, default=None, metavar="MARGIN",
                   help="add the screened LM head: a 4-bit copy (screen4: 128-weight blocks; "
                        "d_model a multiple of 128) of the embedding scores every "
                        "token, logits within MARGIN of the largest are recomputed exactly "
                        "(e.g. 10; 0 removes it; default: as the source)")
    ap.add_argument("--quiet", action="store_true", help="no progress bar")
    a = ap.parse_args(argv)
    t0 = time.perf_counter()
    try:
        out = convert(a.src, a.out, dtype=a.dtype, progress=not a.quiet,
                      embed_dtype=a.embed_dtype, sparsify=a.sparsify, calibrate=a.calibrate,
            lm_head_screen=a.lm_head_screen)
    except ConversionError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if not a.quiet:
        print(f"wrote {out} in {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
