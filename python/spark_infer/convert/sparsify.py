"""Training-free sparsification of a dense Gemma 2/3 checkpoint (docs/engine-file.md, the
"sparsified" FFN and attention kinds), applied while converting.

- FFN: keep the neurons whose selection score s = c * p beats theta_l = mean(s) + std(s) * Q_l,
  p the gate pre-activation (or a low-rank predictor B (A x) of it), c optional per-neuron
  weights (the norm of each neuron's down row, as WINA weighs neurons). Pretrained gate
  pre-activations are not Gaussian, so Q(1 - F) keeps the wrong fraction; calibration sets Q_l
  to the (1 - F) quantile of the standardised scores z = (s - mean) / std over the calibration
  tokens, layer by layer, with the earlier layers already sparsified, so the realised fraction on
  that text is F.
- Attention: per layer and KV head an orthogonal P from the eigenvectors of the second moment of
  the post-RoPE keys on the calibration text (largest first): q.k is unchanged, and the first r_a
  rotated dims carry most of it, so they predict the scores (docs/engine-file.md).
- The low-rank predictor: a truncated SVD of W_gate C^(1/2) (C the second moment of the FFN
  inputs on the calibration text), so B A x approximates W_gate x where inputs actually lie.

The calibration pass is a float32 numpy forward pass written from the equations (as
reference.py, but vectorised over tokens and without the LM head), one layer at a time, so only
one layer's weights are in memory at once.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np

from ..config import FFN_SELECT, ModelConfig
from ..reference import gelu_tanh, normal_quantile, rms_norm, rope, softcap
from ._errors import ConversionError

__all__ = ["SparsifySpec", "Sparsified", "sparsify"]

DEFAULT_RECENT = 32
DEFAULT_REFIT_LAMBDA = 3.0   # measured at F=0.5, int8 (README, "Sparse models": the down refit)
# One calibration sequence: the numpy pass holds [heads, T, T] attention scores and costs T^2.
MAX_CALIBRATION_TOKENS = 2048
_EPS_REL = 1e-6       # relative eigenvalue floor when whitening by C^(1/2)


@dataclass(frozen=True)
class SparsifySpec:
    """What to sparsify. ffn: kept FFN fraction F (1.0 = dense FFN); attn: tokens K per query
    (0 = dense attention); rank: low-rank gate predictor R (0 = the exact gate selects);
    weighted: WINA-style selection weights; by: what ranks the neurons ("gate", "abs_gelu",
    "abs_act", "sqrt_abs_act"; see ModelConfig.ffn_select_by); attn_dim: predictor dims r_a (0 = head_dim / 4);
    recent: newest tokens always attended; refit: ridge strength lambda (relative to the mean
    diagonal of A_s^T A_s) of the down projection's least-squares refit (0 = no refit)."""

    ffn: float = 1.0
    attn: int = 0
    rank: int = 0
    weighted: bool = False
    by: str = "abs_gelu"
    attn_dim: int = 0
    recent: int = DEFAULT_RECENT
    refit: float = 0.0

    def __post_init__(self) -> None:
        if not (0.0 < self.ffn <= 1.0):
            raise ConversionError(f"--sparsify ffn must be a fraction in (0, 1], got {self.ffn}")
        for name in ("attn", "rank", "attn_dim", "recent"):
            if getattr(self, name) < 0:
                raise ConversionError(f"--sparsify {name} must be >= 0, got {getattr(self, name)}")
        if self.ffn == 1.0 and (self.rank or self.weighted or self.refit):
            raise ConversionError("--sparsify rank/wina/refit need ffn < 1")
        if not (math.isfinite(self.refit) and self.refit >= 0):
            raise ConversionError(f"--sparsify refit=LAM must be a finite ridge strength > 0, "
                                  f"got {self.refit}")
        if self.by not in FFN_SELECT:
            raise ConversionError(f"--sparsify by must be one of {', '.join(FFN_SELECT)}, got "
                                  f"{self.by!r}")
        if self.by in ("abs_act", "sqrt_abs_act") and self.rank:
            raise ConversionError(f"--sparsify by={self.by} reads the exact gate: no rank=R")
        if self.ffn == 1.0 and self.attn == 0:
            raise ConversionError("--sparsify needs ffn=F < 1 and/or attn=K > 0")

    @classmethod
    def parse(cls, text: str) -> "SparsifySpec":
        """'ffn=0.5,attn=128,by=abs_gelu,rank=128,wina,attn_dim=64,recent=32,refit[=LAM]' (any
        subset, any order; a bare 'refit' takes DEFAULT_REFIT_LAMBDA)."""
        if not isinstance(text, str) or not text.strip():
            raise ConversionError("--sparsify wants e.g. 'ffn=0.5' or 'ffn=0.5,attn=128'")
        kinds = {"ffn": float, "attn": int, "rank": int, "attn_dim": int, "recent": int,
                 "by": str, "refit": float}
        values: dict = {}
        for item in text.split(","):
            key, eq, value = item.strip().partition("=")
            if key == "wina" and not eq:
                values["weighted"] = True
                continue
            if key == "refit" and not eq:
                values["refit"] = DEFAULT_REFIT_LAMBDA
                continue
            if key not in kinds or not eq:
                raise ConversionError(f"--sparsify: cannot read {item.strip()!r}; known: "
                                      f"ffn=F, attn=K, by={'|'.join(FFN_SELECT)}, rank=R, "
                                      f"wina, attn_dim=D, recent=N, refit[=LAM]")
            try:
                values[key] = kinds[key](value)
            except ValueError:
                raise ConversionError(f"--sparsify {key}: {value!r} is not a "
                                      f"{kinds[key].__name__}") from None
            if key == "refit" and not values[key] > 0:
                raise ConversionError(f"--sparsify refit=LAM must be a finite ridge strength "
                                      f"> 0, got {value!r}")
        return cls(**values)


@dataclass
class Sparsified:
    """The result: the new config, a tensor getter over the source's, and what was done."""

    cfg: ModelConfig
    get: Callable[[str], np.ndarray]
    record: dict

    def metadata(self) -> dict[str, str]:
        return {"sparsify": json.dumps(self.record, separators=(",", ":"))}


# --------------------------------------------------------------------------- numpy forward

def _rms(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    return rms_norm(x, w, eps).astype(np.float32)


def _rope(x: np.ndarray, positions: np.ndarray, base: float) -> np.ndarray:
    """Split-half RoPE of whole heads. x: [T, n, hd]."""
    return rope(x, positions, base, 0, x.shape[-1]).astype(np.float32)


def _attention(cfg: ModelConfig, layer: int, get, x: np.ndarray
               ) -> tuple[np.ndarray, np.ndarray]:
    """Dense attention of one layer on x [T, D] (normed): (the heads' outputs [T, H * hd], before
    the output projection attn_output; post-RoPE keys [T, G, hd])."""
    p = f"blk.{layer}."
    T, H, G, hd = x.shape[0], cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
    q = (x @ get(p + "attn_q").T).reshape(T, H, hd)
    k = (x @ get(p + "attn_k").T).reshape(T, G, hd)
    v = (x @ get(p + "attn_v").T).reshape(T, G, hd)
    if cfg.qk_norm:
        q = _rms(q, get(p + "attn_q_norm"), cfg.norm_eps)
        k = _rms(k, get(p + "attn_k_norm"), cfg.norm_eps)
    pos = np.arange(T, dtype=np.float64) / cfg.rope_scale(layer)
    q, k = _rope(q, pos, cfg.rope_base(layer)), _rope(k, pos, cfg.rope_base(layer))
    i, j = np.arange(T)[:, None], np.arange(T)[None, :]
    visible = j <= i
    if cfg.is_local(layer):
        visible &= j > i - cfg.sliding_window
    group = H // G
    out = np.empty((T, H, hd), np.float32)
    for h in range(H):
        s = softcap(cfg.query_scale * (q[:, h] @ k[:, h // group].T), cfg.attn_softcap)
        s = np.where(visible, s, -np.inf)
        s = np.exp(s - s.max(axis=1, keepdims=True))
        out[:, h] = (s / s.sum(axis=1, keepdims=True)) @ v[:, h // group]
    return out.reshape(T, H * hd), k


def _low_rank_gate(w_gate: np.ndarray, x: np.ndarray, rank: int, seed: int
                   ) -> tuple[np.ndarray, np.ndarray]:
    """(A [R, D], B [F, R]) with B A x ~ W_gate x on inputs like x [T, D]: a truncated SVD of
    W C^(1/2), C = x^T x / T, by randomized range finding (two power iterations)."""
    c = (x.T.astype(np.float64) @ x) / x.shape[0]
    lam, u = np.linalg.eigh(c)
    lam = np.maximum(lam, _EPS_REL * lam.max())
    c_half = (u * np.sqrt(lam)) @ u.T
    c_inv_half = (u / np.sqrt(lam)) @ u.T
    m = w_gate.astype(np.float64) @ c_half                        # [F, D]
    rng = np.random.default_rng(seed)
    y = m @ rng.standard_normal((m.shape[1], min(rank + 16, m.shape[1])))
    for _ in range(2):
        y = m @ (m.T @ np.linalg.qr(y)[0])
    basis = np.linalg.qr(y)[0]                                     # [F, R + 16]
    uu, sv, vt = np.linalg.svd(basis.T @ m, full_matrices=False)
    b = basis @ uu[:, :rank]                                       # [F, R]
    a = (sv[:rank, None] * vt[:rank]) @ c_inv_half                 # [R, D]
    return a.astype(np.float32), b.astype(np.float32)


def _key_rotation(keys: np.ndarray, r_a: int) -> tuple[np.ndarray, float]:
    """(P [hd, hd], energy fraction in the first r_a dims) for keys [T, hd]: rows of P are the
    eigenvectors of the keys' second moment, largest eigenvalue first."""
    m = keys.T.astype(np.float64) @ keys / keys.shape[0]
    lam, u = np.linalg.eigh(m)
    order = np.argsort(lam)[::-1]
    lam = np.maximum(lam[order], 0.0)
    return u[:, order].T.astype(np.float32), float(lam[:r_a].sum() / max(lam.sum(), 1e-30))


def calibration_sequences(ids: np.ndarray, all_of_it: bool) -> list[np.ndarray]:
    """Independent sequences of at most MAX_CALIBRATION_TOKENS from ids (which start with
    <bos>), each starting with <bos>: the first only, unless all_of_it."""
    n = MAX_CALIBRATION_TOKENS
    seqs = [ids[:n]]
    if all_of_it:
        seqs += [np.concatenate([ids[:1], ids[i:i + n - 1]]) for i in range(n, len(ids), n - 1)]
    return seqs


def refit_down(acts: list[np.ndarray], targets: list[np.ndarray], w_down: np.ndarray,
               lam: float) -> np.ndarray:
    """W' [D, F] = argmin sum_t w_t ||W' a_t - y_t||^2 + lam' ||W' - W_down||_F^2 over the rows
    a_t of acts (the sparse activations, [T, F] per sequence) and y_t of targets ([T, D], the
    dense FFN's output), lam' = lam * trace(G) / F, G = sum_t w_t a_t a_t^T, w_t = 1 / mean(y_t^2):
    the FFN output goes through an RMS norm, so a token's error counts relative to the size of
    its output. Normal equations in float64: (G + lam' I) W'^T = sum_t w_t a_t y_t^T + lam' W_down^T
    (the ridge pulls neurons the text rarely keeps back to their source rows)."""
    n_ff = w_down.shape[1]
    gram = np.zeros((n_ff, n_ff))
    cross = np.zeros((n_ff, w_down.shape[0]))
    for a, y in zip(acts, targets):
        w = 1.0 / np.maximum((y.astype(np.float64) ** 2).mean(axis=1), 1e-30)
        aw = a * np.sqrt(w)[:, None].astype(np.float32)
        yw = y * np.sqrt(w)[:, None].astype(np.float32)
        gram += aw.T @ aw            # float32 products of one sequence, summed in float64
        cross += aw.T @ yw
    reg = lam * np.trace(gram) / n_ff
    sol = np.linalg.solve(gram + reg * np.eye(n_ff), cross + reg * w_down.T.astype(np.float64))
    return sol.T.astype(np.float32)


# --------------------------------------------------------------------------- sparsify

def sparsify(cfg: ModelConfig, get: Callable[[str], np.ndarray], spec: SparsifySpec,
             calibration_ids: list[int] | None, calibration_name: str | None = None,
             calibrate_ffn: bool = True) -> Sparsified:
    """Sparsify the dense model (cfg, get) per spec.

    calibration_ids: token ids (with <bos>) of the calibration text, needed for attention
    rotations and the low-rank predictor, and for calibrated FFN quantiles when calibrate_ffn
    (otherwise every layer uses Q(1 - F), and the realised fraction on the text is recorded).
    """
    if cfg.is_spark_ffn or cfg.is_spark_attn or cfg.is_sparse_ffn or cfg.is_sparse_attn:
        raise ConversionError("--sparsify needs a dense model (this one is already sparse)")
    ffn_on, attn_on = spec.ffn < 1.0, spec.attn > 0
    r_a = spec.attn_dim or cfg.head_dim // 4
    if attn_on and not 0 < r_a < cfg.head_dim:
        raise ConversionError(f"--sparsify attn_dim must be in (0, head_dim={cfg.head_dim}), "
                              f"got {r_a}")
    if spec.rank and spec.rank >= min(cfg.d_model, cfg.d_ff):
        raise ConversionError(f"--sparsify rank must be < min(d_model, d_ff) = "
                              f"{min(cfg.d_model, cfg.d_ff)}, got {spec.rank}")
    if calibration_ids is None or len(calibration_ids) < 2:
        raise ConversionError("sparsifying needs a calibration text of at least one token")

    ids = np.asarray(calibration_ids, dtype=np.int64)
    if not spec.refit:
        ids = ids[:MAX_CALIBRATION_TOKENS]
    seqs = calibration_sequences(ids, spec.refit > 0)
    T, L = len(ids), cfg.n_layers
    q_gauss = normal_quantile(1.0 - spec.ffn) if ffn_on else 0.0
    quantiles: list[float] = []
    realised: list[float] = []
    energy: list[float] = []
    made: dict[str, np.ndarray] = {}       # computed tensors, handed to the writer later
    embd = get("token_embd")
    # The sparsified model's residual stream per sequence (earlier layers already sparse and
    # refit).
    hs = [embd[seq].astype(np.float32) * np.float32(math.sqrt(cfg.d_model)) for seq in seqs]
    del embd
    for layer in range(L):
        p = f"blk.{layer}."
        w_gate, w_up, w_down = get(p + "ffn_gate"), get(p + "ffn_up"), get(p + "ffn_down")

        def attend(h: np.ndarray, first: bool) -> tuple[np.ndarray, np.ndarray]:
            """(h after attention, the FFN input x)."""
            heads, keys = _attention(cfg, layer, get, _rms(h, get(p + "attn_norm"), cfg.norm_eps))
            if attn_on and first:
                rots = []
                for g in range(cfg.n_kv_heads):
                    rot, e = _key_rotation(keys[:, g], r_a)
                    rots.append(rot)
                    energy.append(e)
                made[p + "attn_rot"] = np.concatenate(rots)
            h = h + _rms(heads @ get(p + "attn_output").T, get(p + "attn_post_norm"), cfg.norm_eps)
            return h, _rms(h, get(p + "ffn_norm"), cfg.norm_eps)

        xs = []
        for i in range(len(hs)):
            hs[i], x = attend(hs[i], i == 0)
            xs.append(x)
        acts, targets = [], []
        for i, x in enumerate(xs):
            g_pre = x @ w_gate.T                                        # [T, F]
            act = gelu_tanh(g_pre) * (x @ w_up.T)
            if ffn_on:
                score = g_pre
                if spec.rank:
                    if i == 0:
                        ga, gb = _low_rank_gate(w_gate, x, spec.rank, seed=layer)
                        made[p + "ffn_gate_a"], made[p + "ffn_gate_b"] = ga, gb
                    score = (x @ ga.T) @ gb.T
                if spec.by == "abs_gelu":
                    score = np.abs(gelu_tanh(score))
                elif spec.by == "abs_act":
                    score = np.abs(act)
                elif spec.by == "sqrt_abs_act":
                    score = np.sqrt(np.abs(act))
                if spec.weighted:
                    # From the source's down rows, before any refit: the engine reads these
                    # weights as given, and the selection must not depend on the refit.
                    c = np.linalg.norm(w_down, axis=0).astype(np.float32)
                    c /= max(float(c.mean()), 1e-30)
                    made[p + "ffn_select"] = c
                    score = score * c
                mean = score.mean(axis=1, keepdims=True)
                std = score.std(axis=1, keepdims=True)
                z = (score - mean) / np.maximum(std, 1e-30)
                if i == 0:
                    # The quantile comes from the first sequence only (the text's first
                    # MAX_CALIBRATION_TOKENS tokens, as without a refit): F is realised there.
                    q_l = float(np.quantile(z, 1.0 - spec.ffn)) if calibrate_ffn else q_gauss
                    quantiles.append(q_l)
                kept = score > mean + std * np.float32(q_l)
                if i == 0:
                    realised.append(float(kept.mean()))
                if spec.refit:
                    # The dense FFN at the sparsified model's own input. The dense model's own
                    # FFN output (which would also chase the earlier layers' drift) costs a
                    # second pass, and per layer it cut the held-out error by a smaller share.
                    targets.append(act @ w_down.T)
                act = act * kept
            acts.append(act.astype(np.float32))
        down = w_down
        if spec.refit:
            down = refit_down(acts, targets, w_down, spec.refit)
            made[p + "ffn_down_t"] = np.ascontiguousarray(down.T)
        for i, act in enumerate(acts):
            hs[i] = hs[i] + _rms(act @ down.T, get(p + "ffn_post_norm"), cfg.norm_eps)

    changes: dict = {}
    if ffn_on:
        changes.update(ffn_sparse_fraction=spec.ffn, ffn_gate_rank=spec.rank,
                       ffn_select_weighted=spec.weighted, ffn_select_by=spec.by,
                       ffn_sparse_quantiles=tuple(quantiles) if calibrate_ffn else ())
    if attn_on:
        changes.update(attn_sparse_topk=spec.attn, attn_sparse_dim=r_a,
                       attn_sparse_recent=spec.recent)
    new_cfg = cfg.replace(**changes)

    def new_get(name: str) -> np.ndarray:
        if name in made:
            return made[name]
        if name.endswith(".ffn_down_t"):
            return np.ascontiguousarray(get(name[:-len("_t")]).T)
        return get(name)

    text_hash = hashlib.sha256(np.asarray(ids, dtype="<i8").tobytes()).hexdigest()
    record = {
        "method": f"training-free: statistical top-k of the FFN neurons by {spec.by}"
                  + (" (low-rank predictor)" if spec.rank else "")
                  + (" with WINA-style weights" if spec.weighted else "")
                  + ("; rotated-key pooled top-k attention" if attn_on else "")
                  + ("; ffn_down refit by ridge least squares to the dense FFN's output"
                     if spec.refit else ""),
        "spec": asdict(spec) | {"attn_dim": r_a if attn_on else 0},
        "ffn_calibrated": bool(ffn_on and calibrate_ffn),
        "calibration": {"text": calibration_name, "tokens": int(T), "ids_sha256": text_hash},
        "ffn_realised_fraction": [round(f, 5) for f in realised],
        "attn_key_energy_in_predictor": [round(e, 5) for e in energy],
    }
    if spec.refit:
        record["refit"] = {
            "tensors": ["ffn_down"], "lambda": spec.refit,
            "lambda_scale": "trace(A_s^T W A_s) / d_ff",
            "target": "the dense FFN's output at the sparsified model's input",
            "token_weight": "1 / mean(y_t^2)",
            "tokens": int(sum(len(s) for s in seqs)), "sequences": len(seqs)}
    return Sparsified(new_cfg, new_get, record)
