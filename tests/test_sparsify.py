"""convert --sparsify: training-free sparsification of dense models (convert/sparsify.py).

Engine vs reference for the new kinds is in test_engine.py; here: what the converter produces
(realised fractions after calibration, orthogonal rotations that leave dense attention
unchanged, the low-rank predictor, the record in the file), its errors, the CLI, and the real
Gemma 3 270M sparsified within the perplexity bound.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from spark_infer import _core, reference
from spark_infer.cli import main as cli_main
from spark_infer.convert import ConversionError, SparsifySpec, convert
from spark_infer.convert.sparsify import _low_rank_gate
from spark_infer.fileformat import read_engine_file, read_engine_header
from spark_infer.tokenizer import Tokenizer
from tiny_model import TEXT, write_tiny_model

import gemma3_real as real


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A dense tiny model (f32) with a tokenizer, wide enough for fractions to be measurable."""
    path = str(tmp_path_factory.mktemp("sparsify") / "dense.spark")
    cfg = write_tiny_model(path, dtype="f32", d_ff=512, n_layers=3,
                           layer_types=("local", "global", "local"))
    return path, cfg


def text_ids(path: str) -> np.ndarray:
    cfg, proto, _ = read_engine_file(path)
    with open(TEXT, encoding="utf-8") as f:
        return np.asarray(Tokenizer(proto).encode(f.read(), add_bos=True), np.int32)


@pytest.mark.parametrize("by", ["gate", "abs_gelu", "abs_act", "sqrt_abs_act"])
def test_calibrated_fraction_is_realised_in_the_engine(by, tiny, tmp_path):
    path, _ = tiny
    out = tmp_path / "s.spark"
    convert(path, out, dtype="f32", progress=False, sparsify=f"ffn=0.3,by={by}", calibrate=TEXT)
    ids = text_ids(str(out))[:256]
    engine = _core.Engine(str(out), context_length=256)
    engine.prefill(ids, chunk=64)
    realised = engine.stats()["ffn_active_fraction"]
    assert np.all(np.abs(realised - 0.3) < 0.02), realised
    info = read_engine_header(out)
    assert info["config"]["ffn_select_by"] == by
    assert len(info["config"]["ffn_sparse_quantiles"]) == 3
    rec = info["sparsify"]
    assert rec["ffn_calibrated"] and rec["calibration"]["text"] == os.path.basename(TEXT)
    np.testing.assert_allclose(rec["ffn_realised_fraction"], 0.3, atol=0.01)


def test_uncalibrated_uses_the_gaussian_quantile_and_records_what_it_realises(tiny, tmp_path):
    path, _ = tiny
    out = tmp_path / "g.spark"
    convert(path, out, dtype="f32", progress=False, sparsify="ffn=0.25,by=gate")
    info = read_engine_header(out)
    assert info["config"]["ffn_sparse_quantiles"] == []
    assert not info["sparsify"]["ffn_calibrated"]
    cfg, _, _ = read_engine_file(out)
    assert cfg.ffn_quantile(0) == pytest.approx(reference.normal_quantile(0.75), rel=1e-12)
    assert len(info["sparsify"]["ffn_realised_fraction"]) == 3


def test_rotations_are_orthogonal_and_keep_dense_attention(tiny, tmp_path):
    """attn_rot rows are an orthonormal basis, and with K above every context the rotated model
    computes exactly the dense model (q.k unchanged): engine vs the dense numpy reference."""
    path, cfg = tiny
    out = tmp_path / "a.spark"
    convert(path, out, dtype="f32", progress=False, sparsify="attn=64,attn_dim=8,recent=4")
    scfg, _, w = read_engine_file(out, dequantize=True)
    assert (scfg.attn_sparse_topk, scfg.attn_sparse_dim, scfg.attn_sparse_recent) == (64, 8, 4)
    for i in range(scfg.n_layers):
        rot = w[f"blk.{i}.attn_rot"].astype(np.float64)
        np.testing.assert_allclose(rot @ rot.T, np.eye(cfg.head_dim), atol=1e-5)
    rec = read_engine_header(out)["sparsify"]
    # PCA puts more than its share (8 of 32 dims) of the key energy in the predictor dims.
    assert all(e > 8 / 32 for e in rec["attn_key_energy_in_predictor"])
    _, _, dense_w = read_engine_file(path, dequantize=True)
    ids = text_ids(path)[:40]
    expected = reference.forward(cfg, dense_w, ids)
    got = _core.Engine(str(out), context_length=64, kv_dtype="f32").prefill(ids, chunk=16,
                                                                          all_logits=True)
    assert np.max(np.abs(got - expected)) / np.max(np.abs(expected)) < 1e-4
    # And with K below the context, the selection really drops tokens.
    out2 = tmp_path / "a2.spark"
    convert(path, out2, dtype="f32", progress=False, sparsify="attn=4,attn_dim=8,recent=2")
    engine = _core.Engine(str(out2), context_length=64)
    engine.prefill(ids, chunk=16)
    att = engine.stats()["attn_mean_tokens"]
    assert att[1] < np.mean(np.arange(1, 41)), att   # the global layer, mean visible 20.5


def test_low_rank_predictor_approximates_the_gate_on_its_inputs():
    rng = np.random.default_rng(0)
    d, f, t = 48, 96, 400
    # Inputs in a 12-dim subspace plus a little noise: rank 12 should capture W x almost fully.
    x = (rng.standard_normal((t, 12)) @ rng.standard_normal((12, d))
         + 0.01 * rng.standard_normal((t, d))).astype(np.float32)
    w = rng.standard_normal((f, d)).astype(np.float32)
    errors = []
    for rank in (4, 12, 24):
        a, b = _low_rank_gate(w, x, rank, seed=1)
        assert a.shape == (rank, d) and b.shape == (f, rank)
        errors.append(np.linalg.norm(x @ a.T @ b.T - x @ w.T) / np.linalg.norm(x @ w.T))
    assert errors[0] > errors[1] > errors[2] and errors[1] < 0.02, errors


@pytest.mark.parametrize("spec, match", [
    ("ffn=1.5", "fraction"), ("ffn=0", "fraction"), ("attn=-1", ">= 0"), ("wat=3", "known"),
    ("ffn=0.5,by=abs", "by must"), ("ffn=0.5,by=abs_act,rank=8", "rank"), ("", "e.g."),
    ("ffn=x", "not a float"), ("rank=8", "ffn < 1"), ("ffn=0.5,refit=0", "refit=LAM"),
    ("ffn=0.5,refit=-1", "refit=LAM"), ("ffn=0.5,refit=nan", "refit=LAM"),
    ("ffn=0.5,refit=inf", "refit=LAM"), ("ffn=0.5,refit=x", "not a float"),
    ("attn=8,refit", "ffn < 1")])
def test_bad_specs(spec, match):
    with pytest.raises(ConversionError, match=match):
        SparsifySpec.parse(spec)


def test_bad_sources_and_options(tiny, tmp_path):
    path, _ = tiny
    out = tmp_path / "x.spark"
    with pytest.raises(ConversionError, match="--calibrate needs --sparsify or a q4 dtype"):
        convert(path, out, progress=False, calibrate=TEXT)
    with pytest.raises(ConversionError, match="calibration text"):
        convert(path, out, progress=False, sparsify="ffn=0.5", calibrate=tmp_path / "none.txt")
    convert(path, out, dtype="f32", progress=False, sparsify="ffn=0.5")
    with pytest.raises(ConversionError, match="already sparse"):
        convert(out, tmp_path / "y.spark", progress=False, sparsify="ffn=0.5")
    with pytest.raises(ConversionError, match="rank must be"):
        convert(path, tmp_path / "z.spark", progress=False, sparsify="ffn=0.5,rank=64")
    assert not (tmp_path / "z.spark").exists()


def test_cli_convert_and_info(tiny, tmp_path, capsys):
    path, _ = tiny
    out = str(tmp_path / "c.spark")
    assert cli_main(["convert", path, "-o", out, "-q", "--dtype", "bf16", "--sparsify",
                     "ffn=0.5,by=abs_gelu,attn=8", "--calibrate", TEXT]) == 0
    assert cli_main(["info", out, "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["config"]["ffn_sparse_fraction"] == 0.5
    assert info["sparsify"]["spec"]["attn"] == 8
    assert cli_main(["info", out]) == 0
    assert "sparsified FFN" in capsys.readouterr().out
    assert cli_main(["convert", path, "-o", out, "--sparsify", "ffn=2"]) == 1
    assert "fraction" in capsys.readouterr().err


def _bench_sparsity():
    """bench/sparsity.py (a script, not a package module)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "bench" / "sparsity.py"
    spec = importlib.util.spec_from_file_location("bench_sparsity", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_frontier_realised_fraction_over_the_texts_is_the_reference_one(tiny, tmp_path):
    """The frontier's realised FFN fraction over each whole text (bench/sparsity.py) is the
    token-weighted mean of what the numpy reference keeps, window by window (<bos> + the next
    window - 1 tokens, each from an empty cache)."""
    path, _ = tiny
    out = tmp_path / "f.spark"
    convert(path, out, dtype="f32", progress=False, sparsify="ffn=0.3,by=abs_act", calibrate=TEXT)
    bench = _bench_sparsity()
    window = 96
    got = bench.realised_on_texts(out, window)
    cfg, proto, w = read_engine_file(out, dequantize=True)
    tok = Tokenizer(proto)
    for name, text_path in bench.TEXTS.items():
        ids = tok.encode(text_path.read_text(encoding="utf-8"), add_bos=True)
        total, n = np.zeros(cfg.n_layers), 0
        for start in range(1, len(ids), window - 1):
            part = ids[:1] + ids[start:start + window - 1]
            _, stats = reference.forward_with_stats(cfg, w, part)
            total += np.array([s.ffn_active_fraction for s in stats]) * len(part)
            n += len(part)
        assert n == len(ids) + (len(ids) - 2) // (window - 1)      # one <bos> per window
        np.testing.assert_allclose(got[name], total / n, atol=2e-4)
    assert [v[0] for v in bench.variants(False, ["ffn=0.5,by=abs_act,wina,attn=64",
                                                 "ffn=0.5,refit=0.5", "ffn=0.3,by=gate:gauss"])
            ] == ["ffn=0.5 abs_act wina cal + attn=64", "ffn=0.5 abs_gelu refit=0.5 cal",
                  "ffn=0.3 gate gauss"]


# ------------------------------------------------------------------------------ down refit

def _sparse_path_ffn_inputs(cfg, w, seq, layer):
    """The FFN input x of `layer` on the sparsified model w (every earlier layer sparse, with
    the file's own down projection), from the equations (reference.py)."""
    from spark_infer.reference import attention, rms_norm, sparse_gated_ffn

    h = w["token_embd"][np.asarray(seq)].astype(np.float64) * np.sqrt(cfg.d_model)
    for i in range(layer + 1):
        p = f"blk.{i}."
        a, _ = attention(cfg, i, w, rms_norm(h, w[p + "attn_norm"], cfg.norm_eps))
        h = h + rms_norm(a, w[p + "attn_post_norm"], cfg.norm_eps)
        x = rms_norm(h, w[p + "ffn_norm"], cfg.norm_eps)
        if i == layer:
            return x
        f, _ = sparse_gated_ffn(x, w[p + "ffn_gate"], w[p + "ffn_up"], w[p + "ffn_down_t"],
                                cfg.ffn_quantile(i), None, None, None, cfg.ffn_select_by)
        h = h + rms_norm(f, w[p + "ffn_post_norm"], cfg.norm_eps)


def _sparse_and_dense_act(cfg, w, src, x, layer):
    """(A_s: the kept neurons' activations, the dense activations), float64, rule sqrt_abs_act."""
    p = f"blk.{layer}."
    act = reference.gelu_tanh(x @ src[p + "ffn_gate"].T.astype(np.float64)) * (
        x @ src[p + "ffn_up"].T.astype(np.float64))
    s = np.sqrt(np.abs(act))
    kept = s > s.mean(1, keepdims=True) + s.std(1, keepdims=True) * cfg.ffn_quantile(layer)
    return act * kept, act


def test_refit_is_the_ridge_least_squares_solution(tiny, tmp_path, monkeypatch, capsys):
    """Each layer's refit down projection W' solves the ridge problem of the spec on the
    calibration text, cut into several <bos>-led sequences: stacked as one least-squares
    system [sqrt(w) A_s; sqrt(lam') I] W'^T = [sqrt(w) Y; sqrt(lam') W_down^T] (A_s the kept
    activations on the sparsified model's own inputs, Y the dense FFN's output there, w_t =
    1 / mean(y_t^2), lam' = lam trace(A_s^T diag(w) A_s) / d_ff), solved by np.linalg.lstsq,
    with every activation recomputed here from the equations."""
    from spark_infer.convert import sparsify as sparsify_module

    path, _ = tiny
    n = 96                                  # several sequences from a short text
    monkeypatch.setattr(sparsify_module, "MAX_CALIBRATION_TOKENS", n)
    text = tmp_path / "cal.txt"
    text.write_text(Path(TEXT).read_text(encoding="utf-8")[:2500], encoding="utf-8")
    lam = 0.3
    out = tmp_path / "r.spark"
    convert(path, out, dtype="f32", progress=False,
            sparsify=f"ffn=0.4,by=sqrt_abs_act,refit={lam}", calibrate=text)
    cfg, proto, w = read_engine_file(out, dequantize=True)
    _, _, src = read_engine_file(path, dequantize=True)
    ids = Tokenizer(proto).encode(text.read_text(encoding="utf-8"), add_bos=True)
    seqs = [ids[:n]] + [ids[:1] + ids[i:i + n - 1] for i in range(n, len(ids), n - 1)]
    assert len(seqs) >= 4
    rec = read_engine_header(out)["sparsify"]["refit"]
    assert rec["tokens"] == sum(map(len, seqs)) and rec["sequences"] == len(seqs)
    assert rec["lambda"] == lam and rec["tensors"] == ["ffn_down"]
    assert cli_main(["info", str(out)]) == 0
    assert "refit:       ffn_down by ridge least squares" in capsys.readouterr().out
    for layer in range(cfg.n_layers):
        p = f"blk.{layer}."
        w_down = src[p + "ffn_down"].astype(np.float64)
        a_s, y = [], []
        for seq in seqs:
            x = _sparse_path_ffn_inputs(cfg, w, seq, layer)
            kept_act, act = _sparse_and_dense_act(cfg, w, src, x, layer)
            a_s.append(kept_act)
            y.append(act @ w_down.T)
        a_s, y = np.concatenate(a_s), np.concatenate(y)
        sw = 1.0 / np.sqrt((y * y).mean(1, keepdims=True))
        reg = lam * np.sum((sw * a_s) ** 2) / cfg.d_ff
        m = np.concatenate([sw * a_s, np.sqrt(reg) * np.eye(cfg.d_ff)])
        b = np.concatenate([sw * y, np.sqrt(reg) * w_down.T])
        want = np.linalg.lstsq(m, b, rcond=None)[0]                       # [d_ff, d_model]
        got = w[p + "ffn_down_t"]
        assert np.abs(got - w_down.T).max() > 0.05 * np.abs(w_down).max()  # it did move
        np.testing.assert_allclose(got, want, atol=1e-4 * np.abs(want).max())


def test_refit_reduces_the_ffn_error_on_held_out_text(tiny, tmp_path):
    """Fitted on one text (Austen's), the refit down projection reproduces the dense FFN's
    output on another (KJV Ruth) better than the source's down projection does, at the same
    kept neurons (layer 0, whose input the sparsification does not change)."""
    path, _ = tiny
    out = tmp_path / "r.spark"
    convert(path, out, dtype="f32", progress=False, sparsify="ffn=0.4,by=sqrt_abs_act,refit",
            calibrate=Path(TEXT).parent / "austen_persuasion_1_2.txt")
    cfg, proto, w = read_engine_file(out, dequantize=True)
    _, _, src = read_engine_file(path, dequantize=True)
    assert read_engine_header(out)["sparsify"]["refit"]["sequences"] > 4
    x = _sparse_path_ffn_inputs(cfg, w, text_ids(path)[:256], 0)
    a_s, act = _sparse_and_dense_act(cfg, w, src, x, 0)
    y = act @ src["blk.0.ffn_down"].T
    # Each token's error relative to its output's mean square (the output goes through an RMS
    # norm), as the refit weighs it.
    wt = 1.0 / (y * y).mean(1, keepdims=True)
    err_source = np.sum(wt * (a_s @ src["blk.0.ffn_down"].T - y) ** 2)
    err_refit = np.sum(wt * (a_s @ w["blk.0.ffn_down_t"] - y) ** 2)
    assert err_refit < 0.93 * err_source, (err_refit, err_source)


# ------------------------------------------------------------------------------ real model

@real.needs_gemma3
def test_embedded_sparse_model_stays_within_the_perplexity_bound(tmp_path, monkeypatch):
    """gemma3-270m-sparse in its default weight setting (int8), made from the dense file of that
    setting as load() makes it on first use: its realised FFN fraction matches the spec, its
    perplexity on both evaluation texts is within 3 % of the dense model's, and its next-token
    choice agrees with the dense model's."""
    import spark_infer
    from spark_infer import models

    dtype, embed_dtype = models.default_setting(name="gemma3-270m-sparse")
    dense = real.engine_file(dtype, embed_dtype)
    monkeypatch.setenv("SPARK_INFER_CACHE", str(tmp_path))
    os.symlink(dense, models.cached_path("gemma3-270m", dtype, embed_dtype))
    sparse = spark_infer.load("gemma3-270m-sparse", context_length=1024)
    assert sparse.engine.weight_type == dtype
    fraction = models.MODELS["gemma3-270m-sparse"].sparsify.split(",")[0].split("=")[1]
    base = spark_infer.load(str(dense), context_length=1024)
    for name in ("kjv_ruth_1_2.txt", "austen_persuasion_1_2.txt"):
        text = (real.DATA / name).read_text(encoding="utf-8")
        p_dense = base.perplexity(text, window=1024)
        p_sparse = sparse.perplexity(text, window=1024)
        assert p_sparse <= 1.03 * p_dense, (name, p_sparse, p_dense)
        realised = sparse.engine.stats()["ffn_active_fraction"]
        assert abs(float(np.mean(realised)) - float(fraction)) < 0.03, realised
    ids = sparse.tokenize((real.DATA / "austen_persuasion_1_2.txt").read_text(encoding="utf-8"))
    ids = ids[:300]
    agree = np.mean(np.argmax(sparse.logits(ids), 1) == np.argmax(base.logits(ids), 1))
    assert agree > 0.85, agree
    assert sparse.generate("The capital of France is", max_new_tokens=8, temperature=0).strip()


def test_q4_fit_is_weighted_by_the_calibration_inputs(tiny, tmp_path):
    """A dense model converted to q4: each matrix is fitted weighted by the mean square of its
    inputs on the calibration text (recorded in the metadata). Layer 0's attention inputs are
    recomputed here from the equations; the weighted fit must cost less, weighted by them, than
    the unweighted one on every matrix."""
    from spark_infer.convert.importance import activation_importance
    from spark_infer.weights import dequantize_q4, quantize_q4
    from spark_infer.reference import rms_norm

    path, cfg = tiny
    out = convert(path, tmp_path / "q.spark", dtype="q4", progress=False, calibrate=TEXT)
    info = read_engine_header(out)
    from spark_infer.fileformat import tensor_specs

    assert info["dtypes"]["U8"] == sum(s.is_matrix for s in tensor_specs(cfg))
    with open(out, "rb") as f:
        meta = json.loads(f.read(int.from_bytes(f.read(8), "little")))["__metadata__"]
    rec = json.loads(meta["quantize"])
    assert rec["calibration"]["text"] == os.path.basename(TEXT)
    _, _, w = read_engine_file(path, dequantize=True)
    ids = text_ids(path)[:rec["calibration"]["tokens"]]
    imp = activation_importance(cfg, w.__getitem__, list(ids))
    x0 = rms_norm(w["token_embd"][ids] * np.sqrt(cfg.d_model), w["blk.0.attn_norm"], cfg.norm_eps)
    np.testing.assert_allclose(imp["blk.0.attn_q"], np.mean(np.square(x0), axis=0), rtol=1e-4)
    _, _, raw = read_engine_file(out)
    for name, a in w.items():
        if a.ndim != 2:
            continue
        np.testing.assert_array_equal(raw[name], quantize_q4(a, imp[name]))
        cost = lambda b: float(((dequantize_q4(b) - a) ** 2 * imp[name]).sum())  # noqa: E731
        assert cost(raw[name]) <= cost(quantize_q4(a)) * 1.001, name
