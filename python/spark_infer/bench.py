"""spark-infer bench: CPU wall time of prefill and decode, dense against Spark, ours against peers.

What is measured:
- prefill: `--prefill-tokens` P tokens from position 0 in chunks of `--chunk` (64) tokens;
  tok/s = P / wall time of the one `Engine.prefill` call.
- decode at context L (each of `--context`, default 256 1024 4096): the first L tokens are
  prefilled once (contexts ascending, each extending the last, so 4096 costs one 4096-token
  prefill in all), then one sample is `--steps` decode calls, the engine rewound to L after each
  (`Engine.rewind(L)`), so every step runs at context L; tok/s = steps / their summed wall time.
- Each point is `--warmup` discarded samples, then `--repeats` kept ones; the table shows the
  median and the min-max of tok/s. All models of a run take turns sample by sample (A, B, A, B,
  ...), so a ratio (`--vs A B`: the median of the per-sample ratios tok/s(A) / tok/s(B)) holds
  when the machine's speed drifts.
- Bytes touched per decode token (for the effective GB/s = bytes / seconds per token):
  weights: every matrix of the file (the tied embedding is the LM head, read whole), except the
  Spark FFN's K2 and V and the sparsified FFN's kept rows (up and down_t, and gate with a
  low-rank predictor; abs_act reads up whole), of which only the active rows count (the measured
  active fraction per layer; predictors are read whole); int8 row scales count like their rows.
  KV (e = 2 bytes for the default bf16 cache, 4 with `--kv-dtype f32`): dense: n_kv_heads x
  visible x 2 x head_dim x e per layer, visible = L + 1 (min(L + 1, sliding_window) on local
  layers). Spark: the predictor scan n_kv_heads x visible x r_a x e, plus the gathered rows
  (head_dim - r_a keys + head_dim values) x e of
  min(visible, group x attended) tokens per KV head, attended = the engine's mean attended
  tokens per query head (an upper bound of the unique rows: the heads of a group select
  independently). Sparsified attention: the scan n_kv_heads x visible x attn_sparse_dim x e,
  plus (2 head_dim - attn_sparse_dim) x e per attended token (shared by the group). The
  machine's read bandwidth (`_core.read_bandwidth`, STREAM-like, a buffer
  of `--bandwidth-bytes`) is measured in the same run: once per thread count at the start, and
  once after every round of decode samples, so a point is compared with the bandwidth the
  machine had while it was measured (other processes on a shared machine move both).
- FLOPs per prefill token (an FMA counts as 2): matrices as for the bytes (Spark FFN at its
  active fraction), attention scores and weighted sums over the visible (dense) or scanned and
  attended (Spark) tokens, and the LM head once per call.

Token streams (fixed by `--seed`, so a run can be replayed): `bench_tokens(seed, vocab, n,
stream)`; stream 0 gives the context (its first P tokens are also the prefill sample), stream 1
the tokens fed to decode, step i of every sample getting token i.

Models: an engine file path; a config JSON path (random weights); a preset name (`gemma2-2b`,
`spark-2b`, `gemma3-270m`, `gemma3-1b`, `spark-gemma3-270m`: random weights, except
`gemma3-270m`, which is the real Gemma 3 270M when its package is installed; `random:NAME` forces
random weights). Random files are written once into `<cache>/bench/` keyed by shape, dtype, seed
and file-format version. `NAME@int8` overrides `--dtype` for one model; `NAME@bf16/int8` also
sets its embedding / LM-head dtype (default: the same as the matrices').
Peers (`--peers llama.cpp llama-bench transformers`), on the same Gemma 3 270M GGUF, when
installed: llama.cpp through llama-cpp-python (GGUF types `--gguf-types`, default Q4_K_M; Q8_0 and
BF16 are requantized from the Q4_K_M file with llama.cpp's own quantizer); llama.cpp's own
`llama-bench` (`--llama-bench PATH`, default the one on PATH: build it from a recent llama.cpp
tree, outside this repository), one llama-bench run per sample, its own timing (prefill: `-p N
-n 0`; decode at context L: `-d L -n steps`); and Hugging Face transformers
(torch CPU, bf16, eager attention, chunks of `--chunk`). A peer that is not installed is
skipped with a note. Peers' decode samples run `--steps` consecutive tokens from context L (no
rewind: transformers' sliding-window cache cannot be cut back), restored to L between samples.

JSON (`--json PATH`), schema "spark-infer-bench/1":
  schema, command (argv), commit, date (UTC ISO 8601), elapsed_s
  machine: cpu (model name), physical_cores, logical_cpus, highway_target, simd (avx512f | avx2
    | ...), python, platform, loadavg / loadavg_end (1, 5, 15 min, at start / end: other
    processes on the machine)
  settings: threads [..], contexts [..], prefill_tokens, chunk, steps, repeats, warmup, seed
  bandwidth_gbs: {threads (str): GB/s (1e9 B/s) read bandwidth, median of every probe}
  bandwidth_samples: {threads (str): [GB/s of each probe (median of 3 passes), in run order]}
  models: [{label, kind ("engine" | "llama.cpp" | "transformers"), source ("file" | "random" |
    "real"), path, dtype, spark (bool), config (the ModelConfig dict, engine only),
    weight_bytes, kv_bytes (cache allocated), load_s (open + first call, cold)}]
  results: [{model (label), mode ("prefill" | "decode"), threads, context (decode: L;
    prefill: P), tokens (per sample), tok_s {median, min, max, samples [..]},
    ms_per_token (median), breakdown_ms_per_token {embed, attention, ffn, logits, other}
    (medians over samples; engine only; attention includes the Q/K/V/O projections),
    ffn_active_fraction [per layer] and attn_mean_tokens [per layer] (engine counters, mean
    over the timed calls; prefill: over the P tokens), ffn_active_mean, attn_tokens_mean,
    bytes_per_token {weights, kv, total, by_component {attention, ffn, logits}} (decode),
    effective_gbs {median, min, max} (decode),
    bandwidth_gbs (median of the probes taken between this point's samples; decode),
    bandwidth_fraction (median over samples of effective GB/s / the probe right after it;
    decode),
    gflop_per_token and gflops (prefill, engine only)}]
  ratios: [{a, b, mode, threads, context, median, min, max, samples [..]}]: tok/s(a) / tok/s(b)
  notes: [str]: skipped peers, fallbacks
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import datetime
import inspect
import json
import logging
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from spark_infer.config import PRESETS, ModelConfig, preset

__all__ = ["add_arguments", "run", "main", "build_parser", "bench_tokens", "decode_bytes_per_token",
           "prefill_flops_per_token", "tensor_bytes", "machine_info", "SCHEMA"]

SCHEMA = "spark-infer-bench/1"
COMPONENTS = ("embed", "attention", "ffn", "logits", "other")
DEFAULT_CONTEXTS = (256, 1024, 4096)
_F32 = 4  # KV cache element size: the engine keeps K and V in float32
# Pause between samples of different runner kinds: OpenMP runtimes of other libraries (torch,
# ggml) keep their worker threads spinning for a moment after a call; 20 ms lets them sleep.
_SWITCH_PAUSE_S = 0.02

log = logging.getLogger("spark_infer.bench")


# ------------------------------------------------------------------------------ tokens, files

def bench_tokens(seed: int, vocab: int, n: int, stream: int = 0) -> np.ndarray:
    """int32 [n] uniform token ids in [0, vocab), a function of (seed, stream) only."""
    rng = np.random.default_rng([seed, stream])
    return rng.integers(0, vocab, size=n, dtype=np.int32)


def tensor_bytes(path: str | os.PathLike[str]) -> dict[str, int]:
    """Bytes of every tensor of a safetensors (engine) file, read from its header only."""
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(n))
    out: dict[str, int] = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        begin, end = entry["data_offsets"]
        out[name] = int(end) - int(begin)
    return out


def _engine_config(path: str | os.PathLike[str]) -> ModelConfig:
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(n))
    return ModelConfig.from_json(header["__metadata__"]["config"])


def _with_scale(tb: dict[str, int], name: str) -> int:
    return tb.get(name, 0) + tb.get(name + ".scale", 0)


def _visible(cfg: ModelConfig, layer: int, pos: int) -> int:
    """Keys a query at position `pos` sees in `layer` (itself included)."""
    n = pos + 1
    return min(n, cfg.sliding_window) if cfg.is_local(layer) else n


def decode_bytes_per_token(cfg: ModelConfig, tb: dict[str, int], context: int,
                           ffn_active: Sequence[float], attn_tokens: Sequence[float],
                           kv_dtype: str = "bf16") -> dict[str, float]:
    """Weight and KV bytes one decode step at context `context` touches (module docstring;
    `kv_dtype`: the cache's element type, "bf16" or "f32"),
    with the split by the engine's time components (attention: its norms, Q/K/V/O and the KV
    cache; ffn: its norms and matrices; logits: the tied embedding read as the LM head)."""
    logits = float(_with_scale(tb, "token_embd") + tb.get("output_norm", 0))
    weights = logits
    ffn_bytes = 0.0
    kv = 0.0
    hd, ra, n_kv = cfg.head_dim, cfg.attn_predictor_dim, cfg.n_kv_heads
    group = cfg.n_heads // cfg.n_kv_heads
    esize = {"bf16": 2, "f32": _F32}[kv_dtype]
    for layer in range(cfg.n_layers):
        p = f"blk.{layer}."
        for name in ("attn_norm", "attn_post_norm", "attn_q_norm", "attn_k_norm"):
            weights += tb.get(p + name, 0)
        for name in ("attn_q", "attn_k", "attn_v", "attn_output"):
            weights += _with_scale(tb, p + name)
        f = float(tb.get(p + "ffn_norm", 0) + tb.get(p + "ffn_post_norm", 0))
        if cfg.is_spark_ffn:
            f += _with_scale(tb, p + "ffn_k1")
            f += float(ffn_active[layer]) * (_with_scale(tb, p + "ffn_k2")
                                             + _with_scale(tb, p + "ffn_v"))
        elif cfg.is_sparse_ffn:
            # Read whole: the predictor (or the gate), and the up rows when abs_act ranks by
            # the whole product; only the kept rows of the rest.
            whole = ["ffn_gate_a", "ffn_gate_b", "ffn_select"]
            kept = ["ffn_down_t"]
            (kept if cfg.ffn_gate_rank else whole).append("ffn_gate")
            (whole if cfg.ffn_select_by == "abs_act" else kept).append("ffn_up")
            f += sum(_with_scale(tb, p + name) for name in whole)
            f += float(ffn_active[layer]) * sum(_with_scale(tb, p + name) for name in kept)
        else:
            for name in ("ffn_gate", "ffn_up", "ffn_down"):
                f += _with_scale(tb, p + name)
        weights += f
        ffn_bytes += f
        n = _visible(cfg, layer, context)
        if cfg.is_spark_attn:
            rows = min(float(n), group * float(attn_tokens[layer]))
            kv += n_kv * (n * ra + rows * (2 * hd - ra)) * esize
        elif cfg.is_sparse_attn:
            # The predictor scan over the candidates, then the kept rows, shared by the group.
            r_s = cfg.attn_sparse_dim
            rows = min(float(n), float(attn_tokens[layer]))
            kv += n_kv * (n * r_s + rows * (2 * hd - r_s)) * esize
            weights += tb.get(p + "attn_rot", 0)
        else:
            kv += n_kv * n * 2 * hd * esize
    return {"weights": weights, "kv": kv, "total": weights + kv,
            "by_component": {"attention": weights - logits - ffn_bytes + kv, "ffn": ffn_bytes,
                             "logits": logits}}


def prefill_flops_per_token(cfg: ModelConfig, prompt_tokens: int, ffn_active: Sequence[float],
                            attn_tokens: Sequence[float]) -> float:
    """FLOPs (FMA = 2) per token of a prefill of `prompt_tokens` from position 0."""
    d, hd, ra = cfg.d_model, cfg.head_dim, cfg.attn_predictor_dim
    macs = 0.0
    for layer in range(cfg.n_layers):
        macs += d * hd * (2 * cfg.n_heads + 2 * cfg.n_kv_heads)           # q, o; k, v
        if cfg.is_spark_ffn:
            r = cfg.ffn_predictor_dim
            macs += cfg.d_ff * r + float(ffn_active[layer]) * cfg.d_ff * ((d - r) + d)
        else:
            macs += 3 * cfg.d_ff * d
        mean_visible = sum(_visible(cfg, layer, t) for t in range(prompt_tokens)) / prompt_tokens
        if cfg.is_spark_attn:
            macs += cfg.n_heads * (mean_visible * ra + float(attn_tokens[layer]) * (2 * hd - ra))
        else:
            macs += cfg.n_heads * mean_visible * 2 * hd
    macs += cfg.vocab_size * d / prompt_tokens                             # LM head, last token
    return 2.0 * macs


# ------------------------------------------------------------------------------ machine

def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _simd_flags() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    for name in ("avx512f", "avx2", "sse4_2"):
                        if name in flags:
                            return name
                    return "none"
    except OSError:
        pass
    return "unknown"


def machine_info() -> dict[str, Any]:
    from spark_infer import _core

    try:
        load = list(os.getloadavg())
    except OSError:
        load = None
    return {"cpu": _cpu_model(), "physical_cores": int(_core.physical_cores()),
            "loadavg": load,
            "logical_cpus": os.cpu_count(), "highway_target": _core.current_target(),
            "simd": _simd_flags(), "python": platform.python_version(),
            "platform": platform.platform()}


def _commit() -> str:
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "-C", str(here), "describe", "--always", "--dirty",
                              "--abbrev=12"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 and out.stdout.strip() else "unknown"


# ------------------------------------------------------------------------------ samples, runners

@dataclasses.dataclass
class Sample:
    """One timed sample: `tokens` tokens in `seconds`, with engine counters when known."""

    tokens: int
    seconds: float
    times: dict[str, float] | None = None        # seconds per component, summed over calls
    ffn_active: list[float] | None = None        # per layer, mean over calls
    attn_tokens: list[float] | None = None       # per layer, mean over calls

    @property
    def tok_s(self) -> float:
        return self.tokens / self.seconds


class EngineRunner:
    """spark_infer._core.Engine over one engine file."""

    kind = "engine"

    def __init__(self, label: str, path: Path, source: str, context: int, chunk: int,
                 kv_dtype: str = "bf16") -> None:
        from spark_infer import _core

        self.label, self.path, self.source, self.kv_dtype = label, path, source, kv_dtype
        self.cfg = _engine_config(path)
        self.tb = tensor_bytes(path)
        t0 = time.perf_counter()
        self.engine = _core.Engine(str(path), context, max_chunk=chunk, kv_dtype=kv_dtype)
        self.engine.decode(0)          # first call: page-faults the mapping (cold load)
        self.load_s = time.perf_counter() - t0
        self.engine.reset()
        self.dtype = self.engine.weight_type
        self.vocab = self.cfg.vocab_size

    def info(self) -> dict[str, Any]:
        return {"label": self.label, "kind": self.kind, "source": self.source,
                "path": str(self.path), "dtype": self.dtype,
                "spark": self.cfg.is_spark_ffn or self.cfg.is_spark_attn,
                "config": self.cfg.to_dict(), "weight_bytes": int(self.engine.weight_bytes),
                "kv_bytes": int(self.engine.kv_bytes), "kv_dtype": self.kv_dtype,
                "load_s": self.load_s}

    def set_threads(self, n: int) -> None:
        self.engine.threads = n

    def _counters(self) -> tuple[dict[str, float], np.ndarray, np.ndarray]:
        s = self.engine.stats()
        return (dict(self.engine.times()), np.asarray(s["ffn_active_fraction"], np.float64),
                np.asarray(s["attn_mean_tokens"], np.float64))

    def prefill(self, tokens: np.ndarray, chunk: int) -> Sample:
        self.engine.reset()
        t0 = time.perf_counter()
        self.engine.prefill(tokens, chunk=chunk)
        dt = time.perf_counter() - t0
        times, ffn, att = self._counters()
        return Sample(len(tokens), dt, times, ffn.tolist(), att.tolist())

    def extend(self, tokens: np.ndarray, context: int, chunk: int) -> None:
        """Make the cache hold tokens[:context] (prefilling only what is missing)."""
        pos = self.engine.pos
        if pos > context:
            self.engine.reset()
            pos = 0
        if pos < context:
            self.engine.prefill(tokens[pos:context], chunk=chunk)

    def decode(self, context: int, steps: np.ndarray) -> Sample:
        e = self.engine
        seconds = 0.0
        times = dict.fromkeys(COMPONENTS, 0.0)
        ffn = np.zeros(self.cfg.n_layers)
        att = np.zeros(self.cfg.n_layers)
        for tok in steps:
            if e.pos != context:
                raise RuntimeError(f"{self.label}: cache at {e.pos}, expected {context}")
            t0 = time.perf_counter()
            e.decode(int(tok))
            seconds += time.perf_counter() - t0
            t, f, a = self._counters()
            for k in COMPONENTS:
                times[k] += t[k]
            ffn += f
            att += a
            e.rewind(context)
        n = len(steps)
        return Sample(n, seconds, times, (ffn / n).tolist(), (att / n).tolist())

    def close(self) -> None:
        del self.engine


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


# ------------------------------------------------------------------------------ model specs

def _cache_root(args: argparse.Namespace) -> Path:
    if args.cache_dir:
        return Path(args.cache_dir)
    from spark_infer.models import cache_dir

    return cache_dir() / "bench"


def _random_model_file(cfg: ModelConfig, name: str, dtype: str, seed: int, root: Path) -> Path:
    """The cached random-weight engine file of (config, dtype, seed), written on first use;
    dtype "D/E" gives the embedding dtype E."""
    import hashlib

    from spark_infer.fileformat import FORMAT_VERSION
    from spark_infer.random_model import make_random_model

    dtype, _, embed_dtype = dtype.partition("/")
    digest = hashlib.sha256(cfg.to_json().encode()).hexdigest()[:10]
    setting = f"{dtype}-embed_{embed_dtype}" if embed_dtype else dtype
    path = root / f"{name}.{digest}.{setting}.seed{seed}.v{FORMAT_VERSION}.spark"
    if not path.is_file():
        root.mkdir(parents=True, exist_ok=True)
        log.info("writing random %s (%s) to %s ...", name, dtype, path)
        t0 = time.perf_counter()
        make_random_model(path, cfg, dtype=dtype, seed=seed, embed_dtype=embed_dtype or None)
        log.info("  written in %.1f s", time.perf_counter() - t0)
    return path


def resolve_spec(spec: str, dtype: str, args: argparse.Namespace, notes: list[str]
                 ) -> tuple[str, Path, str]:
    """(label, engine file, source) of one model argument (module docstring, "Models")."""
    from spark_infer import models

    if "@" in spec and not os.path.exists(spec):
        spec, dtype = spec.rsplit("@", 1)
    force_random = spec.startswith("random:")
    name = spec[len("random:"):] if force_random else spec
    if os.path.exists(name) and not force_random:
        p = Path(name)
        if p.suffix == ".json":
            cfg = ModelConfig.from_json(p.read_text())
            return (f"{p.stem} {dtype}", _random_model_file(cfg, p.stem, dtype, args.seed,
                                                            _cache_root(args)), "random")
        return p.name, p, "file"
    if name in models.MODELS and not force_random:
        try:
            matrices, _, embed = dtype.partition("/")
            return (f"{name} {dtype}", models.resolve_model(name, matrices,
                                                            embed_dtype=embed or None), "real")
        except models.ModelNotAvailable as e:
            notes.append(f"{name}: the real model is not installed ({e}); using random weights")
    if name not in PRESETS:
        raise ValueError(f"model {spec!r} is neither a file nor one of: {', '.join(PRESETS)}")
    label = f"{name} {dtype}" + (" (random)" if name in models.MODELS else "")
    return label, _random_model_file(preset(name), name, dtype, args.seed,
                                     _cache_root(args)), "random"


# ------------------------------------------------------------------------------ peers

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


# ------------------------------------------------------------------------------ measuring

def _stats(values: Sequence[float]) -> dict[str, Any]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values),
            "samples": list(values)}


def _mean_list(samples: list[Sample], attr: str) -> list[float] | None:
    rows = [getattr(s, attr) for s in samples]
    if any(r is None for r in rows):
        return None
    return np.mean(np.asarray(rows, np.float64), axis=0).tolist()


def _bandwidth_fields(r: dict[str, Any], gbs: list[float], probes: list[float] | None) -> None:
    r["effective_gbs"] = {"median": statistics.median(gbs), "min": min(gbs), "max": max(gbs)}
    if probes and len(probes) == len(gbs):
        # Sample i and probe i ran back to back: their ratio cancels the machine's drift.
        r["bandwidth_gbs"] = statistics.median(probes)
        r["bandwidth_fraction"] = statistics.median(g / b for g, b in zip(gbs, probes))


def _point(runner: Any, mode: str, threads: int, context: int, samples: list[Sample],
           probes: list[float] | None, prefill_tokens: int) -> dict[str, Any]:
    tok_s = [s.tok_s for s in samples]
    r: dict[str, Any] = {"model": runner.label, "mode": mode, "threads": threads,
                         "context": context, "tokens": samples[0].tokens,
                         "tok_s": _stats(tok_s),
                         "ms_per_token": 1e3 / statistics.median(tok_s)}
    if samples[0].times is not None:
        r["breakdown_ms_per_token"] = {
            k: statistics.median(1e3 * s.times[k] / s.tokens for s in samples)
            for k in COMPONENTS}
    ffn = _mean_list(samples, "ffn_active")
    att = _mean_list(samples, "attn_tokens")
    if ffn is not None and att is not None:
        r["ffn_active_fraction"] = ffn
        r["attn_mean_tokens"] = att
        r["ffn_active_mean"] = float(np.mean(ffn))
        r["attn_tokens_mean"] = float(np.mean(att))
    cfg = getattr(runner, "cfg", None)
    if mode == "decode" and cfg is not None and ffn is not None:
        b = decode_bytes_per_token(cfg, runner.tb, context, ffn, att, runner.kv_dtype)
        r["bytes_per_token"] = b
        _bandwidth_fields(r, [b["total"] * t / 1e9 for t in tok_s], probes)
    elif mode == "decode" and runner.kind == "llama.cpp":
        # Approximate: the GGUF's bytes (all weights, LM head included) + an f16 KV cache.
        g = preset("gemma3-270m")  # the only model peers run
        kv = sum(g.n_kv_heads * _visible(g, layer, context) * 2 * g.head_dim * 2
                 for layer in range(g.n_layers))
        total = runner.path.stat().st_size + kv
        r["bytes_per_token"] = {"weights": float(runner.path.stat().st_size), "kv": float(kv),
                                "total": float(total), "approximate": True}
        _bandwidth_fields(r, [total * t / 1e9 for t in tok_s], probes)
    if mode == "prefill" and cfg is not None and ffn is not None:
        f = prefill_flops_per_token(cfg, prefill_tokens, ffn, att)
        r["gflop_per_token"] = f / 1e9
        r["gflops"] = f * statistics.median(tok_s) / 1e9
    return r


class _Alternator:
    """Runs one sample per runner in turn, pausing when the kind of runner changes."""

    def __init__(self) -> None:
        self.last_kind: str | None = None

    def __call__(self, runner: Any, fn: Callable[[], Sample]) -> Sample:
        if self.last_kind is not None and self.last_kind != runner.kind:
            time.sleep(_SWITCH_PAUSE_S)
        self.last_kind = runner.kind
        return fn()


class BandwidthProbe:
    """`_core.read_bandwidth` samples per thread count, kept in run order."""

    def __init__(self, nbytes: int) -> None:
        self.nbytes = nbytes
        self.samples: dict[int, list[float]] = {}

    def __call__(self, threads: int) -> float | None:
        if self.nbytes <= 0:
            return None
        from spark_infer import _core

        gbs = float(_core.read_bandwidth(nbytes=self.nbytes, threads=threads, repeats=3))
        self.samples.setdefault(threads, []).append(gbs)
        return gbs

    def median(self, threads: int) -> float | None:
        got = self.samples.get(threads)
        return statistics.median(got) if got else None


def measure(runners: list[Any], args: argparse.Namespace, probe: BandwidthProbe
            ) -> list[dict[str, Any]]:
    """Every (mode, threads, context) point for every runner, samples interleaved."""
    vocab = min(r.vocab for r in runners)
    contexts = sorted(set(args.context))
    max_ctx = max(contexts + [args.prefill_tokens]) if "decode" in args.modes else \
        args.prefill_tokens
    ctx_tokens = bench_tokens(args.seed, vocab, max_ctx, stream=0)
    step_tokens = bench_tokens(args.seed, vocab, args.steps, stream=1)
    turn = _Alternator()
    results: list[dict[str, Any]] = []
    n_samples = args.warmup + args.repeats

    if "prefill" in args.modes:
        prompt = ctx_tokens[:args.prefill_tokens]
        for threads in args.threads:
            for r in runners:
                r.set_threads(threads)
            samples: dict[str, list[Sample]] = {r.label: [] for r in runners}
            for i in range(n_samples):
                for r in runners:
                    s = turn(r, lambda r=r: r.prefill(prompt, args.chunk))
                    if i >= args.warmup:
                        samples[r.label].append(s)
            for r in runners:
                res = _point(r, "prefill", threads, args.prefill_tokens, samples[r.label],
                             None, args.prefill_tokens)
                results.append(res)
                log.info("  %-28s prefill  t=%d  %8.2f tok/s", r.label, threads,
                         res["tok_s"]["median"])

    if "decode" in args.modes:
        for ctx in contexts:
            for r in runners:
                r.set_threads(max(args.threads))
                t0 = time.perf_counter()
                r.extend(ctx_tokens, ctx, args.chunk)
                log.info("  %-28s context %d ready (%.1f s)", r.label, ctx,
                         time.perf_counter() - t0)
            for threads in args.threads:
                for r in runners:
                    r.set_threads(threads)
                samples = {r.label: [] for r in runners}
                probes: list[float] = []
                for i in range(n_samples):
                    for r in runners:
                        s = turn(r, lambda r=r: r.decode(ctx, step_tokens))
                        if i >= args.warmup:
                            samples[r.label].append(s)
                    if i >= args.warmup:
                        gbs = probe(threads)
                        if gbs is not None:
                            probes.append(gbs)
                for r in runners:
                    res = _point(r, "decode", threads, ctx, samples[r.label], probes,
                                 args.prefill_tokens)
                    results.append(res)
                    log.info("  %-28s decode   t=%d  L=%-5d %8.2f tok/s", r.label, threads, ctx,
                             res["tok_s"]["median"])
    return results


# Our weight type -> the peers' types compared with it.
_PEER_MATCH = {"bf16": ("BF16", "bf16"), "int8": ("Q8_0",), "q4": ("Q4_K_M",),
               "f32": ("F32", "f32")}


def _default_pairs(runners: list[Any]) -> list[tuple[str, str]]:
    """Ratios reported without --vs: each Spark engine over each dense engine of the same
    weight type, and each engine running the real model over the peers of its weight type."""
    engines = [r for r in runners if r.kind == "engine"]
    pairs = [(a.label, b.label) for a in engines for b in engines
             if a.info()["spark"] and not b.info()["spark"] and a.dtype == b.dtype]
    for a in engines:
        if a.source != "real":
            continue
        for p in runners:
            if p.kind != "engine" and p.dtype in _PEER_MATCH.get(a.dtype, ()):
                pairs.append((a.label, p.label))
    return pairs


def ratios(results: list[dict[str, Any]], pairs: list[tuple[str, str]]) -> list[dict[str, Any]]:
    """Per point, the median of the per-sample ratios tok/s(a) / tok/s(b)."""
    index = {(r["model"], r["mode"], r["threads"], r["context"]): r for r in results}
    out = []
    for a, b in pairs:
        for (model, mode, threads, context), ra in index.items():
            if model != a:
                continue
            rb = index.get((b, mode, threads, context))
            if rb is None:
                continue
            per = [x / y for x, y in zip(ra["tok_s"]["samples"], rb["tok_s"]["samples"])]
            out.append({"a": a, "b": b, "mode": mode, "threads": threads, "context": context,
                        **_stats(per)})
    return out


# ------------------------------------------------------------------------------ output

def format_table(report: dict[str, Any]) -> str:
    """The human-readable table of a report (what `run` prints)."""
    m = report["machine"]
    lines = [f"machine: {m['cpu']}, {m['physical_cores']} cores, Highway {m['highway_target']}",
             "read bandwidth: " + ", ".join(f"{v:.1f} GB/s ({k} thr)"
                                            for k, v in report["bandwidth_gbs"].items())]
    head = (f"{'model':<28} {'mode':<7} {'thr':>3} {'ctx':>5}  {'tok/s':>8} {'(min-max)':>17}  "
            f"{'ms/tok':>7}  {'attn':>5} {'ffn':>5} {'logit':>5} {'other':>5}  "
            f"{'GB/s':>6} {'%bw':>4}  {'ffn act':>7} {'att tok':>7}")
    lines += ["", head, "-" * len(head)]
    for r in report["results"]:
        t = r["tok_s"]
        row = (f"{r['model'][:28]:<28} {r['mode']:<7} {r['threads']:>3} {r['context']:>5}  "
               f"{t['median']:8.2f} {'(' + format(t['min'], '.2f') + '-' + format(t['max'], '.2f') + ')':>17}  "
               f"{r['ms_per_token']:7.2f}  ")
        bd = r.get("breakdown_ms_per_token")
        if bd:
            total = sum(bd.values()) or 1.0
            row += " ".join(f"{100 * bd[k] / total:4.0f}%" for k in
                            ("attention", "ffn", "logits")) + \
                f" {100 * (bd['other'] + bd['embed']) / total:4.0f}%  "
        else:
            row += " " * 24 + "  "
        if "effective_gbs" in r:
            frac = r.get("bandwidth_fraction")
            row += f"{r['effective_gbs']['median']:6.1f} " + \
                (f"{100 * frac:3.0f}%" if frac is not None else "   -") + "  "
        elif "gflops" in r:
            row += f"{r['gflops']:6.0f}GF     "
        else:
            row += " " * 13
        if "ffn_active_mean" in r:
            row += f"{100 * r['ffn_active_mean']:6.1f}% {r['attn_tokens_mean']:7.1f}"
        lines.append(row.rstrip())
    if report["ratios"]:
        lines += ["", "ratios (median of per-sample tok/s ratios, min-max):"]
        for q in report["ratios"]:
            lines.append(f"  {q['a']} / {q['b']}  {q['mode']:<7} thr {q['threads']} "
                         f"ctx {q['context']:>5}: {q['median']:.2f}x "
                         f"({q['min']:.2f}-{q['max']:.2f})")
    for note in report["notes"]:
        lines.append(f"note: {note}")
    return "\n".join(lines) + "\n"


def plot(report: dict[str, Any], path: str | os.PathLike[str]) -> None:
    """A PNG of the report: decode tok/s vs context, prefill tok/s, the decode time breakdown
    and the effective GB/s against the measured bandwidth (matplotlib, Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = report["results"]
    info = {m["label"]: m for m in report["models"]}
    models = [m["label"] for m in report["models"]]
    threads = max(report["settings"]["threads"])
    colors = {label: f"C{i % 10}" for i, label in enumerate(models)}

    def style(label: str) -> str:
        return "--" if info[label]["spark"] else "-"

    fig, axes = plt.subplots(2, 2, figsize=(13, 9))
    ax_dec, ax_pre, ax_bd, ax_bw = axes[0, 0], axes[0, 1], axes[1, 0], axes[1, 1]
    dec = [r for r in results if r["mode"] == "decode" and r["threads"] == threads]
    for label in models:
        rs = sorted((r for r in dec if r["model"] == label), key=lambda r: r["context"])
        if not rs:
            continue
        x = [r["context"] for r in rs]
        y = [r["tok_s"]["median"] for r in rs]
        err = [[r["tok_s"]["median"] - r["tok_s"]["min"] for r in rs],
               [r["tok_s"]["max"] - r["tok_s"]["median"] for r in rs]]
        ax_dec.errorbar(x, y, yerr=err, ls=style(label), marker="o", color=colors[label],
                        capsize=3, label=label + (" (Spark)" if info[label]["spark"] else ""))
    tops = {(r["model"], r["context"]): r["tok_s"]["median"] for r in dec}
    for q in report["ratios"]:
        if q["mode"] == "decode" and q["threads"] == threads and (q["a"], q["context"]) in tops:
            ax_dec.annotate(f"{q['median']:.2f}x", (q["context"], tops[(q["a"], q["context"])]),
                            textcoords="offset points", xytext=(6, 6), fontsize=8)
    ax_dec.set_xscale("log", base=2)
    ax_dec.set_xlabel("context (tokens)")
    ax_dec.set_ylabel("decode tokens/s")
    ax_dec.set_title(f"decode, {threads} threads (median, min-max)")
    ax_dec.grid(True, alpha=0.3)
    if dec:
        ax_dec.legend(fontsize=7, framealpha=0.6)

    pre = [r for r in results if r["mode"] == "prefill" and r["threads"] == threads]
    if pre:
        labels = [r["model"] for r in pre]
        y = [r["tok_s"]["median"] for r in pre]
        err = [[r["tok_s"]["median"] - r["tok_s"]["min"] for r in pre],
               [r["tok_s"]["max"] - r["tok_s"]["median"] for r in pre]]
        ax_pre.bar(range(len(pre)), y, yerr=err, capsize=3,
                   color=[colors[m] for m in labels],
                   hatch=None)
        for i, m in enumerate(labels):
            if info[m]["spark"]:
                ax_pre.patches[i].set_hatch("//")
        ax_pre.set_xticks(range(len(pre)))
        ax_pre.set_xticklabels(labels, rotation=20, ha="right", fontsize=8)
        for q in report["ratios"]:
            if q["mode"] == "prefill" and q["threads"] == threads and q["a"] in labels:
                i = labels.index(q["a"])
                ax_pre.annotate(f"{q['median']:.2f}x vs {q['b']}", (i, y[i]),
                                textcoords="offset points", xytext=(0, 4), ha="center",
                                fontsize=7)
        ax_pre.set_title(f"prefill {pre[0]['context']} tokens in chunks of "
                         f"{report['settings']['chunk']}, {threads} threads")
    ax_pre.set_ylabel("prefill tokens/s")
    ax_pre.grid(True, axis="y", alpha=0.3)

    bd_rows = [r for r in dec if "breakdown_ms_per_token" in r]
    if bd_rows:
        names = [f"{r['model']}\nL={r['context']}" for r in bd_rows]
        bottom = np.zeros(len(bd_rows))
        for i, comp in enumerate(("attention", "ffn", "logits", "other")):
            vals = np.array([r["breakdown_ms_per_token"][comp]
                             + (r["breakdown_ms_per_token"]["embed"] if comp == "other" else 0.0)
                             for r in bd_rows])
            ax_bd.bar(range(len(bd_rows)), vals, bottom=bottom, label=comp, color=f"C{i}")
            bottom += vals
        ax_bd.set_xticks(range(len(bd_rows)))
        ax_bd.set_xticklabels(names, rotation=60, ha="right", fontsize=6)
        ax_bd.legend(fontsize=7, framealpha=0.6)
    ax_bd.set_ylabel("ms per decode token")
    ax_bd.set_title("decode time per component (attention includes Q/K/V/O projections)")

    for label in models:
        rs = sorted((r for r in dec if r["model"] == label and "effective_gbs" in r),
                    key=lambda r: r["context"])
        if rs:
            ax_bw.plot([r["context"] for r in rs], [r["effective_gbs"]["median"] for r in rs],
                       ls=style(label), marker="o", color=colors[label], label=label)
    bw_pts = sorted({(r["context"], r["bandwidth_gbs"]) for r in dec if "bandwidth_gbs" in r})
    if bw_pts:
        ax_bw.plot([c for c, _ in bw_pts], [b for _, b in bw_pts], "k:", marker="x",
                   label="read bandwidth measured between the samples")
    ax_bw.set_xscale("log", base=2)
    ax_bw.set_xlabel("context (tokens)")
    ax_bw.set_ylabel("effective GB/s (weight + KV bytes per token / time)")
    ax_bw.set_title("decode effective bandwidth")
    ax_bw.grid(True, alpha=0.3)
    if ax_bw.get_legend_handles_labels()[0]:
        ax_bw.legend(fontsize=7, framealpha=0.6)

    m = report["machine"]
    fig.suptitle(f"spark-infer bench: {m['cpu']}, {m['physical_cores']} cores, "
                 f"{m['highway_target']}, commit {report['commit']}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ------------------------------------------------------------------------------ CLI

def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The `spark-infer bench` options."""
    parser.add_argument("models", nargs="*", metavar="MODEL",
                        help="engine file, config .json, or a preset name: "
                             + ", ".join(PRESETS) + " (gemma3-270m = the real model when "
                             "installed; random:NAME forces random weights; NAME@int8 sets "
                             "the dtype of one model)")
    parser.add_argument("--vs", nargs=2, metavar=("A", "B"),
                        help="benchmark A and B in alternation and report tok/s(A)/tok/s(B)")
    parser.add_argument("--dtype", nargs="+", default=["bf16"], choices=["bf16", "int8", "q4", "f32"],
                        help="weight type(s) of generated/converted models (default bf16)")
    parser.add_argument("--threads", nargs="+", type=int, default=None,
                        help="thread counts (default: the physical cores)")
    parser.add_argument("--context", nargs="+", type=int, default=list(DEFAULT_CONTEXTS),
                        help="decode context lengths (default 256 1024 4096)")
    parser.add_argument("--prefill-tokens", type=int, default=256,
                        help="tokens of the prefill sample (default 256)")
    parser.add_argument("--chunk", type=int, default=64, help="prefill chunk (default 64)")
    parser.add_argument("--steps", type=int, default=8,
                        help="decode steps per sample (default 8)")
    parser.add_argument("--repeats", type=int, default=5, help="kept samples (default 5)")
    parser.add_argument("--warmup", type=int, default=1, help="discarded samples (default 1)")
    parser.add_argument("--modes", nargs="+", default=["prefill", "decode"],
                        choices=["prefill", "decode"])
    parser.add_argument("--llama-bench", default=None, metavar="PATH",
                        help="the llama-bench executable of the llama-bench peer (default: PATH)")
    parser.add_argument("--peers", nargs="*", default=[],
                        choices=["llama.cpp", "llama-bench", "transformers"],
                        help="also run these on the Gemma 3 270M GGUF, when installed")
    parser.add_argument("--gguf-types", nargs="+", default=["Q4_K_M"],
                        choices=["Q4_K_M", "Q8_0", "BF16", "F16", "F32"],
                        help="llama.cpp GGUF types (non-Q4_K_M are requantized; default Q4_K_M)")
    parser.add_argument("--hf-dtypes", nargs="+", default=["bf16"], choices=["bf16", "f32"],
                        help="transformers weight types (default bf16)")
    parser.add_argument("--kv-dtype", default="bf16", choices=["bf16", "f32"],
                        help="our engine's KV cache element type (default bf16)")
    parser.add_argument("--seed", type=int, default=0, help="weights and token seed")
    parser.add_argument("--json", metavar="PATH", help="write the report as JSON")
    parser.add_argument("--plot", metavar="PATH", help="draw the report as a PNG")
    parser.add_argument("--cache-dir", help="random model files (default <cache>/bench)")
    parser.add_argument("--bandwidth-bytes", type=int, default=1 << 29,
                        help="buffer of the bandwidth probe (default 512 MiB; 0 skips it)")
    parser.add_argument("--quiet", action="store_true", help="no progress on stderr")


def _check_args(args: argparse.Namespace) -> None:
    from spark_infer import _core

    if args.vs and args.models:
        raise ValueError("give models either as arguments or with --vs A B, not both")
    if not args.vs and not args.models:
        raise ValueError("no model: give one or more MODEL arguments or --vs A B")
    if args.threads is None:
        args.threads = [int(_core.physical_cores())]
    for name in ("prefill_tokens", "chunk", "steps", "repeats"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be at least 1")
    if args.warmup < 0:
        raise ValueError("--warmup must be at least 0")
    if any(t < 1 for t in args.threads):
        raise ValueError("--threads must be at least 1")
    if any(c < 1 for c in args.context):
        raise ValueError("--context must be at least 1")


def run(args: argparse.Namespace) -> int:
    """`spark-infer bench`: measure, print the table, write --json / --plot. Returns 0."""
    import contextlib

    from spark_infer import _core

    if not log.handlers and not logging.getLogger().handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        log.addHandler(handler)
        log.propagate = False
    log.setLevel(logging.WARNING if args.quiet else logging.INFO)
    _check_args(args)
    t_start = time.perf_counter()
    notes: list[str] = []
    specs = list(args.vs) if args.vs else list(args.models)
    resolved: list[tuple[str, Path, str]] = []
    for spec in specs:
        for dtype in args.dtype:
            item = resolve_spec(spec, dtype, args, notes)
            if item[2] == "file":
                # Two files of one name (runs/a/model.spark, runs/b/model.spark) would share a
                # label and the second be dropped as the first: files are labelled by folder
                # and name when their names collide.
                same = [x for x in specs if os.path.basename(x) == item[1].name]
                if len({os.path.realpath(x) for x in same}) > 1:
                    item = (f"{item[1].parent.name}/{item[1].name}", *item[1:])
            if item[0] not in [x[0] for x in resolved]:
                resolved.append(item)
    pairs: list[tuple[str, str]] = []
    if args.vs:
        labels = [x[0] for x in resolved]
        half = len(labels) // 2
        pairs = list(zip(labels[:half], labels[half:]))

    max_ctx = max(args.context) if "decode" in args.modes else 0
    capacity = max(max_ctx + args.steps + 1, args.prefill_tokens + 1)
    report: dict[str, Any] = {
        "schema": SCHEMA, "command": list(getattr(args, "argv", None) or sys.argv),
        "commit": _commit(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "settings": {"threads": args.threads, "contexts": sorted(set(args.context)),
                     "prefill_tokens": args.prefill_tokens, "chunk": args.chunk,
                     "steps": args.steps, "repeats": args.repeats, "warmup": args.warmup,
                     "seed": args.seed, "modes": args.modes,
                     "kv_dtype": getattr(args, "kv_dtype", "bf16")},
    }
    probe = BandwidthProbe(args.bandwidth_bytes)
    for t in args.threads:
        gbs = probe(t)
        if gbs is not None:
            log.info("read bandwidth, %d threads: %.1f GB/s", t, gbs)

    with contextlib.ExitStack() as stack:
        runners: list[Any] = []
        for label, path, source in resolved:
            log.info("loading %s (%s)", label, path)
            r = EngineRunner(label, path, source, capacity, args.chunk,
                             getattr(args, "kv_dtype", "bf16"))
            stack.callback(r.close)
            runners.append(r)
        peers = _make_peers(args, capacity, notes, stack)
        for p in peers:
            stack.callback(p.close)
        runners += peers
        if not args.vs:
            pairs += _default_pairs(runners)
        report["models"] = [r.info() for r in runners]
        report["results"] = measure(runners, args, probe)
    report["bandwidth_gbs"] = {str(t): probe.median(t) for t in sorted(probe.samples)}
    report["bandwidth_samples"] = {str(t): v for t, v in sorted(probe.samples.items())}
    report["ratios"] = ratios(report["results"], pairs)
    report["notes"] = notes
    report["elapsed_s"] = time.perf_counter() - t_start
    try:
        report["machine"]["loadavg_end"] = list(os.getloadavg())
    except OSError:
        report["machine"]["loadavg_end"] = None

    sys.stdout.write(format_table(report))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1) + "\n")
        log.info("wrote %s", args.json)
    if args.plot:
        plot(report, args.plot)
        log.info("wrote %s", args.plot)
    return 0


def build_parser() -> argparse.ArgumentParser:
    """A standalone parser of the bench options (`python -m spark_infer.bench`)."""
    parser = argparse.ArgumentParser(prog="spark-infer bench",
                                     description=(__doc__ or "").split("\n")[0])
    add_arguments(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = ["python", "-m", "spark_infer.bench",
                 *(sys.argv[1:] if argv is None else list(argv))]
    try:
        return run(args)
    except ValueError as e:
        parser.error(str(e))
        return 2


if __name__ == "__main__":
    sys.exit(main())
