"""Plain numpy float64 forward pass of an engine-file model, written from docs/engine-file.md.

This is the oracle the engine is tested against, so it favours the equations over speed: one
function per equation, a loop over query tokens and heads in attention, no caching. It is
written from the contract only (never from engine code) and checked against Hugging Face's
Gemma 2 / Gemma 3 (tests/test_reference.py) and, for the Spark parts, against brute force.

Shapes: T tokens, D = d_model, H = n_heads, G = n_kv_heads, hd = head_dim, F = d_ff, V = vocab.
Weights are the engine-file tensors by name, any float dtype (e.g. `read_engine_file(...,
dequantize=True)`); matrices are [rows, cols] and act as y = W @ x. The LM-head screen
`token_embd_screen` is the exception: its stored screen4 bytes (`read_engine_file(path)` without
dequantize), since its scores are defined on its codes and scales (`weights.screen4_logits`).
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from .config import ModelConfig
from .weights import bf16_to_f32, f32_to_bf16, screen4_logits

__all__ = [
    "LayerStats", "normal_quantile", "statistical_threshold", "rms_norm", "gelu_tanh", "softcap",
    "softplus", "rope", "dense_ffn", "spark_ffn", "sparse_gated_ffn", "visible_keys", "attention",
    "forward",
    "forward_with_stats", "Products", "quantize_x_int8", "round_x_bf16",
]


@dataclass(frozen=True)
class LayerStats:
    """Sparsity measured in one layer over a forward pass."""

    ffn_active_fraction: float   # mean over tokens of |active neurons| / d_ff (1.0 when dense)
    attn_mean_tokens: float      # mean over tokens and query heads of |attended tokens|


# ------------------------------------------------------------------------------ scalars

# Acklam's rational approximation of the inverse normal CDF (relative error < 1.2e-9), which two
# Halley steps on math.erfc then take to double precision.
_A = (-3.969683028665376e+01, 2.209460984245205e+02, -2.759285104469687e+02,
      1.383577518672690e+02, -3.066479806614716e+01, 2.506628277459239e+00)
_B = (-5.447609879822406e+01, 1.615858368580409e+02, -1.556989798598866e+02,
      6.680131188771972e+01, -1.328068155288572e+01)
_C = (-7.784894002430293e-03, -3.223964580411365e-01, -2.400758277161838e+00,
      -2.549732539343734e+00, 4.374664141464968e+00, 2.938163982698783e+00)
_D = (7.784695709041462e-03, 3.224671290700398e-01, 2.445134137142996e+00,
      3.754408661907416e+00)
_P_LOW = 0.02425


class Products:
    """How a forward pass meets x in the products y = W x of its matrices.

    Default: exactly (float64). For the q4 / q5 matrices named in `int8_x`, the engine's decode
    kernels are modelled: x quantized per block of 32 to int8 (`quantize_x_int8`,
    docs/engine-file.md), then multiplied exactly with the dequantized weights. Gathered rows
    (masked matvecs: Spark K2, the sparsified FFNs' up / gate rows) always take that path; whole
    matrices only when `whole` (one token at a time: decode; chunks of several tokens keep x in
    f32). For the bf16 matrices named in `bf16_x`, the engine's chunk matmuls are modelled: in
    the whole-matrix products of tokens whose chunk has 2 or more tokens, x is rounded to bf16
    (float32, then round to nearest even: `round_x_bf16`); gathered rows and one-token chunks
    (decode) keep x, except with `grouped`: the engine's neuron-grouped Spark FFN chunk kernels
    (cpp/ops/sparse_batch.h, taken when a layer's sparse FFN matrices exceed
    `Engine.chunk_sparse_cache_bytes`) round, in tokens of chunks of 2 or more, the x of the
    gathered rows (Spark K2, the sparsified FFNs' up / gate rows) and the coefficients u of the
    output rows (Spark V, W_down^T) of those matrices to bf16 as well. `chunk`: an int c as `prefill(tokens, chunk=c, all_logits=True)` splits
    the tokens (the last chunk may be shorter), or the chunks' lengths in order (tokens past
    their sum are decoded one at a time); None: no chunks.
    `tie_distance[t]`: after a forward pass, the least distance of any x / s of token t (int8)
    or of any x of token t in bf16 ulps (bf16) to a rounding midpoint, in steps (an engine
    whose f32 x differs by more may round it the other way)."""

    def __init__(self, int8_x: Collection[str] = (), whole: bool = False,
                 bf16_x: Collection[str] = (), chunk: int | Sequence[int] | None = None,
                 grouped: bool = False):
        lengths = [chunk] if isinstance(chunk, int) else list(chunk or [])
        if any(int(c) < 1 for c in lengths):
            raise ValueError(f"chunk lengths must be >= 1, got {chunk}")
        self.names = frozenset(int8_x)
        self.whole = whole
        self.bf16_names = frozenset(bf16_x)
        self.chunk = chunk
        self.grouped = grouped
        self.ids: frozenset[int] = frozenset()
        self.bf16_ids: frozenset[int] = frozenset()
        self.in_chunk = np.zeros(0, bool)   # per token: its chunk has 2 or more tokens
        self.tie_distance: dict[int, float] = {}

    def bind(self, w: Mapping[str, np.ndarray], n_tokens: int = 0) -> None:
        """Takes the forward pass's weight arrays (by identity) and its token count."""
        self.ids = frozenset(id(w[n]) for n in self.names)
        self.bf16_ids = frozenset(id(w[n]) for n in self.bf16_names)
        lengths = [] if self.chunk is None else (
            [self.chunk] * -(-n_tokens // self.chunk) if isinstance(self.chunk, int) else list(self.chunk))
        self.in_chunk = np.zeros(n_tokens, bool)
        start = 0
        for c in lengths:
            self.in_chunk[start:start + c] = min(c, n_tokens - start) > 1
            start += c

    def _tie(self, t: int, d: float) -> None:
        self.tie_distance[t] = min(self.tie_distance.get(t, np.inf), d)

    def _int8(self, x: np.ndarray, t: int | None) -> np.ndarray:
        xb = np.asarray(x, np.float32).reshape(*np.shape(x)[:-1], -1, 32)
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            amax = np.abs(xb).max(axis=-1, keepdims=True)
            r = xb / np.where(amax > 0, amax / np.float32(127), np.float32(1))
            dist = np.abs(r - np.floor(r) - np.float32(0.5)).reshape(*np.shape(x)[:-1], -1).min(axis=-1)
        for k, dk in enumerate(np.atleast_1d(dist)):
            self._tie(k if t is None else t, float(dk))
        return quantize_x_int8(x)

    def _bf16(self, x: np.ndarray, t: int | None) -> np.ndarray:
        rows = np.atleast_2d(x)
        tokens = range(rows.shape[0]) if t is None else [t]
        out = np.array(rows, dtype=np.float64)
        for k, tk in enumerate(tokens):
            if tk < self.in_chunk.size and self.in_chunk[tk]:
                out[k] = round_x_bf16(rows[k])
                bits = np.asarray(rows[k], np.float32).view(np.uint32)
                frac = (bits & 0xFFFF).astype(np.float64) / 65536.0   # position between bf16 neighbours
                finite = np.isfinite(rows[k])
                if finite.any():
                    self._tie(tk, float(np.abs(frac[finite] - 0.5).min()))
        return out.reshape(np.shape(x))

    def full(self, x: np.ndarray, w: np.ndarray, t: int | None = None) -> np.ndarray:
        """x [..., cols] @ W.T; x's rows are tokens 0.. (or x is token t's)."""
        if id(w) in self.bf16_ids:
            return self._bf16(x, t) @ w.T
        return (self._int8(x, t) if self.whole and id(w) in self.ids else x) @ w.T

    def rows(self, w: np.ndarray, idx: np.ndarray, x: np.ndarray, t: int) -> np.ndarray:
        """W[idx] @ x, x [cols] of token t."""
        if self.grouped and id(w) in self.bf16_ids:
            return w[idx] @ self._bf16(x, t)
        return w[idx] @ (self._int8(x, t) if id(w) in self.ids else x)

    def spread(self, u: np.ndarray, w: np.ndarray, idx: np.ndarray, t: int) -> np.ndarray:
        """u @ W[idx]: the kept rows of an output matrix (Spark V, W_down^T) weighted by token
        t's coefficients u [len(idx)]."""
        if self.grouped and id(w) in self.bf16_ids:
            return self._bf16(u, t) @ w[idx]
        return u @ w[idx]

    def gathered(self, x: np.ndarray, w: np.ndarray) -> np.ndarray:
        """x [T, cols] @ W.T as `rows` takes x (masked matvecs: the screened LM head's exact
        logits), for every row of W; x's rows are tokens 0.."""
        return (self._int8(x, None) if id(w) in self.ids else x) @ w.T


def round_x_bf16(x: np.ndarray) -> np.ndarray:
    """x as the bf16 chunk matmuls take it (float64): float32, then bf16 rounded to nearest,
    ties to even (NaN stays NaN)."""
    return bf16_to_f32(f32_to_bf16(np.asarray(x, np.float32))).astype(np.float64)


def quantize_x_int8(x: np.ndarray) -> np.ndarray:
    """x [..., cols] as the q4 / q5 decode kernels take it, s q per block of 32 (float64): in f32,
    s = max |x_block| / 127 (1 for a zero block), q = round-half-even(x / s); a block with a
    NaN or infinity (or whose f32 sum overflows) is NaN."""
    xb = np.asarray(x, np.float32).reshape(*np.shape(x)[:-1], -1, 32)
    with np.errstate(over="ignore", invalid="ignore"):
        amax = np.abs(xb).max(axis=-1, keepdims=True)
        s = np.where(amax > 0, amax / np.float32(127), np.float32(1)).astype(np.float32)
        q = np.rint(xb / s)
        bad = ~np.isfinite(xb.sum(axis=-1, keepdims=True, dtype=np.float32))
    out = np.where(bad, np.nan, q.astype(np.float64) * s.astype(np.float64))
    return out.reshape(np.shape(x))


def _acklam(p: float) -> float:
    if p < _P_LOW or p > 1.0 - _P_LOW:
        q = math.sqrt(-2.0 * math.log(min(p, 1.0 - p)))
        x = ((((((_C[0] * q + _C[1]) * q + _C[2]) * q + _C[3]) * q + _C[4]) * q + _C[5])
             / ((((_D[0] * q + _D[1]) * q + _D[2]) * q + _D[3]) * q + 1.0))
        return x if p < _P_LOW else -x
    q = p - 0.5
    r = q * q
    return ((((((_A[0] * r + _A[1]) * r + _A[2]) * r + _A[3]) * r + _A[4]) * r + _A[5]) * q
            / (((((_B[0] * r + _B[1]) * r + _B[2]) * r + _B[3]) * r + _B[4]) * r + 1.0))


def normal_quantile(p: float) -> float:
    """Q(p): the inverse standard-normal CDF, for 0 < p < 1 (Q(0.92) = 1.40507...)."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"normal_quantile needs 0 < p < 1, got {p}")
    x = _acklam(p)
    for _ in range(2):
        # Halley step on Phi(x) - p, Phi(x) = erfc(-x / sqrt 2) / 2.
        e = 0.5 * math.erfc(-x / math.sqrt(2.0)) - p
        u = e * math.sqrt(2.0 * math.pi) * math.exp(0.5 * x * x)
        x -= u / (1.0 + 0.5 * x * u)
    return x


def statistical_threshold(s: np.ndarray, fraction: float) -> float:
    """theta = mean(s) + std(s) * Q(1 - fraction), population std (divide by len(s))."""
    s = np.asarray(s, dtype=np.float64)
    return float(np.mean(s) + np.std(s) * normal_quantile(1.0 - fraction))


# ------------------------------------------------------------------------------ elementwise

def rms_norm(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    """x / sqrt(mean(x^2) + eps) * (1 + w) over the last axis (files store w, not 1 + w)."""
    x = np.asarray(x, dtype=np.float64)
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * (1.0 + w)


def gelu_tanh(x: np.ndarray) -> np.ndarray:
    """GELU, tanh form: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))."""
    return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))


def softcap(x: np.ndarray, cap: float) -> np.ndarray:
    """cap * tanh(x / cap); cap 0 means no cap."""
    return x if cap == 0 else cap * np.tanh(x / cap)


def softplus(x: np.ndarray) -> np.ndarray:
    """log(1 + exp(x)), without overflow."""
    return np.logaddexp(0.0, x)


def rope(x: np.ndarray, positions: np.ndarray, base: float, offset: int, size: int
         ) -> np.ndarray:
    """Split-half RoPE of the part [offset, offset + size) of each head; the rest is unchanged.

    x: [T, n, hd]; positions: [T] (already divided by any position scale). Pairs (o + i,
    o + i + size/2) rotate by angle pos * base^(-2i/size), i < size/2.
    """
    half = size // 2
    inv_freq = base ** (-2.0 * np.arange(half, dtype=np.float64) / size)      # [half]
    angle = positions[:, None].astype(np.float64) * inv_freq[None, :]         # [T, half]
    cos, sin = np.cos(angle)[:, None, :], np.sin(angle)[:, None, :]           # [T, 1, half]
    out = np.array(x, dtype=np.float64)
    x1 = x[:, :, offset:offset + half]
    x2 = x[:, :, offset + half:offset + size]
    out[:, :, offset:offset + half] = x1 * cos - x2 * sin
    out[:, :, offset + half:offset + size] = x2 * cos + x1 * sin
    return out


# ------------------------------------------------------------------------------ FFN

def dense_ffn(x: np.ndarray, w_gate: np.ndarray, w_up: np.ndarray, w_down: np.ndarray,
              products: Products | None = None) -> np.ndarray:
    """GeGLU: down @ (gelu_tanh(gate @ x) * (up @ x)). x: [T, D] -> [T, D]."""
    mv = (products or Products()).full
    return mv(gelu_tanh(mv(x, w_gate)) * mv(x, w_up), w_down)


def spark_ffn(x: np.ndarray, k1: np.ndarray, k2: np.ndarray, v: np.ndarray, fraction: float,
              products: Products | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Spark FFN of each token: (y [T, D], active count per token [T]).

    s = K1 x[:r]; theta = statistical_threshold(s, fraction); active = {i : s_i > theta};
    u_i = gelu_tanh(s_i - theta) * (K2[i] . x[r:]); y = sum_{i active} u_i V[i].
    k1: [F, r], k2: [F, D - r], v: [F, D] (all neuron-major).
    """
    pr = products or Products()
    r = k1.shape[1]
    y = np.zeros((x.shape[0], v.shape[1]))
    n_active = np.zeros(x.shape[0], dtype=np.int64)
    for t in range(x.shape[0]):
        s = pr.full(x[t, :r], k1, t)                        # [F]
        theta = statistical_threshold(s, fraction)
        active = np.nonzero(s > theta)[0]
        u = gelu_tanh(s[active] - theta) * pr.rows(k2, active, x[t, r:], t)
        y[t] = pr.spread(u, v, active, t)
        n_active[t] = active.size
    return y, n_active


def sparse_gated_ffn(x: np.ndarray, w_gate: np.ndarray, w_up: np.ndarray, w_down_t: np.ndarray,
                     quantile: float, gate_a: np.ndarray | None = None,
                     gate_b: np.ndarray | None = None, select: np.ndarray | None = None,
                     select_by: str = "gate", products: Products | None = None
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Sparsified dense GeGLU of each token: (y [T, D], kept count per token [T]).

    p = gate_b @ (gate_a @ x) if a low-rank predictor is given, else p = W_gate x;
    the score is r = p ("gate"), |gelu_tanh(p)| ("abs_gelu"), |gelu_tanh(W_gate x) (W_up x)|
    ("abs_act") or its square root ("sqrt_abs_act"); s = select * r (select: per-neuron weights, default 1);
    theta = mean(s) + std(s) * quantile;
    kept = {i : s_i > theta}; y = sum_{i kept} gelu_tanh(W_gate[i] . x) (W_up[i] . x) W_down_t[i].
    w_gate, w_up, w_down_t: [F, D] (neuron-major; w_down_t is W_down transposed).
    """
    pr = products or Products()
    y = np.zeros((x.shape[0], w_down_t.shape[1]))
    n_kept = np.zeros(x.shape[0], dtype=np.int64)
    for t in range(x.shape[0]):
        # Without a low-rank predictor the kept gate values are those of W_gate x (and with
        # "abs_act" the kept products too), not recomputed from the gathered rows.
        g = pr.full(x[t], w_gate, t) if gate_a is None else None
        act = None
        p = pr.full(pr.full(x[t], gate_a, t), gate_b, t) if gate_a is not None else g
        if select_by == "abs_gelu":
            p = np.abs(gelu_tanh(p))
        elif select_by in ("abs_act", "sqrt_abs_act"):
            act = gelu_tanh(g if g is not None else pr.full(x[t], w_gate, t)) * pr.full(x[t], w_up, t)
            p = np.abs(act)
            if select_by == "sqrt_abs_act":
                p = np.sqrt(p)
        s = p * select if select is not None else p
        theta = float(np.mean(s) + np.std(s) * quantile)
        kept = np.nonzero(s > theta)[0]
        if act is not None:
            u = act[kept]
        else:
            gk = g[kept] if g is not None else pr.rows(w_gate, kept, x[t], t)
            u = gelu_tanh(gk) * pr.rows(w_up, kept, x[t], t)
        y[t] = pr.spread(u, w_down_t, kept, t)
        n_kept[t] = kept.size
    return y, n_kept


# ------------------------------------------------------------------------------ attention

def visible_keys(t: int, local: bool, window: int) -> np.ndarray:
    """Key positions query t sees: causal, and in a local layer itself plus window - 1 earlier."""
    first = max(0, t - window + 1) if local else 0
    return np.arange(first, t + 1)


def _dense_head(q: np.ndarray, k: np.ndarray, v: np.ndarray, cfg: ModelConfig) -> np.ndarray:
    """softmax_j(softcap(query_scale * q . k_j)) weighted sum of v_j. q: [hd], k, v: [n, hd]."""
    scores = softcap(cfg.query_scale * (k @ q), cfg.attn_softcap)
    p = np.exp(scores - scores.max())
    return (p / p.sum()) @ v


def _spark_head(q: np.ndarray, k: np.ndarray, v: np.ndarray, cfg: ModelConfig
                ) -> tuple[np.ndarray, int]:
    """Spark attention of one query head over n visible tokens: (o [hd], |S|).

    s1_j = softcap(query_scale * q[:r_a] . k_j[:r_a]); S = all when n <= attn_topk, else
    {j : s1_j > statistical_threshold(s1, attn_topk / n)};
    w_j = softmax_{j in S}(s1_j) * softplus(query_scale * q[r_a:] . k_j[r_a:]); o = sum w_j v_j.
    An empty S gives o = 0 (an empty sum).
    """
    r_a = cfg.attn_predictor_dim
    n = k.shape[0]
    s1 = softcap(cfg.query_scale * (k[:, :r_a] @ q[:r_a]), cfg.attn_softcap)     # [n]
    if n <= cfg.attn_topk:
        keep = np.arange(n)
    else:
        keep = np.nonzero(s1 > statistical_threshold(s1, cfg.attn_topk / n))[0]
    if keep.size == 0:
        return np.zeros(v.shape[1]), 0
    p = np.exp(s1[keep] - s1[keep].max())
    p /= p.sum()
    g = softplus(cfg.query_scale * (k[keep, r_a:] @ q[r_a:]))
    return (p * g) @ v[keep], int(keep.size)


def _rotated_group(q: np.ndarray, k: np.ndarray, v: np.ndarray, cfg: ModelConfig
                   ) -> tuple[np.ndarray, int]:
    """Sparsified attention of the query heads sharing one KV head: (o [g, hd], |S|).

    q: [g, hd] rotated queries (already times query_scale), k: [n, hd] rotated keys, v: [n, hd].
    S = every visible token if n <= attn_sparse_topk + attn_sparse_recent; else, with C the
    n - recent oldest tokens, pooled_j = mean_h(q_h)[:r_a] . k_j[:r_a] for j in C and
    S = {j in C : pooled_j > statistical_threshold(pooled, topk / |C|)} + the recent tokens.
    Weights softmax_{j in S}(softcap(q_h . k_j)) per head; o_h = sum_{j in S} w_hj v_j.
    """
    r_a, topk, recent = cfg.attn_sparse_dim, cfg.attn_sparse_topk, cfg.attn_sparse_recent
    n = k.shape[0]
    if n <= topk + recent:
        keep = np.arange(n)
    else:
        nc = n - recent
        pooled = k[:nc, :r_a] @ q[:, :r_a].mean(axis=0)
        chosen = np.nonzero(pooled > statistical_threshold(pooled, topk / nc))[0]
        keep = np.concatenate([chosen, np.arange(nc, n)])
    if keep.size == 0:
        return np.zeros((q.shape[0], v.shape[1])), 0
    scores = softcap(q @ k[keep].T, cfg.attn_softcap)               # [g, |S|]
    p = np.exp(scores - scores.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    return p @ v[keep], int(keep.size)


def _kv_round(x: np.ndarray, kv_dtype: str) -> np.ndarray:
    """Cached keys/values as the KV cache holds them: float32, then bf16 rounded to nearest
    (ties to even) for kv_dtype "bf16"; "f32" keeps the float64 values (the engine's f32 cache
    differs from them only by its f32 rounding)."""
    if kv_dtype == "f32":
        return x
    if kv_dtype != "bf16":
        raise ValueError(f"kv_dtype must be 'f32' or 'bf16', got {kv_dtype!r}")
    return round_x_bf16(x)


def attention(cfg: ModelConfig, layer: int, w: Mapping[str, np.ndarray], x: np.ndarray,
              kv_dtype: str = "f32", products: Products | None = None) -> tuple[np.ndarray, float]:
    """Self-attention of layer `layer` on x: [T, D] (already attn_norm'ed), with keys and
    values cached as `kv_dtype` ("f32" or "bf16": see _kv_round).

    Returns (out [T, D], mean over tokens and query heads of the attended-token count).
    """
    p = f"blk.{layer}."
    T, H, G, hd = x.shape[0], cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
    mv = (products or Products()).full
    q = mv(x, w[p + "attn_q"]).reshape(T, H, hd)
    k = mv(x, w[p + "attn_k"]).reshape(T, G, hd)
    v = mv(x, w[p + "attn_v"]).reshape(T, G, hd)
    if cfg.qk_norm:
        q = rms_norm(q, w[p + "attn_q_norm"], cfg.norm_eps)
        k = rms_norm(k, w[p + "attn_k_norm"], cfg.norm_eps)
    positions = np.arange(T, dtype=np.float64) / cfg.rope_scale(layer)
    base = cfg.rope_base(layer)
    if cfg.is_spark_attn:
        r_a = cfg.attn_predictor_dim
        q = rope(rope(q, positions, base, 0, r_a), positions, base, r_a, hd - r_a)
        k = rope(rope(k, positions, base, 0, r_a), positions, base, r_a, hd - r_a)
    else:
        q = rope(q, positions, base, 0, hd)
        k = rope(k, positions, base, 0, hd)
    v = _kv_round(v, kv_dtype)

    heads = np.zeros((T, H, hd))
    attended = 0
    group = H // G                      # query heads h share KV head h // group
    if cfg.is_sparse_attn:
        # Rotate by P_g after RoPE: P orthogonal, so q.k (and dense attention) is unchanged.
        rot = w[p + "attn_rot"].reshape(G, hd, hd)
        qr = np.einsum("hij,thj->thi", rot[np.arange(H) // group], q)  # each head its P_g
        kr = _kv_round(np.einsum("gij,tgj->tgi", rot, k), kv_dtype)
        for t in range(T):
            vis = visible_keys(t, cfg.is_local(layer), cfg.sliding_window)
            for g in range(G):
                hs = slice(g * group, (g + 1) * group)
                heads[t, hs], n_kept = _rotated_group(cfg.query_scale * qr[t, hs], kr[vis, g],
                                                      v[vis, g], cfg)
                attended += n_kept * group
        out = mv(heads.reshape(T, H * hd), w[p + "attn_output"])
        return out, attended / (T * H)
    k = _kv_round(k, kv_dtype)
    for t in range(T):
        vis = visible_keys(t, cfg.is_local(layer), cfg.sliding_window)
        for h in range(H):
            kh, vh = k[vis, h // group], v[vis, h // group]
            if cfg.is_spark_attn:
                heads[t, h], n_kept = _spark_head(q[t, h], kh, vh, cfg)
            else:
                heads[t, h], n_kept = _dense_head(q[t, h], kh, vh, cfg), vis.size
            attended += n_kept
    out = mv(heads.reshape(T, H * hd), w[p + "attn_output"])
    return out, attended / (T * H)


# ------------------------------------------------------------------------------ model

def _ffn(cfg: ModelConfig, layer: int, w: Mapping[str, np.ndarray], x: np.ndarray,
         products: Products) -> tuple[np.ndarray, float]:
    p = f"blk.{layer}."
    if cfg.is_sparse_ffn:
        rank = cfg.ffn_gate_rank
        y, n_active = sparse_gated_ffn(
            x, w[p + "ffn_gate"], w[p + "ffn_up"], w[p + "ffn_down_t"], cfg.ffn_quantile(layer),
            w[p + "ffn_gate_a"] if rank else None, w[p + "ffn_gate_b"] if rank else None,
            w[p + "ffn_select"] if cfg.ffn_select_weighted else None, cfg.ffn_select_by, products)
        return y, float(np.mean(n_active)) / cfg.d_ff
    if cfg.is_spark_ffn:
        y, n_active = spark_ffn(x, w[p + "ffn_k1"], w[p + "ffn_k2"], w[p + "ffn_v"],
                                cfg.ffn_topk_fraction, products)
        return y, float(np.mean(n_active)) / cfg.d_ff
    return dense_ffn(x, w[p + "ffn_gate"], w[p + "ffn_up"], w[p + "ffn_down"], products), 1.0


def forward_with_stats(cfg: ModelConfig, weights: Mapping[str, np.ndarray],
                       tokens: Sequence[int] | np.ndarray, kv_dtype: str = "f32",
                       products: Products | None = None) -> tuple[np.ndarray, list[LayerStats]]:
    """Causal forward pass over `tokens` at positions 0..T-1: (logits [T, V], stats per layer).
    kv_dtype: how the KV cache holds keys and values, "f32" or "bf16" (see _kv_round).
    products: how W x is computed (Products: the engine's int8 x for q4 / q5 matrices in decode
    or in gathered rows, bf16 x for bf16 matrices in chunk matmuls); default exact."""
    hn, w, stats, products = _final_hidden(cfg, weights, tokens, kv_dtype, products)
    if cfg.lm_head_screen_margin > 0:  # exact logits from masked matvecs of the tied head
        logits = softcap(products.gathered(hn, w["token_embd"]), cfg.final_softcap)
        # Every row (prefill too) meets the screen as the engine's kernel does: x in int8 per row.
        screen = softcap(screen4_logits(w[_SCREEN], cfg.vocab_size, cfg.d_model, hn),
                         cfg.final_softcap)
        logits = screened_logits(logits, screen, cfg.lm_head_screen_margin)
    else:
        logits = softcap(products.full(hn, w["token_embd"]), cfg.final_softcap)  # tied LM head
    return logits, stats


def final_hidden(cfg: ModelConfig, weights: Mapping[str, np.ndarray],
                 tokens: Sequence[int] | np.ndarray, kv_dtype: str = "f32") -> np.ndarray:
    """The final-normed hidden states [T, d_model] the LM head reads, float64."""
    return _final_hidden(cfg, weights, tokens, kv_dtype, None)[0]


def _final_hidden(cfg, weights, tokens, kv_dtype, products):
    tokens = np.asarray(tokens, dtype=np.int64).reshape(-1)
    if tokens.size == 0:
        raise ValueError("tokens is empty")
    if tokens.min() < 0 or tokens.max() >= cfg.vocab_size:
        raise ValueError(f"token ids must be in [0, {cfg.vocab_size})")
    w: dict[str, np.ndarray] = {}
    for name, a in weights.items():
        if name.endswith(".scale"):
            continue                    # int8 scales: weights must come dequantized
        a = np.asarray(a)
        if name == _SCREEN:
            if a.dtype != np.uint8:
                raise ValueError(f"weight {_SCREEN!r} has dtype {a.dtype}; pass its stored "
                                 f"screen4 bytes (uint8, read_engine_file(path) without "
                                 f"dequantize): the screen's scores are defined on them")
            w[name] = a
            continue
        if a.dtype.kind != "f":
            raise ValueError(f"weight {name!r} has dtype {a.dtype}; pass float values "
                             f"(read_engine_file(..., dequantize=True))")
        w[name] = a.astype(np.float64)
    eps = cfg.norm_eps
    products = products or Products()
    products.bind(w, len(tokens))

    h = w["token_embd"][tokens] * math.sqrt(cfg.d_model)            # [T, D]
    stats = []
    for i in range(cfg.n_layers):
        p = f"blk.{i}."
        a, attn_tokens = attention(cfg, i, w, rms_norm(h, w[p + "attn_norm"], eps), kv_dtype,
                                   products)
        h = h + rms_norm(a, w[p + "attn_post_norm"], eps)
        f, ffn_fraction = _ffn(cfg, i, w, rms_norm(h, w[p + "ffn_norm"], eps), products)
        h = h + rms_norm(f, w[p + "ffn_post_norm"], eps)
        stats.append(LayerStats(ffn_active_fraction=ffn_fraction, attn_mean_tokens=attn_tokens))
    return rms_norm(h, w["output_norm"], eps), w, stats, products


_SCREEN = "token_embd_screen"
# At most this many logits per row are recomputed by the screened head (ties aside).
SCREEN_MAX_RESCORED = 4096


def screened_logits(exact: np.ndarray, screen: np.ndarray, margin: float) -> np.ndarray:
    """The screened LM head (docs/engine-file.md): per row, the exact logit where the screen's
    is within `margin` of the row's largest screen logit and among its SCREEN_MAX_RESCORED
    largest (ties kept), the screen's elsewhere."""
    return np.where(screen_kept(screen, margin), exact, screen)


def screen_kept(screen: np.ndarray, margin: float) -> np.ndarray:
    """Which logits the screened head recomputes exactly (bool, the shape of `screen`)."""
    floor = screen.max(axis=-1, keepdims=True) - margin
    k = min(SCREEN_MAX_RESCORED, screen.shape[-1])
    kth = -np.partition(-screen, k - 1, axis=-1)[..., k - 1:k]
    return screen >= np.maximum(floor, kth)


def forward(cfg: ModelConfig, weights: Mapping[str, np.ndarray],
            tokens: Sequence[int] | np.ndarray, kv_dtype: str = "f32",
            products: Products | None = None) -> np.ndarray:
    """Causal forward pass over `tokens`: logits [T, vocab_size], float64 (see forward_with_stats)."""
    return forward_with_stats(cfg, weights, tokens, kv_dtype, products)[0]
