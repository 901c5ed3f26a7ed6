"""Exceptions raised by spark-infer, each a subclass of the built-in a user would catch."""

from __future__ import annotations

from spark_infer.fileformat import FormatError

__all__ = ["FormatError", "ContextLengthError", "ModelBusyError", "ModelClosedError"]


class ContextLengthError(ValueError):
    """The prompt (plus what is already cached) does not fit in the model's context."""


class ModelBusyError(RuntimeError):
    """A second generation was started while one is still streaming on the same Model."""


class ModelClosedError(ValueError):
    """The Model was closed (`close()` or the end of its `with` block); load it again."""
