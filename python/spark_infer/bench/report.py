"""The report: its JSON schema name and the human-readable table `spark-infer bench` prints."""

from __future__ import annotations

from typing import Any

SCHEMA = "spark-infer-bench/1"


def format_table(report: dict[str, Any]) -> str:
    """The human-readable table of a report (what `run` prints)."""
    m = report["machine"]
    lines = [f"machine: {m['cpu']}, {m['physical_cores']} cores, Highway {m['highway_target']}",
             "read bandwidth: " + ", ".join(f"{v:.1f} GB/s ({k} thr)"
                                            for k, v in report["bandwidth_gbs"].items())]
    head = (f"{'model':<28} {'mode':<7} {'thr':>3} {'ctx':>5}  {'tok/s':>8} {'(min-max)':>17}  "
            f"{'ms/tok':>7}  {'attn':>5} {'ffn':>5} {'logit':>5} {'other':>5}  "
            f"{'GB/s':>6} {'%bw':>4}  {'ffn act':>7} {'att tok':>7}")
    lines += ["", head, "-" * len(head)]
    for r in report["results"]:
        t = r["tok_s"]
        row = (f"{r['model'][:28]:<28} {r['mode']:<7} {r['threads']:>3} {r['context']:>5}  "
               f"{t['median']:8.2f} {'(' + format(t['min'], '.2f') + '-' + format(t['max'], '.2f') + ')':>17}  "
               f"{r['ms_per_token']:7.2f}  ")
        bd = r.get("breakdown_ms_per_token")
        if bd:
            total = sum(bd.values()) or 1.0
            row += " ".join(f"{100 * bd[k] / total:4.0f}%" for k in
                            ("attention", "ffn", "logits")) + \
                f" {100 * (bd['other'] + bd['embed']) / total:4.0f}%  "
        else:
            row += " " * 24 + "  "
        if "effective_gbs" in r:
            frac = r.get("bandwidth_fraction")
            row += f"{r['effective_gbs']['median']:6.1f} " + \
                (f"{100 * frac:3.0f}%" if frac is not None else "   -") + "  "
        elif "gflops" in r:
            row += f"{r['gflops']:6.0f}GF     "
        else:
            row += " " * 13
        if "ffn_active_mean" in r:
            row += f"{100 * r['ffn_active_mean']:6.1f}% {r['attn_tokens_mean']:7.1f}"
        lines.append(row.rstrip())
    if report["ratios"]:
        lines += ["", "ratios (median of per-sample tok/s ratios, min-max):"]
        for q in report["ratios"]:
            lines.append(f"  {q['a']} / {q['b']}  {q['mode']:<7} thr {q['threads']} "
                         f"ctx {q['context']:>5}: {q['median']:.2f}x "
                         f"({q['min']:.2f}-{q['max']:.2f})")
    for note in report["notes"]:
        lines.append(f"note: {note}")
    return "\n".join(lines) + "\n"
