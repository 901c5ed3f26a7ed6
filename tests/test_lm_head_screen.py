"""The screened LM head (docs/engine-file.md, "The screened LM head"): the engine against the
numpy reference written from its equations, the writer's derived screen4 screen against the
screen4 encoder (tests/test_screen4.py checks that against the layout), the switches and the
errors."""

from __future__ import annotations

import numpy as np
import pytest

from spark_infer import _core, reference
from spark_infer.convert import ConversionError, convert
from spark_infer.fileformat import (FormatError, RowBlocks, read_engine_file, tensor_specs,
                                    write_engine_file)
from spark_infer.random_model import random_tensor_source
from spark_infer.weights import dequantize_screen4, quantize_q4, quantize_screen4, screen4_logits

from test_engine import REL_TOL, REL_TOL_Q4, tiny, tokens_for

# A vocabulary larger than reference.SCREEN_MAX_RESCORED, so the cap applies when the margin
# lets more through; d_model a multiple of 128 (the screen's screen4 blocks); a vocabulary
# that is not a multiple of 4, so the screen's last tile has padding rows.
KINDS = {
    "gemma3": tiny(vocab_size=5001, d_model=128),
    "gemma2_softcap": tiny(arch="gemma2", vocab_size=5001, d_model=128, qk_norm=False,
                           attn_softcap=50.0, final_softcap=3.0, rope_base_global=1e4),
}
SCREEN = "token_embd_screen"


def _model(tmp_path, kind: str, margin: float, dtype: str = "f32"):
    """(config, path, weights: float32 but the screen's stored screen4 bytes, as the
    reference takes them)."""
    cfg = KINDS[kind].replace(lm_head_screen_margin=margin)
    path = str(tmp_path / f"{kind}-{margin}-{dtype}.spark")
    write_engine_file(path, cfg, random_tensor_source(cfg, 3), dtype=dtype)
    _, _, weights = read_engine_file(path, dequantize=True)
    if margin > 0:
        weights[SCREEN] = np.array(read_engine_file(path)[2][SCREEN])
    return cfg, path, weights


def _reference_parts(cfg, weights, tokens):
    """(exact head logits, screen logits) from the reference's final hidden states, float64.
    Every row (prefill and decode alike) meets the screen with x quantized to int8 per row
    (weights.screen4_logits)."""
    h = reference.final_hidden(cfg, weights, tokens)
    cap = cfg.final_softcap
    exact = reference.softcap(h @ weights["token_embd"].astype(np.float64).T, cap)
    screen = reference.softcap(screen4_logits(weights[SCREEN], cfg.vocab_size, cfg.d_model, h),
                               cap)
    return exact, screen


def _check_screened(got, exact, screen, margin, tol):
    """got must be exact where the reference's selection keeps a logit, the screen's elsewhere;
    logits within the tolerance of the selection's boundary may go either way (the engine's
    f32 hidden state may round to other int8 x than the reference's, so its screen logits
    differ from the reference's by up to tol)."""
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
    exact, screen = _reference_parts(cfg, weights, tokens)
    # The reference's own forward pass is that selection.
    np.testing.assert_allclose(reference.forward(cfg, weights, tokens),
                               reference.screened_logits(exact, screen, margin), rtol=1e-12,
                               atol=1e-12 * np.max(np.abs(exact)))
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
    _check_screened(decoded, exact, screen, margin, REL_TOL_Q4)
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
        if spec.name != SCREEN:
            src[spec.name] = rng.standard_normal(spec.shape).astype(np.float32) * 0.1
    path = tmp_path / "m.spark"
    write_engine_file(path, cfg, src, dtype="bf16")
    _, _, stored = read_engine_file(path)
    want = quantize_screen4(src["token_embd"])
    assert stored[SCREEN].dtype == np.uint8 and stored[SCREEN].shape == (1251, 272)
    np.testing.assert_array_equal(stored[SCREEN], want)
    # Dequantized: float32 [vocab, d_model].
    deq = read_engine_file(path, dequantize=True)[2][SCREEN]
    assert deq.dtype == np.float32 and deq.shape == (5001, 128)
    np.testing.assert_array_equal(deq, dequantize_screen4(want, 5001, 128))
    # token_embd handed over in blocks that split the screen's 4-row tiles: the same bytes.
    emb, cuts = src["token_embd"], [0, 3, 4, 11, 2502, 5001]
    blocks = RowBlocks(emb.shape, [emb[a:b] for a, b in zip(cuts, cuts[1:])])
    write_engine_file(tmp_path / "blocks.spark", cfg, dict(src, token_embd=blocks), dtype="int8")
    np.testing.assert_array_equal(read_engine_file(tmp_path / "blocks.spark")[2][SCREEN], want)
    # A source never gives the screen.
    with pytest.raises(ValueError, match="unexpected tensor 'token_embd_screen'"):
        write_engine_file(tmp_path / "bad.spark", cfg,
                          dict(src, token_embd_screen=src["token_embd"]), dtype="bf16")
    # The screen's blocks hold 128 weights: a d_model that is not a multiple is refused.
    small = tiny(vocab_size=50, d_model=64, lm_head_screen_margin=5.0)
    with pytest.raises(ValueError, match="d_model a multiple of 128"):
        write_engine_file(tmp_path / "small.spark", small, random_tensor_source(small, 1))
    assert not (tmp_path / "small.spark").exists()


def test_reference_takes_the_screens_bytes(tmp_path):
    cfg, path, weights = _model(tmp_path, "gemma3", 5.0)
    floats = read_engine_file(path, dequantize=True)[2]
    with pytest.raises(ValueError, match="screen4 bytes"):
        reference.forward(cfg, floats, [1, 2, 3])


def _old_q4_screen_file(tmp_path):
    """A file of the layout before screen4 (token_embd_screen as q4 rows [vocab, d / 32 * 20]),
    built with the safetensors library."""
    from safetensors.numpy import save_file

    cfg = KINDS["gemma3"].replace(lm_head_screen_margin=5.0)
    rng = np.random.default_rng(5)
    tensors = {s.name: rng.standard_normal(s.shape).astype(np.float32) * 0.1
               for s in tensor_specs(cfg) if s.name != SCREEN}
    tensors[SCREEN] = quantize_q4(tensors["token_embd"])
    path = tmp_path / "old.spark"
    save_file(tensors, str(path), metadata={"format": "spark-infer", "format_version": "1",
                                            "config": cfg.to_json()})
    return path


def test_an_old_q4_screen_is_refused(tmp_path):
    path = _old_q4_screen_file(tmp_path)
    with pytest.raises(FormatError, match="(?is)token_embd_screen.*convert"):
        read_engine_file(path)
    with pytest.raises(ValueError, match="(?is)token_embd_screen.*convert"):
        _core.Engine(str(path), context_length=8)


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
    small = tiny(vocab_size=50, d_model=64)
    write_engine_file(tmp_path / "small.spark", small, random_tensor_source(small, 1))
    with pytest.raises(ConversionError, match="d_model must be a multiple of 128"):
        convert(tmp_path / "small.spark", tmp_path / "x.spark", lm_head_screen=10, progress=False)
    assert not (tmp_path / "x.spark").exists()


def test_convert_adds_keeps_and_removes_the_screen(tmp_path):
    _, path, weights = _model(tmp_path, "gemma3", 0.0)
    added = convert(path, tmp_path / "added.spark", dtype="int8", lm_head_screen=8.0,
                    progress=False)
    cfg, _, stored = read_engine_file(added, dequantize=True)
    assert cfg.lm_head_screen_margin == 8.0
    # The screen is the screen4 fit of the new file's own token_embd source values.
    np.testing.assert_array_equal(read_engine_file(added)[2][SCREEN],
                                  quantize_screen4(weights["token_embd"]))
    kept = convert(added, tmp_path / "kept.spark", dtype="int8", progress=False)
    assert read_engine_file(kept)[0].lm_head_screen_margin == 8.0
    removed = convert(added, tmp_path / "removed.spark", dtype="int8", lm_head_screen=0,
                      progress=False)
    cfg, _, stored = read_engine_file(removed)
    assert cfg.lm_head_screen_margin == 0.0 and "token_embd_screen" not in stored


def test_convert_keeps_a_quantized_sources_blocks_and_remakes_its_screen(tmp_path):
    """A q4 file with a screen, converted to q4: every matrix keeps its q4 blocks (the screen is
    not one of them: it is made again from token_embd), and there is nothing to calibrate."""
    _, path, weights = _model(tmp_path, "gemma3", 5.0, dtype="q4")
    out = convert(path, tmp_path / "again.spark", dtype="q4", progress=False)
    src, got = read_engine_file(path)[2], read_engine_file(out)[2]
    assert got.keys() == src.keys()
    for name in set(got) - {SCREEN}:
        np.testing.assert_array_equal(got[name], src[name])
    # The source's screen was fitted to token_embd's floats before q4; this one to its q4 values.
    np.testing.assert_array_equal(got[SCREEN], quantize_screen4(weights["token_embd"]))
    text = tmp_path / "t.txt"
    text.write_text("some text to calibrate on")
    with pytest.raises(ConversionError, match="nothing to calibrate"):
        convert(path, tmp_path / "c.spark", dtype="q4", calibrate=text, progress=False)


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
