"""The peer runners: llama.cpp through llama-cpp-python, llama.cpp's own `llama-bench`, and Hugging
Face transformers, all on the Gemma 3 270M GGUF. Each imports its peer lazily, so the package
imports without them; a peer that is not installed is skipped with a note (`_make_peers`)."""

from __future__ import annotations

import argparse
import copy
import inspect
import json
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np

from spark_infer.bench.engine_runner import Sample
from spark_infer.bench.specs import _cache_root
from spark_infer.config import preset


class LlamaCppRunner:
    """llama.cpp through llama-cpp-python, one GGUF file."""

    kind = "llama.cpp"

    def __init__(self, label: str, gguf: Path, gguf_type: str, context: int, chunk: int,
                 threads: int) -> None:
        import llama_cpp

        self.label, self.path, self.dtype = label, gguf, gguf_type
        self._lc = llama_cpp
        t0 = time.perf_counter()
        self.llm = llama_cpp.Llama(model_path=str(gguf), n_ctx=context, n_batch=chunk,
                                   n_ubatch=chunk, n_threads=threads, n_threads_batch=threads,
                                   verbose=False)
        self.llm.eval([0])
        self.load_s = time.perf_counter() - t0
        self.vocab = int(self.llm.n_vocab())
        self.cfg = None

    def info(self) -> dict[str, Any]:
        return {"label": self.label, "kind": self.kind, "source": "real", "path": str(self.path),
                "dtype": self.dtype, "spark": False, "config": None,
                "weight_bytes": int(self.path.stat().st_size), "kv_bytes": None,
                "load_s": self.load_s, "version": getattr(self._lc, "__version__", "?")}

    def set_threads(self, n: int) -> None:
        self._lc.llama_set_n_threads(self.llm.ctx, n, n)

    def _rewind(self, pos: int) -> None:
        # Llama.eval drops the cache from n_tokens on before it appends (as generate() does).
        self.llm.n_tokens = pos

    def prefill(self, tokens: np.ndarray, chunk: int) -> Sample:
        self._rewind(0)
        t0 = time.perf_counter()
        self.llm.eval(tokens.tolist())
        return Sample(len(tokens), time.perf_counter() - t0)

    def extend(self, tokens: np.ndarray, context: int, chunk: int) -> None:
        pos = self.llm.n_tokens
        if pos > context:
            self._rewind(0)
            pos = 0
        if pos < context:
            self.llm.eval(tokens[pos:context].tolist())
        self._context = context

    def decode(self, context: int, steps: np.ndarray) -> Sample:
        seconds = 0.0
        for tok in steps:
            self._rewind(context)
            t0 = time.perf_counter()
            self.llm.eval([int(tok)])
            seconds += time.perf_counter() - t0
        self._rewind(context)
        return Sample(len(steps), seconds)

    def close(self) -> None:
        self.llm.close()


class LlamaBenchRunner:
    """llama.cpp's own `llama-bench` on one GGUF file: each sample is one run (`-r 1`, after its
    warm-up run), timed by llama-bench itself, so process start and model loading are not
    counted; decode at context L fills L tokens first (`-d L`, untimed)."""

    kind = "llama.cpp"

    def __init__(self, label: str, exe: str, gguf: Path, gguf_type: str, chunk: int,
                 threads: int) -> None:
        self.label, self.exe, self.path, self.dtype = label, exe, gguf, gguf_type
        self.chunk, self.threads = chunk, threads
        self.vocab = preset("gemma3-270m").vocab_size  # the only model peers run
        self.cfg = None
        self.load_s = 0.0
        self.build = "?"

    def info(self) -> dict[str, Any]:
        return {"label": self.label, "kind": self.kind, "source": "real", "path": str(self.path),
                "dtype": self.dtype, "spark": False, "config": None,
                "weight_bytes": int(self.path.stat().st_size), "kv_bytes": None,
                "load_s": self.load_s, "version": f"llama-bench {self.build}"}

    def set_threads(self, n: int) -> None:
        self.threads = n

    def _run(self, *args: str) -> float:
        """tok/s of one llama-bench test."""
        cmd = [self.exe, "-m", str(self.path), "-t", str(self.threads), "-b", str(self.chunk),
               "-ub", str(self.chunk), "-r", "1", "-o", "json", *args]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
        if out.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed ({out.returncode}): "
                               f"{out.stderr.strip()[-500:]}")
        try:
            (test,) = json.loads(out.stdout)
            self.build = f"{test.get('build_commit', '?')} ({test.get('build_number', '?')})"
            return float(test["avg_ts"])
        except (ValueError, KeyError, TypeError) as e:
            raise RuntimeError(f"unexpected llama-bench output ({e}): {out.stdout[:300]!r}"
                               ) from None

    def prefill(self, tokens: np.ndarray, chunk: int) -> Sample:
        n = len(tokens)
        return Sample(n, n / self._run("-p", str(n), "-n", "0"))

    def extend(self, tokens: np.ndarray, context: int, chunk: int) -> None:
        pass  # each decode run fills its own context (-d)

    def decode(self, context: int, steps: np.ndarray) -> Sample:
        n = len(steps)
        return Sample(n, n / self._run("-p", "0", "-n", str(n), "-d", str(context)))

    def close(self) -> None:
        pass


class TransformersRunner:
    """Hugging Face transformers (torch CPU) on the same GGUF, bf16."""

    kind = "transformers"

    def __init__(self, label: str, gguf: Path, dtype: str) -> None:
        import torch
        import transformers
        from transformers import AutoModelForCausalLM, GgufConfig

        self.label, self.path, self.dtype = label, gguf, dtype
        self.torch = torch
        t0 = time.perf_counter()
        # dequantize=True: a plain torch model of `dtype` (transformers 5 would otherwise keep
        # the Q4_K blocks and run its own GGUF kernels).
        self.model = AutoModelForCausalLM.from_pretrained(
            str(gguf.parent), gguf_file=gguf.name,
            dtype={"bf16": torch.bfloat16, "f32": torch.float32}[dtype],
            attn_implementation="eager", quantization_config=GgufConfig(dequantize=True))
        self.model.eval()
        self.load_s = time.perf_counter() - t0
        self.vocab = int(self.model.config.vocab_size)
        self.version = f"transformers {transformers.__version__}, torch {torch.__version__}"
        # transformers 5.x renamed `past_key_values` to `cache` (the old name warns).
        params = inspect.signature(self.model.forward).parameters
        self._cache_arg = "cache" if "cache" in params else "past_key_values"
        self.cache: Any = None
        self.snapshot: Any = None
        self.pos = 0
        self.cfg = None

    def info(self) -> dict[str, Any]:
        n = sum(p.numel() * p.element_size() for p in self.model.parameters())
        return {"label": self.label, "kind": self.kind, "source": "real", "path": str(self.path),
                "dtype": self.dtype, "spark": False, "config": None, "weight_bytes": int(n),
                "kv_bytes": None, "load_s": self.load_s, "version": self.version}

    def set_threads(self, n: int) -> None:
        self.torch.set_num_threads(n)

    def _run(self, tokens: np.ndarray, chunk: int) -> None:
        from transformers import DynamicCache

        torch = self.torch
        if self.cache is None:
            self.cache = DynamicCache(config=self.model.config)
        with torch.inference_mode():
            for i in range(0, len(tokens), chunk):
                ids = torch.from_numpy(tokens[i:i + chunk].astype(np.int64))[None, :]
                self.model(input_ids=ids, **{self._cache_arg: self.cache}, use_cache=True,
                           logits_to_keep=1)
        self.pos += len(tokens)

    def prefill(self, tokens: np.ndarray, chunk: int) -> Sample:
        self.cache, self.snapshot, self.pos = None, None, 0
        t0 = time.perf_counter()
        self._run(tokens, chunk)
        return Sample(len(tokens), time.perf_counter() - t0)

    def extend(self, tokens: np.ndarray, context: int, chunk: int) -> None:
        if self.snapshot is not None and self.snapshot[1] <= context:
            self.cache, self.pos = copy.deepcopy(self.snapshot[0]), self.snapshot[1]
        else:
            self.cache, self.pos = None, 0
        if self.pos < context:
            self._run(tokens[self.pos:context], chunk)
        self.snapshot = (copy.deepcopy(self.cache), context)

    def decode(self, context: int, steps: np.ndarray) -> Sample:
        if self.snapshot is None or self.snapshot[1] != context:
            raise RuntimeError(f"{self.label}: no cache at context {context}")
        self.cache, self.pos = copy.deepcopy(self.snapshot[0]), context
        t0 = time.perf_counter()
        for tok in steps:
            self._run(np.array([tok], np.int32), 1)
        return Sample(len(steps), time.perf_counter() - t0)

    def close(self) -> None:
        del self.model


_GGUF_FTYPES = {"Q8_0": "LLAMA_FTYPE_MOSTLY_Q8_0", "BF16": "LLAMA_FTYPE_MOSTLY_BF16",
                "F16": "LLAMA_FTYPE_MOSTLY_F16", "F32": "LLAMA_FTYPE_ALL_F32"}


def _requantize(src: Path, gguf_type: str, root: Path, quantize_exe: str | None = None) -> Path:
    """A `gguf_type` copy of the Q4_K_M GGUF made with llama.cpp's quantizer (cached): the
    `llama-quantize` executable when given, else llama-cpp-python's."""
    out = root / f"gemma3-270m.{gguf_type}.requant.gguf"
    if out.is_file():
        return out
    root.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    if quantize_exe:
        r = subprocess.run([quantize_exe, "--allow-requantize", str(src), str(tmp), gguf_type,
                            "2"], capture_output=True, text=True, timeout=1800)
        if r.returncode != 0:
            raise RuntimeError(f"llama-quantize to {gguf_type} failed: {r.stderr.strip()[-300:]}")
        tmp.replace(out)
        return out
    import ctypes

    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, _GGUF_FTYPES[gguf_type])
    params.allow_requantize = True
    params.nthread = 2
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(tmp).encode(),
                                        ctypes.byref(params))
    if rc != 0:
        raise RuntimeError(f"llama_model_quantize to {gguf_type} failed (rc {rc})")
    tmp.replace(out)
    return out


def _make_peers(args: argparse.Namespace, context: int, notes: list[str], stack: Any
                ) -> list[Any]:
    import importlib.util

    from spark_infer import models

    wanted = list(dict.fromkeys(args.peers or []))
    if not wanted:
        return []
    try:
        src = stack.enter_context(models.gguf_path("gemma3-270m", _cache_root(args)))
    except models.ModelNotAvailable as e:
        notes.append(f"peers skipped: the Gemma 3 270M GGUF is not installed ({e})")
        return []
    peers: list[Any] = []
    threads = max(args.threads)
    for peer in wanted:
        if peer == "llama.cpp":
            if importlib.util.find_spec("llama_cpp") is None:
                notes.append("llama.cpp skipped: llama-cpp-python is not installed "
                             "(pip install llama-cpp-python; it compiles llama.cpp, ~15 min)")
                continue
            for gt in args.gguf_types:
                try:
                    path = src if gt == "Q4_K_M" else _requantize(src, gt, _cache_root(args))
                    if gt != "Q4_K_M":
                        notes.append(f"llama.cpp {gt}: requantized from the Q4_K_M GGUF by "
                                     f"llama.cpp's quantizer (speed, not quality, is "
                                     f"representative)")
                    peers.append(LlamaCppRunner(f"llama.cpp {gt}", path, gt, context,
                                                args.chunk, threads))
                except (RuntimeError, ValueError, OSError, AttributeError) as e:
                    notes.append(f"llama.cpp {gt} skipped: {e}")
        elif peer == "llama-bench":
            exe = args.llama_bench or shutil.which("llama-bench")
            if not exe or not os.access(exe, os.X_OK):
                notes.append("llama-bench skipped: no llama-bench executable on PATH (build it "
                             "from a recent llama.cpp tree, or pass --llama-bench PATH)")
                continue
            quantize = Path(exe).with_name("llama-quantize")
            for gt in args.gguf_types:
                try:
                    path = src if gt == "Q4_K_M" else _requantize(
                        src, gt, _cache_root(args),
                        str(quantize) if os.access(quantize, os.X_OK) else None)
                    peers.append(LlamaBenchRunner(f"llama-bench {gt}", exe, path, gt,
                                                  args.chunk, threads))
                except (RuntimeError, ValueError, OSError, ImportError, AttributeError) as e:
                    notes.append(f"llama-bench {gt} skipped: {e}")
        elif peer == "transformers":
            if (importlib.util.find_spec("transformers") is None
                    or importlib.util.find_spec("torch") is None):
                notes.append("transformers skipped: torch and transformers are not installed")
                continue
            for dt in args.hf_dtypes:
                try:
                    peers.append(TransformersRunner(f"transformers {dt}", src, dt))
                except (RuntimeError, ValueError, OSError, ImportError) as e:
                    notes.append(f"transformers {dt} skipped: {e}")
        else:
            raise ValueError(f"unknown peer {peer!r} (llama.cpp, llama-bench, transformers)")
    return peers
