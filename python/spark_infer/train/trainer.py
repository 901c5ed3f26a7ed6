"""Train a Spark or dense Gemma 3 model from scratch on a public-domain text; write the engine
file, the checkpoint and a report.

Presets pair a Spark and a dense model of the same parameter count: Spark FFN has 2 D F
parameters against the gated FFN's 3 D F, so its d_ff is 1.5x (the paper's 13824 = 1.5 x 9216);
Spark attention adds none. Both share the recipe (AdamW, warmup then cosine decay, the same
batches in the same order, the same token budget); only the kind differs.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..bench.machine import _cpu_model
from ..config import ModelConfig
from ..tokenizer import Tokenizer
from .checkpoint import export_engine, save_checkpoint
from .modules import SparkLM
from .text import load_text, split_tokens, train_sentencepiece

__all__ = ["TrainPreset", "PRESETS", "preset", "model_config", "train", "evaluate"]

KINDS = ("spark", "dense")


@dataclass(frozen=True)
class TrainPreset:
    """Model shape and recipe. d_ff is the dense model's; Spark uses 1.5 d_ff."""

    kind: str                    # "spark" | "dense"
    d_model: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    d_ff: int
    vocab_size: int              # of the SentencePiece model trained on the text
    seq_len: int
    batch: int
    sliding_window: int
    ffn_predictor_dim: int       # Spark r (the paper: ~d_model / 2)
    attn_predictor_dim: int      # Spark r_a (the paper: head_dim / 2)
    attn_topk: int               # Spark k of attention (< seq_len, or attention is dense)
    ffn_topk_fraction: float = 0.08
    lr: float = 3e-3
    warmup_fraction: float = 0.05
    min_lr_fraction: float = 0.1
    weight_decay: float = 0.1
    data: str = "kjv"
    log_every: int = 10
    val_windows: int = 64        # at most this many held-out windows are scored


def _pair(name: str, **shape) -> dict[str, TrainPreset]:
    return {f"{name}-{kind}": TrainPreset(kind=kind, **shape) for kind in KINDS}


PRESETS: dict[str, TrainPreset] = {
    # ~0.6 M parameters: a couple of minutes on 2 cores for a few hundred steps.
    **_pair("tiny", d_model=128, n_layers=2, n_heads=2, n_kv_heads=1, head_dim=64, d_ff=512,
            vocab_size=1024, seq_len=128, batch=8, sliding_window=64, ffn_predictor_dim=64,
            attn_predictor_dim=32, attn_topk=32),
    # 2.65 M parameters (2.26 M outside the embedding): the small-scale reproduction, sized
    # for ~7 minutes per model on 2 shared cores.
    **_pair("small", d_model=192, n_layers=4, n_heads=4, n_kv_heads=1, head_dim=64, d_ff=768,
            vocab_size=2048, seq_len=128, batch=8, sliding_window=64, ffn_predictor_dim=96,
            attn_predictor_dim=32, attn_topk=32),
}


def preset(name: str) -> TrainPreset:
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown training preset {name!r}; known: {', '.join(PRESETS)}") \
            from None


def model_config(p: TrainPreset) -> ModelConfig:
    """The engine config of a preset: Gemma 3 blocks (QK-norm, 5 local : 1 global, the last
    layer global), Spark or dense."""
    if p.kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {p.kind!r}")
    layers = tuple("global" if (i + 1) % 6 == 0 or i == p.n_layers - 1 else "local"
                   for i in range(p.n_layers))
    spark = p.kind == "spark"
    return ModelConfig(
        arch="gemma3", vocab_size=p.vocab_size, d_model=p.d_model, n_layers=p.n_layers,
        n_heads=p.n_heads, n_kv_heads=p.n_kv_heads, head_dim=p.head_dim,
        d_ff=p.d_ff * 3 // 2 if spark else p.d_ff, query_scale=p.head_dim ** -0.5,
        layer_types=layers, qk_norm=True, sliding_window=p.sliding_window,
        rope_base_global=1_000_000.0, rope_base_local=10_000.0,
        ffn_predictor_dim=p.ffn_predictor_dim if spark else 0,
        ffn_topk_fraction=p.ffn_topk_fraction,
        attn_predictor_dim=p.attn_predictor_dim if spark else 0,
        attn_topk=p.attn_topk, bos_id=2, eos_id=1, pad_id=0, start_of_turn_id=4,
        end_of_turn_id=5)


def _lr_at(step: int, steps: int, p: TrainPreset) -> float:
    warm = max(1, int(p.warmup_fraction * steps))
    if step < warm:
        return p.lr * (step + 1) / warm
    t = (step - warm) / max(1, steps - warm)
    return p.lr * (p.min_lr_fraction + (1 - p.min_lr_fraction) * 0.5 * (1 + math.cos(math.pi * t)))


def _loss(model: SparkLM, windows: torch.Tensor) -> torch.Tensor:
    logits = model(windows[:, :-1])
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), windows[:, 1:].reshape(-1))


@torch.no_grad()
def evaluate(model: SparkLM, windows: np.ndarray, batch: int) -> tuple[float, list[float]]:
    """(mean next-token loss in nats, FFN active fraction per layer) over `windows`."""
    model.eval()
    total, fractions = 0.0, np.zeros(model.cfg.n_layers)
    for i in range(0, len(windows), batch):
        w = torch.from_numpy(windows[i:i + batch])
        total += float(_loss(model, w)) * len(w)
        fractions += np.array(model.ffn_active_fraction()) * len(w)
    model.train()
    return total / len(windows), [float(f) for f in fractions / len(windows)]


@dataclass
class TrainResult:
    model: SparkLM
    tokenizer_proto: bytes
    report: dict = field(default_factory=dict)


def train(p: TrainPreset, steps: int, out: str | os.PathLike[str] | None = None, *,
          threads: int | None = None, seed: int = 0, dtype: str = "f32",
          preset_name: str = "", log=print) -> TrainResult:
    """Train `steps` steps of preset `p`; with `out`, write out/model.spark (matrices as
    `dtype`), out/checkpoint/ and out/report.json."""
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    if threads is not None:
        if threads < 1:
            raise ValueError(f"threads must be at least 1, got {threads}")
        torch.set_num_threads(threads)
    t0 = time.perf_counter()
    corpus = load_text(p.data)
    proto = train_sentencepiece(corpus.text, p.vocab_size)
    ids = np.array(Tokenizer(proto).encode(corpus.text, add_bos=True), dtype=np.int64)
    train_w, val_w = split_tokens(ids, p.seq_len)
    val_w = val_w[:p.val_windows]
    cfg = model_config(p)
    torch.manual_seed(seed)
    model = SparkLM(cfg, seed=seed)
    decay = [q for q in model.parameters() if q.dim() > 1]
    no_decay = [q for q in model.parameters() if q.dim() == 1]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": p.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=p.lr, betas=(0.9, 0.95))
    rng = np.random.default_rng(seed)
    n_embd = cfg.vocab_size * cfg.d_model
    log(f"{preset_name or p.kind}: {model.n_params():,} parameters ({model.n_params() - n_embd:,} "
        f"outside the embedding), {len(ids):,} tokens ({len(train_w)} train / {len(val_w)} val "
        f"windows of {p.seq_len}), {steps} steps of {p.batch} x {p.seq_len}")
    t_train = time.perf_counter()
    curve, running, fractions = [], [], []
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = _lr_at(step, steps, p)
        batch = torch.from_numpy(train_w[rng.integers(0, len(train_w), p.batch)])
        loss = _loss(model, batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        running.append(loss.item())
        fractions.append(model.ffn_active_fraction())
        if (step + 1) % p.log_every == 0 or step == steps - 1:
            mean = float(np.mean(running))
            ffn = float(np.mean(fractions))
            curve.append({"step": step + 1, "loss": round(mean, 5), "ffn_active": round(ffn, 5)})
            log(f"step {step + 1:5d}  loss {mean:.4f}  ffn active {ffn:.3f}  "
                f"{time.perf_counter() - t_train:6.1f} s")
            running, fractions = [], []
    train_s = time.perf_counter() - t_train
    val_loss, ffn_frac = evaluate(model, val_w, p.batch)
    log(f"val loss {val_loss:.4f}  ffn active per layer {[round(f, 4) for f in ffn_frac]}")
    report = {
        "kind": p.kind, "preset": preset_name, "steps": steps,
        "tokens": steps * p.batch * p.seq_len, "batch": p.batch, "seq_len": p.seq_len,
        "params": model.n_params(), "params_non_embedding": model.n_params() - n_embd,
        "train_loss": curve, "val_loss": val_loss,
        "val_tokens": int(val_w.shape[0] * p.seq_len),
        "ffn_active_fraction": ffn_frac,
        "ffn_topk_fraction": cfg.ffn_topk_fraction if cfg.is_spark_ffn else 1.0,
        "data": corpus.name, "tokenizer": f"SentencePiece BPE, {p.vocab_size} pieces, "
                                          f"trained on the text",
        "recipe": {k: v for k, v in asdict(p).items() if k != "kind"},
        "config": json.loads(cfg.to_json()),
        "seed": seed, "threads": torch.get_num_threads(), "train_seconds": round(train_s, 1),
        "total_seconds": round(time.perf_counter() - t0, 1),
        "torch": torch.__version__, "machine": _cpu_model(),
    }
    if out is not None:
        d = Path(out)
        d.mkdir(parents=True, exist_ok=True)
        export_engine(model, d / "model.spark", dtype=dtype, tokenizer_proto=proto,
                      extra_metadata={"train": json.dumps({k: report[k] for k in (
                          "kind", "preset", "steps", "tokens", "val_loss", "data")})})
        save_checkpoint(model, d / "checkpoint", tokenizer_proto=proto)
        (d / "report.json").write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    return TrainResult(model, proto, report)

