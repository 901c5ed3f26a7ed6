"""Markdown tables of recorded bench results (bench/results/*.json), for bench/README.md.

    python bench/summarize.py bench/results/2b-bf16.json bench/results/gemma3-270m.json

Prints, per file: the machine and command, one row per (model, mode, threads, context) with
tok/s (median, min-max), ms per token and its split (attention incl. projections / FFN / LM head
/ other), effective GB/s against the bandwidth measured in the same run, FFN active fraction and
attended tokens; then the ratios; then the issue's targets where the file has their points.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

# (description, ratio a, b, mode, context, threshold) for the targets (2 threads).
TARGETS = [
    ("Spark-2B / Gemma-2-2B decode at 4096 context", "spark-2b", "gemma2-2b", "decode", 4096, 1.8),
    ("Spark-2B / Gemma-2-2B prefill, 64-token chunks", "spark-2b", "gemma2-2b", "prefill", None,
     1.9),
]
BANDWIDTH_TARGET = 0.85


def _fmt(x: float) -> str:
    return f"{x:.3g}" if x < 100 else f"{x:.0f}"


def table(rep: dict[str, Any]) -> str:
    m = rep["machine"]
    bw = ", ".join(f"{v:.1f} GB/s with {k} thread{'s' if k != '1' else ''}"
                   for k, v in rep["bandwidth_gbs"].items())
    out = [f"Machine: {m['cpu']}, {m['physical_cores']} cores ({m['logical_cpus']} logical), "
           f"Highway target {m['highway_target']}; read bandwidth {bw}. "
           f"Commit {rep['commit']}, {rep['date']}.", "",
           "```", " ".join(rep["command"]), "```", "",
           "| model | mode | thr | ctx | tok/s median (min-max) | ms/tok | attn / ffn / logits / "
           "other ms | GB/s (% of bw) | FFN active | attended |",
           "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|"]
    for r in rep["results"]:
        t = r["tok_s"]
        bd = r.get("breakdown_ms_per_token")
        split = (" / ".join(_fmt(bd[k]) for k in ("attention", "ffn", "logits"))
                 + " / " + _fmt(bd["other"] + bd["embed"])) if bd else "-"
        if "effective_gbs" in r:
            frac = r.get("bandwidth_fraction")
            gbs = f"{r['effective_gbs']['median']:.1f}" + (
                f" ({100 * frac:.0f}%)" if frac is not None else "") + (
                "~" if r.get("bytes_per_token", {}).get("approximate") else "")
        elif "gflops" in r:
            gbs = f"{r['gflops']:.0f} GFLOP/s"
        else:
            gbs = "-"
        ffn = f"{100 * r['ffn_active_mean']:.1f}%" if "ffn_active_mean" in r else "-"
        att = f"{r['attn_tokens_mean']:.0f}" if "attn_tokens_mean" in r else "-"
        out.append(f"| {r['model']} | {r['mode']} | {r['threads']} | {r['context']} | "
                   f"{_fmt(t['median'])} ({_fmt(t['min'])}-{_fmt(t['max'])}) | "
                   f"{r['ms_per_token']:.1f} | {split} | {gbs} | {ffn} | {att} |")
    if rep["ratios"]:
        out += ["", "| ratio (tok/s) | mode | thr | ctx | median (min-max) |",
                "|---|---|--:|--:|--:|"]
        for q in rep["ratios"]:
            out.append(f"| {q['a']} / {q['b']} | {q['mode']} | {q['threads']} | {q['context']} | "
                       f"{q['median']:.2f}x ({q['min']:.2f}-{q['max']:.2f}) |")
    for note in rep["notes"]:
        out.append(f"\nNote: {note}")
    return "\n".join(out) + "\n"


def _components(rep: dict[str, Any], r: dict[str, Any]) -> dict[str, float] | None:
    b = r.get("bytes_per_token", {}).get("by_component")
    if b is not None:
        return b
    info = {m["label"]: m for m in rep["models"]}[r["model"]]
    if info["kind"] != "engine" or not Path(info["path"]).is_file():
        return None
    from spark_infer import bench
    from spark_infer.config import ModelConfig

    return bench.decode_bytes_per_token(ModelConfig.from_dict(info["config"]),
                                        bench.tensor_bytes(info["path"]), r["context"],
                                        r["ffn_active_fraction"],
                                        r["attn_mean_tokens"])["by_component"]


def component_table(rep: dict[str, Any]) -> str:
    """Decode: per component, ms per token, MB touched and GB/s (% of the probe)."""
    out = ["| model | thr | ctx | attention ms, MB, GB/s | FFN ms, MB, GB/s | "
           "logits ms, MB, GB/s | probe GB/s |", "|---|--:|--:|--:|--:|--:|--:|"]
    for r in rep["results"]:
        if r["mode"] != "decode" or "breakdown_ms_per_token" not in r:
            continue
        comp = _components(rep, r)
        if comp is None:
            continue
        bw = r.get("bandwidth_gbs")
        cells = []
        for k in ("attention", "ffn", "logits"):
            ms = r["breakdown_ms_per_token"][k]
            gbs = comp[k] / ms / 1e6 if ms > 0 else 0.0
            pct = f" ({100 * gbs / bw:.0f}%)" if bw else ""
            cells.append(f"{ms:.1f}, {comp[k] / 1e6:.0f}, {gbs:.1f}{pct}")
        out.append(f"| {r['model']} | {r['threads']} | {r['context']} | " + " | ".join(cells)
                   + f" | {bw:.1f} |" if bw else " | - |")
    return "\n".join(out) + "\n"


def targets(rep: dict[str, Any]) -> list[str]:
    lines = []
    for desc, a, b, mode, ctx, threshold in TARGETS:
        for q in rep["ratios"]:
            if (q["a"].split()[0] == a and q["b"].split()[0] == b and q["mode"] == mode
                    and q["threads"] == 2 and (ctx is None or q["context"] == ctx)):
                ok = "met" if q["median"] >= threshold else "MISSED"
                lines.append(f"- {desc} ({q['a'].split()[1]}): {q['median']:.2f}x, target "
                             f">= {threshold}x: {ok}")
    for r in rep["results"]:
        info = {m["label"]: m for m in rep["models"]}[r["model"]]
        if (r["mode"] == "decode" and r["threads"] == 2 and info["kind"] == "engine"
                and not info["spark"] and "bandwidth_fraction" in r):
            ok = "met" if r["bandwidth_fraction"] >= BANDWIDTH_TARGET else "MISSED"
            lines.append(f"- {r['model']} decode at {r['context']}: "
                         f"{r['effective_gbs']['median']:.1f} GB/s = "
                         f"{100 * r['bandwidth_fraction']:.0f}% of {r['bandwidth_gbs']:.1f} GB/s, "
                         f"target >= {100 * BANDWIDTH_TARGET:.0f}%: {ok}")
    return lines


def main(paths: list[str]) -> int:
    for p in paths:
        rep = json.loads(Path(p).read_text())
        print(f"### {Path(p).stem}\n")
        print(table(rep))
        print("Decode time and bytes per component (medians; attention includes Q/K/V/O and "
              "the KV cache):\n")
        print(component_table(rep))
        t = targets(rep)
        if t:
            print("Targets:\n" + "\n".join(t) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:] or sorted(str(p) for p in
                                         (Path(__file__).parent / "results").glob("*.json"))))
