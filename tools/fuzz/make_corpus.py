#!/usr/bin/env python3
"""Build the fuzz seed corpus: real tiny files of each kind and the hostile files of the tests.

    python tools/fuzz/make_corpus.py OUT      # writes OUT/engine, OUT/edits, OUT/gguf, OUT/hf

engine: random models (tools/make_random_model.py's generator) of every model kind and dtype
  (q4 on a dense one),
  one with a real SentencePiece tokenizer, plus tests/test_engine.py's hostile variants;
edits: random bytes (fuzz_edits.py reads them as choices of edits to valid engine files);
gguf: tests/synth_checkpoints.py GGUFs (quantized types, with and without a tokenizer), plus
  test_convert.py's truncations and test_limits.py's nested arrays;
hf: safetensors shards (F32, BF16, F16) of the checkpoint whose config.json fuzz_hf.py uses,
  plus test_limits.py's hostile headers and entries.
Seeds over 64 KiB are left out: libFuzzer's mutations slow down with the input length.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402,F401  (puts tests/ on the path)

MAX_SEED = 64 << 10


def hf_config() -> dict:
    import synth_checkpoints as sc

    return sc.gemma2_config(vocab_size=128, hidden_size=32, intermediate_size=32,
                            num_hidden_layers=2)


def _save(directory: Path, data: bytes) -> None:
    if len(data) <= MAX_SEED:
        (directory / hashlib.sha1(data).hexdigest()).write_bytes(data)


ENGINE_BASE = dict(arch="gemma3", vocab_size=16, d_model=8, n_layers=3, n_heads=2,
                   n_kv_heads=1, head_dim=4, d_ff=8, query_scale=0.5,
                   layer_types=("local", "global", "local"), sliding_window=3, qk_norm=True,
                   start_of_turn_id=5, end_of_turn_id=6)
ENGINE_KINDS = {
    "gemma3": {}, "gemma2": dict(arch="gemma2", qk_norm=False, attn_softcap=50.0,
                                 final_softcap=30.0),
    "spark": dict(ffn_predictor_dim=4, ffn_topk_fraction=0.25, attn_predictor_dim=2,
                  attn_topk=2),
    "sparse": dict(ffn_sparse_fraction=0.5, ffn_gate_rank=2, ffn_select_weighted=True,
                   attn_sparse_topk=2, attn_sparse_dim=2, attn_sparse_recent=1),
}

ENGINE_Q4 = dict(d_model=32, n_heads=4, head_dim=8, d_ff=32)


def engine_models(tmp: Path) -> list[str]:
    """Valid random engine files of every model kind and dtype, written under `tmp`."""
    from spark_infer.config import ModelConfig
    from spark_infer.random_model import make_random_model

    paths = []
    for kind, over in ENGINE_KINDS.items():
        for dtype in ("f32", "bf16", "int8"):
            path = tmp / f"{kind}-{dtype}.spark"
            make_random_model(path, ModelConfig(**{**ENGINE_BASE, **over}), dtype=dtype, seed=1)
            paths.append(str(path))
    # q4 blocks hold 32 weights along a row: every matrix needs a multiple of 32 columns.
    path = tmp / "gemma3-q4.spark"
    make_random_model(path, ModelConfig(**{**ENGINE_BASE, **ENGINE_Q4}), dtype="q4", seed=1)
    paths.append(str(path))
    return paths


def engine_seeds(out: Path, tmp: Path) -> None:
    import test_engine
    from tiny_model import tiny_config, train_tokenizer

    from spark_infer.random_model import make_random_model

    paths = engine_models(tmp)
    for path in paths:
        _save(out, Path(path).read_bytes())
    cfg = tiny_config(d_model=8, head_dim=4, d_ff=8, n_layers=1, layer_types=("global",))
    make_random_model(tmp / "tok.spark", cfg, dtype="bf16", tokenizer_proto=train_tokenizer())
    _save(out, (tmp / "tok.spark").read_bytes())
    for attack in test_engine.HOSTILE.values():
        attack(paths[0], str(tmp / "bad.spark"))
        _save(out, (tmp / "bad.spark").read_bytes())


def edits_seeds(out: Path, tmp: Path) -> None:
    """fuzz_edits.py reads its input as choices (atheris.FuzzedDataProvider): any bytes do."""
    import random

    rng = random.Random(0)
    for n in (8, 32, 128, 512):
        for _ in range(4):
            _save(out, bytes(rng.randrange(256) for _ in range(n)))


def gguf_seeds(out: Path, tmp: Path) -> None:
    import synth_checkpoints as sc
    import test_limits
    from test_convert import QTYPES, _gguf_fields, _gguf_meta

    for arch, layers, tokenizer, qtypes in (("gemma2", 2, False, QTYPES),
                                            ("gemma3", 1, False, {}),
                                            ("gemma3", 1, True, {"token_embd": "Q8_0"})):
        fields = _gguf_fields(arch, layers)
        path = tmp / "m.gguf"
        sc.write_gguf(path, arch, _gguf_meta(fields, arch), sc.engine_weights(fields),
                      qtypes=qtypes, tokenizer=tokenizer)
        raw = path.read_bytes()
        for data in (raw, raw[:2000], raw[:len(raw) - 100],
                     raw[:24] + (2**40).to_bytes(8, "little") + raw[32:]):
            _save(out, data)
    key = test_limits.gguf_key("k")
    _save(out, test_limits.gguf_bytes(key + test_limits.nested_arrays(3)))
    _save(out, test_limits.gguf_bytes(key + test_limits.nested_arrays(70)))


def hf_seeds(out: Path, tmp: Path) -> None:
    import synth_checkpoints as sc
    import test_limits

    c = hf_config()
    weights = sc.random_weights(sc.gemma_shapes(c, "gemma2"))
    for dtype in ("F32", "BF16", "F16"):
        sc.write_hf_checkpoint(tmp / dtype, c, weights, dtypes={n: dtype for n in weights})
        raw = (tmp / dtype / "model.safetensors").read_bytes()
        _save(out, raw)
        _save(out, raw[:len(raw) - 10])
    for header, _ in test_limits.HEADERS.values():
        _save(out, test_limits.safetensors_bytes(header))
    entry = {"dtype": "F32", "shape": [1], "data_offsets": "ab"}
    _save(out, test_limits.safetensors_bytes(json.dumps({"t": entry}).encode(), b"\0" * 4))


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    root = Path(argv[1])
    with tempfile.TemporaryDirectory() as t:
        for name, build in (("engine", engine_seeds), ("edits", edits_seeds),
                            ("gguf", gguf_seeds), ("hf", hf_seeds)):
            (root / name).mkdir(parents=True, exist_ok=True)
            (Path(t) / name).mkdir()
            build(root / name, Path(t) / name)
            print(f"{name}: {len(os.listdir(root / name))} seeds", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
