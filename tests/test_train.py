"""The Spark trainer (spark_infer.train, PyTorch): its forward pass against the numpy reference
(reference.py, written from docs/engine-file.md), gradients through the statistical top-k
against finite differences, a tiny Spark model that trains (loss falls, FFN activity near the
target), engine parity of the exported model (prefill and decode), the checkpoint through the
converter, and the command line. Skipped without torch (the `[train]` extra)."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from spark_infer import _core, reference  # noqa: E402
from spark_infer.config import ModelConfig  # noqa: E402
from spark_infer.convert import ConversionError, convert  # noqa: E402
from spark_infer.fileformat import read_engine_file  # noqa: E402
from spark_infer.train.checkpoint import export_engine, load_checkpoint, save_checkpoint  # noqa: E402
from spark_infer.train.modules import SparkLM  # noqa: E402
from spark_infer.train.trainer import preset, train  # noqa: E402
from test_engine import tiny as engine_tiny  # noqa: E402

REL_TOL = 1e-4   # f32 against float64 over a few hundred dependent ops (test_engine.py's bound)


def tiny(**overrides) -> ModelConfig:
    """test_engine's tiny shape, with a window of 9 and scaled global positions."""
    return engine_tiny(**{"sliding_window": 9, "rope_scale_global": 2.0, **overrides})


KINDS = {
    "gemma3_dense": tiny(),
    # attn_topk 6 < 24 tokens, window 9: keep-all, top-k and the window all run.
    "gemma3_spark": tiny(ffn_predictor_dim=24, ffn_topk_fraction=0.2, attn_predictor_dim=8,
                         attn_topk=6),
    "gemma2_spark": tiny(arch="gemma2", qk_norm=False, attn_softcap=20.0, final_softcap=30.0,
                         ffn_predictor_dim=32, attn_predictor_dim=6, attn_topk=4, n_kv_heads=1,
                         rope_scale_global=1.0),
}


def random_model(cfg: ModelConfig, seed: int = 1) -> SparkLM:
    model = SparkLM(cfg, seed=seed)
    with torch.no_grad():                 # norm weights away from 0, so (1 + w) is exercised
        g = torch.Generator().manual_seed(seed + 1)
        for p in model.parameters():
            if p.dim() == 1:
                p.normal_(0.0, 0.1, generator=g)
    return model


def rel_err(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


def weights_of(model: SparkLM) -> dict[str, np.ndarray]:
    return {k: v.detach().numpy() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("kind", list(KINDS))
def test_forward_matches_reference(kind):
    cfg = KINDS[kind]
    model = random_model(cfg)
    tokens = np.random.default_rng(0).integers(0, cfg.vocab_size, 24)
    expected = reference.forward(cfg, weights_of(model), tokens)
    with torch.no_grad():
        got = model(torch.from_numpy(tokens)).numpy()[0]
        assert rel_err(got, expected) < REL_TOL
        # In float64 the two are the same equations: equal to rounding.
        assert rel_err(model.double()(torch.from_numpy(tokens)).numpy()[0], expected) < 1e-10


def test_batch_rows_are_independent_sequences():
    cfg = KINDS["gemma3_spark"]
    model = random_model(cfg)
    tokens = torch.from_numpy(np.random.default_rng(3).integers(0, cfg.vocab_size, (3, 24)))
    with torch.no_grad():
        batched = model(tokens)
        for b in range(3):
            np.testing.assert_allclose(batched[b].numpy(), model(tokens[b])[0].numpy(),
                                       rtol=0, atol=1e-5)


def test_spark_ffn_gradients_through_the_threshold():
    """Autograd through relu(s - theta), theta = mean + std Q included, equals central finite
    differences (float64): the soft-threshold form trains by plain backpropagation."""
    cfg = KINDS["gemma3_spark"].replace(d_ff=40)
    block = random_model(cfg).double().blk[0]
    x = torch.randn(1, 2, cfg.d_model, dtype=torch.float64, generator=torch.Generator()
                    .manual_seed(0), requires_grad=True)
    assert torch.autograd.gradcheck(block.ffn, (x,), eps=1e-6, atol=1e-5, fast_mode=True)
    k1 = block.ffn_k1
    k1.grad = None
    block.ffn(x).sum().backward()
    assert torch.count_nonzero(k1.grad) > 0


def test_dense_and_spark_presets_match_in_parameters():
    from spark_infer.train.trainer import model_config

    for name in ("tiny", "small"):
        n = {kind: SparkLM(model_config(preset(f"{name}-{kind}")), seed=None).n_params()
             for kind in ("dense", "spark")}
        assert n["dense"] == n["spark"], (name, n)


def test_sparsified_configs_are_refused():
    with pytest.raises(ValueError, match="cannot be trained"):
        SparkLM(tiny(ffn_sparse_fraction=0.5))


# ------------------------------------------------------------------------------ training

# A smaller shape than tiny-spark, on the shipped calibration text, so the test takes seconds.
TEST_PRESET = dataclasses.replace(
    preset("tiny-spark"), d_model=64, d_ff=256, head_dim=32, vocab_size=384, seq_len=64,
    batch=8, sliding_window=32, ffn_predictor_dim=32, attn_predictor_dim=16, attn_topk=16,
    lr=1e-2, data="calibration", log_every=5, val_windows=8)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("trained")
    result = train(TEST_PRESET, 30, out, threads=2, preset_name="test", log=lambda s: None)
    return out, result


def test_tiny_spark_model_trains(trained):
    out, result = trained
    report = json.loads((out / "report.json").read_text())
    curve = [p["loss"] for p in report["train_loss"]]
    assert len(curve) == 6
    # Uniform over 384 pieces is ln 384 = 5.95 nats; the first 5 steps average above 5.
    assert curve[-1] < curve[0] - 1.0, curve
    assert report["val_loss"] < np.log(TEST_PRESET.vocab_size) - 1.0
    # Statistical top-k keeps about 8 % of 384 neurons (Thm 3.1: within ~sqrt(log d / d)).
    assert all(abs(f - 0.08) < 0.03 for f in report["ffn_active_fraction"]), report
    for key in ("kind", "steps", "tokens", "data"):
        assert key in report
    assert report["kind"] == "spark" and report["steps"] == 30
    assert report["tokens"] == 30 * 8 * 64 and "calibration" in report["data"]


def test_exported_model_matches_pytorch_in_the_engine(trained):
    """Engine logits of the exported f32 file equal the PyTorch model's, prefill and decode,
    over more tokens than the window (32) and attn_topk (16)."""
    out, result = trained
    model = result.model
    tokens = np.random.default_rng(4).integers(0, model.cfg.vocab_size, 80).astype(np.int32)
    with torch.no_grad():
        expected = model(torch.from_numpy(tokens.astype(np.int64))).numpy()[0]
    engine = _core.Engine(str(out / "model.spark"), context_length=96, kv_dtype="f32")
    assert rel_err(engine.prefill(tokens, chunk=16, all_logits=True), expected) < REL_TOL
    engine.reset()
    decoded = np.stack([engine.decode(int(t)) for t in tokens])
    assert rel_err(decoded, expected) < REL_TOL


def test_checkpoint_round_trips_through_the_converter(trained, tmp_path):
    out, result = trained
    cfg, _, weights = read_engine_file(out / "model.spark")
    assert cfg == result.model.cfg
    converted = convert(out / "checkpoint", tmp_path / "c.spark", dtype="f32", progress=False)
    cfg2, proto2, weights2 = read_engine_file(converted)
    assert cfg2 == cfg and proto2 == result.tokenizer_proto
    for name, a in weights_of(result.model).items():
        np.testing.assert_array_equal(weights2[name], a, err_msg=name)
        np.testing.assert_array_equal(weights[name], a, err_msg=name)
    model, proto = load_checkpoint(out / "checkpoint")
    assert proto == result.tokenizer_proto
    for name, a in weights_of(result.model).items():
        np.testing.assert_array_equal(model.state_dict()[name].numpy(), a, err_msg=name)


def test_converter_reads_checkpoints_without_torch(tmp_path):
    model = random_model(KINDS["gemma2_spark"])
    save_checkpoint(model, tmp_path / "ck")
    code = ("import sys; from spark_infer.convert import convert; "
            f"convert({str(tmp_path / 'ck')!r}, {str(tmp_path / 'm.spark')!r}, dtype='f32', "
            "progress=False); import spark_infer.cli, spark_infer.model; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True)
    _, _, w = read_engine_file(tmp_path / "m.spark")
    np.testing.assert_array_equal(w["blk.1.ffn_k2"], weights_of(model)["blk.1.ffn_k2"])


def test_bad_checkpoints_raise_conversion_errors(tmp_path):
    from safetensors.numpy import load_file, save_file

    model = random_model(KINDS["gemma3_dense"])
    ck = save_checkpoint(model, tmp_path / "ck")
    tensors = load_file(str(ck / "model.safetensors"))
    del tensors["blk.2.ffn_up"]
    save_file(tensors, str(ck / "model.safetensors"))
    with pytest.raises(ConversionError, match="missing tensor 'blk.2.ffn_up'"):
        convert(ck, tmp_path / "x.spark", progress=False)
    tensors["blk.2.ffn_up"] = np.zeros((3, 3), dtype=np.float32)
    save_file(tensors, str(ck / "model.safetensors"))
    with pytest.raises(ConversionError, match="blk.2.ffn_up.*shape"):
        convert(ck, tmp_path / "x.spark", progress=False)
    (ck / "spark_config.json").write_text('{"arch": "gemma3"}')
    with pytest.raises(ConversionError, match="invalid model config"):
        convert(ck, tmp_path / "x.spark", progress=False)
    assert not (tmp_path / "x.spark").exists()


@pytest.mark.parametrize("dtype", ["bf16", "int8"])
def test_quantized_exports_match_pytorch_on_their_weights(dtype, tmp_path):
    """A bf16 / int8 export in the engine equals the PyTorch model run on the file's
    dequantized weights. One token at a time: decode keeps x in f32, where chunked prefill
    rounds it to bf16 for bf16 / int8 matrices (docs/engine-file.md), which PyTorch does not."""
    model = random_model(KINDS["gemma3_spark"])
    path = export_engine(model, tmp_path / f"{dtype}.spark", dtype=dtype)
    _, _, weights = read_engine_file(path, dequantize=True)
    rounded = SparkLM(model.cfg, seed=None)
    rounded.load_state_dict({k: torch.from_numpy(np.asarray(weights[k], dtype=np.float32))
                             for k in rounded.state_dict()})
    tokens = np.random.default_rng(5).integers(0, model.cfg.vocab_size, 20).astype(np.int32)
    with torch.no_grad():
        expected = rounded(torch.from_numpy(tokens.astype(np.int64))).numpy()[0]
    got = _core.Engine(str(path), context_length=32, kv_dtype="f32").prefill(
        tokens, chunk=1, all_logits=True)
    assert rel_err(got, expected) < REL_TOL


def test_command_line(tmp_path):
    out = tmp_path / "run"
    r = subprocess.run([sys.executable, "-m", "spark_infer.train", "--preset", "tiny",
                        "--kind", "dense", "--steps", "2", "--data", "calibration",
                        "--threads", "2", "--out", str(out)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["kind"] == "dense" and report["preset"] == "tiny-dense"
    assert report["steps"] == 2 and report["ffn_active_fraction"] == [1.0, 1.0]
    assert np.isfinite(report["val_loss"])
    cfg, _, _ = read_engine_file(out / "model.spark")
    assert cfg.ffn_predictor_dim == 0 and (out / "checkpoint" / "spark_config.json").is_file()
    bad = subprocess.run([sys.executable, "-m", "spark_infer.train", "--preset", "nope",
                          "--steps", "2", "--out", str(out)], capture_output=True, text=True)
    assert bad.returncode == 2 and "unknown training preset 'nope'" in bad.stderr


# ------------------------------------------------------------------------------ uptraining

@pytest.mark.parametrize("hd,r_a", [(16, 8), (256, 128), (24, 6)])
def test_uptraining_head_permutation_keeps_rope_exact_in_the_predictor(hd, r_a):
    """Dense RoPE of a head, then the permutation, equals Spark RoPE ([0, r_a) and [r_a, hd)
    separately) of the permuted head on [0, r_a): the predictor scores are the dense scores'
    part over those pairs."""
    from spark_infer.train.uptrain import head_permutation

    perm = head_permutation(hd, r_a)
    assert sorted(perm) == list(range(hd))
    x = np.random.default_rng(0).standard_normal((40, 2, hd))
    pos = np.arange(40, dtype=np.float64) * 3.0
    dense = reference.rope(x, pos, 1e4, 0, hd)
    xp = x[:, :, perm]
    spark = reference.rope(reference.rope(xp, pos, 1e4, 0, r_a), pos, 1e4, r_a, hd - r_a)
    np.testing.assert_allclose(spark[:, :, :r_a], dense[:, :, perm[:r_a]], rtol=0, atol=1e-12)
    # The rest is rotated at other frequencies (the approximation the distillation fixes).
    assert not np.allclose(spark[:, :, r_a:], dense[:, :, perm[r_a:]])


def test_spark_from_dense_maps_gate_up_down(tmp_path):
    from spark_infer.train.uptrain import spark_from_dense

    dense = random_model(KINDS["gemma3_dense"])
    w = weights_of(dense)
    cfg, out = spark_from_dense(dense.cfg, w.__getitem__, r=24, r_a=8, attn_topk=6)
    assert cfg.ffn_predictor_dim == 24 and cfg.attn_predictor_dim == 8
    np.testing.assert_array_equal(out["blk.1.ffn_k1"], w["blk.1.ffn_gate"][:, :24])
    np.testing.assert_array_equal(out["blk.1.ffn_k2"], w["blk.1.ffn_up"][:, 24:])
    np.testing.assert_array_equal(out["blk.1.ffn_v"], w["blk.1.ffn_down"].T)
    student = SparkLM(cfg, seed=None)
    student.load_state_dict({k: torch.from_numpy(v) for k, v in out.items()})
    path = export_engine(student, tmp_path / "s.spark")
    assert read_engine_file(path)[0] == cfg
    with pytest.raises(ValueError, match="even divisor"):
        spark_from_dense(dense.cfg, w.__getitem__, r=24, r_a=6)


def test_mapping_ablation_scores_the_dense_model_as_the_reference():
    from spark_infer.train.uptrain import mapping_ablation, spark_from_dense

    dense = random_model(KINDS["gemma3_dense"])
    w = weights_of(dense)
    scfg, sw = spark_from_dense(dense.cfg, w.__getitem__, r=24, r_a=8, attn_topk=6)
    windows = np.random.default_rng(2).integers(0, dense.cfg.vocab_size, (2, 17))
    got = mapping_ablation(dense.cfg, w, scfg, sw, windows)
    assert set(got) == {"dense", "spark_ffn_only", "spark_attn_only", "spark_both"}
    nll = []
    for row in windows:
        logits = reference.forward(dense.cfg, w, row[:-1])
        top = logits.max(axis=1, keepdims=True)
        logp = logits - top - np.log(np.exp(logits - top).sum(axis=1, keepdims=True))
        nll += list(-logp[np.arange(16), row[1:]])
    assert got["dense"] == pytest.approx(np.mean(nll), rel=1e-5)
    assert all(np.isfinite(v) for v in got.values())
    assert len({round(v, 6) for v in got.values()}) == 4      # each variant is a different model
