"""Which weight setting should the embedded Gemma 3 270M use? Perplexity against f32 and decode
speed of each (matrix dtype, embedding / LM-head dtype) pair, in one run.

The tied 262144 x 640 embedding is 63 % of the model's bytes and is read whole once per decoded
token (the LM head), so its dtype sets most of the decode time. For every setting:
- perplexity on the two shipped texts (tests/data), sliding windows of --window tokens, stride
  window / 2, relative to the f32 model's;
- decode tok/s at each --context against the bf16 model, --rounds alternating (ABBA) rounds of
  --steps steps; the ratio is the median of the per-round ratios (sparsity.speed).
The chosen default is the fastest setting (at the largest context) whose perplexity stays within
--max-loss (1 %) of f32's on both texts.

    python bench/lm_head.py --output bench/results/lm-head-gemma3-270m.json
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from sparsity import _llc, perplexities, speed, text_tokens  # noqa: E402

from spark_infer import bench as B  # noqa: E402

log = logging.getLogger("lm_head")
SETTINGS = ("f32/f32", "bf16/bf16", "bf16/int8", "int8/int8")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--settings", nargs="+", default=list(SETTINGS),
                    help="DTYPE/EMBED_DTYPE pairs, +screen for the screened LM head "
                         "(default: %(default)s)")
    ap.add_argument("--context", type=int, nargs="+", default=[256, 4096])
    ap.add_argument("--window", type=int, default=1024)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--max-loss", type=float, default=0.01)
    ap.add_argument("--screen-margin", type=float, default=10.0,
                    help="the margin of settings ending in +screen (the screened LM head)")
    ap.add_argument("--output", default="bench/results/lm-head-gemma3-270m.json")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from spark_infer import models

    def path_of(setting: str) -> Path:
        base, screened = setting.removesuffix("+screen"), setting.endswith("+screen")
        dtype, embed = base.split("/")
        path = models.resolve_model("gemma3-270m", dtype, progress=False, embed_dtype=embed)
        margin = args.screen_margin if screened else 0.0
        from spark_infer.fileformat import read_engine_header

        if read_engine_header(path)["config"].get("lm_head_screen_margin", 0.0) == margin:
            return path
        # The same file with the screen as the setting asks (the embedded q4 file carries one,
        # models.DEFAULT_LM_HEAD_SCREEN): made once.
        out = models.cache_dir() / "bench" / f"{path.stem}.screen{margin:g}.spark"
        if not out.exists():
            from spark_infer.convert import convert

            convert(path, out, dtype=dtype, embed_dtype=embed, progress=False,
                    lm_head_screen=margin)
        return out

    out = {"machine": {**B.machine_info(), "llc_bytes": _llc(), "threads": args.threads},
           "command": "python bench/lm_head.py " + " ".join(argv or sys.argv[1:]),
           "settings": {}}
    base = path_of("bf16/bf16")
    n = max(args.context) + args.steps + 1
    tokens = text_tokens(base, n)
    runners = {}
    for setting in ["bf16/bf16", *[s for s in args.settings if s != "bf16/bf16"]]:
        path = path_of(setting)
        row = {"file_bytes": path.stat().st_size,
               "perplexity": perplexities(path, args.window), "decode": {}}
        runners[setting] = B.EngineRunner(setting, path, "gemma3-270m", n, 64)
        runners[setting].set_threads(args.threads)
        out["settings"][setting] = row
        log.info("%s: ppl %s", setting, row["perplexity"])
    for ctx in args.context:
        for setting, runner in runners.items():
            sp = speed(runners["bf16/bf16"], runner, tokens, ctx, args.steps, args.rounds)
            out["settings"][setting]["decode"][str(ctx)] = {
                "tok_s": sp["tok_s"], "vs_bf16": sp["speedup"],
                "vs_bf16_min": sp["speedup_min"], "vs_bf16_max": sp["speedup_max"]}
            log.info("%s @%d: %.1f tok/s, %.3fx bf16", setting, ctx, sp["tok_s"], sp["speedup"])
    ref = out["settings"].get("f32/f32", out["settings"]["bf16/bf16"])["perplexity"]
    ok = []
    for setting, row in out["settings"].items():
        row["ppl_loss_vs_f32"] = {k: v / ref[k] - 1 for k, v in row["perplexity"].items()}
        if max(row["ppl_loss_vs_f32"].values()) <= args.max_loss:
            ok.append(setting)
    last = str(max(args.context))
    out["chosen"] = max(ok, key=lambda s: out["settings"][s]["decode"][last]["vs_bf16"])
    log.info("chosen: %s", out["chosen"])
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(out, indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
