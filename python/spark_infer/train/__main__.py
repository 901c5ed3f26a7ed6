"""python -m spark_infer.train --preset NAME --steps N --out DIR [--kind spark|dense]
[--threads T] [--data kjv|calibration|FILE] [--seed S] [--dtype f32|bf16|int8]

Writes DIR/model.spark (engine file), DIR/checkpoint/ (safetensors + spark_config.json +
tokenizer.model; `spark-infer convert` reads it) and DIR/report.json."""

from __future__ import annotations

import argparse
import dataclasses
import sys


def main(argv: list[str] | None = None) -> int:
    try:
        import torch  # noqa: F401
    except ImportError:
        print("error: the trainer needs PyTorch: pip install 'spark-infer[train]'",
              file=sys.stderr)
        return 2
    from .trainer import KINDS, PRESETS, preset, train

    ap = argparse.ArgumentParser(prog="python -m spark_infer.train",
                                 description="Train a Spark or dense Gemma 3 model from scratch.")
    bases = sorted({name.rsplit("-", 1)[0] for name in PRESETS})
    ap.add_argument("--preset", required=True,
                    help=f"one of {', '.join(PRESETS)} (or a base name {', '.join(bases)} with "
                         f"--kind)")
    ap.add_argument("--steps", type=int, required=True, help="optimizer steps")
    ap.add_argument("--out", required=True, help="output directory")
    ap.add_argument("--kind", choices=KINDS, default=None, help="override the preset's kind")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--data", default=None,
                    help="'kjv' (Debian bible-kjv), 'calibration' (shipped text) or a text file "
                         "(default: the preset's)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dtype", choices=["f32", "bf16", "int8"], default="f32",
                    help="matrix dtype of the engine file (default f32)")
    a = ap.parse_args(argv)
    name = a.preset
    if name not in PRESETS and a.kind is not None and f"{name}-{a.kind}" in PRESETS:
        name = f"{name}-{a.kind}"
    try:
        p = preset(name)
        changes = {}
        if a.kind is not None:
            changes["kind"] = a.kind
        if a.data is not None:
            changes["data"] = a.data
        p = dataclasses.replace(p, **changes)
        label = f"{name.rsplit('-', 1)[0]}-{p.kind}" if name.endswith(KINDS) else name
        train(p, a.steps, a.out, threads=a.threads, seed=a.seed, dtype=a.dtype,
              preset_name=label)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {a.out}/model.spark, {a.out}/checkpoint/ and {a.out}/report.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
