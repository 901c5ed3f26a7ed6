"""One reader, one schema: the Python writer's files read back through the engine's own reader
(`_core.EngineFile`, which `fileformat.read_engine_file` and `read_engine_header` are built on),
for every config kind of test_engine.py and every matrix dtype; and the config validator
(`_core.validate_config`, which `ModelConfig` calls) agreeing with `ModelConfig` on every field:
the same values read, the same defaults, the same refusals.

Expected values are computed here from the format's definition (docs/engine-file.md): bf16 by
ml_dtypes' rounding, int8 from max|w| / 127, q4 by decoding the Q4_1 blocks with numpy."""

from __future__ import annotations

import dataclasses
import json

import ml_dtypes
import numpy as np
import pytest

from spark_infer import _core
from spark_infer.config import FFN_SELECT, ModelConfig
from spark_infer.fileformat import (read_engine_file, read_engine_header, tensor_specs,
                                    write_engine_file)
from spark_infer.weights import quantize_q4, quantize_q5
from test_engine import KINDS

DTYPES = ("f32", "bf16", "int8", "q4", "q5")


def random_weights(cfg: ModelConfig, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {s.name: rng.standard_normal(s.shape).astype(np.float32) for s in tensor_specs(cfg)}


def expected_int8(w: np.ndarray) -> np.ndarray:
    scale = np.abs(w).max(axis=1) / np.float32(127)
    q = np.clip(np.rint(w / np.where(scale > 0, scale, 1)[:, None]), -127, 127)
    return (q * scale[:, None]).astype(np.float32)


def decode_q4(blocks: np.ndarray, cols: int) -> np.ndarray:
    """Q4_1 as docs/engine-file.md spells it: per 20 bytes, f16 d, f16 m, then byte 4 + j holds
    q_j (low nibble) and q_(j+16) (high nibble); w = d q + m."""
    out = np.empty((blocks.shape[0], cols), np.float32)
    for r in range(blocks.shape[0]):
        for b in range(cols // 32):
            blk = blocks[r, 20 * b: 20 * b + 20]
            d = float(np.frombuffer(blk[0:2].tobytes(), "<f2")[0])
            m = float(np.frombuffer(blk[2:4].tobytes(), "<f2")[0])
            q = [int(blk[4 + (i % 16)]) >> (4 * (i // 16)) & 15 for i in range(32)]
            out[r, 32 * b: 32 * b + 32] = np.float32(d) * np.array(q, np.float32) + np.float32(m)
    return out


def decode_q5(blocks: np.ndarray, cols: int) -> np.ndarray:
    """Q5_0 as docs/engine-file.md spells it: per 22 bytes, f16 d, u32 qh, then byte 6 + j
    holds the low 4 bits of q_j (low nibble) and q_(j+16) (high nibble), bit i of qh the fifth
    bit of q_i; w = d (q - 16)."""
    out = np.empty((blocks.shape[0], cols), np.float32)
    for r in range(blocks.shape[0]):
        for b in range(cols // 32):
            blk = blocks[r, 22 * b: 22 * b + 22]
            d = float(np.frombuffer(blk[0:2].tobytes(), "<f2")[0])
            qh = int(np.frombuffer(blk[2:6].tobytes(), "<u4")[0])
            q = [(int(blk[6 + (i % 16)]) >> (4 * (i // 16)) & 15) | ((qh >> i) & 1) << 4
                 for i in range(32)]
            out[r, 32 * b: 32 * b + 32] = np.float32(d) * (np.array(q, np.float32) - 16)
    return out


def writable(cfg: ModelConfig, dtype: str) -> bool:
    # q4 and q5 hold rows of multiples of 32 weights; the writer refuses other shapes.
    return dtype not in ("q4", "q5") or all(s.shape[-1] % 32 == 0 for s in tensor_specs(cfg) if s.is_matrix)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", list(KINDS))
def test_writer_output_round_trips_through_the_engine_reader(tmp_path, kind, dtype):
    cfg = KINDS[kind]
    w = random_weights(cfg)
    path = tmp_path / "m.spark"
    if not writable(cfg, dtype):
        with pytest.raises(ValueError, match=f"{dtype} needs rows of a multiple of 32"):
            write_engine_file(path, cfg, w, dtype=dtype)
        return
    write_engine_file(path, cfg, w, dtype=dtype, tokenizer_proto=b"\x00proto")

    f = _core.EngineFile(str(path))
    assert ModelConfig.from_json(f.metadata["config"]) == cfg
    assert json.loads(f.metadata["config"]) == cfg.to_dict()
    got_cfg, tok, raw = read_engine_file(path)
    assert got_cfg == cfg and tok == b"\x00proto"
    assert read_engine_header(path)["config"] == cfg.to_dict()
    _, _, deq = read_engine_file(path, dequantize=True)
    specs = tensor_specs(cfg)
    assert set(deq) == {s.name for s in specs}
    for spec in specs:
        x = w[spec.name]
        view = raw[spec.name]
        assert not view.flags.writeable     # a view over the engine's map
        if not spec.is_matrix or dtype == "f32":
            want = x
        elif dtype == "bf16":
            want = x.astype(ml_dtypes.bfloat16).astype(np.float32)
            np.testing.assert_array_equal(view, x.astype(ml_dtypes.bfloat16).view(np.uint16))
        elif dtype == "int8":
            want = expected_int8(x)
        elif dtype == "q4":
            np.testing.assert_array_equal(view, quantize_q4(x))
            want = decode_q4(np.asarray(view), spec.shape[1])
        else:   # q5: its blocks apart, [rows, cols / 32, 22]
            assert view.shape == (spec.shape[0], spec.shape[1] // 32, 22)
            stored = np.asarray(view).reshape(spec.shape[0], -1)
            np.testing.assert_array_equal(stored, quantize_q5(x))
            want = decode_q5(stored, spec.shape[1])
        np.testing.assert_allclose(deq[spec.name], want, rtol=1e-6, atol=0, err_msg=spec.name)
    # The engine opens the same file through the same reader.
    assert _core.Engine(str(path), context_length=4).vocab_size == cfg.vocab_size


# Single-field changes of a valid config: ModelConfig (which calls validate_config) and the
# engine's validator must agree on each, accept or refuse.
BASE = KINDS["gemma3"]
CHANGES = [
    ("d_model", 64.0), ("n_heads", True), ("qk_norm", 1), ("sliding_window", 0),
    ("ffn_predictor_dim", 33), ("ffn_predictor_dim", 32), ("query_scale", 1),
    ("arch", "llama"), ("eos_id", 101), ("eos_id", 100), ("layer_types", ["local"] * 2),
    ("ffn_select_by", "abs_gelu"), ("attn_sparse_dim", 4), ("vocab_size", 1 << 25),
    ("rope_base_local", 1), ("ffn_sparse_quantiles", [0.1, 0.2, 0.3]), ("norm_eps", None),
    ("sliding_window", None), ("ffn_sparse_quantiles", [True]), ("n_layers", 2 ** 70),
]


# Fields the engine keeps as float32 (cpp/model/config.h); the rest are exact.
FLOAT32 = ("query_scale", "norm_eps", "attn_softcap", "final_softcap", "ffn_topk_fraction",
           "ffn_sparse_fraction")


def as_engine_reads(cfg: ModelConfig) -> dict:
    d = cfg.to_dict()
    for name in FLOAT32:
        d[name] = float(np.float32(d[name]))
    d["ffn_sparse_quantiles"] = [float(np.float32(q)) for q in d["ffn_sparse_quantiles"]]
    return d


@pytest.mark.parametrize("kind", list(KINDS))
def test_engine_reads_every_field_as_written(kind):
    cfg = KINDS[kind]
    assert _core.validate_config(cfg.to_json()) == as_engine_reads(cfg)


def python_accepts(d: dict) -> bool:
    try:
        ModelConfig.from_dict(d)
    except ValueError:
        return False
    return True


def engine_accepts(d: dict) -> bool:
    try:
        _core.validate_config(json.dumps(d))
    except _core.FormatError:
        return False
    return True


@pytest.mark.parametrize("field, value", CHANGES)
def test_validators_agree_on_each_change(field, value):
    d = {**BASE.to_dict(), field: value}
    assert python_accepts(d) == engine_accepts(d)


@pytest.mark.parametrize("by", [*FFN_SELECT, "sqrt", "ABS_ACT"])
def test_validators_agree_on_the_ffn_selection_names(by):
    # config.py's FFN_SELECT and the engine's kFfnSelectNames: the same names, both ways.
    d = {**KINDS["sparse_ffn"].to_dict(), "ffn_select_by": by}
    assert python_accepts(d) == engine_accepts(d) == (by in FFN_SELECT)


def test_global_only_model_may_have_no_window():
    # docs/engine-file.md: only local layers need sliding_window > 0.
    cfg = BASE.replace(layer_types=("global",) * 3, sliding_window=0)
    assert engine_accepts(cfg.to_dict())
    with pytest.raises(ValueError, match="sliding_window"):
        BASE.replace(sliding_window=0)


@pytest.mark.parametrize("field", [f.name for f in dataclasses.fields(ModelConfig)])
def test_every_field_is_known_to_both_and_required_by_both_or_neither(field):
    d = BASE.to_dict()
    assert engine_accepts(d)
    without = {k: v for k, v in d.items() if k != field}
    assert python_accepts(without) == engine_accepts(without)
    if python_accepts(without):   # a default: the same on both sides
        got = _core.validate_config(json.dumps(without))
        assert got == as_engine_reads(ModelConfig.from_dict(without))


def test_unknown_field_is_refused_by_both():
    d = {**BASE.to_dict(), "colour": "red"}
    with pytest.raises(_core.FormatError, match="unknown config field.*colour"):
        _core.validate_config(json.dumps(d))
    assert not python_accepts(d)

