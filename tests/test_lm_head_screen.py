"""The screened LM head (docs/engine-file.md, "The screened LM head"): the engine against the
numpy reference written from its equations, the writer's derived q4 screen against the q4
encoder, the switches and the errors."""

from __future__ import annotations

import numpy as np
import pytest

from spark_infer import _core, reference
from spark_infer.convert import ConversionError, convert
from spark_infer.fileformat import read_engine_file, tensor_specs, write_engine_file
from spark_infer.random_model import random_tensor_source
from spark_infer.weights import quantize_q4

from test_engine import REL_TOL, REL_TOL_Q4, tiny, tokens_for

# A vocabulary larger than reference.SCREEN_MAX_RESCORED, so the cap applies when the margin
# lets more through; d_model a multiple of 32 (the screen is q4).
KINDS = {
    "gemma3": tiny(vocab_size=5000, d_model=64),
    "gemma2_softcap": tiny(arch="gemma2", vocab_size=5000, d_model=64, qk_norm=False,
                           attn_softcap=50.0, final_softcap=3.0, rope_base_global=1e4),
}


def _model(tmp_path, kind: str, margin: float, dtype: str = "f32"):
    cfg = KINDS[kind].replace(lm_head_screen_margin=margin)
    path = str(tmp_path / f"{kind}-{margin}-{dtype}.spark")
    write_engine_file(path, cfg, random_tensor_source(cfg, 3), dtype=dtype)
    _, _, weights = read_engine_file(path, dequantize=True)
    return cfg, path, weights


def _reference_parts(cfg, weights, tokens):
    """(exact head logits, screen logits in prefill, screen logits in decode) from the
    reference's final hidden states, float64. Decode meets the q4 screen with x quantized to
    int8 per block (reference.quantize_x_int8)."""
    h = reference.final_hidden(cfg, weights, tokens)
    cap = cfg.final_softcap
    exact, screen = (reference.softcap(h @ weights[n].astype(np.float64).T, cap)
                     for n in ("token_embd", "token_embd_screen"))
    s = weights["token_embd_screen"].astype(np.float64)
    decode = reference.softcap(reference.quantize_x_int8(h) @ s.T, cap)
    return exact, screen, decode


def _check_screened(got, exact, screen, margin, tol):
    """got must be exact where the reference's selection keeps a logit, the screen's elsewhere;
    logits within the tolerance of the selection's boundary may go either way (the engine's
    q4 dot rounds its input, so its screen logits differ from the reference's by up to tol)."""
    scale = np.max(np.abs(exact))
    band = 4 * tol * scale
    kept = reference.screen_kept(screen, margin)
    near = (reference.screen_kept(screen + band, margin) != reference.screen_kept(screen - band, margin))
    sure_in, sure_out = kept & ~near, ~kept & ~near
    assert sure_in.any() and sure_out.any()
    # The two heads really differ where the screen is kept (else this test could not fail).
    assert np.max(np.abs(exact - screen)[sure_out]) > 10 * tol * scale
    assert np.max(np.abs(got - exact)[sure_in]) <= tol * scale
    assert np.max(np.abs(got - screen)[sure_out]) <= tol * scale
    either = np.minimum(np.abs(got - exact), np.abs(got - screen))
    assert np.max(either[near]) <= tol * scale if near.any() else True
    return kept


@pytest.mark.parametrize("margin", [1.0, 60.0])   # 60: more than the cap within the margin
@pytest.mark.parametrize("kind", list(KINDS))
def test_screened_head_matches_reference_on_every_target(kind, margin, target, tmp_path):
    cfg, path, weights = _model(tmp_path, kind, margin)
    tokens = tokens_for(cfg, 12, seed=4)
    exact, screen, screen_decode = _reference_parts(cfg, weights, tokens)
    engine = _core.Engine(path, context_length=16, kv_dtype="f32")
    assert engine.lm_head_screen
    got = engine.prefill(tokens, chunk=5, all_logits=True)
    kept = _check_screened(got, exact, screen, margin, REL_TOL_Q4)
    assert abs(engine.screen_rescored - int(kept.sum())) <= max(2, kept.sum() // 50)
    if margin > 50:
        assert kept.sum(axis=1).max() <= reference.SCREEN_MAX_RESCORED + 2  # the cap held
        assert kept.sum(axis=1).min() >= reference.SCREEN_MAX_RESCORED
    engine.reset()
    decoded = np.stack([engine.decode(int(t)) for t in tokens])
    _check_screened(decoded, exact, screen_decode, margin, REL_TOL_Q4)
    # Off: every logit from the head itself.
    engine.lm_head_screen = False
    engine.reset()
    plain = engine.prefill(tokens, chunk=5, all_logits=True)
    assert np.max(np.abs(plain - exact)) <= REL_TOL * np.max(np.abs(exact))


def test_writer_derives_the_screen_from_token_embd(tmp_path):
    cfg = KINDS["gemma3"].replace(lm_head_screen_margin=5.0)
    rng = np.random.default_rng(0)
    src = {}
    for spec in tensor_specs(cfg):
        if spec.name != "token_embd_screen":
            src[spec.name] = rng.standard_normal(spec.shape).astype(np.float32) * 0.1
    path = tmp_path / "m.spark"
    write_engine_file(path, cfg, src, dtype="bf16")
    _, _, stored = read_engine_file(path)
    np.testing.assert_array_equal(stored["token_embd_screen"], quantize_q4(src["token_embd"]))
    # A source never gives the screen.
    with pytest.raises(ValueError, match="unexpected tensor 'token_embd_screen'"):
        write_engine_file(tmp_path / "bad.spark", cfg,
                          dict(src, token_embd_screen=src["token_embd"]), dtype="bf16")


def test_switch_and_errors(tmp_path):
    cfg, path, _ = _model(tmp_path, "gemma3", 0.0)
    engine = _core.Engine(path, context_length=8)
    assert not engine.lm_head_screen
    with pytest.raises(ValueError, match="no LM-head screen"):
        engine.lm_head_screen = True
    with pytest.raises(ValueError, match="lm_head_screen_margin"):
        cfg.replace(lm_head_screen_margin=-1.0)
    with pytest.raises(ValueError, match="lm_head_screen_margin"):
        cfg.replace(lm_head_screen_margin=float("inf"))
    for bad in (-1, float("nan"), "10", True):
        with pytest.raises(ConversionError, match="lm_head_screen"):
            convert(path, tmp_path / "x.spark", lm_head_screen=bad, progress=False)


def test_convert_adds_keeps_and_removes_the_screen(tmp_path):
    _, path, weights = _model(tmp_path, "gemma3", 0.0)
    added = convert(path, tmp_path / "added.spark", dtype="int8", lm_head_screen=8.0,
                    progress=False)
    cfg, _, stored = read_engine_file(added, dequantize=True)
    assert cfg.lm_head_screen_margin == 8.0
    # The screen is the q4 fit of the new file's own token_embd source values.
    np.testing.assert_array_equal(read_engine_file(added)[2]["token_embd_screen"],
                                  quantize_q4(weights["token_embd"]))
    kept = convert(added, tmp_path / "kept.spark", dtype="int8", progress=False)
    assert read_engine_file(kept)[0].lm_head_screen_margin == 8.0
    removed = convert(added, tmp_path / "removed.spark", dtype="int8", lm_head_screen=0,
                      progress=False)
    cfg, _, stored = read_engine_file(removed)
    assert cfg.lm_head_screen_margin == 0.0 and "token_embd_screen" not in stored


def test_cli_convert_and_info(tmp_path):
    import subprocess
    import sys

    _, path, _ = _model(tmp_path, "gemma3", 0.0)
    out = tmp_path / "cli.spark"
    cli = [sys.executable, "-m", "spark_infer.cli"]
    r = subprocess.run(cli + ["convert", path, "-o", str(out), "--dtype", "int8",
                              "--lm-head-screen", "12", "-q"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert read_engine_file(out)[0].lm_head_screen_margin == 12.0
    r = subprocess.run(cli + ["info", str(out)], capture_output=True, text=True)
    assert "logits within 12 of the largest" in r.stdout
    r = subprocess.run(cli + ["convert", path, "-o", str(out), "--lm-head-screen", "-3"],
                       capture_output=True, text=True)
    assert r.returncode != 0 and "lm_head_screen" in r.stderr
