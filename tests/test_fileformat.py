"""Engine-file writer and reader: table, layout, round trips, refusals (the weight types' own
encoders and decoders: test_weights.py)."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import struct
import sys

import ml_dtypes
import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import save_file

from spark_infer.config import ModelConfig, preset
from spark_infer.fileformat import (
    FormatError, RowBlocks, read_engine_file, read_engine_header, tensor_specs, write_engine_file)
from spark_infer.weights import dequantize_q4, f32_to_bf16, quantize_int8, quantize_q4
from test_weights import bf16_nearest_even_f64

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_cfg(**changes) -> ModelConfig:
    base = dict(arch="gemma3", vocab_size=50, d_model=24, n_layers=2, n_heads=4, n_kv_heads=2,
                head_dim=8, d_ff=40, query_scale=0.25, layer_types=("local", "global"),
                qk_norm=True, sliding_window=4, start_of_turn_id=3, end_of_turn_id=4)
    base.update(changes)
    return ModelConfig(**base)


SPARK = dict(ffn_predictor_dim=10, attn_predictor_dim=4, attn_topk=3)


def random_tensors(cfg: ModelConfig, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {s.name: rng.standard_normal(s.shape).astype(np.float32) for s in tensor_specs(cfg)}


def read_header(path) -> tuple[int, dict]:
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        return n, json.loads(f.read(n))


# ------------------------------------------------------------------------------ table

def test_tensor_specs_spark_2b_shapes_from_the_doc():
    specs = {s.name: s for s in tensor_specs(preset("spark-2b"))}
    assert specs["token_embd"] == ("token_embd", (256000, 2304), True)
    assert specs["output_norm"] == ("output_norm", (2304,), False)
    assert specs["blk.25.attn_q"].shape == (2048, 2304)
    assert specs["blk.25.attn_k"].shape == (1024, 2304)
    assert specs["blk.25.attn_v"].shape == (1024, 2304)
    assert specs["blk.25.attn_output"].shape == (2304, 2048)
    assert specs["blk.0.ffn_k1"].shape == (13824, 1024)
    assert specs["blk.0.ffn_k2"].shape == (13824, 1280)
    assert specs["blk.0.ffn_v"].shape == (13824, 2304)
    assert not any("ffn_gate" in n or "attn_q_norm" in n or "blk.26" in n for n in specs)
    assert len(specs) == 2 + 26 * (4 + 4 + 3)
    # 2.61 B parameters: the FFN matches the gated baseline's 63.70 M per layer.
    ffn = sum(math.prod(specs[f"blk.0.{n}"].shape) for n in ("ffn_k1", "ffn_k2", "ffn_v"))
    assert ffn == 3 * 2304 * 9216


def test_tensor_specs_gemma3_dense():
    cfg = preset("gemma3-270m")
    specs = tensor_specs(cfg)
    names = [s.name for s in specs]
    assert len(names) == len(set(names)) == 2 + 18 * (4 + 2 + 4 + 3)
    by = {s.name: s for s in specs}
    assert by["blk.17.attn_q_norm"] == ("blk.17.attn_q_norm", (256,), False)
    assert by["blk.0.attn_q"].shape == (1024, 640)
    assert by["blk.0.attn_k"].shape == (256, 640)
    assert by["blk.0.ffn_gate"].shape == by["blk.0.ffn_up"].shape == (2048, 640)
    assert by["blk.0.ffn_down"].shape == (640, 2048)
    assert all(s.is_matrix == (len(s.shape) == 2) for s in specs)


# ------------------------------------------------------------------------------ q4

def test_q4_refuses_what_it_cannot_hold(tmp_path):
    with pytest.raises(ValueError, match="multiple of 32"):
        quantize_q4(np.zeros((2, 48), np.float32))
    with pytest.raises(ValueError, match="f16 range"):
        quantize_q4(np.full((1, 32), 1e5, np.float32))
    cfg = tiny_cfg()                     # d_model 24: rows of 24 weights
    path = tmp_path / "m.spark"
    with pytest.raises(ValueError, match="multiple of 32"):
        write_engine_file(path, cfg, random_tensors(cfg), dtype="q4")
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("embed_dtype", ["q4", "bf16"])
def test_q4_round_trip(tmp_path, embed_dtype):
    cfg = tiny_cfg(vocab_size=40, d_model=64, head_dim=16, d_ff=96, ffn_predictor_dim=32,
                   attn_predictor_dim=4, attn_topk=3)
    tensors = random_tensors(cfg)
    path = tmp_path / "m.spark"
    write_engine_file(path, cfg, tensors, dtype="q4", embed_dtype=embed_dtype)
    n, header = read_header(path)
    for spec in tensor_specs(cfg):
        e = header[spec.name]
        if spec.is_matrix and (spec.name != "token_embd" or embed_dtype == "q4"):
            assert e["dtype"] == "U8" and e["shape"] == [spec.shape[0], spec.shape[1] // 32 * 20]
            assert spec.name + ".scale" not in header
    assert read_engine_header(path)["parameters"] == sum(
        int(np.prod(s.shape)) for s in tensor_specs(cfg))
    _, _, raw = read_engine_file(path)
    _, _, deq = read_engine_file(path, dequantize=True)
    for spec in tensor_specs(cfg):
        w = tensors[spec.name]
        if not spec.is_matrix:
            np.testing.assert_array_equal(deq[spec.name], w)
        elif spec.name == "token_embd" and embed_dtype == "bf16":
            np.testing.assert_array_equal(raw[spec.name], f32_to_bf16(w))
        else:
            np.testing.assert_array_equal(raw[spec.name], quantize_q4(w))
            np.testing.assert_array_equal(deq[spec.name], dequantize_q4(quantize_q4(w)))


# ------------------------------------------------------------------------------ round trips

@pytest.mark.parametrize("spark", [False, True])
@pytest.mark.parametrize("dtype", ["f32", "bf16", "int8"])
def test_round_trip_through_safetensors(tmp_path, dtype, spark):
    cfg = tiny_cfg(**(SPARK if spark else {}))
    tensors = random_tensors(cfg)
    path = tmp_path / "m.spark"
    write_engine_file(path, cfg, tensors, dtype=dtype, tokenizer_proto=b"\x00spm\xff")

    code = {"f32": "F32", "bf16": "BF16", "int8": "I8"}[dtype]
    with safe_open(str(path), framework="numpy") as f:
        meta = f.metadata()
        assert meta["format"] == "spark-infer" and meta["format_version"] == "1"
        assert ModelConfig.from_json(meta["config"]) == cfg
        keys = set(f.keys())
        for spec in tensor_specs(cfg):
            sl = f.get_slice(spec.name)
            assert tuple(sl.get_shape()) == spec.shape
            assert sl.get_dtype() == (code if spec.is_matrix else "F32"), spec.name
            a = f.get_tensor(spec.name)
            w = tensors[spec.name]
            if not spec.is_matrix or dtype == "f32":
                np.testing.assert_array_equal(a, w)
            elif dtype == "bf16":
                np.testing.assert_array_equal(a.view(np.uint16), bf16_nearest_even_f64(w))
            else:
                s = f.get_tensor(spec.name + ".scale")
                np.testing.assert_array_equal(s, np.abs(w).max(axis=1) / np.float32(127))
                assert np.all(np.abs(a * s[:, None].astype(np.float64) - w)
                              <= s[:, None] * (0.5 + 1e-5))
        n_scales = sum(s.is_matrix for s in tensor_specs(cfg)) if dtype == "int8" else 0
        assert len(keys) == len(tensor_specs(cfg)) + n_scales

    cfg2, tok, raw = read_engine_file(path)
    assert cfg2 == cfg and tok == b"\x00spm\xff"
    _, _, deq = read_engine_file(path, dequantize=True)
    assert set(deq) == set(tensors)
    for name, w in tensors.items():
        assert deq[name].dtype == np.float32
        if dtype == "f32" or w.ndim == 1:
            np.testing.assert_array_equal(deq[name], w)
        elif dtype == "bf16":
            assert raw[name].dtype == np.uint16
            np.testing.assert_array_equal(deq[name], w.astype(ml_dtypes.bfloat16)
                                          .astype(np.float32))
        else:
            assert raw[name].dtype == np.int8
            np.testing.assert_allclose(deq[name], w, rtol=0,
                                       atol=float(np.abs(w).max()) / 127 * 0.51)


def test_layout_aligned_and_contiguous(tmp_path):
    cfg = tiny_cfg(vocab_size=51, d_model=26, **SPARK)    # odd int8 byte counts
    path = tmp_path / "m.spark"
    write_engine_file(path, cfg, random_tensors(cfg), dtype="int8", embed_dtype="bf16")
    n, header = read_header(path)
    assert (8 + n) % 64 == 0
    entries = sorted((v["data_offsets"], v["dtype"]) for k, v in header.items()
                     if k != "__metadata__")
    size = {"F32": 4, "BF16": 2, "I8": 1}
    end = 0
    for (b, e), dt in entries:
        assert b == end and b % size[dt] == 0
        end = e
    assert 8 + n + end == os.path.getsize(path)
    assert header["token_embd"]["dtype"] == "BF16"
    assert header["blk.0.attn_q"]["dtype"] == "I8"
    assert "token_embd.scale" not in header


def test_sources_give_identical_files(tmp_path):
    cfg = tiny_cfg(**SPARK)
    tensors = random_tensors(cfg, seed=3)
    paths = [tmp_path / f"{i}.spark" for i in range(4)]
    write_engine_file(paths[0], cfg, tensors, dtype="int8", tokenizer_proto=b"t")
    write_engine_file(paths[1], cfg, lambda name, shape: tensors[name], dtype="int8",
                      tokenizer_proto=b"t")
    write_engine_file(paths[2], cfg, reversed(list(tensors.items())), dtype="int8",
                      tokenizer_proto=b"t")

    def blocks(name, shape):
        a = tensors[name]
        return RowBlocks(shape, (a[i:i + 3] for i in range(0, shape[0], 3)))
    write_engine_file(paths[3], cfg, blocks, dtype="int8", tokenizer_proto=b"t")
    data = [p.read_bytes() for p in paths]
    assert all(d == data[0] for d in data[1:])


def test_float64_and_bfloat16_inputs_are_accepted(tmp_path):
    cfg = tiny_cfg()
    t = random_tensors(cfg)
    t64 = {k: v.astype(np.float64) for k, v in t.items()}
    t64["token_embd"] = t["token_embd"].astype(ml_dtypes.bfloat16)
    write_engine_file(tmp_path / "a", cfg, t64, dtype="f32")
    _, _, back = read_engine_file(tmp_path / "a")
    np.testing.assert_array_equal(back["blk.1.attn_q"], t["blk.1.attn_q"])
    np.testing.assert_array_equal(back["token_embd"], t["token_embd"].astype(ml_dtypes.bfloat16)
                                  .astype(np.float32))


def test_no_tokenizer(tmp_path):
    cfg = tiny_cfg()
    write_engine_file(tmp_path / "a", cfg, random_tensors(cfg), dtype="bf16")
    with safe_open(str(tmp_path / "a"), framework="numpy") as f:
        assert "tokenizer" not in f.metadata()
    assert read_engine_file(tmp_path / "a")[1] is None


# ------------------------------------------------------------------------------ writer refusals

def bad_cases(cfg):
    t = random_tensors(cfg)
    missing = dict(t)
    del missing["blk.1.ffn_up"]
    extra = {**t, "blk.1.ffn_k1": t["blk.1.ffn_up"]}
    shape = {**t, "blk.0.attn_k": t["blk.0.attn_q"]}
    nan = {**t, "blk.1.attn_v": t["blk.1.attn_v"].copy()}
    nan["blk.1.attn_v"][3, 4] = np.nan
    ints = {**t, "output_norm": np.ones(cfg.d_model, dtype=np.int32)}
    return [(missing, "missing tensor 'blk.1.ffn_up'"),
            (extra, "unexpected tensor 'blk.1.ffn_k1'"),
            (shape, "tensor 'blk.0.attn_k' has shape \\(32, 24\\), expected \\(16, 24\\)"),
            (nan, "tensor 'blk.1.attn_v' has NaN"),
            (ints, "tensor 'output_norm': expected floating-point")]


@pytest.mark.parametrize("case", range(5))
@pytest.mark.parametrize("kind", ["mapping", "callable", "iterator"])
def test_bad_tensors_are_refused_and_leave_nothing(tmp_path, case, kind):
    cfg = tiny_cfg()
    tensors, words = bad_cases(cfg)[case]
    if kind == "callable":
        if "unexpected" in words:
            return                      # a callable cannot hand over an extra name
        source = lambda name, shape: tensors[name]  # noqa: E731
        if "missing" in words:
            words = "blk.1.ffn_up"      # the callable itself fails (KeyError) on that name
    elif kind == "iterator":
        source = iter(list(tensors.items()))
    else:
        source = tensors
    path = tmp_path / "out.spark"
    path.write_bytes(b"previous")
    with pytest.raises((ValueError, KeyError), match=words):
        write_engine_file(path, cfg, source, dtype="int8")
    assert sorted(os.listdir(tmp_path)) == ["out.spark"]        # no temporary left behind
    assert path.read_bytes() == b"previous"                     # old file untouched


def test_source_failing_midway_leaves_nothing(tmp_path):
    cfg = preset("gemma3-270m").replace(n_layers=2, vocab_size=4096)
    calls = []

    def source(name, shape):
        calls.append(name)
        if name == "blk.1.attn_q":
            raise RuntimeError("generator died")
        return np.zeros(shape, np.float32)
    with pytest.raises(RuntimeError, match="generator died"):
        write_engine_file(tmp_path / "m.spark", cfg, source, dtype="bf16")
    assert len(calls) > 10               # it really was midway
    assert os.listdir(tmp_path) == []


def test_bad_row_blocks(tmp_path):
    cfg = tiny_cfg()
    t = random_tensors(cfg)

    def short(name, shape):
        if name == "blk.0.ffn_down":
            return RowBlocks(shape, [t[name][:5]])
        return t[name]
    with pytest.raises(ValueError, match="'blk.0.ffn_down': blocks give 5 rows, expected 24"):
        write_engine_file(tmp_path / "m", cfg, short, dtype="f32")

    def wide(name, shape):
        if name == "blk.0.ffn_down":
            return RowBlocks(shape, [np.zeros((2, shape[1] + 1), np.float32)])
        return t[name]
    with pytest.raises(ValueError, match="'blk.0.ffn_down': block of shape"):
        write_engine_file(tmp_path / "m", cfg, wide, dtype="f32")
    assert os.listdir(tmp_path) == []


def test_bad_arguments(tmp_path):
    cfg = tiny_cfg()
    t = random_tensors(cfg)
    with pytest.raises(ValueError, match="dtype must be one of"):
        write_engine_file(tmp_path / "m", cfg, t, dtype="f16")
    with pytest.raises(ValueError, match="embed_dtype must be one of"):
        write_engine_file(tmp_path / "m", cfg, t, dtype="f32", embed_dtype="q3")
    with pytest.raises(ValueError, match="given twice"):
        write_engine_file(tmp_path / "m", cfg, [("output_norm", t["output_norm"])] * 2)
    assert os.listdir(tmp_path) == []


# ------------------------------------------------------------------------------ reader refusals

def valid_file_dict(cfg, dtype="bf16"):
    """Tensors and metadata of a valid file, built here with the safetensors library."""
    out = {}
    for name, w in random_tensors(cfg).items():
        if w.ndim == 1 or dtype == "f32":
            out[name] = w
        elif dtype == "bf16":
            out[name] = w.astype(ml_dtypes.bfloat16)
        else:
            q, s = quantize_int8(w)
            out[name], out[name + ".scale"] = q, s
    meta = {"format": "spark-infer", "format_version": "1", "config": cfg.to_json()}
    return out, meta


def hostile(cfg):
    ok, meta = valid_file_dict(cfg)
    cases = []

    def case(words, tensors=ok, metadata=meta):
        cases.append((tensors, metadata, words))
    case("not a spark-infer engine file .*'gguf'", metadata={**meta, "format": "gguf"})
    case("format version '2' is not supported", metadata={**meta, "format_version": "2"})
    case("no 'config'", metadata={k: v for k, v in meta.items() if k != "config"})
    case("metadata 'config': .*n_kv_heads", metadata={
        **meta, "config": json.dumps({**cfg.to_dict(), "n_kv_heads": 3})})
    case("'tokenizer' is not base64", metadata={**meta, "tokenizer": "@@@"})
    case("tensor 'blk.1.attn_k_norm' is missing",
         {k: v for k, v in ok.items() if k != "blk.1.attn_k_norm"})
    case("tensor 'blk.0.ffn_up' has shape", {**ok, "blk.0.ffn_up": ok["blk.0.ffn_down"]})
    case("tensor 'blk.0.ffn_norm' must be F32",
         {**ok, "blk.0.ffn_norm": ok["blk.0.ffn_norm"].astype(ml_dtypes.bfloat16)})
    case("tensor 'blk.0.attn_v' has dtype F16",
         {**ok, "blk.0.attn_v": ok["blk.0.attn_v"].astype(np.float16)})
    # Matrices may differ in type (a quantized GGUF's mix), but U8 rows must be q4 or q5 blocks.
    case("tensor 'blk.1.attn_q' is U8 \\(q4 or q5 blocks\\) of shape \\[\\d+, 7\\]",
         {**ok, "blk.1.attn_q": np.zeros((ok["blk.1.attn_q"].shape[0], 7), np.uint8)})
    case("tensor 'blk.1.rogue' is not in the table",
         {**ok, "blk.1.rogue": np.zeros(3, np.float32)})
    i8, _ = valid_file_dict(cfg, "int8")
    case("tensor 'blk.0.attn_q.scale' is missing",
         {k: v for k, v in i8.items() if k != "blk.0.attn_q.scale"})
    case("tensor 'blk.1.ffn_down.scale' must be F32 \\[24\\]",
         {**i8, "blk.1.ffn_down.scale": i8["blk.1.ffn_down.scale"][:-1]})
    return cases


@pytest.mark.parametrize("case", range(13))
def test_reader_refuses_hostile_files(tmp_path, case):
    cfg = tiny_cfg()
    tensors, metadata, words = hostile(cfg)[case]
    path = tmp_path / "bad.spark"
    save_file(tensors, str(path), metadata=metadata)
    with pytest.raises(FormatError, match=words):
        read_engine_file(path)


def test_reader_accepts_a_file_written_by_the_safetensors_library(tmp_path):
    cfg = tiny_cfg(**SPARK)
    for dtype in ("f32", "bf16", "int8"):
        tensors, meta = valid_file_dict(cfg, dtype)
        save_file(tensors, str(tmp_path / dtype), metadata=meta)
        got_cfg, tok, _ = read_engine_file(tmp_path / dtype)
        assert got_cfg == cfg and tok is None


def test_reader_refuses_non_safetensors(tmp_path):
    (tmp_path / "junk").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    with pytest.raises(FormatError, match="not a readable safetensors file"):
        read_engine_file(tmp_path / "junk")
    with pytest.raises(FormatError):
        read_engine_file(tmp_path / "absent")


def test_format_error_is_a_value_error():
    assert issubclass(FormatError, ValueError)


# ------------------------------------------------------------------------------ random models

def load_tool():
    spec = importlib.util.spec_from_file_location(
        "make_random_model", os.path.join(REPO, "tools", "make_random_model.py"))
    mod = importlib.util.module_from_spec(spec)
    sys.modules["make_random_model"] = mod
    spec.loader.exec_module(mod)
    return mod


def test_make_random_model_deterministic_and_scaled(tmp_path):
    tool = load_tool()
    cfg = preset("spark-gemma3-270m").replace(n_layers=2, vocab_size=1000)
    a, b, c = (tmp_path / n for n in "abc")
    assert tool.make_random_model(a, cfg, "bf16", seed=7) == cfg
    tool.make_random_model(b, cfg, "bf16", seed=7)
    tool.make_random_model(c, cfg, "bf16", seed=8)
    assert a.read_bytes() == b.read_bytes() != c.read_bytes()
    _, _, w = read_engine_file(a, dequantize=True)
    assert abs(w["token_embd"].std() * math.sqrt(640) - 1) < 0.02
    assert abs(w["blk.1.ffn_k1"].std() * math.sqrt(320) - 1) < 0.02
    assert abs(w["blk.1.ffn_v"].std() * math.sqrt(640) - 1) < 0.02
    assert abs(w["blk.0.attn_norm"].std() - 0.1) < 0.02
    assert abs(w["blk.0.attn_q"].mean()) < 0.01 * w["blk.0.attn_q"].std()


def test_make_random_model_cli(tmp_path):
    tool = load_tool()
    out = tmp_path / "m.spark"
    assert tool.main(["--preset", "gemma2-2b", "--n-layers", "3", "--vocab-size", "100",
                      "--d-ff", "64", "--dtype", "int8", "--embed-dtype", "f32", "--seed", "1",
                      "-o", str(out)]) == 0
    cfg, _, raw = read_engine_file(out)
    assert (cfg.n_layers, cfg.vocab_size, cfg.d_ff) == (3, 100, 64)
    assert cfg.layer_types == ("local", "global", "local")
    assert (cfg.start_of_turn_id, cfg.end_of_turn_id) == (6, 7)   # 106, 107 mod 100
    assert raw["token_embd"].dtype == np.float32 and raw["blk.2.ffn_up"].dtype == np.int8
    cfg_file = tmp_path / "c.json"
    cfg_file.write_text(tiny_cfg().to_json())
    assert tool.main(["--config", str(cfg_file), "--dtype", "f32", "-o", str(out)]) == 0
    assert read_engine_file(out)[0] == tiny_cfg()


def test_tensor_dtypes_mix_matrix_types(tmp_path):
    """tensor_dtypes gives matrices their own types (a quantized GGUF's mix): each is stored as
    its type (q5: U8 [rows, cols / 32 * 22], q4 U8 [rows, cols / 32 * 20], int8 with its
    scale), read back and counted per type; unknown names and types are refused."""
    cfg = tiny_cfg(vocab_size=40, d_model=64, head_dim=16, d_ff=96)
    tensors = random_tensors(cfg)
    names = [s.name for s in tensor_specs(cfg) if s.is_matrix]
    mix = {n: ("q5", "int8", "q4")[i % 3] for i, n in enumerate(names)}
    path = tmp_path / "m.spark"
    write_engine_file(path, cfg, tensors, dtype="bf16", tensor_dtypes=mix)
    _, header = read_header(path)
    _, _, raw = read_engine_file(path)
    for spec in tensor_specs(cfg):
        if not spec.is_matrix:
            continue
        e, t = header[spec.name], mix[spec.name]
        per_block = {"q4": 20, "q5": 22}.get(t)
        if per_block:
            assert e["dtype"] == "U8" and e["shape"] == [spec.shape[0], spec.shape[1] // 32 * per_block]
        else:
            assert e["dtype"] == "I8" and spec.name + ".scale" in header
        assert raw[spec.name].ndim == (3 if t == "q5" else 2)
    counts = {t: list(mix.values()).count(t) for t in ("q4", "q5", "int8")}
    assert read_engine_header(path)["matrix_types"] == counts
    with pytest.raises(ValueError, match="not a matrix of this config"):
        write_engine_file(path, cfg, tensors, tensor_dtypes={"output_norm": "q4"})
    with pytest.raises(ValueError, match="must be one of"):
        write_engine_file(path, cfg, tensors, tensor_dtypes={names[0]: "q3"})
