"""Shared by the fuzz targets (atheris, coverage-guided over the Python readers).

The contract each target checks: any bytes end in a typed error the package documents (every
one of them is a ValueError: FormatError, ConversionError, TokenizerError, ContextLengthError)
or in a valid model. Anything else escapes the harness, and atheris records the input as a
crash; so do a crash of the extension, an input slower than -timeout and one that makes the
process grow past -rss_limit_mb (run.sh passes both).
"""

from __future__ import annotations

import os
import sys
import tempfile
from typing import Callable

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(REPO, "tests"))   # synth_checkpoints, tiny_model (seeds)

ALLOWED = (ValueError,)
# What the targets reach, besides spark_infer.convert.* (not serve/ or train/: optional extras).
READER_MODULES = ["spark_infer.config", "spark_infer.fileformat", "spark_infer.limits",
                  "spark_infer.model", "spark_infer.tokenizer", "spark_infer.random_model"]
# One scratch directory per process: inputs go to a file, as the readers take paths. libFuzzer
# ends the process with exit(), past Python's cleanup, so the caller says where (run.sh and the
# test put it in a directory they remove).
_scratch: list[str] = []


def scratch_dir() -> str:
    if not _scratch:
        _scratch.append(tempfile.mkdtemp(prefix="spark-fuzz-",
                                         dir=os.environ.get("SPARK_FUZZ_SCRATCH")))
    return _scratch[0]


def scratch_file(name: str, data: bytes) -> str:
    path = os.path.join(scratch_dir(), name)
    with open(path, "wb") as f:
        f.write(data)
    return path


def fuzz(one_input: Callable[[bytes], None]) -> None:
    """Run atheris over `one_input` with sys.argv's libFuzzer flags (corpus dirs, -runs, ...)."""
    import gc
    import importlib
    import pkgutil
    import types

    import atheris

    # The editable install's import hook hides spark_infer from atheris.instrument_imports(),
    # so load the modules the readers use (some are imported lazily) and instrument the
    # functions in memory that belong to spark_infer or to gguf (whose dequantizers the GGUF
    # reader calls), as atheris.instrument_all() does for all of them (numpy's too: 20+ s).
    import spark_infer.convert

    for name in READER_MODULES:
        importlib.import_module(name)
    for m in pkgutil.iter_modules(spark_infer.convert.__path__, "spark_infer.convert."):
        if not m.name.endswith("__main__"):
            importlib.import_module(m.name)
    import gguf.quants  # noqa: F401
    # The target's own functions too: fuzz_edits.py's choices are its only coverage signal
    # (the C++ engine it drives gives none).
    for obj in gc.get_objects():
        if (isinstance(obj, types.FunctionType) and isinstance(obj.__module__, str)
                and obj.__module__.split(".")[0] in ("spark_infer", "gguf", "__main__")):
            atheris.instrument_func(obj)

    def guarded(data: bytes) -> None:
        try:
            one_input(data)
        except ALLOWED:
            pass

    atheris.Setup(sys.argv, guarded)
    atheris.Fuzz()
