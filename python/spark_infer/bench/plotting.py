"""The PNG of a report (`--plot`), drawn with matplotlib (imported on use)."""

from __future__ import annotations

import os
from typing import Any

import numpy as np


def plot(report: dict[str, Any], path: str | os.PathLike[str]) -> None:
    """A PNG of the report: decode tok/s vs context, prefill tok/s, the decode time breakdown
    and the effective GB/s against the measured bandwidth (matplotlib, Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = report["results"]
    info = {m["label"]: m for m in report["models"]}
    models = [m["label"] for m in report["models"]]
    threads = max(report["settings"]["threads"])
    colors = {label: f"C{i % 10}" for i, label in enumerate(models)}

    def style(label: str) -> str:
        return "--" if info[label]["spark"] else "-"

    fig, axes = plt.subplots(2, 2, figsize=(13, 9))
    ax_dec, ax_pre, ax_bd, ax_bw = axes[0, 0], axes[0, 1], axes[1, 0], axes[1, 1]
    dec = [r for r in results if r["mode"] == "decode" and r["threads"] == threads]
    for label in models:
        rs = sorted((r for r in dec if r["model"] == label), key=lambda r: r["context"])
        if not rs:
            continue
        x = [r["context"] for r in rs]
        y = [r["tok_s"]["median"] for r in rs]
        err = [[r["tok_s"]["median"] - r["tok_s"]["min"] for r in rs],
               [r["tok_s"]["max"] - r["tok_s"]["median"] for r in rs]]
        ax_dec.errorbar(x, y, yerr=err, ls=style(label), marker="o", color=colors[label],
                        capsize=3, label=label + (" (Spark)" if info[label]["spark"] else ""))
    tops = {(r["model"], r["context"]): r["tok_s"]["median"] for r in dec}
    for q in report["ratios"]:
        if q["mode"] == "decode" and q["threads"] == threads and (q["a"], q["context"]) in tops:
            ax_dec.annotate(f"{q['median']:.2f}x", (q["context"], tops[(q["a"], q["context"])]),
                            textcoords="offset points", xytext=(6, 6), fontsize=8)
    ax_dec.set_xscale("log", base=2)
    ax_dec.set_xlabel("context (tokens)")
    ax_dec.set_ylabel("decode tokens/s")
    ax_dec.set_title(f"decode, {threads} threads (median, min-max)")
    ax_dec.grid(True, alpha=0.3)
    if dec:
        ax_dec.legend(fontsize=7, framealpha=0.6)

    pre = [r for r in results if r["mode"] == "prefill" and r["threads"] == threads]
    if pre:
        labels = [r["model"] for r in pre]
        y = [r["tok_s"]["median"] for r in pre]
        err = [[r["tok_s"]["median"] - r["tok_s"]["min"] for r in pre],
               [r["tok_s"]["max"] - r["tok_s"]["median"] for r in pre]]
        ax_pre.bar(range(len(pre)), y, yerr=err, capsize=3,
                   color=[colors[m] for m in labels],
                   hatch=None)
        for i, m in enumerate(labels):
            if info[m]["spark"]:
                ax_pre.patches[i].set_hatch("//")
        ax_pre.set_xticks(range(len(pre)))
        ax_pre.set_xticklabels(labels, rotation=20, ha="right", fontsize=8)
        for q in report["ratios"]:
            if q["mode"] == "prefill" and q["threads"] == threads and q["a"] in labels:
                i = labels.index(q["a"])
                ax_pre.annotate(f"{q['median']:.2f}x vs {q['b']}", (i, y[i]),
                                textcoords="offset points", xytext=(0, 4), ha="center",
                                fontsize=7)
        ax_pre.set_title(f"prefill {pre[0]['context']} tokens in chunks of "
                         f"{report['settings']['chunk']}, {threads} threads")
    ax_pre.set_ylabel("prefill tokens/s")
    ax_pre.grid(True, axis="y", alpha=0.3)

    bd_rows = [r for r in dec if "breakdown_ms_per_token" in r]
    if bd_rows:
        names = [f"{r['model']}\nL={r['context']}" for r in bd_rows]
        bottom = np.zeros(len(bd_rows))
        for i, comp in enumerate(("attention", "ffn", "logits", "other")):
            vals = np.array([r["breakdown_ms_per_token"][comp]
                             + (r["breakdown_ms_per_token"]["embed"] if comp == "other" else 0.0)
                             for r in bd_rows])
            ax_bd.bar(range(len(bd_rows)), vals, bottom=bottom, label=comp, color=f"C{i}")
            bottom += vals
        ax_bd.set_xticks(range(len(bd_rows)))
        ax_bd.set_xticklabels(names, rotation=60, ha="right", fontsize=6)
        ax_bd.legend(fontsize=7, framealpha=0.6)
    ax_bd.set_ylabel("ms per decode token")
    ax_bd.set_title("decode time per component (attention includes Q/K/V/O projections)")

    for label in models:
        rs = sorted((r for r in dec if r["model"] == label and "effective_gbs" in r),
                    key=lambda r: r["context"])
        if rs:
            ax_bw.plot([r["context"] for r in rs], [r["effective_gbs"]["median"] for r in rs],
                       ls=style(label), marker="o", color=colors[label], label=label)
    bw_pts = sorted({(r["context"], r["bandwidth_gbs"]) for r in dec if "bandwidth_gbs" in r})
    if bw_pts:
        ax_bw.plot([c for c, _ in bw_pts], [b for _, b in bw_pts], "k:", marker="x",
                   label="read bandwidth measured between the samples")
    ax_bw.set_xscale("log", base=2)
    ax_bw.set_xlabel("context (tokens)")
    ax_bw.set_ylabel("effective GB/s (weight + KV bytes per token / time)")
    ax_bw.set_title("decode effective bandwidth")
    ax_bw.grid(True, alpha=0.3)
    if ax_bw.get_legend_handles_labels()[0]:
        ax_bw.legend(fontsize=7, framealpha=0.6)

    m = report["machine"]
    fig.suptitle(f"spark-infer bench: {m['cpu']}, {m['physical_cores']} cores, "
                 f"{m['highway_target']}, commit {report['commit']}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
