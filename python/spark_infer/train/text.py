"""Training text and its tokenizer (torch-free).

Corpora, all public domain:
- ``"kjv"``: the King James Version (1611), the whole Bible (~4.4 MB), from the Debian package
  ``bible-kjv-text`` read by its ``bible`` program (package ``bible-kjv``); verse references
  stripped, one verse per line. Needs ``apt-get install bible-kjv``.
- ``"calibration"``: the 16 KB text shipped in ``spark_infer/data`` (Austen and Ecclesiastes;
  see its SOURCE.md), enough for tests.
- any other value: the path of a UTF-8 text file.

The tokenizer is a small SentencePiece BPE trained on the text, with Gemma's special ids
(pad 0, eos 1, bos 2, unk 3, <start_of_turn> 4, <end_of_turn> 5) and byte fallback, so the
engine's chat template and detokenizer work on it unchanged.
"""

from __future__ import annotations

import io
import os
import re
import shutil
import subprocess
from dataclasses import dataclass

import numpy as np

__all__ = ["Corpus", "load_text", "train_sentencepiece", "split_tokens", "KJV_RANGE"]

KJV_RANGE = "Gen1:1-Rev22:21"
_VERSE_REF = re.compile(r"^\S+?\d+:\d+ ")


@dataclass(frozen=True)
class Corpus:
    text: str
    name: str            # what the report calls it, e.g. "kjv (Debian bible-kjv-text, ...)"


def _kjv() -> Corpus:
    exe = shutil.which("bible")
    if exe is None:
        raise FileNotFoundError("the 'kjv' corpus needs the Debian packages bible-kjv and "
                                "bible-kjv-text: apt-get install bible-kjv")
    out = subprocess.run([exe, "-f", KJV_RANGE], check=True, capture_output=True, text=True,
                         env={**os.environ, "LC_ALL": "C"}).stdout
    lines = [_VERSE_REF.sub("", line).strip() for line in out.splitlines()]
    text = "\n".join(line for line in lines if line) + "\n"
    return Corpus(text, f"kjv: King James Bible, Debian bible-kjv-text ('bible -f {KJV_RANGE}', "
                        f"verse references stripped), {len(text):,} bytes")


def load_text(data: str) -> Corpus:
    """The corpus named `data` ("kjv", "calibration") or the text file at that path."""
    if data == "kjv":
        return _kjv()
    if data == "calibration":
        from ..data import calibration_text
        text = calibration_text()
        return Corpus(text, f"calibration: spark_infer/data/calibration.txt, {len(text):,} bytes")
    if not os.path.isfile(data):
        raise FileNotFoundError(f"data must be 'kjv', 'calibration' or a text file; "
                                f"{data!r} is none of them")
    with open(data, encoding="utf-8") as f:
        text = f.read()
    return Corpus(text, f"file: {os.path.basename(data)}, {len(text):,} bytes")


def train_sentencepiece(text: str, vocab_size: int, input_sentence_size: int = 200_000
                        ) -> bytes:
    """A serialized SentencePiece BPE model trained on `text` (one sentence per line), with
    Gemma's special ids and turn markers and byte fallback."""
    import sentencepiece as spm

    if vocab_size < 300:
        # 256 byte pieces + 6 specials + a few merges: smaller cannot hold byte fallback.
        raise ValueError(f"vocab_size must be at least 300 (byte fallback), got {vocab_size}")
    out = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(text.splitlines()), model_writer=out, vocab_size=vocab_size,
        model_type="bpe", pad_id=0, eos_id=1, bos_id=2, unk_id=3, pad_piece="<pad>",
        eos_piece="<eos>", bos_piece="<bos>", unk_piece="<unk>",
        control_symbols=["<start_of_turn>", "<end_of_turn>"], byte_fallback=True,
        add_dummy_prefix=False, remove_extra_whitespaces=False,
        normalization_rule_name="identity", input_sentence_size=input_sentence_size,
        shuffle_input_sentence=True, minloglevel=2, num_threads=1)
    return out.getvalue()


def split_tokens(ids: np.ndarray, seq_len: int, val_every: int = 20
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Cut the token stream into windows of seq_len + 1 (input + next-token target); every
    `val_every`-th window is held out for validation. Returns (train [N, L+1], val [M, L+1])."""
    n = (len(ids) - 1) // seq_len
    if n < 2 * val_every and n < 4:
        raise ValueError(f"the text has {len(ids)} tokens: too few for windows of {seq_len}")
    windows = np.stack([ids[i * seq_len:i * seq_len + seq_len + 1] for i in range(n)])
    is_val = np.zeros(n, dtype=bool)
    is_val[val_every - 1::val_every] = True
    if not is_val.any():
        is_val[-1] = True
    return windows[~is_val], windows[is_val]
