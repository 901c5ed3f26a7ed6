"""Exceptions raised by spark-infer, each a subclass of the built-in a user would catch."""

from __future__ import annotations

from spark_infer.fileformat import FormatError

__all__ = ["FormatError", "ContextLengthError", "ModelBusyError", "ModelClosedError"]


class ContextLengthError(ValueError):
    """A prompt or conversation has more tokens than the model's context holds."""


class ModelBusyError(RuntimeError):
    """A call was made on a Model while another call (from any thread) or an open stream of
    the same Model holds it."""


class ModelClosedError(ValueError):
    """The Model was closed (`close()` or the end of its `with` block); load it again."""
