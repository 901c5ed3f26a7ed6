"""Texts shipped with the package (public domain; see the .SOURCE.md file beside each).

- calibration.txt: about 3,850 Gemma 3 tokens of English (Jane Austen's Northanger Abbey,
  chapter 1, then Ecclesiastes 1-3 in the King James Version), for calibrating sparsity
  settings. It shares no passage with the evaluation texts in the repository's tests/data.
- calibration_long.txt: calibration.txt followed by more of the same (about 32,000 tokens in
  all: Austen's Emma, Pride and Prejudice, Sense and Sensibility, Mansfield Park, and KJV
  books), for the down-projection refit of `convert --sparsify ...,refit`.

Imports nothing of spark_infer; `convert`, `models` and `train` read these texts through it.
"""

from __future__ import annotations

import pathlib

__all__ = ["calibration_text_path", "calibration_text", "long_calibration_text_path"]

_DIR = pathlib.Path(__file__).resolve().parent


def calibration_text_path() -> pathlib.Path:
    """The path of the calibration text (UTF-8) installed with the package."""
    return _DIR / "calibration.txt"


def calibration_text() -> str:
    """The calibration text itself."""
    return calibration_text_path().read_text(encoding="utf-8")


def long_calibration_text_path() -> pathlib.Path:
    """The path of the long calibration text (UTF-8): calibration.txt, then about 28,000
    tokens more; its first 2048 Gemma 3 tokens are calibration.txt's."""
    return _DIR / "calibration_long.txt"
