"""ModelConfig: presets match the published model shapes, JSON round-trips, bad configs fail."""

from __future__ import annotations

import dataclasses
import json

import pytest

from spark_infer.config import PRESETS, ModelConfig, preset


def tiny(**changes) -> ModelConfig:
    base = dict(arch="gemma2", vocab_size=97, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2,
                head_dim=16, d_ff=96, query_scale=0.25, layer_types=("local", "global"),
                sliding_window=4, start_of_turn_id=3, end_of_turn_id=4)
    base.update(changes)
    return ModelConfig(**base)


def test_gemma2_2b_preset():
    c = preset("gemma2-2b")
    assert (c.arch, c.vocab_size, c.d_model, c.n_layers, c.n_heads, c.n_kv_heads, c.head_dim,
            c.d_ff) == ("gemma2", 256000, 2304, 26, 8, 4, 256, 9216)
    assert c.query_scale == 1 / 16
    assert (c.attn_softcap, c.final_softcap) == (50.0, 30.0)
    assert c.layer_types == tuple("local" if i % 2 == 0 else "global" for i in range(26))
    assert c.sliding_window == 4096
    assert (c.rope_base_global, c.rope_base_local, c.rope_scale_global) == (1e4, 1e4, 1.0)
    assert not c.qk_norm and not c.is_spark_ffn and not c.is_spark_attn
    assert (c.bos_id, c.eos_id, c.pad_id) == (2, 1, 0)
    # Gemma 2's chat markers sit one id later than Gemma 3's.
    assert (c.start_of_turn_id, c.end_of_turn_id) == (106, 107)


def test_spark_2b_preset_is_gemma2_2b_plus_spark():
    c, g = preset("spark-2b"), preset("gemma2-2b")
    assert (c.d_ff, c.ffn_predictor_dim, c.ffn_topk_fraction) == (13824, 1024, 0.08)
    assert (c.attn_predictor_dim, c.attn_topk) == (128, 256)
    assert c.is_spark_ffn and c.is_spark_attn
    same = {f.name for f in dataclasses.fields(ModelConfig)} - {
        "d_ff", "ffn_predictor_dim", "ffn_topk_fraction", "attn_predictor_dim", "attn_topk"}
    assert {n: getattr(c, n) for n in same} == {n: getattr(g, n) for n in same}


@pytest.mark.parametrize("name, d_model, n_layers, d_ff", [
    ("gemma3-270m", 640, 18, 2048), ("gemma3-1b", 1152, 26, 6912)])
def test_gemma3_presets(name, d_model, n_layers, d_ff):
    c = preset(name)
    assert (c.arch, c.vocab_size, c.d_model, c.n_layers, c.n_heads, c.n_kv_heads, c.head_dim,
            c.d_ff) == ("gemma3", 262144, d_model, n_layers, 4, 1, 256, d_ff)
    assert c.query_scale == 1 / 16
    assert (c.attn_softcap, c.final_softcap) == (0.0, 0.0)
    assert c.qk_norm
    assert c.sliding_window == 512
    assert (c.rope_base_global, c.rope_base_local) == (1e6, 1e4)
    globals_ = [i for i, t in enumerate(c.layer_types) if t == "global"]
    assert globals_ == [i for i in range(n_layers) if (i + 1) % 6 == 0]
    assert (c.start_of_turn_id, c.end_of_turn_id) == (105, 106)


def test_spark_gemma3_270m_preset():
    c = preset("spark-gemma3-270m")
    assert (c.d_ff, c.ffn_predictor_dim, c.ffn_topk_fraction) == (3072, 320, 0.08)
    assert (c.attn_predictor_dim, c.attn_topk) == (128, 256)
    assert c.layer_types == preset("gemma3-270m").layer_types


def test_unknown_preset():
    with pytest.raises(ValueError, match="unknown preset"):
        preset("gemma9")


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_json_round_trip(name):
    c = preset(name)
    text = c.to_json()
    d = json.loads(text)
    assert set(d) == {f.name for f in dataclasses.fields(ModelConfig)}
    assert isinstance(d["layer_types"], list)
    back = ModelConfig.from_json(text)
    assert back == c and hash(back) == hash(c)
    assert back.to_json() == text


def test_from_json_accepts_integer_floats_and_missing_defaults():
    d = tiny().to_dict()
    d["query_scale"] = 1
    for name in ("norm_eps", "attn_topk", "bos_id"):
        del d[name]
    c = ModelConfig.from_json(json.dumps(d))
    assert c.query_scale == 1.0 and isinstance(c.query_scale, float)
    assert (c.norm_eps, c.attn_topk, c.bos_id) == (1e-6, 256, 2)


def test_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        tiny().d_model = 1  # type: ignore[misc]


def test_helpers():
    c = tiny(layer_types=("local", "global"), rope_base_local=10.0, rope_base_global=100.0,
             rope_scale_global=8.0)
    assert c.is_local(0) and not c.is_local(1)
    assert (c.rope_base(0), c.rope_base(1)) == (10.0, 100.0)
    assert (c.rope_scale(0), c.rope_scale(1)) == (1.0, 8.0)
    assert tiny(ffn_predictor_dim=32).is_spark_ffn
    assert tiny(attn_predictor_dim=8).is_spark_attn


def test_replace_n_layers_repeats_pattern():
    c = preset("gemma3-270m").replace(n_layers=4)
    assert c.layer_types == ("local",) * 4
    c = preset("gemma2-2b").replace(n_layers=3)
    assert c.layer_types == ("local", "global", "local")


@pytest.mark.parametrize("changes, words", [
    (dict(n_kv_heads=3), "multiple of n_kv_heads"),
    (dict(head_dim=15), "head_dim must be even"),
    (dict(layer_types=("local",)), "layer_types has 1 entries but n_layers is 2"),
    (dict(layer_types=("local", "sliding")), "layer_types\\[1\\]"),
    (dict(ffn_predictor_dim=64), "ffn_predictor_dim"),
    (dict(ffn_predictor_dim=-2), "ffn_predictor_dim"),
    (dict(ffn_predictor_dim=33), "ffn_predictor_dim"),
    (dict(attn_predictor_dim=16), "attn_predictor_dim"),
    (dict(attn_predictor_dim=7), "attn_predictor_dim"),
    (dict(ffn_topk_fraction=0.0), "ffn_topk_fraction"),
    (dict(ffn_topk_fraction=1.0), "ffn_topk_fraction"),
    (dict(attn_topk=0), "attn_topk"),
    (dict(sliding_window=0), "sliding_window"),
    (dict(query_scale=0.0), "query_scale"),
    (dict(norm_eps=float("nan")), "norm_eps"),
    (dict(attn_softcap=-1.0), "attn_softcap"),
    (dict(rope_scale_global=0.0), "rope_scale_global"),
    (dict(rope_base_local=1.0), "rope_base_local must be a finite number > 1"),
    (dict(arch="llama"), "arch"),
    (dict(d_model=0), "d_model"),
    (dict(d_model=64.0), "d_model must be an integer"),
    (dict(n_heads=True), "n_heads must be an integer"),
    (dict(qk_norm=1), "qk_norm"),
    (dict(eos_id=97), "eos_id"),
    (dict(start_of_turn_id=-1), "start_of_turn_id"),
])
def test_validation_errors(changes, words):
    with pytest.raises(ValueError, match=words):
        tiny(**changes)


def test_from_json_errors():
    with pytest.raises(ValueError, match="not valid JSON"):
        ModelConfig.from_json("{")
    with pytest.raises(ValueError, match="JSON object"):
        ModelConfig.from_json("[1]")
    d = tiny().to_dict()
    with pytest.raises(ValueError, match="unknown config field.*colour"):
        ModelConfig.from_json(json.dumps({**d, "colour": "red"}))
    del d["d_model"]
    with pytest.raises(ValueError, match="missing config field.*d_model"):
        ModelConfig.from_json(json.dumps(d))
    with pytest.raises(ValueError, match="layer_types"):
        ModelConfig.from_json(json.dumps({**tiny().to_dict(), "layer_types": "local"}))
