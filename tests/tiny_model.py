"""A tiny random model with a real (tiny) SentencePiece tokenizer, for API and CLI tests.

The tokenizer is trained at test time on the committed public-domain text (BPE, byte
fallback, Gemma's special ids and turn markers), so text round-trips and chat templates work
without the real model.
"""

from __future__ import annotations

import io
import os

import sentencepiece as spm

from spark_infer.config import ModelConfig
from spark_infer.random_model import make_random_model

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")
TEXT = os.path.join(DATA, "kjv_ruth_1_2.txt")
VOCAB = 400


def train_tokenizer() -> bytes:
    out = io.BytesIO()
    spm.SentencePieceTrainer.train(
        input=TEXT, model_writer=out, vocab_size=VOCAB, model_type="bpe", pad_id=0, eos_id=1,
        bos_id=2, unk_id=3, pad_piece="<pad>", eos_piece="<eos>", bos_piece="<bos>",
        unk_piece="<unk>", control_symbols=["<start_of_turn>", "<end_of_turn>"],
        byte_fallback=True, add_dummy_prefix=False, remove_extra_whitespaces=False,
        normalization_rule_name="identity", minloglevel=2, num_threads=1)
    return out.getvalue()


def tiny_config(**overrides) -> ModelConfig:
    base = dict(arch="gemma3", vocab_size=VOCAB, d_model=64, n_layers=2, n_heads=2, n_kv_heads=1,
                head_dim=32, d_ff=128, query_scale=32 ** -0.5, layer_types=("local", "global"),
                sliding_window=16, qk_norm=True, rope_base_global=1e6, rope_base_local=1e4,
                bos_id=2, eos_id=1, pad_id=0, start_of_turn_id=4, end_of_turn_id=5)
    base.update(overrides)
    return ModelConfig(**base)


def write_tiny_model(path: str, dtype: str = "f32", seed: int = 0, **overrides) -> ModelConfig:
    cfg = tiny_config(**overrides)
    make_random_model(path, cfg, dtype=dtype, seed=seed, tokenizer_proto=train_tokenizer())
    return cfg
