"""Gemma 2/3 language model in PyTorch with Spark or dense FFN and attention.

The forward pass is docs/engine-file.md's, term for term (reference.py is its numpy twin and the
parity tests hold the two together); every behaviour comes from the `ModelConfig`:
- embedding times sqrt(d_model); pre- and post-RMSNorm (1 + w) around attention and FFN; tied
  LM head; final and attention soft-caps when set; QK-norm when set.
- Dense attention: split-half RoPE over the whole head, softmax of capped scores, causal and
  windowed on local layers.
- Spark attention: RoPE on [0, r_a) and [r_a, hd) separately; s1 = query_scale q[:r_a].k[:r_a]
  (capped); every visible token kept when n <= attn_topk, else statistical top-k over the n
  visible tokens (theta = mean + std Q(1 - k/n), population std); weights softmax over the kept
  tokens times softplus(query_scale q[r_a:].k[r_a:]).
- Spark FFN: s = K1 x[:r]; theta = mean(s) + std(s) Q(1 - f); u = gelu_tanh(relu(s - theta)) *
  (K2 x[r:]); y = u V. gelu_tanh(relu(z)) equals the engine's gelu(s - theta) on the active set
  and 0 elsewhere.

Training through statistical top-k (Spark paper, section 4 / Thm 3.2): the soft-threshold map
is continuous and differentiable almost everywhere, mean and std included, so the FFN trains
by plain backpropagation through `relu(s - theta)`, theta's gradient included (no straight-
through estimator is needed: it is the trained operator itself, not a relaxation). In attention
the threshold is a hard -inf mask (the shift cancels in softmax), so it has no gradient; the
kept scores train through softmax and the other dims through softplus.

Parameters are named so that `state_dict()` keys are the engine tensor names
(`token_embd`, `output_norm`, `blk.{i}.attn_q`, `blk.{i}.ffn_k1`, ...), with the engine's
shapes ([rows, cols], y = W x; K1, K2, V neuron-major), so export is a copy.

Shapes: B batch, T tokens, D = d_model, H heads, G KV heads, hd = head_dim, F = d_ff.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ModelConfig
from ..fileformat import tensor_specs
from ..reference import normal_quantile

__all__ = ["SparkLM", "statistical_threshold", "check_trainable"]


def check_trainable(cfg: ModelConfig) -> None:
    """Only dense and Spark kinds train; the sparsified kinds are made from dense models."""
    if cfg.is_sparse_ffn or cfg.is_sparse_attn:
        raise ValueError("sparsified (training-free) configs cannot be trained: use a dense or "
                         "Spark config (ffn_sparse_fraction and attn_sparse_topk must be 0)")


def statistical_threshold(s: torch.Tensor, quantile: float) -> torch.Tensor:
    """theta = mean(s) + std(s) * quantile over the last axis (population std); keeps dims."""
    mean = s.mean(dim=-1, keepdim=True)
    std = (s - mean).square().mean(dim=-1, keepdim=True).sqrt()
    return mean + std * quantile


def _rms_norm(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    return x * torch.rsqrt(x.square().mean(dim=-1, keepdim=True) + eps) * (1.0 + w)


def _softcap(x: torch.Tensor, cap: float) -> torch.Tensor:
    return x if cap == 0 else cap * torch.tanh(x / cap)


@functools.lru_cache(maxsize=64)
def _rope_tables(T: int, base: float, size: int, scale: float, dtype: torch.dtype
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin [T, size/2] for positions 0..T-1 divided by `scale`, computed in float64 (as
    the reference does) and cast; cached (the same few shapes every step)."""
    inv_freq = base ** (-2.0 * torch.arange(size // 2, dtype=torch.float64) / size)
    angle = (torch.arange(T, dtype=torch.float64) / scale)[:, None] * inv_freq[None, :]
    return torch.cos(angle).to(dtype), torch.sin(angle).to(dtype)


def _rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Split-half rotation of x [..., T, size]: pairs (i, i + size/2)."""
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)


@functools.lru_cache(maxsize=16)
def _attn_quantiles(topk: int, max_n: int) -> torch.Tensor:
    """[max_n + 1] float64: Q(1 - topk / n) at index n > topk, 0 elsewhere (unused there)."""
    return torch.tensor([normal_quantile(1.0 - topk / n) if n > topk else 0.0
                         for n in range(max_n + 1)], dtype=torch.float64)


class Block(nn.Module):
    """One Gemma layer; parameter names are the engine's `blk.{i}.` suffixes."""

    def __init__(self, cfg: ModelConfig, layer: int):
        super().__init__()
        self.cfg, self.layer = cfg, layer
        shapes = {s.name[len(f"blk.{layer}."):]: s.shape for s in tensor_specs(cfg)
                  if s.name.startswith(f"blk.{layer}.")}
        for name, shape in shapes.items():
            self.register_parameter(name, nn.Parameter(torch.zeros(shape)))
        self.ffn_stats: torch.Tensor | None = None   # last forward's active fraction (Spark FFN)

    # ----------------------------------------------------------------------------- attention

    def attention(self, x: torch.Tensor, visible: torch.Tensor, rope: list) -> torch.Tensor:
        """x [B, T, D] (attn_norm'ed) -> [B, T, D]. visible [T, T] bool (query, key)."""
        cfg = self.cfg
        B, T, _ = x.shape
        H, G, hd = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        q = F.linear(x, self.attn_q).view(B, T, H, hd).transpose(1, 2)    # [B, H, T, hd]
        k = F.linear(x, self.attn_k).view(B, T, G, hd).transpose(1, 2)    # [B, G, T, hd]
        v = F.linear(x, self.attn_v).view(B, T, G, hd).transpose(1, 2)
        if cfg.qk_norm:
            q = _rms_norm(q, self.attn_q_norm, cfg.norm_eps)
            k = _rms_norm(k, self.attn_k_norm, cfg.norm_eps)
        parts = [(0, cfg.attn_predictor_dim), (cfg.attn_predictor_dim, hd)] \
            if cfg.is_spark_attn else [(0, hd)]
        q = torch.cat([_rope(q[..., a:b], *cs) for (a, b), cs in zip(parts, rope)], dim=-1)
        k = torch.cat([_rope(k[..., a:b], *cs) for (a, b), cs in zip(parts, rope)], dim=-1)
        if H != G:                        # query head h uses KV head h // (H / G)
            k = k.repeat_interleave(H // G, dim=1)
            v = v.repeat_interleave(H // G, dim=1)
        if cfg.is_spark_attn:
            o = self._spark_weights(q, k, visible) @ v
        else:
            scores = _softcap(cfg.query_scale * (q @ k.transpose(-1, -2)), cfg.attn_softcap)
            o = torch.softmax(scores.masked_fill(~visible, float("-inf")), dim=-1) @ v
        return F.linear(o.transpose(1, 2).reshape(B, T, H * hd), self.attn_output)

    def _spark_weights(self, q: torch.Tensor, k: torch.Tensor, visible: torch.Tensor
                       ) -> torch.Tensor:
        """w [B, H, T, T]: softmax over the kept tokens of s1 times softplus of the rest."""
        cfg = self.cfg
        r_a = cfg.attn_predictor_dim
        s1 = _softcap(cfg.query_scale * (q[..., :r_a] @ k[..., :r_a].transpose(-1, -2)),
                      cfg.attn_softcap)
        n = visible.sum(dim=-1)                                            # [T]
        with torch.no_grad():             # a hard mask: the threshold carries no gradient
            # Q(1 - k/n) for rows with n > k (other rows keep every visible token).
            quant = _attn_quantiles(cfg.attn_topk, s1.shape[-1]).to(s1.device, s1.dtype)[n][:, None]
            vis = visible.to(s1.dtype)
            mean = (s1 * vis).sum(-1, keepdim=True) / n[:, None]
            var = ((s1 - mean).square() * vis).sum(-1, keepdim=True) / n[:, None]
            theta = mean + var.sqrt() * quant
            keep = visible & ((n <= cfg.attn_topk)[:, None] | (s1 > theta))
            # An empty selection is an empty sum (o = 0): keep everything there to avoid NaN
            # in softmax and zero the row after.
            any_keep = keep.any(dim=-1, keepdim=True)
            keep = keep | ~any_keep
        p = torch.softmax(s1.masked_fill(~keep, float("-inf")), dim=-1) * any_keep
        g = F.softplus(cfg.query_scale * (q[..., r_a:] @ k[..., r_a:].transpose(-1, -2)))
        return p * g

    # ----------------------------------------------------------------------------- FFN

    def ffn(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, T, D] (ffn_norm'ed) -> [B, T, D]."""
        cfg = self.cfg
        if not cfg.is_spark_ffn:
            return F.linear(F.gelu(F.linear(x, self.ffn_gate), approximate="tanh")
                            * F.linear(x, self.ffn_up), self.ffn_down)
        r = cfg.ffn_predictor_dim
        s = F.linear(x[..., :r], self.ffn_k1)                               # [B, T, F]
        theta = statistical_threshold(s, normal_quantile(1.0 - cfg.ffn_topk_fraction))
        z = torch.relu(s - theta)
        self.ffn_stats = (z > 0).float().mean().detach()
        u = F.gelu(z, approximate="tanh") * F.linear(x[..., r:], self.ffn_k2)
        return u @ self.ffn_v

    def forward(self, h: torch.Tensor, visible: torch.Tensor, rope: list) -> torch.Tensor:
        eps = self.cfg.norm_eps
        a = self.attention(_rms_norm(h, self.attn_norm, eps), visible, rope)
        h = h + _rms_norm(a, self.attn_post_norm, eps)
        f = self.ffn(_rms_norm(h, self.ffn_norm, eps))
        return h + _rms_norm(f, self.ffn_post_norm, eps)


class SparkLM(nn.Module):
    """A Gemma 2/3 model of any dense or Spark `ModelConfig`; forward(tokens [B, T]) gives
    logits [B, T, V] for positions 0..T-1 (each row its own sequence)."""

    def __init__(self, cfg: ModelConfig, seed: int | None = 0):
        super().__init__()
        check_trainable(cfg)
        self.cfg = cfg
        self.token_embd = nn.Parameter(torch.zeros(cfg.vocab_size, cfg.d_model))
        self.output_norm = nn.Parameter(torch.zeros(cfg.d_model))
        self.blk = nn.ModuleList([Block(cfg, i) for i in range(cfg.n_layers)])
        if seed is not None:
            self.init_weights(seed)

    def init_weights(self, seed: int) -> None:
        """Embedding std 1/sqrt(D) (times sqrt(D) gives unit RMS, tied logits std ~1); matrices
        std 1/sqrt(fan-in); norm weights 0 (scale 1 + 0)."""
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for name, p in self.named_parameters():
                if p.dim() == 1:
                    p.zero_()
                elif name.endswith("ffn_v"):       # [F, D] used as u @ V: fan-in is F
                    p.normal_(0.0, p.shape[0] ** -0.5, generator=g)
                else:
                    p.normal_(0.0, p.shape[1] ** -0.5, generator=g)

    def _masks(self, T: int, device: torch.device) -> dict[bool, torch.Tensor]:
        i = torch.arange(T, device=device)
        causal = i[None, :] <= i[:, None]
        local = causal & (i[None, :] > i[:, None] - self.cfg.sliding_window)
        return {False: causal, True: local}

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        h = self.hidden(tokens)
        logits = _rms_norm(h, self.output_norm, self.cfg.norm_eps) @ self.token_embd.T
        return _softcap(logits, self.cfg.final_softcap)

    def hidden(self, tokens: torch.Tensor) -> torch.Tensor:
        """The residual stream after the last layer, [B, T, D] (before output_norm)."""
        cfg = self.cfg
        if tokens.dim() == 1:
            tokens = tokens[None]
        B, T = tokens.shape
        dtype = self.token_embd.dtype
        masks = self._masks(T, tokens.device)
        h = self.token_embd[tokens] * math.sqrt(cfg.d_model)
        parts = [cfg.attn_predictor_dim, cfg.head_dim - cfg.attn_predictor_dim] \
            if cfg.is_spark_attn else [cfg.head_dim]
        tables: dict[tuple[float, float], list] = {}
        for i, block in enumerate(self.blk):
            key = (cfg.rope_base(i), cfg.rope_scale(i))
            if key not in tables:
                tables[key] = [tuple(t.to(tokens.device) for t in  # cached on the CPU
                                     _rope_tables(T, key[0], m, key[1], dtype)) for m in parts]
            h = block(h, masks[cfg.is_local(i)], tables[key])
        return h

    def ffn_active_fraction(self) -> list[float]:
        """Per layer, the realised Spark FFN active fraction of the last forward (1.0 dense)."""
        return [1.0 if b.ffn_stats is None else float(b.ffn_stats) for b in self.blk]

    def engine_tensors(self) -> dict[str, torch.Tensor]:
        """{engine tensor name: tensor} (the state_dict: its keys are the engine names)."""
        return dict(self.state_dict())

    def n_params(self) -> int:
        return sum(p.numel() for p in self.parameters())
