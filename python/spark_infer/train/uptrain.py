"""Uptraining: a dense Gemma 3 checkpoint into Spark form, distilled from the dense teacher.

    python -m spark_infer.train.uptrain --steps 20 --out runs/uptrain --threads 2
    python -m spark_infer.train.uptrain --steps 2000 --batch 16 --out runs/uptrain --device cuda

The student starts from the teacher's own weights, mapped as follows (`spark_from_dense`):

- FFN (d_ff unchanged). Dense: y = W_down (gelu(W_gate x) * (W_up x)). Spark:
  s = K1 x[:r], u = gelu(relu(s - theta)) * (K2 x[r:]), y = u V. So K1 = W_gate[:, :r] (the gate
  seen through the first r residual dims: the predictor), K2 = W_up[:, r:] (the up-projection
  on the other dims), V = W_down^T (neuron-major). What the gate read from x[r:] and the up
  projection read from x[:r] is lost, and only ~8 % of the neurons fire: the distillation
  has to recover both. (The residual stream could be permuted first to give the predictor the
  dims the gate leans on most; not done here, r = d_model / 2 as the preset.)
- Attention (weights unchanged up to a permutation of each head's dims). Dense RoPE rotates
  the pairs (i, i + hd/2) of a head by pos * base^(-2i/hd); Spark rotates [0, r_a) and
  [r_a, hd) on their own, pairs (j, j + r_a/2) by pos * base^(-2j/r_a). With s = hd / r_a,
  the dense pair i = s*j has exactly the frequency of Spark's pair j, so those pairs are moved
  into the predictor part [0, r_a) (first halves, then second halves) and the other pairs into
  [r_a, hd) in order: the predictor score q[:r_a].k[:r_a] is then exactly the dense score's
  part over those pairs (tests/test_train.py checks it). In [r_a, hd) the frequencies shift
  (pair k gets base^(-2k/(hd - r_a)) instead of its own): an approximation. The same
  permutation applies to the rows of attn_q / attn_k per head and to the QK-norm weights (RMS
  norm over a head does not care about the order); V and the output are unchanged. The
  weights then differ from dense attention by design: softmax over the predictor score alone,
  top-k of attn_topk tokens, times softplus of the other dims' score.

The loss is the KL divergence from the teacher's next-token distribution to the student's, on
the KJV text, over the vocabulary the text uses (the tied 262k-row LM head is 63 % of the
model; restricting it keeps a CPU step affordable); embeddings stay frozen.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ..config import ModelConfig

__all__ = ["head_permutation", "spark_from_dense", "mapping_ablation", "main"]


def head_permutation(head_dim: int, r_a: int) -> np.ndarray:
    """perm [hd]: Spark dim n takes dense dim perm[n] (see the module docstring)."""
    if r_a <= 0 or r_a >= head_dim or r_a % 2 or head_dim % r_a:
        raise ValueError(f"r_a must be an even divisor of head_dim ({head_dim}) below it, got "
                         f"{r_a}")
    half, step = head_dim // 2, head_dim // r_a
    pairs_a = [j * step for j in range(r_a // 2)]
    pairs_b = [i for i in range(half) if i % step]
    return np.array(pairs_a + [i + half for i in pairs_a] + pairs_b + [i + half for i in pairs_b])


def spark_from_dense(cfg: ModelConfig, get: Callable[[str], np.ndarray], r: int, r_a: int,
                     ffn_topk_fraction: float = 0.08, attn_topk: int = 256
                     ) -> tuple[ModelConfig, dict[str, np.ndarray]]:
    """(Spark config, its tensors) from a dense config and its tensors (`get(name)`)."""
    if cfg.is_spark_ffn or cfg.is_spark_attn or cfg.is_sparse_ffn or cfg.is_sparse_attn:
        raise ValueError("the source must be a dense model")
    scfg = cfg.replace(ffn_predictor_dim=r, attn_predictor_dim=r_a,
                       ffn_topk_fraction=ffn_topk_fraction, attn_topk=attn_topk)
    perm = head_permutation(cfg.head_dim, r_a)
    hd = cfg.head_dim
    out: dict[str, np.ndarray] = {"token_embd": get("token_embd"),
                                  "output_norm": get("output_norm")}
    for i in range(cfg.n_layers):
        p = f"blk.{i}."
        for n in ("attn_norm", "attn_post_norm", "ffn_norm", "ffn_post_norm", "attn_v",
                  "attn_output"):
            out[p + n] = get(p + n)
        for n, heads in (("attn_q", cfg.n_heads), ("attn_k", cfg.n_kv_heads)):
            w = get(p + n).reshape(heads, hd, cfg.d_model)
            out[p + n] = np.ascontiguousarray(w[:, perm].reshape(heads * hd, cfg.d_model))
        if cfg.qk_norm:
            for n in ("attn_q_norm", "attn_k_norm"):
                out[p + n] = np.ascontiguousarray(get(p + n)[perm])
        gate, up = get(p + "ffn_gate"), get(p + "ffn_up")
        out[p + "ffn_k1"] = np.ascontiguousarray(gate[:, :r])
        out[p + "ffn_k2"] = np.ascontiguousarray(up[:, r:])
        out[p + "ffn_v"] = np.ascontiguousarray(get(p + "ffn_down").T)
    return scfg, out


def mapping_ablation(cfg: ModelConfig, weights: dict, scfg: ModelConfig, sweights: dict,
                     windows: np.ndarray) -> dict[str, float]:
    """Cross-entropy (nats, full vocabulary) on `windows` [N, L+1] of the dense model, of the
    mapped model with only the FFN in Spark form, only attention, and both: what the mapping
    alone costs before any training."""
    import torch
    import torch.nn.functional as F

    from .modules import SparkLM

    ffn = ("ffn_gate", "ffn_up", "ffn_down", "ffn_k1", "ffn_k2", "ffn_v")
    variants = {
        "dense": (cfg, weights),
        "spark_ffn_only": (cfg.replace(ffn_predictor_dim=scfg.ffn_predictor_dim,
                                       ffn_topk_fraction=scfg.ffn_topk_fraction),
                           {**weights, **{k: v for k, v in sweights.items()
                                          if k.rsplit(".", 1)[-1] in ffn}}),
        "spark_attn_only": (cfg.replace(attn_predictor_dim=scfg.attn_predictor_dim,
                                        attn_topk=scfg.attn_topk),
                            {**weights, **{k: v for k, v in sweights.items() if ".attn" in k}}),
        "spark_both": (scfg, sweights),
    }
    x = torch.from_numpy(np.asarray(windows, dtype=np.int64))
    out = {}
    for name, (c, w) in variants.items():
        m = SparkLM(c, seed=None)
        m.load_state_dict({k: torch.from_numpy(w[k]) for k in m.state_dict()})
        with torch.no_grad():
            logits = m(x[:, :-1])
        out[name] = F.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                    x[:, 1:].reshape(-1)).item()
    return out


# ------------------------------------------------------------------------------ the run

def main(argv: list[str] | None = None) -> int:
    import torch
    import torch.nn.functional as F

    from ..convert import load_weights
    from ..models import gguf_path
    from ..tokenizer import Tokenizer
    from .checkpoint import export_engine
    from .modules import SparkLM
    from .text import load_text, split_tokens

    ap = argparse.ArgumentParser(prog="python -m spark_infer.train.uptrain",
                                 description="Distil the embedded dense Gemma 3 270M into Spark "
                                             "form (its own weights as the start).")
    ap.add_argument("--steps", type=int, required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--data", default="kjv")
    ap.add_argument("--val-windows", type=int, default=8)
    ap.add_argument("--attn-topk", type=int, default=256)
    ap.add_argument("--export", choices=["none", "f32", "bf16", "int8"], default="none",
                    help="also write OUT/model.spark (default: none)")
    ap.add_argument("--device", default=None,
                    help="torch device for teacher and student (default: cuda when available, "
                         "else cpu)")
    ap.add_argument("--ablation", type=int, default=0, metavar="N",
                    help="first score the mapping alone (dense / FFN only / attention only / "
                         "both) on N held-out windows")
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    device = torch.device(a.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    t0 = time.perf_counter()
    with gguf_path() as src:
        cfg, weights, proto = load_weights(src)
    scfg, sweights = spark_from_dense(cfg, weights.__getitem__, r=cfg.d_model // 2,
                                      r_a=cfg.head_dim // 2, attn_topk=a.attn_topk)
    corpus = load_text(a.data)
    ids = np.array(Tokenizer(proto).encode(corpus.text, add_bos=True), dtype=np.int64)
    train_w, val_w = split_tokens(ids, a.seq_len)
    ablation = None
    if a.ablation:
        ablation = mapping_ablation(cfg, weights, scfg, sweights, val_w[:a.ablation])
        print(f"mapping alone, cross-entropy: {ablation}", flush=True)
    val_w = val_w[:a.val_windows]
    teacher, student = SparkLM(cfg, seed=None), SparkLM(scfg, seed=None)
    with torch.no_grad():
        for m, w in ((teacher, weights), (student, sweights)):
            for name, p in m.state_dict().items():
                p.copy_(torch.from_numpy(w[name]))
    del weights, sweights
    teacher.to(device).requires_grad_(False)
    student.to(device).token_embd.requires_grad_(False)

    vocab = torch.from_numpy(np.unique(ids)).to(device)  # the pieces the text uses

    def on(w: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(w).to(device)

    def kl_and_ce(model: SparkLM, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """KL(teacher || student) over `vocab`, and the student's cross-entropy there."""
        with torch.no_grad():
            t = _restricted_logits(teacher, w[:, :-1], vocab)
        s = _restricted_logits(model, w[:, :-1], vocab)
        lt, ls = F.log_softmax(t, -1), F.log_softmax(s, -1)
        kl = (lt.exp() * (lt - ls)).sum(-1).mean()
        target = torch.searchsorted(vocab, w[:, 1:].contiguous())
        ce = F.nll_loss(ls.reshape(-1, ls.shape[-1]), target.reshape(-1))
        return kl, ce

    def evaluate() -> dict:
        with torch.no_grad():
            kl, ce = zip(*(kl_and_ce(student, on(val_w[i:i + 1]))
                           for i in range(len(val_w))))
            t_ce = [F.nll_loss(F.log_softmax(_restricted_logits(
                teacher, on(val_w[i:i + 1, :-1]), vocab), -1)[0],
                torch.searchsorted(vocab, on(val_w[i, 1:]))).item()
                for i in range(len(val_w))]
        return {"kl": float(np.mean([k.item() for k in kl])),
                "student_ce": float(np.mean([c.item() for c in ce])),
                "teacher_ce": float(np.mean(t_ce)),
                "ffn_active_fraction": student.ffn_active_fraction()}

    before = evaluate()
    print(f"before: {before}", flush=True)
    params = [p for p in student.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=a.lr, betas=(0.9, 0.95), weight_decay=0.0)
    rng = np.random.default_rng(0)
    curve = []
    t_train = time.perf_counter()
    for step in range(a.steps):
        batch = on(train_w[rng.integers(0, len(train_w), a.batch)])
        kl, ce = kl_and_ce(student, batch)
        opt.zero_grad(set_to_none=True)
        kl.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        curve.append({"step": step + 1, "kl": round(kl.item(), 5), "ce": round(ce.item(), 5),
                      "ffn_active": round(float(np.mean(student.ffn_active_fraction())), 5)})
        print(f"step {step + 1:4d}  kl {kl.item():.4f}  ce {ce.item():.4f}  "
              f"{time.perf_counter() - t_train:7.1f} s", flush=True)
    after = evaluate()
    print(f"after: {after}", flush=True)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    report = {"teacher": "gemma3-270m (Q4_K_M GGUF, dequantized to f32)",
              "student": json.loads(scfg.to_json()), "steps": a.steps, "batch": a.batch,
              "seq_len": a.seq_len, "tokens": a.steps * a.batch * a.seq_len, "lr": a.lr,
              "loss": "KL(teacher || student) over the text's vocabulary "
                      f"({len(vocab)} pieces)", "data": corpus.name, "curve": curve,
              "val_before": before, "val_after": after, "val_windows": len(val_w),
              "mapping_ablation": ablation and {"windows": a.ablation, "cross_entropy": ablation},
              "train_seconds": round(time.perf_counter() - t_train, 1),
              "total_seconds": round(time.perf_counter() - t0, 1),
              "threads": torch.get_num_threads(), "device": str(device)}
    (out / "report.json").write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    if a.export != "none":
        export_engine(student, out / "model.spark", dtype=a.export, tokenizer_proto=proto)
    return 0


def _restricted_logits(model, tokens, vocab):
    """The model's logits over the `vocab` ids only (the final hidden state against those
    embedding rows; final soft-cap as the model's)."""
    import torch

    from .modules import _rms_norm, _softcap

    cfg = model.cfg
    h = model.hidden(tokens)
    logits = _rms_norm(h, model.output_norm, cfg.norm_eps) @ model.token_embd[vocab].T
    return _softcap(logits, cfg.final_softcap).to(torch.float32)


if __name__ == "__main__":
    sys.exit(main())
