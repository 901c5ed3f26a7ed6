"""GGUF tokenizer -> SentencePiece: the ``ModelProto`` that tokenizes exactly like llama.cpp.

GGUF stores the vocabulary as three arrays (``tokenizer.ggml.tokens/scores/token_type``); the
SentencePiece ``ModelProto`` that tokenizes exactly like llama.cpp needs seven settings (see
``docs/`` / the stack notes): BPE model type; identity normalizer with ``add_dummy_prefix=False``,
``remove_extra_whitespaces=False``, ``escape_whitespaces=True``; ``byte_fallback=True``;
``split_digits=True``; USER_DEFINED pieces with spaces re-escaped to ``▁``; ``<unk>`` typed
UNKNOWN; and the special pieces named in the trainer spec. It lives in convert/ (a foreign format
read on the way in); the runtime tokenizer (``spark_infer.tokenizer``) knows nothing of GGUF.
"""

from __future__ import annotations

import os

from ..tokenizer import SPACE, Tokenizer, TokenizerError, _pb2
from .gguf import GGUFFile

__all__ = ["proto_from_gguf_metadata", "proto_from_gguf", "tokenizer_from_gguf"]

# GGUF token types == SentencePiece ModelProto.SentencePiece.Type values
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6


def proto_from_gguf_metadata(meta: dict) -> bytes:
    """Serialized SentencePiece ``ModelProto`` equivalent to a GGUF ``llama``-type (SPM)
    tokenizer, e.g. Gemma 2/3's."""
    model = meta.get("tokenizer.ggml.model")
    if model != "llama":
        raise TokenizerError(f"unsupported GGUF tokenizer model {model!r} (only the SentencePiece "
                             "'llama' tokenizer of Gemma is supported)")
    tokens = meta.get("tokenizer.ggml.tokens")
    scores = meta.get("tokenizer.ggml.scores")
    types = meta.get("tokenizer.ggml.token_type")
    if tokens is None:
        raise TokenizerError("GGUF metadata has no tokenizer.ggml.tokens")
    n = len(tokens)
    if scores is not None and len(scores) != n:
        raise TokenizerError(f"tokenizer.ggml.scores has {len(scores)} entries, tokens has {n}")
    if types is not None and len(types) != n:
        raise TokenizerError(f"tokenizer.ggml.token_type has {len(types)} entries, tokens has {n}")
    scores = [0.0] * n if scores is None else [float(s) for s in scores]
    types = [NORMAL] * n if types is None else [int(t) for t in types]

    def special(key: str, default: int) -> int:
        v = meta.get(f"tokenizer.ggml.{key}")
        return default if v is None else int(v)

    bos, eos = special("bos_token_id", 2), special("eos_token_id", 1)
    unk, pad = special("unknown_token_id", 3), special("padding_token_id", 0)

    pb = _pb2()
    m = pb.ModelProto()
    ts = m.trainer_spec
    ts.model_type = pb.TrainerSpec.BPE                                     # 1
    ts.vocab_size = n
    ts.byte_fallback = True                                                # 3
    ts.split_digits = True                                                 # 4
    ts.unk_id, ts.bos_id, ts.eos_id, ts.pad_id = unk, bos, eos, pad        # 7
    for field, tid in (("unk_piece", unk), ("bos_piece", bos), ("eos_piece", eos),
                       ("pad_piece", pad)):
        if 0 <= tid < n:
            setattr(ts, field, tokens[tid])
    ns = m.normalizer_spec                                                 # 2
    ns.name = "identity"
    ns.add_dummy_prefix = bool(meta.get("tokenizer.ggml.add_space_prefix", False))
    ns.remove_extra_whitespaces = False
    ns.escape_whitespaces = True

    pieces = m.pieces
    for i in range(n):
        p = pieces.add()
        t = types[i]
        s = tokens[i]
        if t == USER_DEFINED:                                              # 5
            s = s.replace(" ", SPACE)
        if i == unk:                                                       # 6
            t = UNKNOWN
        elif t == UNKNOWN:
            t = CONTROL
        p.piece = s
        p.score = scores[i]
        p.type = t
    return m.SerializeToString()


def proto_from_gguf(path: str | os.PathLike) -> bytes:
    """The SentencePiece ``ModelProto`` of a GGUF file's tokenizer (metadata only)."""
    with GGUFFile(path) as f:
        return proto_from_gguf_metadata(f.metadata)


def tokenizer_from_gguf(path: str | os.PathLike) -> Tokenizer:
    """The :class:`~spark_infer.tokenizer.Tokenizer` of a GGUF file."""
    return Tokenizer(proto_from_gguf(path))
