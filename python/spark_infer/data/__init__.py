"""Texts shipped with the package (public domain; see the .SOURCE.md file beside each).

- calibration.txt: about 3,850 Gemma 3 tokens of English (Jane Austen's Northanger Abbey,
  chapter 1, then Ecclesiastes 1-3 in the King James Version), for calibrating sparsity
  settings. It shares no passage with the evaluation texts in the repository's tests/data.

Imports nothing of spark_infer; `convert`, `models` and `train` read these texts through it.
"""

from __future__ import annotations

import pathlib

__all__ = ["calibration_text_path", "calibration_text"]

_DIR = pathlib.Path(__file__).resolve().parent


def calibration_text_path() -> pathlib.Path:
    """The path of the calibration text (UTF-8) installed with the package."""
    return _DIR / "calibration.txt"


def calibration_text() -> str:
    """The calibration text itself."""
    return calibration_text_path().read_text(encoding="utf-8")
