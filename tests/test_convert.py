"""Converters: HF safetensors and GGUF checkpoints (small, random, written here) -> engine file."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

import synth_checkpoints as sc
from spark_infer import reference
from spark_infer.config import ModelConfig
from spark_infer.convert import ConversionError, convert, load_weights
from spark_infer.convert.gguf import GGUFFile
from spark_infer.data import calibration_text_path
from spark_infer.fileformat import read_engine_file, tensor_specs
from spark_infer.weights import bf16_to_f32, f32_to_bf16
from spark_infer.tokenizer import Tokenizer

TOKENS = [2, 105, 40, 50, 7, 399, 106, 300, 12]


def _listing(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir())


# ------------------------------------------------------------------------------------- HF

def _hf_expected_cfg(c: dict, arch: str, **over) -> ModelConfig:
    """The engine config the test expects, written out by hand from config.json."""
    n = c["num_hidden_layers"]
    if arch == "gemma2":
        layer_types = ["local" if i % 2 == 0 else "global" for i in range(n)]
        fields = dict(attn_softcap=50.0, final_softcap=30.0, qk_norm=False,
                      rope_base_global=10000.0, rope_base_local=10000.0)
    else:
        layer_types = ["global" if (i + 1) % 6 == 0 else "local" for i in range(n)]
        fields = dict(attn_softcap=0.0, final_softcap=0.0, qk_norm=True,
                      rope_base_global=1e6, rope_base_local=10000.0)
    fields.update(
        arch=arch, vocab_size=400, d_model=32, n_layers=n, n_heads=2, n_kv_heads=1,
        head_dim=16, d_ff=64, norm_eps=1e-6, query_scale=c["query_pre_attn_scalar"] ** -0.5,
        layer_types=tuple(layer_types), sliding_window=3, rope_scale_global=1.0,
        ffn_predictor_dim=0, attn_predictor_dim=0, bos_id=2, eos_id=1, pad_id=0,
        start_of_turn_id=105, end_of_turn_id=106)
    fields.update(over)
    return ModelConfig(**fields)


def _make_hf(tmp: Path, arch: str, *, shards=1, dtypes=None, config_over=None, seed=0,
             prefix="model.", extra=None, drop=(), reshape=None):
    c = (sc.gemma2_config if arch == "gemma2" else sc.gemma3_config)(**(config_over or {}))
    shapes = sc.gemma_shapes(c, arch)
    w = sc.random_weights(shapes, seed)
    for n in drop:
        del w[n]
    for n, shape in (reshape or {}).items():
        w[n] = np.zeros(shape, np.float32)
    if prefix != "model.":
        w = {prefix + k[len("model."):]: v for k, v in w.items()}
        dtypes = {prefix + k[len("model."):]: v for k, v in (dtypes or {}).items()}
    held = sc.write_hf_checkpoint(tmp, c, w, dtypes=dtypes, shards=shards, extra=extra)
    if prefix != "model.":
        held = {"model." + k[len(prefix):]: v for k, v in held.items() if k.startswith(prefix)}
    return c, held


def _check_tensors(out: Path, held: dict[str, np.ndarray]) -> ModelConfig:
    cfg, _, t = read_engine_file(out)
    assert set(t) == {s.name for s in tensor_specs(cfg)}
    for hf_name, a in held.items():
        en = sc.hf_to_engine_name(hf_name)
        assert t[en].dtype == np.float32, en
        np.testing.assert_array_equal(t[en], a, err_msg=en)
    return cfg


def test_hf_gemma2_f32_exact(tmp_path):
    src = tmp_path / "g2"
    # mixed source dtypes: bf16 and f16 widen exactly to f32
    dtypes = {"model.layers.0.self_attn.q_proj.weight": "BF16",
              "model.layers.1.mlp.down_proj.weight": "F16",
              "model.embed_tokens.weight": "BF16"}
    c, held = _make_hf(src, "gemma2", dtypes=dtypes)
    out = convert(src, tmp_path / "g2.spark", dtype="f32", progress=False)
    cfg = _check_tensors(out, held)
    assert cfg == _hf_expected_cfg(c, "gemma2")
    assert cfg.start_of_turn_id == 105  # no tokenizer, vocab != 256000: Gemma 3 defaults
    assert _listing(tmp_path) == ["g2", "g2.spark"]


def test_hf_gemma3_sharded_and_rope_scaling(tmp_path):
    src = tmp_path / "g3"
    c, held = _make_hf(src, "gemma3", shards=3, config_over={
        "rope_scaling": {"rope_type": "linear", "factor": 8.0}})
    out = convert(src, tmp_path / "g3.spark", dtype="f32", progress=False)
    cfg = _check_tensors(out, held)
    assert cfg == _hf_expected_cfg(c, "gemma3", rope_scale_global=8.0)
    assert cfg.layer_types == ("local",) * 5 + ("global",)


def test_hf_gemma3_transformers5_config(tmp_path):
    """New-style keys: rope_parameters per layer type and an explicit layer_types list."""
    src = tmp_path / "g3"
    lt = ["sliding_attention", "full_attention"] * 3
    over = {"layer_types": lt, "rope_parameters": {
        "full_attention": {"rope_type": "default", "rope_theta": 500000.0},
        "sliding_attention": {"rope_type": "default", "rope_theta": 20000.0}}}
    c, held = _make_hf(src, "gemma3", config_over=over)
    del c["rope_theta"], c["rope_local_base_freq"]
    (src / "config.json").write_text(json.dumps(c))
    out = convert(src, tmp_path / "g3.spark", dtype="f32", progress=False)
    cfg = _check_tensors(out, held)
    assert cfg == _hf_expected_cfg(c, "gemma3", rope_base_global=500000.0,
                                   rope_base_local=20000.0,
                                   layer_types=("local", "global") * 3)


def test_hf_gemma3_conditional_generation(tmp_path):
    """Gemma3ForConditionalGeneration: text_config, language_model prefix, vision tensors and
    a tied lm_head are ignored."""
    src = tmp_path / "g3mm"
    text = sc.gemma3_config()
    for k in ("architectures",):
        text.pop(k)
    top = {"architectures": ["Gemma3ForConditionalGeneration"], "model_type": "gemma3",
           "text_config": text, "vision_config": {"hidden_size": 8}, "eos_token_id": [1, 106]}
    shapes = sc.gemma_shapes(text, "gemma3")
    w = sc.random_weights(shapes)
    pre = {"model.language_model." + k[len("model."):]: v for k, v in w.items()}
    extra = {"model.vision_tower.encoder.weight": np.ones((4, 4), np.float32),
             "model.multi_modal_projector.mm_input_projection_weight": np.ones((8, 32),
                                                                                np.float32),
             "lm_head.weight": w["model.embed_tokens.weight"]}
    sc.write_hf_checkpoint(src, top, pre, extra=extra, shards=2)
    out = convert(src, tmp_path / "mm.spark", dtype="f32", progress=False)
    cfg = _check_tensors(out, w)
    assert cfg == _hf_expected_cfg(text, "gemma3")


def test_hf_bf16_and_int8_outputs(tmp_path):
    src = tmp_path / "g2"
    c, held = _make_hf(src, "gemma2")
    out = convert(src, tmp_path / "b.spark", dtype="bf16", progress=False)
    _, _, t = read_engine_file(out)
    for hf_name, a in held.items():
        en = sc.hf_to_engine_name(hf_name)
        if a.ndim == 2:
            np.testing.assert_array_equal(t[en], f32_to_bf16(a), err_msg=en)
        else:
            np.testing.assert_array_equal(t[en], a, err_msg=en)
    out8 = convert(src, tmp_path / "i.spark", dtype="int8", embed_dtype="bf16", progress=False)
    _, _, t8 = read_engine_file(out8, dequantize=True)
    for hf_name, a in held.items():
        en = sc.hf_to_engine_name(hf_name)
        if en == "token_embd":
            np.testing.assert_array_equal(t8[en], bf16_to_f32(f32_to_bf16(a)))
        elif a.ndim == 2:
            tol = np.abs(a).max(axis=1, keepdims=True) / 127 * 0.5 + 1e-7
            assert np.all(np.abs(t8[en] - a) <= tol), en


@pytest.mark.parametrize("arch", ["gemma2", "gemma3"])
def test_reference_forward_on_converted_equals_direct(tmp_path, arch):
    """reference.forward on the converted file == on weights mapped by the test itself."""
    src = tmp_path / arch
    c, held = _make_hf(src, arch, seed=3)
    out = convert(src, tmp_path / "m.spark", dtype="f32", progress=False)
    cfg_file, _, w_file = read_engine_file(out, dequantize=True)
    cfg_direct = _hf_expected_cfg(c, arch)
    w_direct = {sc.hf_to_engine_name(k): v for k, v in held.items()}
    got = reference.forward(cfg_file, w_file, TOKENS)
    want = reference.forward(cfg_direct, w_direct, TOKENS)
    np.testing.assert_array_equal(got, want)
    assert np.isfinite(got).all()
    if arch == "gemma2":
        assert np.abs(got).max() <= 30.0  # final soft-cap in force


def test_load_weights_matches_file(tmp_path):
    src = tmp_path / "g3"
    c, held = _make_hf(src, "gemma3")
    cfg, w, proto = load_weights(src)
    assert proto is None
    assert cfg == _hf_expected_cfg(c, "gemma3")
    for k, v in held.items():
        np.testing.assert_array_equal(w[sc.hf_to_engine_name(k)], v)


def test_hf_tokenizer_model_is_embedded(tmp_path):
    from spark_infer.convert.gguf_tokenizer import proto_from_gguf_metadata

    tokens, scores, types = sc.tiny_vocab()
    proto = proto_from_gguf_metadata({
        "tokenizer.ggml.model": "llama", "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.scores": np.array(scores, np.float32),
        "tokenizer.ggml.token_type": np.array(types, np.int32)})
    src = tmp_path / "g2"
    _make_hf(src, "gemma2")
    (src / "tokenizer.model").write_bytes(proto)
    out = convert(src, tmp_path / "t.spark", progress=False)
    _, got, _ = read_engine_file(out)
    assert got == proto
    tok = Tokenizer.from_engine_file(out)
    assert tok.decode(tok.encode("hello the world")) == "hello the world"


# ----------------------------------------------------------------------------------- GGUF

def _gguf_meta(fields: dict, arch: str, **extra) -> dict:
    m = {"context_length": 8192, "embedding_length": fields["d_model"],
         "block_count": fields["n_layers"], "feed_forward_length": fields["d_ff"],
         "attention.head_count": fields["n_heads"],
         "attention.head_count_kv": fields["n_kv_heads"],
         "attention.key_length": fields["head_dim"], "attention.value_length": fields["head_dim"],
         "attention.layer_norm_rms_epsilon": 1e-6,
         "attention.sliding_window": fields["sliding_window"]}
    if arch == "gemma2":
        m.update({"attn_logit_softcapping": 50.0, "final_logit_softcapping": 30.0})
    else:
        m["rope.freq_base"] = 1e6
    m.update(extra)
    return m


def _gguf_fields(arch: str, n_layers: int) -> dict:
    if arch == "gemma2":
        lt = tuple("local" if i % 2 == 0 else "global" for i in range(n_layers))
        f = dict(attn_softcap=50.0, final_softcap=30.0, qk_norm=False, rope_base_global=1e4,
                 rope_base_local=1e4)
    else:
        lt = tuple("global" if (i + 1) % 6 == 0 else "local" for i in range(n_layers))
        f = dict(attn_softcap=0.0, final_softcap=0.0, qk_norm=True, rope_base_global=1e6,
                 rope_base_local=1e4)
    f.update(arch=arch, vocab_size=400, d_model=32, n_layers=n_layers, n_heads=2,
             n_kv_heads=1, head_dim=16, d_ff=64, norm_eps=1e-6, query_scale=0.25,
             layer_types=lt, sliding_window=3, rope_scale_global=1.0, bos_id=2, eos_id=1,
             pad_id=0, start_of_turn_id=105, end_of_turn_id=106)
    return f


QTYPES = {"token_embd": "Q8_0", "blk.0.attn_q": "Q8_0", "blk.0.attn_k": "F16",
          "blk.0.attn_v": "BF16", "blk.0.ffn_gate": "Q5_0", "blk.1.ffn_down": "Q8_0",
          "blk.1.attn_output": "F16", "blk.1.ffn_up": "Q5_0"}


def _make_gguf(path: Path, arch: str, n_layers: int, seed=0, meta_over=None, **kw):
    fields = _gguf_fields(arch, n_layers)
    w = sc.engine_weights(fields, seed)
    held = sc.write_gguf(path, arch, _gguf_meta(fields, arch, **(meta_over or {})), w,
                         qtypes=kw.pop("qtypes", QTYPES), **kw)
    return fields, w, held


@pytest.mark.parametrize("arch,n_layers", [("gemma2", 2), ("gemma3", 6)])
def test_gguf_synthetic_converts(tmp_path, arch, n_layers):
    src = tmp_path / "m.gguf"
    fields, w, held = _make_gguf(src, arch, n_layers)
    out = convert(src, tmp_path / "m.spark", dtype="f32", progress=False)
    cfg, proto, t = read_engine_file(out)
    assert cfg == ModelConfig(**fields)
    for name, a in held.items():
        if a.ndim == 1:   # stored as 1 + w: the engine file gets w back (up to f32 rounding)
            np.testing.assert_array_equal(t[name], a - np.float32(1.0), err_msg=name)
            np.testing.assert_allclose(t[name], w[name], atol=1e-6, err_msg=name)
        else:
            np.testing.assert_array_equal(t[name], a, err_msg=name)
    # the tokenizer travels with the model
    tok = Tokenizer(proto)
    assert (tok.bos_id, tok.eos_id, tok.start_of_turn_id, tok.end_of_turn_id) == (2, 1, 105, 106)
    assert tok.decode(tok.encode("hello  the world\n\n")) == "hello  the world\n\n"


def test_gguf_reader_agrees_with_gguf_package(tmp_path):
    import gguf

    src = tmp_path / "m.gguf"
    _make_gguf(src, "gemma3", 6)
    t0 = time.perf_counter()
    f = GGUFFile(src)
    print(f"\nGGUFFile parse of a small file: {1e3 * (time.perf_counter() - t0):.1f} ms")
    r = gguf.GGUFReader(src)
    with f:
        for field in r.fields.values():
            if field.name.startswith("GGUF."):
                continue
            mine = f.metadata[field.name]
            theirs = field.contents()
            if isinstance(mine, np.ndarray):
                np.testing.assert_array_equal(mine, np.array(theirs), err_msg=field.name)
            elif isinstance(mine, float):
                assert mine == pytest.approx(theirs, rel=1e-7), field.name
            else:
                assert mine == theirs, field.name
        assert list(f.tensors) == [t.name for t in r.tensors]
        for t in r.tensors:
            mt = f.tensors[t.name]
            assert mt.shape == tuple(int(x) for x in t.shape), t.name
            assert mt.ggml_type == int(t.tensor_type)
            assert mt.offset == int(t.data_offset)  # absolute in both
            want = gguf.quants.dequantize(t.data, t.tensor_type).reshape(mt.np_shape)
            np.testing.assert_array_equal(f.dequantize(t.name), want, err_msg=t.name)


def test_gguf_metadata_fallbacks(tmp_path):
    """Without the optional keys, architecture defaults apply (llama.cpp's)."""
    src = tmp_path / "m.gguf"
    fields = _gguf_fields("gemma3", 6)
    w = sc.engine_weights(fields)
    meta = {"embedding_length": 32, "block_count": 6, "feed_forward_length": 64,
            "attention.head_count": 2, "attention.head_count_kv": 1,
            "attention.key_length": 16}
    sc.write_gguf(src, "gemma3", meta, w, tokenizer=False)
    cfg, _, _ = load_weights(src)
    assert (cfg.rope_base_global, cfg.rope_base_local, cfg.sliding_window) == (1e6, 1e4, 512)
    assert cfg.query_scale == 0.25 and cfg.norm_eps == 1e-6 and cfg.final_softcap == 0.0


def test_gguf_rope_scaling_and_explicit_pattern(tmp_path):
    src = tmp_path / "m.gguf"
    fields = _gguf_fields("gemma3", 6)
    w = sc.engine_weights(fields)
    meta = _gguf_meta(fields, "gemma3", **{"rope.scaling.type": "linear",
                                            "rope.scaling.factor": 8.0,
                                            "attention.sliding_window_pattern": 3})
    sc.write_gguf(src, "gemma3", meta, w)
    cfg, _, _ = load_weights(src)
    assert cfg.rope_scale_global == 8.0
    assert cfg.layer_types == ("local", "local", "global") * 2


# --------------------------------------------------------------------------------- errors

def _assert_fails(src, out: Path, match: str):
    before = _listing(out.parent)
    with pytest.raises(ConversionError, match=match):
        convert(src, out, dtype="bf16", progress=False)
    assert not out.exists()
    assert _listing(out.parent) == before, "a temporary or partial file was left behind"


@pytest.fixture
def outdir(tmp_path):
    d = tmp_path / "out"
    d.mkdir()
    return d


def test_gguf_unsupported_architecture(tmp_path, outdir):
    src = tmp_path / "m.gguf"
    fields = _gguf_fields("gemma2", 2)
    sc.write_gguf(src, "llama", _gguf_meta(fields, "gemma2"), sc.engine_weights(fields))
    _assert_fails(src, outdir / "x.spark", "unsupported architecture 'llama'")


def test_hf_unsupported_architecture(tmp_path, outdir):
    src = tmp_path / "m"
    _make_hf(src, "gemma2", config_over={"architectures": ["LlamaForCausalLM"],
                                         "model_type": "llama"})
    _assert_fails(src, outdir / "x.spark", "unsupported architecture")


def test_gguf_missing_tensor(tmp_path, outdir):
    src = tmp_path / "m.gguf"
    _make_gguf(src, "gemma3", 6, drop=("blk.4.ffn_up",))
    _assert_fails(src, outdir / "x.spark", r"missing tensor 'blk\.4\.ffn_up\.weight'")


def test_gguf_shape_mismatch(tmp_path, outdir):
    src = tmp_path / "m.gguf"
    fields = _gguf_fields("gemma2", 2)
    w = sc.engine_weights(fields)
    w["blk.1.attn_k"] = np.zeros((32, 32), np.float32)
    sc.write_gguf(src, "gemma2", _gguf_meta(fields, "gemma2"), w)
    _assert_fails(src, outdir / "x.spark", r"'blk\.1\.attn_k\.weight' has shape \[32, 32\]")


def test_gguf_missing_metadata(tmp_path, outdir):
    src = tmp_path / "m.gguf"
    fields = _gguf_fields("gemma2", 2)
    meta = _gguf_meta(fields, "gemma2")
    del meta["feed_forward_length"]
    sc.write_gguf(src, "gemma2", meta, sc.engine_weights(fields))
    _assert_fails(src, outdir / "x.spark", "gemma2.feed_forward_length")


@pytest.mark.parametrize("cut", ["magic", "header", "kv", "data"])
def test_gguf_truncated_or_corrupt(tmp_path, outdir, cut):
    src = tmp_path / "m.gguf"
    _make_gguf(src, "gemma2", 2)
    raw = src.read_bytes()
    if cut == "magic":
        bad, match = b"GGUX" + raw[4:], "not a GGUF file"
    elif cut == "header":
        bad, match = raw[:20], "not a GGUF file|truncated"
    elif cut == "kv":
        bad, match = raw[:2000], "truncated"
    else:
        bad, match = raw[:len(raw) - 100], r"truncated GGUF: tensor '.*'"
    src.write_bytes(bad)
    _assert_fails(src, outdir / "x.spark", match)


def test_gguf_corrupt_string_length(tmp_path, outdir):
    src = tmp_path / "m.gguf"
    _make_gguf(src, "gemma2", 2)
    raw = bytearray(src.read_bytes())
    raw[24:32] = (2**40).to_bytes(8, "little")   # the first key's length
    src.write_bytes(bytes(raw))
    _assert_fails(src, outdir / "x.spark", "truncated or corrupt")


def test_hf_missing_tensor(tmp_path, outdir):
    src = tmp_path / "m"
    _make_hf(src, "gemma3", drop=("model.layers.2.self_attn.k_norm.weight",))
    _assert_fails(src, outdir / "x.spark", r"blk\.2\.attn_k_norm.*"
                                           r"model\.layers\.2\.self_attn\.k_norm\.weight")


def test_hf_shape_mismatch(tmp_path, outdir):
    src = tmp_path / "m"
    _make_hf(src, "gemma2", reshape={"model.layers.1.mlp.down_proj.weight": (32, 63)})
    _assert_fails(src, outdir / "x.spark",
                  r"'model\.layers\.1\.mlp\.down_proj\.weight' has shape \[32, 63\]")


def test_hf_missing_config_field(tmp_path, outdir):
    src = tmp_path / "m"
    c, _ = _make_hf(src, "gemma2")
    del c["intermediate_size"]
    (src / "config.json").write_text(json.dumps(c))
    _assert_fails(src, outdir / "x.spark", "intermediate_size")


def test_hf_truncated_safetensors(tmp_path, outdir):
    src = tmp_path / "m"
    _make_hf(src, "gemma2", shards=2)
    shard = src / "model-00002-of-00002.safetensors"
    raw = shard.read_bytes()
    shard.write_bytes(raw[:len(raw) - 10])
    _assert_fails(src, outdir / "x.spark", "truncated safetensors file: tensor")
    shard.write_bytes(raw[:100])
    _assert_fails(src, outdir / "x.spark", "truncated or corrupt safetensors")


def test_hf_missing_shard(tmp_path, outdir):
    src = tmp_path / "m"
    _make_hf(src, "gemma2", shards=2)
    (src / "model-00001-of-00002.safetensors").unlink()
    _assert_fails(src, outdir / "x.spark", "missing shard model-00001-of-00002")


def test_hf_untied_lm_head(tmp_path, outdir):
    src = tmp_path / "m"
    _make_hf(src, "gemma2", extra={"lm_head.weight": np.ones((400, 32), np.float32)})
    _assert_fails(src, outdir / "x.spark", "untied LM head")


def test_failure_mid_way_leaves_nothing(tmp_path, outdir):
    """A NaN in the last tensor is found after most of the file is written: no output, no
    temporary, and an existing file at the target is kept unchanged."""
    src = tmp_path / "m"
    c = sc.gemma2_config()
    w = sc.random_weights(sc.gemma_shapes(c, "gemma2"))
    w["model.layers.1.mlp.down_proj.weight"][3, 5] = np.nan
    sc.write_hf_checkpoint(src, c, w)
    _assert_fails(src, outdir / "x.spark", r"down_proj\.weight' has non-finite values")
    keep = outdir / "keep.spark"
    keep.write_bytes(b"old contents")
    with pytest.raises(ConversionError):
        convert(src, keep, progress=False)
    assert keep.read_bytes() == b"old contents"
    assert _listing(outdir) == ["keep.spark"]


def test_not_a_checkpoint(tmp_path, outdir):
    p = tmp_path / "x.bin"
    p.write_bytes(b"hello world")
    _assert_fails(p, outdir / "x.spark", "not a GGUF file, a Hugging Face checkpoint directory nor")
    _assert_fails(tmp_path / "nope", outdir / "x.spark", "no such file")
    (tmp_path / "empty").mkdir()
    _assert_fails(tmp_path / "empty", outdir / "x.spark", "no config.json")


def test_bad_dtype(tmp_path):
    src = tmp_path / "m"
    _make_hf(src, "gemma2")
    with pytest.raises(ConversionError, match="dtype"):
        convert(src, tmp_path / "x.spark", dtype="f16", progress=False)


def test_progress_bar(tmp_path, capsys):
    src = tmp_path / "m"
    _make_hf(src, "gemma2")
    convert(src, tmp_path / "p.spark", dtype="int8", progress=True)
    err = capsys.readouterr().err
    assert "p.spark" in err and "tensor" in err


def test_command_line(tmp_path, capsys):
    from spark_infer.convert.__main__ import main

    src = tmp_path / "m"
    _make_hf(src, "gemma3")
    assert main([str(src), str(tmp_path / "c.spark"), "--dtype", "f32", "--quiet"]) == 0
    assert read_engine_file(tmp_path / "c.spark")[0].arch == "gemma3"
    assert main([str(tmp_path / "nope"), str(tmp_path / "d.spark"), "--quiet"]) == 1
    assert "no such file" in capsys.readouterr().err


def test_gguf_q4_keeps_each_quantized_tensors_precision(tmp_path):
    """--dtype q4 from a quantized GGUF: Q5_0 matrices stay the file's own blocks (q5, byte for
    byte), 8-bit and float ones become int8 (the nearest type with at least their bits); from a
    float GGUF every matrix is q4; an explicit --embed-dtype is taken as asked."""
    from spark_infer.convert.gguf import load_gguf

    src = tmp_path / "m.gguf"
    _make_gguf(src, "gemma3", 6)
    _, _, t = read_engine_file(convert(src, tmp_path / "m.spark", dtype="q4", progress=False))
    _, _, e = read_engine_file(convert(src, tmp_path / "e.spark", dtype="q4", embed_dtype="bf16",
                                       progress=False))
    f, fields, mapping = load_gguf(src)
    with f:
        for spec in tensor_specs(ModelConfig(**fields)):
            if not spec.is_matrix:
                continue
            gt = f.tensors[mapping[spec.name]].type_name
            assert gt == QTYPES.get(spec.name, "F32")
            if gt == "Q5_0":
                assert t[spec.name].shape == (spec.shape[0], spec.shape[1] // 32, 22)
                np.testing.assert_array_equal(t[spec.name].reshape(-1),
                                              f.raw(mapping[spec.name]), err_msg=spec.name)
            else:
                assert t[spec.name].dtype == np.int8, (spec.name, gt)
    assert e["token_embd"].dtype == np.uint16 and e["blk.0.attn_q"].dtype == np.int8
    # Nothing there is fitted, so a calibration text would go unused: said, not ignored.
    with pytest.raises(ConversionError, match="--calibrate has nothing to calibrate"):
        convert(src, tmp_path / "c.spark", dtype="q4", progress=False,
                calibrate=calibration_text_path())
    assert not (tmp_path / "c.spark").exists()
    # A float GGUF has no precision to keep: q4 everywhere.
    _make_gguf(tmp_path / "f.gguf", "gemma3", 6, qtypes={})
    _, _, q = read_engine_file(convert(tmp_path / "f.gguf", tmp_path / "f.spark", dtype="q4",
                                       progress=False))
    assert all(q[s.name].dtype == np.uint8 and q[s.name].ndim == 2
               for s in tensor_specs(ModelConfig(**_gguf_fields("gemma3", 6))) if s.is_matrix)


def test_kept_precision_leaves_re_laid_out_matrices_at_the_asked_type():
    """A sparsified model's ffn_down_t (ffn_down transposed) and its predictors are not the
    source's blocks: they get the asked type; q4 is the only type that keeps the source's."""
    from spark_infer.convert import kept_precision

    cfg = ModelConfig(**_gguf_fields("gemma3", 6)).replace(ffn_sparse_fraction=0.5,
                                                           ffn_gate_rank=16)
    kinds = {"token_embd": "int8", "blk.0.ffn_down": "q5", "blk.0.ffn_gate": "q5",
             "blk.0.attn_q": "q4", "blk.0.attn_k": "float"}
    assert kept_precision(kinds, cfg, "q4", None) == {
        "token_embd": "int8", "blk.0.ffn_gate": "q5", "blk.0.attn_q": "q4", "blk.0.attn_k": "int8"}
    assert kept_precision(kinds, cfg, "q4", "bf16") == {
        "blk.0.ffn_gate": "q5", "blk.0.attn_q": "q4", "blk.0.attn_k": "int8"}
    assert kept_precision(kinds, cfg, "int8", "q4") == {"token_embd": "int8"}
    assert kept_precision(None, cfg, "q4", None) == {}
