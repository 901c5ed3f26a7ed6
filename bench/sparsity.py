"""The quality/speed frontier of training-free sparsification (convert --sparsify).

For Gemma 3 270M (the embedded model, in --dtype: bf16 unless given): each variant is converted
from the dense engine file of that dtype, then measured in the same run as the dense model:
- perplexity on the two shipped texts (tests/data: KJV Ruth 1-2, Austen's Persuasion 1-2),
  sliding windows of --window tokens (stride window / 2);
- decode tok/s at --context positions (prefilled once per model with the texts' tokens, so the
  realised sparsity is the one on text), --rounds rounds of --steps decode steps (rewound
  after each step) of the dense model and the variant, in ABBA order; the ratio is the median
  of the per-round ratios, and a first row measures the dense model against itself;
- the realised FFN fraction and attended tokens per layer (engine counters, decode: the last
  round's steps only, a small sample) and, the fraction to quote, the FFN fraction over the
  whole of each text (engine counters while prefilling it in windows of --window tokens).
Random-weight shapes (--shapes gemma2-2b gemma3-1b) are measured for speed only.

    python bench/sparsity.py                      # the full frontier (~40 min on 2 cores)
    python bench/sparsity.py --quick              # a few variants
    python bench/sparsity.py --shapes gemma2-2b --shape-context 256
    python bench/sparsity.py --variants ffn=0.6,by=abs_act --no-speed --append \
        --output bench/results/sparsity-gemma3-270m.json   # add rows to an earlier run

Writes bench/results/sparsity-<date>.json and .png (perplexity vs decode speed).
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from spark_infer import bench as B
from spark_infer.config import preset

log = logging.getLogger("sparsity")
ROOT = Path(__file__).resolve().parents[1]
TEXTS = {"kjv_ruth": ROOT / "tests/data/kjv_ruth_1_2.txt",
         "austen": ROOT / "tests/data/austen_persuasion_1_2.txt"}
FRACTIONS = (0.75, 0.5, 0.3, 0.15, 0.08)


def label(spec: str, calibrated: bool) -> str:
    """A variant's row label: 'ffn=F BY[ wina][ rank=R][ refit=LAM] cal|gauss[ + attn=K]'."""
    from spark_infer.convert import SparsifySpec

    s = SparsifySpec.parse(spec)
    parts = []
    if s.ffn < 1:
        parts.append(" ".join([f"ffn={s.ffn:g}", s.by, *(["wina"] if s.weighted else []),
                               *([f"rank={s.rank}"] if s.rank else []),
                               *([f"refit={s.refit:g}"] if s.refit else []),
                               "cal" if calibrated else "gauss"]))
    if s.attn:
        parts.append(f"attn={s.attn}")
    return " + ".join(parts)


def variants(quick: bool, specs: list[str] | None = None) -> list[tuple[str, str, bool]]:
    """(label, --sparsify spec, calibrated) of every variant; the dense model is 'dense'.
    specs: instead of the default list, these (calibrated; ':gauss' appended: not)."""
    if specs:
        out = [(spec.removesuffix(":gauss"), not spec.endswith(":gauss")) for spec in specs]
    else:
        fractions = (0.75, 0.5) if quick else FRACTIONS
        out = [(f"ffn={f},by=abs_act", True) for f in fractions]
        if not quick:
            out += [(f"ffn={f},by=abs_act", False) for f in fractions]
            out += [(f"ffn={f},by=abs_gelu", True) for f in (0.75, 0.5, 0.3)]
            out.append(("ffn=0.5,by=gate", True))
        out += [(f"attn={k}", False) for k in ((128,) if quick else (64, 128, 256))]
        out += [(f"ffn=0.75,by=abs_act,attn={k}", True) for k in ((128,) if quick else (128, 256))]
    return [(label(spec, calibrated), spec, calibrated) for spec, calibrated in out]


def text_tokens(path: Path, n: int) -> np.ndarray:
    """n token ids of the shipped texts (repeated as needed): decode runs on real text, since
    the realised FFN fraction on random ids is not the one on text."""
    from spark_infer.tokenizer import Tokenizer

    tok = Tokenizer.from_engine_file(path)
    ids: list[int] = []
    while len(ids) < n:
        for p in TEXTS.values():
            ids += tok.encode(p.read_text(encoding="utf-8"), add_bos=not ids)
    return np.asarray(ids[:n], np.int32)


def perplexities(path: Path, window: int) -> dict[str, float]:
    import spark_infer

    m = spark_infer.load(str(path), context_length=window)
    return {name: m.perplexity(p.read_text(encoding="utf-8"), window=window,
                               stride=window // 2) for name, p in TEXTS.items()}


def realised_on_texts(path: Path, window: int) -> dict[str, list[float]]:
    """Per text, the engine's FFN kept fraction per layer over all of the text, token-weighted:
    the text is prefilled from an empty cache in consecutive windows <bos> + the next
    `window` - 1 tokens. Thousands of tokens, where the decode counters of speed() see a dozen
    (per token the fraction varies by several points)."""
    from spark_infer import _core
    from spark_infer.tokenizer import Tokenizer

    tok = Tokenizer.from_engine_file(path)
    engine = _core.Engine(str(path), context_length=window)
    out = {}
    for name, p in TEXTS.items():
        ids = np.asarray(tok.encode(p.read_text(encoding="utf-8"), add_bos=True), np.int32)
        total, n = 0.0, 0
        for start in range(1, len(ids), window - 1):
            part = np.concatenate([ids[:1], ids[start:start + window - 1]])
            engine.reset()
            engine.prefill(part, chunk=64)
            total = total + engine.stats()["ffn_active_fraction"] * len(part)
            n += len(part)
        out[name] = [round(float(f), 5) for f in total / n]
    return out


def speed(dense: "B.EngineRunner", other: "B.EngineRunner", tokens: np.ndarray, context: int,
          steps: int, rounds: int) -> dict:
    """Alternating rounds of decode at `context`: tok/s of both, ratio median of per-round."""
    other.extend(tokens, context, 64)
    dense.extend(tokens, context, 64)
    step_tokens = tokens[context:context + steps]
    d, o, ratios, ffn, att = [], [], [], None, None
    for i in range(rounds):
        # ABBA order: whichever runs second in a round measured ~4 % slower (the control row).
        if i % 2 == 0:
            sd = dense.decode(context, step_tokens)
            so = other.decode(context, step_tokens)
        else:
            so = other.decode(context, step_tokens)
            sd = dense.decode(context, step_tokens)
        d.append(sd.tok_s)
        o.append(so.tok_s)
        ratios.append(so.tok_s / sd.tok_s)
        ffn, att = so.ffn_active, so.attn_tokens
    return {"dense_tok_s": statistics.median(d), "tok_s": statistics.median(o),
            "speedup": statistics.median(ratios), "speedup_min": min(ratios),
            "speedup_max": max(ratios), "ffn_active_fraction": ffn, "attn_mean_tokens": att}


def real_model(args: argparse.Namespace, out: dict, run: dict) -> None:
    from spark_infer import models
    from spark_infer.convert import convert

    dense_path = models.resolve_model("gemma3-270m", dtype=args.dtype)
    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    tokens = text_tokens(dense_path, args.context + args.steps + 1)
    dense = B.EngineRunner("dense", dense_path, "gemma3-270m", args.context + args.steps + 1, 64)
    dense.set_threads(args.threads)
    # --append: the rows of the earlier run at --output stay (a new row replaces the one with
    # its label), each new row records the command that measured it.
    rows = list(out.get("gemma3_270m", [])) if args.append else []
    t0 = time.perf_counter()
    ppl = perplexities(dense_path, args.window)
    if rows and rows[0]["label"] == "dense":
        old = rows[0]["perplexity"]
        if any(abs(ppl[k] / old[k] - 1) > 1e-3 for k in ppl):
            log.warning("dense perplexity %s differs from the earlier run's %s: the rows are "
                        "not comparable", ppl, old)
        rows[0]["perplexity_rerun"] = ppl
    else:
        rows.insert(0, {"label": "dense", "spec": None, "calibrated": False, "perplexity": ppl,
                        "speedup": 1.0, "tok_s": None, "ffn_active_fraction": None})
    log.info("dense: %s (%.0f s)", ppl, time.perf_counter() - t0)
    # A control first: the dense file against itself (its "speedup" shows the method's bias).
    control = [] if args.no_speed else [("dense (control)", None, False)]
    for label, spec, calibrated in [*control, *variants(args.quick, args.variants)]:
        path = work / ("".join(c if c.isalnum() or c in "._-" else "_" for c in label)
                       + ("" if args.dtype == "bf16" else "." + args.dtype) + ".spark")
        t0 = time.perf_counter()
        if spec is None:
            path = dense_path
        else:
            convert(dense_path, path, dtype=args.dtype, progress=False, sparsify=spec,
                    calibrate=args.calibrate if calibrated else None)
        conv_s = time.perf_counter() - t0
        ppl = rows[0]["perplexity"] if spec is None else perplexities(path, args.window)
        if args.no_speed:
            sp = {"speedup": None, "tok_s": None, "ffn_active_fraction": None}
        else:
            runner = B.EngineRunner(label, path, spec, args.context + args.steps + 1, 64)
            runner.set_threads(args.threads)
            sp = speed(dense, runner, tokens, args.context, args.steps, args.rounds)
            runner.close()
        on_text = realised_on_texts(path, args.window) if spec is not None else None
        row = {"label": label, "spec": spec, "calibrated": calibrated, "perplexity": ppl,
               "convert_s": conv_s, **sp, "ffn_realised_on_text": on_text,
               **run}
        old = next((r for r in rows if r["label"] == label), None)
        if args.no_speed and old is not None and old.get("speedup") is not None:
            # Re-measured without timing: the earlier run's decode figures stay, marked as such.
            row = old | {k: v for k, v in row.items() if k not in sp} | {
                "speed_command": old.get("speed_command", out["command"])}
        rows = [r for r in rows if r["label"] != label] + [row]
        log.info("%s: ppl %s, speed %s, ffn on text %s", label,
                 {k: round(v, 3) for k, v in ppl.items()}, sp["speedup"],
                 on_text and {k: round(float(np.mean(v)), 4) for k, v in on_text.items()})
        if not args.keep and spec is not None:
            path.unlink()
        out["gemma3_270m"] = rows
        _save(out, args)
    dense.close()


def shapes(args: argparse.Namespace, out: dict) -> None:
    root = Path(args.work_dir) / "random"
    rows = out.setdefault("shapes", [])
    sparse_specs = {"ffn=0.5 abs_act": dict(ffn_select_by="abs_act"),
                    "ffn=0.5 abs_gelu": dict(ffn_select_by="abs_gelu"),
                    "ffn=0.5 abs_gelu rank=256": dict(ffn_select_by="abs_gelu", ffn_gate_rank=256)}
    for name in args.shapes:
        cfg = preset(name)
        ctx = args.shape_context
        tokens = B.bench_tokens(0, cfg.vocab_size, ctx + args.steps + 1)
        dense = B.EngineRunner(name, B._random_model_file(cfg, name, "bf16", 0, root), name,
                               ctx + args.steps + 1, 64)
        dense.set_threads(args.threads)
        variants_ = dict(sparse_specs)
        variants_["ffn=0.5 abs_gelu rank=256 + attn=128"] = dict(
            ffn_select_by="abs_gelu", ffn_gate_rank=256, attn_sparse_topk=128,
            attn_sparse_dim=cfg.head_dim // 4, attn_sparse_recent=32)
        for label, extra in variants_.items():
            scfg = cfg.replace(ffn_sparse_fraction=0.5, **extra)
            path = B._random_model_file(scfg, name + "-sparse", "bf16", 0, root)
            runner = B.EngineRunner(label, path, name, ctx + args.steps + 1, 64)
            runner.set_threads(args.threads)
            sp = speed(dense, runner, tokens, ctx, args.steps, args.rounds)
            runner.close()
            rows.append({"shape": name, "label": label, "context": ctx, **sp})
            log.info("%s %s @%d: %.2f vs %.2f tok/s (%.3fx)", name, label, ctx, sp["tok_s"],
                     sp["dense_tok_s"], sp["speedup"])
            _save(out, args)
        dense.close()


def _save(out: dict, args: argparse.Namespace) -> None:
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    with open(args.output, "w", encoding="utf-8") as f:
        json.dump(out, f, indent=1)


def plot(out: dict, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = out.get("gemma3_270m", [])
    fig, ax = plt.subplots(figsize=(8, 5.5))
    for r in rows:
        if r["speedup"] is None:
            continue                    # measured with --no-speed
        ppl = r["perplexity"]["austen"]
        ax.scatter(r["speedup"], ppl, color="k" if r["spec"] is None else
                   ("C0" if "abs_act" in r["label"] else "C1" if "abs_gelu" in r["label"] else
                    "C2" if "attn" in r["label"] and "ffn" not in r["label"] else "C3"))
        ax.annotate(r["label"], (r["speedup"], ppl), fontsize=6, xytext=(3, 2),
                    textcoords="offset points")
    ax.set_yscale("log")
    ax.set_xlabel(f"decode speed vs dense at {out['args']['context']} context (same run)")
    ax.set_ylabel("perplexity, Austen Persuasion 1-2 (log)")
    ax.set_title(f"Gemma 3 270M, training-free sparsity ({out['machine']['cpu']}, "
                 f"{out['machine']['highway_target']}, {out['args']['threads']} threads)",
                 fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=130)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="a few variants only")
    ap.add_argument("--variants", nargs="*", default=None, metavar="SPEC",
                    help="--sparsify specs to measure instead of the default list (calibrated; "
                         "append :gauss for the Gaussian quantile)")
    ap.add_argument("--dtype", default="bf16", choices=["f32", "bf16", "int8", "q4"],
                    help="weights of the dense model and the variants (embedding included)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--context", type=int, default=4096 - 9, help="decode position (270M)")
    ap.add_argument("--steps", type=int, default=12, help="decode steps per round")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--window", type=int, default=1024, help="perplexity window")
    # The long text starts with calibration.txt: its first 2048 tokens (all that a calibration
    # without refit reads) are the same.
    ap.add_argument("--calibrate", default=str(ROOT / "python/spark_infer/data/calibration_long.txt"))
    ap.add_argument("--shapes", nargs="*", default=[], help="random shapes, speed only")
    ap.add_argument("--shape-context", type=int, default=256)
    ap.add_argument("--no-real", action="store_true", help="skip the Gemma 3 270M frontier")
    ap.add_argument("--keep", action="store_true", help="keep the converted variants")
    ap.add_argument("--no-speed", action="store_true",
                    help="perplexity and realised fractions only (no decode timing)")
    ap.add_argument("--append", action="store_true",
                    help="add the rows to the JSON at --output (its other rows and fields stay)")
    ap.add_argument("--work-dir", default=str(Path.home() / ".cache/spark-infer/bench/sparsity"))
    ap.add_argument("--output", default=str(
        ROOT / f"bench/results/sparsity-{datetime.date.today().isoformat()}.json"))
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    run = {"command": " ".join(["python", "bench/sparsity.py", *(argv or sys.argv[1:])]),
           "commit": B._commit()}
    out = {**run, "machine": B.machine_info(), "args": vars(args), "llc_bytes": _llc()}
    if args.append and Path(args.output).is_file():
        # The earlier run's command, machine and args describe its rows; this run's are listed
        # under "appended" and in each of its rows.
        earlier = json.loads(Path(args.output).read_text(encoding="utf-8"))
        out = earlier | {"appended": [*earlier.get("appended", []),
                                      {**run, "machine": out["machine"], "args": out["args"]}]}
    if not args.no_real:
        real_model(args, out, run)
    if args.shapes:
        shapes(args, out)
    _save(out, args)
    if out.get("gemma3_270m"):
        plot(out, str(Path(args.output).with_suffix(".png")))
    return 0


def _llc() -> int:
    best = 0
    for i in range(8):
        p = Path(f"/sys/devices/system/cpu/cpu0/cache/index{i}/size")
        if p.is_file():
            t = p.read_text().strip()
            mult = {"K": 1 << 10, "M": 1 << 20}.get(t[-1], 1)
            best = max(best, int(t.rstrip("KM")) * mult)
    return best


if __name__ == "__main__":
    sys.exit(main())
