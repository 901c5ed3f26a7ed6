"""Gemma tokenizer: a SentencePiece model read from a Hugging Face ``tokenizer.model`` or embedded
(base64) in an engine file. A GGUF's vocabulary is turned into a SentencePiece model by the
converter (``spark_infer.convert.gguf_tokenizer``, which imports this module, never the reverse).

SentencePiece does not parse control tokens written as text (``"<start_of_turn>"`` is split into
characters): build chat prompts from ids.
"""

from __future__ import annotations

import base64
import codecs
import json
import os
import struct
from pathlib import Path
from typing import Iterable, Iterator, Sequence

SPACE = "\u2581"  # ▁


class TokenizerError(ValueError):
    """The tokenizer cannot be built or loaded."""


def _pb2():
    from sentencepiece import sentencepiece_model_pb2

    return sentencepiece_model_pb2


def read_engine_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The ``__metadata__`` of an engine (safetensors) file, read from its header only."""
    with open(path, "rb") as fh:
        head = fh.read(8)
        if len(head) != 8:
            raise TokenizerError(f"{path}: not a safetensors/engine file")
        (n,) = struct.unpack("<Q", head)
        if n > 100 * 2**20:
            raise TokenizerError(f"{path}: implausible safetensors header size {n}")
        raw = fh.read(n)
    if len(raw) != n:
        raise TokenizerError(f"{path}: truncated safetensors header")
    try:
        return dict(json.loads(raw).get("__metadata__") or {})
    except (ValueError, AttributeError) as e:
        raise TokenizerError(f"{path}: corrupt safetensors header: {e}") from e


class StreamDecoder:
    """Turns ids into text incrementally, never splitting a UTF-8 character: byte-fallback
    pieces (``<0xNN>``) are held back until their character is complete.

    ``"".join(d.push(i) for i in ids) + d.flush() == tokenizer.decode(ids)``.
    """

    def __init__(self, tok: "Tokenizer"):
        self._tok = tok
        self._dec = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._first = True

    def push(self, token_id: int) -> str:
        b = self._tok.token_bytes(token_id)
        if not b:
            return ""
        if self._first:
            self._first = False
            if self._tok._strip_leading_space and b.startswith(b" "):
                b = b[1:]
        return self._dec.decode(b)

    def push_many(self, ids: Iterable[int]) -> str:
        return "".join(self.push(i) for i in ids)

    def flush(self) -> str:
        """Emit what is held back (an incomplete character becomes U+FFFD)."""
        return self._dec.decode(b"", final=True)

    @property
    def pending(self) -> bool:
        """Whether bytes of an incomplete character are held back."""
        return bool(self._dec.getstate()[0])


class Tokenizer:
    """A SentencePiece tokenizer plus Gemma's special ids."""

    def __init__(self, proto: bytes):
        import sentencepiece as spm

        self.proto = bytes(proto)
        self.sp = spm.SentencePieceProcessor()
        try:
            self.sp.LoadFromSerializedProto(self.proto)
        except Exception as e:  # sentencepiece raises RuntimeError / OSError
            raise TokenizerError(f"invalid SentencePiece model: {e}") from e
        m = _pb2().ModelProto()
        m.ParseFromString(self.proto)
        ns = m.normalizer_spec
        self._strip_leading_space = bool(ns.add_dummy_prefix or ns.remove_extra_whitespaces)
        self._bytes_cache: dict[int, bytes] = {}
        self._special_table = None
        self.vocab_size = self.sp.get_piece_size()
        self.bos_id = self.sp.bos_id()
        self.eos_id = self.sp.eos_id()
        self.pad_id = self.sp.pad_id()
        self.unk_id = self.sp.unk_id()
        self.start_of_turn_id = self.piece_to_id("<start_of_turn>")
        self.end_of_turn_id = self.piece_to_id("<end_of_turn>")

    # -- constructors ----------------------------------------------------------------------
    @classmethod
    def from_hf_dir(cls, path: str | os.PathLike) -> "Tokenizer":
        p = Path(path) / "tokenizer.model"
        if not p.is_file():
            raise TokenizerError(f"{path}: no tokenizer.model")
        return cls(p.read_bytes())

    @classmethod
    def from_engine_file(cls, path: str | os.PathLike) -> "Tokenizer":
        meta = read_engine_metadata(path)
        b64 = meta.get("tokenizer")
        if not b64:
            raise TokenizerError(f"{path}: the engine file has no embedded tokenizer")
        return cls(base64.b64decode(b64))

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Tokenizer":
        """From an engine file, an HF directory or a ``tokenizer.model`` (a ``.gguf``:
        ``spark_infer.convert.gguf_tokenizer.tokenizer_from_gguf``)."""
        p = Path(path)
        if p.is_dir():
            return cls.from_hf_dir(p)
        with open(p, "rb") as fh:
            magic = fh.read(4)
        if magic == b"GGUF":
            raise TokenizerError(f"{p}: a GGUF file; read its tokenizer with spark_infer.convert."
                                 "gguf_tokenizer.tokenizer_from_gguf (or convert the file)")
        if p.suffix == ".model":
            return cls(p.read_bytes())
        return cls.from_engine_file(p)

    # -- encode / decode -------------------------------------------------------------------
    def encode(self, text: str, add_bos: bool = False, add_eos: bool = False,
               parse_special: bool = False) -> list[int]:
        """Token ids of ``text``.  ``parse_special``: control tokens written in the text
        (``<start_of_turn>``, ``<bos>``, ...) become their ids, like Hugging Face tokenizers and
        llama.cpp's ``parse_special``; by default they are ordinary text."""
        if parse_special:
            ids = []
            for part, special_id in self._split_special(text):
                if special_id is not None:
                    ids.append(special_id)
                elif part:
                    ids.extend(self.sp.encode(part))
        else:
            ids = self.sp.encode(text)
        if add_bos:
            ids = [self.bos_id] + ids
        if add_eos:
            ids = ids + [self.eos_id]
        return ids

    def _specials(self) -> tuple[dict[str, int], list[int], set[str]]:
        if self._special_table is None:
            sp = self.sp
            table = {}
            for i in range(self.vocab_size):
                if sp.is_control(i) or sp.is_unknown(i):
                    p = sp.id_to_piece(i)
                    if p:
                        table.setdefault(p, i)
            lengths = sorted({len(p) for p in table}, reverse=True)
            self._special_table = (table, lengths, {p[0] for p in table})
        return self._special_table

    def _split_special(self, text: str) -> list[tuple[str, int | None]]:
        table, lengths, first = self._specials()
        out: list[tuple[str, int | None]] = []
        start = i = 0
        n = len(text)
        while i < n:
            if text[i] in first:
                for ln in lengths:
                    tid = table.get(text[i:i + ln])
                    if tid is not None:
                        out.append((text[start:i], None))
                        out.append(("", tid))
                        i += ln
                        start = i
                        break
                else:
                    i += 1
            else:
                i += 1
        out.append((text[start:], None))
        return out

    def encode_pieces(self, text: str) -> list[str]:
        return self.sp.encode(text, out_type=str)

    def decode(self, ids: Sequence[int]) -> str:
        self._check_ids(ids)
        return self.sp.decode([int(i) for i in ids])

    def id_to_piece(self, token_id: int) -> str:
        self._check_ids([token_id])
        return self.sp.id_to_piece(int(token_id))

    def piece_to_id(self, piece: str) -> int | None:
        """Id of ``piece`` or None when it is not in the vocabulary."""
        i = self.sp.piece_to_id(piece)
        if i == self.sp.unk_id() and piece != self.sp.id_to_piece(i):
            return None
        return i

    def is_control(self, token_id: int) -> bool:
        return self.sp.is_control(int(token_id))

    def token_bytes(self, token_id: int) -> bytes:
        """The bytes a token contributes to decoded text (control tokens: empty)."""
        token_id = int(token_id)
        b = self._bytes_cache.get(token_id)
        if b is None:
            self._check_ids([token_id])
            sp = self.sp
            if sp.is_control(token_id):
                b = b""
            elif sp.is_byte(token_id):
                b = bytes([int(sp.id_to_piece(token_id)[3:5], 16)])
            elif sp.is_unknown(token_id):
                b = " \u2047 ".encode()
            else:
                b = sp.id_to_piece(token_id).replace(SPACE, " ").encode("utf-8",
                                                                         "surrogateescape")
            self._bytes_cache[token_id] = b
        return b

    def stream(self) -> StreamDecoder:
        """A fresh incremental detokenizer."""
        return StreamDecoder(self)

    def iter_text(self, ids: Iterable[int]) -> Iterator[str]:
        """Yield decoded text pieces as ids arrive (complete characters only)."""
        d = self.stream()
        for i in ids:
            s = d.push(i)
            if s:
                yield s
        s = d.flush()
        if s:
            yield s

    def _check_ids(self, ids: Iterable[int]) -> None:
        n = self.vocab_size
        for i in ids:
            if not 0 <= int(i) < n:
                raise ValueError(f"token id {int(i)} out of range [0, {n})")

    def __len__(self) -> int:
        return self.vocab_size

    def __repr__(self) -> str:
        return (f"Tokenizer(vocab_size={self.vocab_size}, bos={self.bos_id}, eos={self.eos_id}, "
                f"start_of_turn={self.start_of_turn_id}, end_of_turn={self.end_of_turn_id})")
