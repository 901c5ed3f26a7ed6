"""The numpy reference against independent oracles.

Dense Gemma 2 / Gemma 3: logits of Hugging Face transformers (float32, eager attention) on tiny
random models, stored in tests/data/hf_*.npz by tests/data/make_hf_reference.py. Each comparison
is paired with perturbed configs that must NOT match, so the test would notice if a feature
(window, soft-caps, query scale, RoPE bases and scaling, layer types) were ignored.

Spark parts have no outside implementation: they are checked against brute force written here
from docs/engine-file.md (RoPE via complex numbers, Q by bisection on math.erfc), and against
closed forms where the statistical top-k keeps everything or nothing.
"""

from __future__ import annotations

import math
import os

import numpy as np
import pytest

from spark_infer import reference as ref
from spark_infer.config import ModelConfig

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")


def load_hf(name: str):
    z = np.load(os.path.join(DATA, f"hf_{name}.npz"))
    cfg = ModelConfig.from_json(str(z["config_json"]))
    weights = {k[2:]: z[k] for k in z.files if k.startswith("w/")}
    return cfg, weights, z["tokens"], z["logits"].astype(np.float64)


def rel_err(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


# HF computes in float32 (~1e-7 relative per op over a few hundred ops); we in float64.
HF_TOL = 1e-4


# ------------------------------------------------------------------------------ dense vs HF

GEMMA2_PERTURBATIONS = [
    dict(sliding_window=3), dict(sliding_window=5), dict(attn_softcap=0.0),
    dict(final_softcap=0.0), dict(query_scale=0.25), dict(rope_base_global=1e6, rope_base_local=1e6),
    dict(layer_types=("global", "global", "global")),
]
GEMMA3_PERTURBATIONS = [
    dict(sliding_window=3), dict(sliding_window=5), dict(qk_norm=False),
    dict(rope_base_global=1e4, rope_base_local=1e6), dict(rope_scale_global=1.0),
    dict(query_scale=0.2), dict(layer_types=("local", "local", "local", "global")),
]


@pytest.mark.parametrize("name, perturbations", [
    ("gemma2_tiny", GEMMA2_PERTURBATIONS), ("gemma3_tiny", GEMMA3_PERTURBATIONS)])
def test_dense_matches_hugging_face(name, perturbations):
    cfg, w, tokens, hf_logits = load_hf(name)
    assert cfg.sliding_window < len(tokens)
    assert "local" in cfg.layer_types and "global" in cfg.layer_types
    logits, stats = ref.forward_with_stats(cfg, w, tokens)
    assert logits.shape == (len(tokens), cfg.vocab_size)
    assert rel_err(logits, hf_logits) < HF_TOL
    for change in perturbations:
        if "qk_norm" in change:
            w_ = {k: v for k, v in w.items() if "_q_norm" not in k and "_k_norm" not in k}
        else:
            w_ = w
        wrong = ref.forward(cfg.replace(**change), w_, tokens)
        assert rel_err(wrong, hf_logits) > 100 * HF_TOL, change


def test_hf_cases_cover_the_features():
    g2 = load_hf("gemma2_tiny")[0]
    g3 = load_hf("gemma3_tiny")[0]
    assert g2.attn_softcap > 0 and g2.final_softcap > 0 and not g2.qk_norm
    assert g2.n_heads // g2.n_kv_heads == 2 and g3.n_heads // g3.n_kv_heads == 4
    assert g3.qk_norm and g3.rope_base_global != g3.rope_base_local
    assert g3.rope_scale_global != 1.0
    assert g2.query_scale != g2.head_dim ** -0.5     # query_pre_attn_scalar != head_dim


def test_dense_stats():
    cfg, w, tokens, _ = load_hf("gemma3_tiny")
    _, stats = ref.forward_with_stats(cfg, w, tokens)
    T = len(tokens)
    for layer, s in enumerate(stats):
        assert s.ffn_active_fraction == 1.0
        visible = [min(t + 1, cfg.sliding_window) if cfg.is_local(layer) else t + 1
                   for t in range(T)]
        assert s.attn_mean_tokens == pytest.approx(np.mean(visible))


def test_forward_rejects_bad_tokens_and_raw_weights():
    cfg, w, tokens, _ = load_hf("gemma2_tiny")
    with pytest.raises(ValueError, match="token ids"):
        ref.forward(cfg, w, [0, cfg.vocab_size])
    with pytest.raises(ValueError, match="empty"):
        ref.forward(cfg, w, [])
    with pytest.raises(ValueError, match="token_embd"):
        ref.forward(cfg, {**w, "token_embd": w["token_embd"].view(np.uint32)}, tokens)


# ------------------------------------------------------------------------------ Q and top-k

def q_by_bisection(p: float) -> float:
    """Inverse normal CDF by bisection on Phi(x) = erfc(-x / sqrt 2) / 2 (lower tail exact)."""
    if p > 0.5:
        return -q_by_bisection(1.0 - p)
    lo, hi = -40.0, 0.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if 0.5 * math.erfc(-mid / math.sqrt(2.0)) < p:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


@pytest.mark.parametrize("p, q", [(0.92, 1.4050716), (0.95, 1.6448536), (0.5, 0.0),
                                  (0.001, -3.0902323), (0.75, 0.6744898), (0.999, 3.0902323)])
def test_normal_quantile_known_values(p, q):
    assert ref.normal_quantile(p) == pytest.approx(q, abs=1e-6)


def test_normal_quantile_vs_bisection():
    ps = [1e-300, 1e-12, 1e-6, 0.001, 0.02, 0.02425, 0.03, 0.1, 0.3, 0.49, 0.5, 0.51, 0.8, 0.97,
          0.97575, 0.99, 0.999999, 1 - 2**-40]
    ps += list(np.random.default_rng(5).uniform(0, 1, 200))
    for p in ps:
        # 1 - p loses precision for p near 1: compare there at the resolution of p itself.
        tol = 1e-12 if p < 0.9 else 1e-12 + 1e-16 / (1 - p)
        assert ref.normal_quantile(p) == pytest.approx(q_by_bisection(p), abs=tol), p
    for p in (0.0, 1.0, -0.1, 1.5, float("nan")):
        with pytest.raises(ValueError):
            ref.normal_quantile(p)


def test_acklam_approximation_alone_is_within_its_published_error():
    """The rational approximation before the Halley steps: Acklam's bound is a relative error
    below 1.15e-9 everywhere (the steps would hide a wrong coefficient; this does not)."""
    ps = np.concatenate([np.geomspace(1e-300, 0.0242, 300), np.linspace(0.0243, 0.9757, 300),
                         1 - np.geomspace(1e-15, 0.0242, 300)])
    for p in ps:
        q = q_by_bisection(float(p))
        assert abs(ref._acklam(float(p)) - q) <= 1.2e-9 * abs(q) + 1e-15, p


def test_statistical_threshold():
    s = np.random.default_rng(6).standard_normal(1000) * 3 + 1
    for f in (0.08, 0.5, 0.9):
        expect = np.mean(s) + np.std(s, ddof=0) * q_by_bisection(1 - f)
        assert ref.statistical_threshold(s, f) == pytest.approx(expect, rel=1e-12, abs=1e-12)
    # On normal data it keeps about the requested fraction.
    big = np.random.default_rng(7).standard_normal(200_000)
    kept = np.mean(big > ref.statistical_threshold(big, 0.08))
    assert abs(kept - 0.08) < 0.003


# ------------------------------------------------------------------------------ Spark FFN

def gelu_tanh(x):
    return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))


def brute_spark_ffn(x, k1, k2, v, f):
    """One neuron at a time, straight from the contract."""
    r = k1.shape[1]
    y = np.zeros((x.shape[0], v.shape[1]))
    counts = []
    for t in range(x.shape[0]):
        s = np.array([k1[i] @ x[t, :r] for i in range(k1.shape[0])])
        theta = s.mean() + s.std() * q_by_bisection(1 - f)
        n = 0
        for i in range(k1.shape[0]):
            if s[i] > theta:
                y[t] += gelu_tanh(s[i] - theta) * (k2[i] @ x[t, r:]) * v[i]
                n += 1
        counts.append(n)
    return y, counts


def spark_ffn_weights(rng, d_ff=200, d_model=24, r=10):
    return (rng.standard_normal((d_ff, r)), rng.standard_normal((d_ff, d_model - r)),
            rng.standard_normal((d_ff, d_model)), rng.standard_normal((5, d_model)))


def test_spark_ffn_vs_brute_force():
    k1, k2, v, x = spark_ffn_weights(np.random.default_rng(8))
    y, counts = ref.spark_ffn(x, k1, k2, v, 0.08)
    y_bf, counts_bf = brute_spark_ffn(x, k1, k2, v, 0.08)
    np.testing.assert_allclose(y, y_bf, rtol=1e-10, atol=1e-10 * np.abs(y_bf).max())
    assert list(counts) == counts_bf
    assert all(5 <= c <= 35 for c in counts)         # about 8 % of 200


def test_spark_ffn_all_active_closed_form():
    # Samuelson: |s_i - mean| <= std * sqrt(d - 1), so Q(1 - f) < -sqrt(d - 1) keeps every
    # neuron; then y = V^T (gelu(s - theta) * K2 x2) with one theta per token.
    d_ff = 16
    k1, k2, v, x = spark_ffn_weights(np.random.default_rng(9), d_ff=d_ff)
    f = 1 - 1e-6                                      # Q(1e-6) = -4.75 < -sqrt(15) = -3.87
    y, counts = ref.spark_ffn(x, k1, k2, v, f)
    assert list(counts) == [d_ff] * len(x)
    s = x[:, :10] @ k1.T
    theta = s.mean(axis=1, keepdims=True) + s.std(axis=1, keepdims=True) * q_by_bisection(1 - f)
    expect = (gelu_tanh(s - theta) * (x[:, 10:] @ k2.T)) @ v
    np.testing.assert_allclose(y, expect, rtol=1e-12, atol=1e-12 * np.abs(expect).max())


def test_spark_ffn_none_active():
    k1, k2, v, x = spark_ffn_weights(np.random.default_rng(10), d_ff=16)
    y, counts = ref.spark_ffn(x, k1, k2, v, 1e-6)     # Q(1 - 1e-6) = 4.75 > sqrt(15)
    assert list(counts) == [0] * len(x)
    assert np.all(y == 0)


# ------------------------------------------------------------------------------ Spark attention

def rope_complex(x, positions, base):
    """Split-half RoPE as a complex rotation: z_i = x_i + 1j x_{i+m/2} times e^{j pos w_i}."""
    m = x.shape[-1]
    z = x[..., : m // 2] + 1j * x[..., m // 2:]
    freq = base ** (-np.arange(m // 2) * 2.0 / m)
    z = z * np.exp(1j * positions[:, None, None] * freq)
    return np.concatenate([z.real, z.imag], axis=-1)


def rmsnorm(x, w, eps):
    return x / np.sqrt((x ** 2).mean(-1, keepdims=True) + eps) * (1 + w)


def brute_spark_attention(cfg, w, x, layer):
    p = f"blk.{layer}."
    T, H, G, hd, ra = len(x), cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, cfg.attn_predictor_dim
    q = (x @ w[p + "attn_q"].T).reshape(T, H, hd)
    k = (x @ w[p + "attn_k"].T).reshape(T, G, hd)
    v = (x @ w[p + "attn_v"].T).reshape(T, G, hd)
    if cfg.qk_norm:
        q, k = rmsnorm(q, w[p + "attn_q_norm"], cfg.norm_eps), rmsnorm(k, w[p + "attn_k_norm"],
                                                                         cfg.norm_eps)
    local = cfg.layer_types[layer] == "local"
    pos = np.arange(T) / (1.0 if local else cfg.rope_scale_global)
    base = cfg.rope_base_local if local else cfg.rope_base_global
    q = np.concatenate([rope_complex(q[..., :ra], pos, base), rope_complex(q[..., ra:], pos, base)],
                       -1)
    k = np.concatenate([rope_complex(k[..., :ra], pos, base), rope_complex(k[..., ra:], pos, base)],
                       -1)
    out = np.zeros((T, H, hd))
    counts = []
    for t in range(T):
        js = [j for j in range(t + 1) if not local or t - j < cfg.sliding_window]
        for h in range(H):
            g = h * G // H
            s1 = np.array([cfg.query_scale * (q[t, h, :ra] @ k[j, g, :ra]) for j in js])
            if cfg.attn_softcap:
                s1 = cfg.attn_softcap * np.tanh(s1 / cfg.attn_softcap)
            if len(js) <= cfg.attn_topk:
                keep = list(range(len(js)))
            else:
                theta = s1.mean() + s1.std() * q_by_bisection(1 - cfg.attn_topk / len(js))
                keep = [i for i in range(len(js)) if s1[i] > theta]
            counts.append(len(keep))
            if not keep:
                continue
            e = np.exp(s1[keep] - s1[keep].max())
            for n, i in enumerate(keep):
                s2 = cfg.query_scale * (q[t, h, ra:] @ k[js[i], g, ra:])
                out[t, h] += e[n] / e.sum() * math.log1p(math.exp(s2)) * v[js[i], g]
    return out.reshape(T, H * hd) @ w[p + "attn_output"].T, float(np.mean(counts))


def spark_attn_case(rng, **changes):
    base = dict(arch="gemma3", vocab_size=50, d_model=32, n_layers=2, n_heads=6, n_kv_heads=2,
                head_dim=12, d_ff=40, query_scale=0.5, layer_types=("local", "global"),
                qk_norm=True, sliding_window=9, rope_base_global=1e6, rope_base_local=1e4,
                rope_scale_global=4.0, attn_predictor_dim=4, attn_topk=3, attn_softcap=8.0,
                start_of_turn_id=3, end_of_turn_id=4)
    base.update(changes)
    cfg = ModelConfig(**base)
    d, hd = cfg.d_model, cfg.head_dim
    w = {}
    for i in range(cfg.n_layers):
        p = f"blk.{i}."
        w[p + "attn_q"] = rng.standard_normal((cfg.n_heads * hd, d)) / math.sqrt(d) * 2
        w[p + "attn_k"] = rng.standard_normal((cfg.n_kv_heads * hd, d)) / math.sqrt(d) * 2
        w[p + "attn_v"] = rng.standard_normal((cfg.n_kv_heads * hd, d))
        w[p + "attn_output"] = rng.standard_normal((d, cfg.n_heads * hd)) / math.sqrt(hd)
        w[p + "attn_q_norm"] = 0.3 * rng.standard_normal(hd)
        w[p + "attn_k_norm"] = 0.3 * rng.standard_normal(hd)
    return cfg, w, rng.standard_normal((20, d))


@pytest.mark.parametrize("changes", [
    {}, dict(attn_softcap=0.0, qk_norm=False), dict(attn_topk=1), dict(attn_topk=6),
    dict(attn_topk=100), dict(n_kv_heads=1), dict(n_kv_heads=6, attn_predictor_dim=8)])
def test_spark_attention_vs_brute_force(changes):
    cfg, w, x = spark_attn_case(np.random.default_rng(11), **changes)
    for layer in range(cfg.n_layers):
        out, mean_tokens = ref.attention(cfg, layer, w, x)
        expect, expect_tokens = brute_spark_attention(cfg, w, x, layer)
        np.testing.assert_allclose(out, expect, rtol=1e-10, atol=1e-10 * np.abs(expect).max())
        assert mean_tokens == pytest.approx(expect_tokens)
        if cfg.attn_topk < 9:
            # Selection really happened: fewer tokens than visible on average.
            visible = np.mean([min(t + 1, 9) if layer == 0 else t + 1 for t in range(len(x))])
            assert mean_tokens < visible


def test_spark_attention_all_kept_closed_form():
    # attn_topk >= n keeps every visible token: o = sum_j softmax(s1)_j softplus(s2_j) v_j over
    # a causal global layer, computed here with whole matrices.
    cfg, w, x = spark_attn_case(np.random.default_rng(12), attn_topk=1000, attn_softcap=0.0,
                                qk_norm=False, rope_scale_global=1.0, n_kv_heads=6)
    T, H, hd, ra = len(x), cfg.n_heads, cfg.head_dim, cfg.attn_predictor_dim
    q = (x @ w["blk.1.attn_q"].T).reshape(T, H, hd)
    k = (x @ w["blk.1.attn_k"].T).reshape(T, H, hd)
    v = (x @ w["blk.1.attn_v"].T).reshape(T, H, hd)
    pos = np.arange(T, dtype=np.float64)
    rot = lambda a: np.concatenate([rope_complex(a[..., :ra], pos, 1e6),  # noqa: E731
                                    rope_complex(a[..., ra:], pos, 1e6)], -1)
    q, k = rot(q), rot(k)
    s1 = cfg.query_scale * np.einsum("thd,jhd->htj", q[..., :ra], k[..., :ra])
    s2 = cfg.query_scale * np.einsum("thd,jhd->htj", q[..., ra:], k[..., ra:])
    mask = np.tril(np.ones((T, T), bool))
    s1 = np.where(mask, s1, -np.inf)
    p = np.exp(s1 - s1.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    o = np.einsum("htj,jhd->thd", p * np.logaddexp(0, s2), v)
    expect = o.reshape(T, H * hd) @ w["blk.1.attn_output"].T
    out, mean_tokens = ref.attention(cfg, 1, w, x)
    np.testing.assert_allclose(out, expect, rtol=1e-10, atol=1e-10 * np.abs(expect).max())
    assert mean_tokens == pytest.approx((T + 1) / 2)


def test_spark_attention_empty_selection_gives_zero():
    # Zero predictor rows of K make every s1_j = 0: std 0, theta = mean = 0 and no s1_j > theta,
    # so once n > attn_topk the selection is empty and o is the empty sum, 0.
    cfg, w, x = spark_attn_case(np.random.default_rng(13), attn_topk=2)
    wk = w["blk.1.attn_k"].reshape(cfg.n_kv_heads, cfg.head_dim, cfg.d_model).copy()
    wk[:, :cfg.attn_predictor_dim] = 0
    w = {**w, "blk.1.attn_k": wk.reshape(-1, cfg.d_model)}
    out, mean_tokens = ref.attention(cfg, 1, w, x)
    assert np.all(out[2:] == 0)
    assert np.all(np.abs(out[:2]) > 0)                 # n <= attn_topk: everything kept
    assert mean_tokens == pytest.approx((1 + 2) / len(x))


# ------------------------------------------------------------------------------ Spark model

def test_spark_model_forward_and_stats():
    rng = np.random.default_rng(15)
    cfg = ModelConfig(
        arch="gemma2", vocab_size=61, d_model=48, n_layers=2, n_heads=4, n_kv_heads=2,
        head_dim=16, d_ff=600, query_scale=0.25, layer_types=("local", "global"),
        attn_softcap=50.0, final_softcap=30.0, sliding_window=12, ffn_predictor_dim=20,
        ffn_topk_fraction=0.08, attn_predictor_dim=8, attn_topk=4, start_of_turn_id=3,
        end_of_turn_id=4)
    from spark_infer.fileformat import tensor_specs
    w = {s.name: (rng.standard_normal(s.shape) / math.sqrt(s.shape[-1]) if s.is_matrix
                  else 0.1 * rng.standard_normal(s.shape)) for s in tensor_specs(cfg)}
    tokens = rng.integers(0, cfg.vocab_size, 24)
    logits, stats = ref.forward_with_stats(cfg, w, tokens)
    assert logits.shape == (24, 61) and np.all(np.isfinite(logits))
    assert np.abs(logits).max() < 30
    for layer, s in enumerate(stats):
        assert 0.04 < s.ffn_active_fraction < 0.14, s
        visible = np.mean([min(t + 1, 12) if layer == 0 else t + 1 for t in range(24)])
        assert 2 <= s.attn_mean_tokens < visible, s
    # Causal: a later token never changes earlier logits.
    tokens2 = tokens.copy()
    tokens2[-1] = (tokens2[-1] + 1) % cfg.vocab_size
    np.testing.assert_array_equal(ref.forward(cfg, w, tokens2)[:-1], logits[:-1])
