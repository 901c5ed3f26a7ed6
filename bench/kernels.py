#!/usr/bin/env python3
"""Kernel benchmark at the shapes of one Gemma-2-2B-sized layer, dense and Spark.

    python bench/kernels.py                 # full run (~1-2 min)
    python bench/kernels.py --quick         # smoke run (~20 s): fewer repeats
    python bench/kernels.py --json bench/results/kernels-$(date +%F).json
    python bench/kernels.py --chunk-only --threads 1,2 --dtypes bf16,int8,f32   # prefill kernels

Shapes (d_model 2304): dense gated FFN d_ff 9216, gate/up W [9216, 2304], down W [2304, 9216];
Spark FFN d_ff 13824, neuron-major: K1 [13824, 1024] (dense predictor), K2 [13824, 1280] (masked
matvec over the kept rows), V [13824, 2304] (sparse vec-mat over the kept rows), 8 % kept.
Prefill (chunk of T=64 tokens): the dense chunk matmul [9216, 2304], and the neuron-grouped
(CSR) K2 masked matmul and V sparse matmul, each token keeping its own random 8 % (GFLOP/s counts
the kept pairs' FMAs only).

What is timed: one kernel call, weights cold. Decode streams every layer's weights from memory
(~5 GB for 2B in bf16, far beyond any cache), so each call reads a different copy of its matrix,
cut from a pool of at least four times the last-level cache: a repeated call on one matrix would be
served from the 300 MB L3 of some servers and overstate the kernels. The sparse kernels get a
fresh random index set per call (8 % of the rows). Each case is checked against float64 numpy
once before timing, then warmed up and timed `repeats` times: median, min and max.

GB/s is weight bytes touched per call (int8 scales included) / time, 1e9 bytes/s; compared with
the machine's read bandwidth measured in the same run by the C++ probe (_core.read_bandwidth: SIMD
loads over 1 GiB split across the same threads). GFLOP/s counts an FMA as 2 FLOPs.

The sparse/dense ratio compares the Spark kernels with the dense kernels over the same weights
that they replace: masked K2 at 8 % vs a dense matvec over all of K2 [13824, 1280], and sparse V
at 8 % vs a dense matvec over V stored d_model-major, V^T [2304, 13824] (what a dense FFN's down
projection of all 13824 neurons costs). Targets: dense matvec >= 85 % of the read bandwidth at 2
threads; masked K2 + sparse V <= 12 % of the dense pair's time.
"""

from __future__ import annotations

import argparse
import datetime
import json
import mmap
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from spark_infer import _core

D_MODEL = 2304
D_FF_DENSE = 9216
D_FF_SPARK = 13824
R_PRED = 1024  # Spark FFN predictor width r: K1 reads x[:r], K2 reads x[r:]
FRACTION = 0.08  # kept neurons
T_CHUNK = 64  # tokens per prefill chunk
BYTES = {"f32": 4, "bf16": 2, "int8": 1}
U = 2.0**-24  # f32 unit roundoff


# ------------------------------------------------------------------------- machine facts


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def llc_bytes() -> int:
    """Size of the largest cache level cpu0 reports (sysfs), 32 MiB if unknown."""
    best = 0
    for idx in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*"):
        try:
            s = (idx / "size").read_text().strip()
        except OSError:
            continue
        mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(s[-1], 1)
        best = max(best, int(s.rstrip("KMG")) * mult)
    return best or 32 << 20


def cpu_seconds() -> tuple[float, float]:
    """(busy CPU seconds of the whole machine, CPU seconds of this process) so far (Linux)."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
        ticks = [int(f) for f in fields]
        busy = sum(ticks) - ticks[3] - (ticks[4] if len(ticks) > 4 else 0)  # minus idle, iowait
        return busy / os.sysconf("SC_CLK_TCK"), time.process_time()
    except (OSError, ValueError, IndexError):
        return 0.0, time.process_time()


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, cwd=Path(__file__).parent, timeout=5)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, cwd=Path(__file__).parent,
                               timeout=5).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "") if out.returncode == 0 else "?"
    except (OSError, subprocess.SubprocessError):
        return "?"


# -------------------------------------------------------------------------- weight pool


class Pool:
    """One buffer of valid weight bits for every dtype, cut into copies of a matrix.

    The buffer holds bf16 bit patterns with exponents 120..123 (|w| in [2^-7, 2^-3), no
    denormals): read as uint16 they are bf16 weights; read as float32, each upper half is such a
    pattern, so the floats are finite too; read as int8, any byte is valid.
    """

    def __init__(self, nbytes: int, rng: np.random.Generator) -> None:
        n = nbytes // 2
        # Anonymous memory with 4 KiB pages, like the engine's memory-mapped weight files (numpy
        # would ask for transparent huge pages, which spare the sparse kernels' scattered rows
        # most TLB misses that real weights incur).
        self._map = mmap.mmap(-1, n * 2)
        if hasattr(self._map, "madvise") and hasattr(mmap, "MADV_NOHUGEPAGE"):
            self._map.madvise(mmap.MADV_NOHUGEPAGE)
        self.u16 = np.frombuffer(self._map, np.uint16)
        step = 1 << 24
        for i in range(0, n, step):  # in slices: no full-size temporaries
            part = rng.integers(0, 1 << 16, size=min(step, n - i), dtype=np.uint16)
            self.u16[i : i + len(part)] = (part & 0x81FF) | 0x3C00
        self.nbytes = n * 2

    def copies(self, dtype: str, rows: int, cols: int) -> list[np.ndarray]:
        """As many [rows, cols] matrices as fit, each starting on a 4 KiB boundary."""
        np_dtype = {"f32": np.float32, "bf16": np.uint16, "int8": np.int8}[dtype]
        size = rows * cols * BYTES[dtype]
        stride = (size + 4095) // 4096 * 4096
        raw = self.u16.view(np.uint8)
        base = (-raw.ctypes.data) % 4096
        count = (self.nbytes - base) // stride
        return [raw[base + k * stride : base + k * stride + size].view(np_dtype).reshape(rows, cols)
                for k in range(count)]


def to_f64(w: np.ndarray, dtype: str) -> np.ndarray:
    if dtype == "bf16":
        return (w.astype(np.uint32) << 16).view(np.float32).astype(np.float64)
    return w.astype(np.float64)


# ------------------------------------------------------------------------------ timing


@dataclass
class Result:
    kernel: str
    dtype: str
    shape: str
    threads: int
    median_ms: float
    min_ms: float
    max_ms: float
    bytes: int  # weight bytes touched per call (int8 scales included); input bytes for top-k
    flops: int
    gbps: float = 0.0
    gflops: float = 0.0
    bw_fraction: float | None = None  # gbps / read bandwidth at the same thread count
    bw_fraction_best: float | None = None  # best-call GB/s / the probe's best pass
    times_ms: list[float] = field(default_factory=list)


def time_calls(call: Callable[[int], Any], repeats: int, warmup: int) -> list[float]:
    """call(i) for i in [0, warmup + repeats); returns the last `repeats` durations in ms."""
    for i in range(warmup):
        call(i)
    out = []
    for i in range(warmup, warmup + repeats):
        t0 = time.perf_counter()
        call(i)
        out.append((time.perf_counter() - t0) * 1e3)
    return out


def result(kernel: str, dtype: str, shape: str, threads: int, times: list[float], nbytes: int,
           flops: int) -> Result:
    med = statistics.median(times)
    return Result(kernel, dtype, shape, threads, med, min(times), max(times), nbytes, flops,
                  gbps=nbytes / (med * 1e-3) / 1e9, gflops=flops / (med * 1e-3) / 1e9,
                  times_ms=[round(t, 4) for t in times])


# ------------------------------------------------------------------------- correctness


def check(name: str, got: np.ndarray, want: np.ndarray, abs_terms: np.ndarray, n: int) -> None:
    """|got - want| <= (n + 2) U sum|terms| (any-order f32 sum of n terms; tests/test_kernels.py)."""
    err = np.abs(got.astype(np.float64) - want)
    tol = (n + 2) * U * abs_terms
    if not (err <= tol).all():
        i = int(np.argmax(err - tol))
        raise SystemExit(f"{name}: result differs from numpy at {i}: {got.ravel()[i]} vs "
                         f"{want.ravel()[i]} (tol {tol.ravel()[i]:.3g})")


# ----------------------------------------------------------------------------- the run


@dataclass
class Config:
    quick: bool
    threads: list[int]
    dtypes: list[str]
    repeats: int
    warmup: int
    bw_bytes: int
    bw_repeats: int
    chunk_only: bool = False


def run(cfg: Config, log: Callable[[str], None]) -> dict[str, Any]:
    rng = np.random.default_rng(0)
    llc = llc_bytes()
    # 4x the last-level cache: its replacement policy keeps part of a cyclic working set only
    # 2x its size (measured: smaller matrices then ran above the probe's bandwidth).
    pool_bytes = max(4 * llc, 1 << 30)
    info: dict[str, Any] = {
        "command": " ".join([Path(sys.executable).name] + sys.argv),
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "commit": git_commit(),
        "cpu": cpu_model(),
        "physical_cores": _core.physical_cores(),
        "logical_cpus": os.cpu_count(),
        "last_level_cache_bytes": llc,
        "highway_target": _core.current_target(),
        "supported_targets": [n for n, _ in _core.supported_targets()],
        "numpy": np.__version__,
        "threads": cfg.threads,
        "quick": cfg.quick,
        "repeats": cfg.repeats,
        "weight_pool_bytes": pool_bytes,
        "loadavg_start": os.getloadavg(),
    }
    log(f"# {info['cpu']}, {info['physical_cores']} cores, LLC {llc >> 20} MiB, "
        f"Highway target {info['highway_target']}, commit {info['commit']}")
    log(f"# load average at start: {' '.join(f'{v:.2f}' for v in info['loadavg_start'])}")
    busy0, own0, wall0 = *cpu_seconds(), time.perf_counter()

    # Read bandwidth at the same thread counts as the kernels, probed before and after each
    # dtype's kernels: it drifts by ~10 % between quiet minutes on a shared host, so a probe at
    # the start alone would bias every ratio the same way.
    probe_samples: dict[int, list[float]] = {n: [] for n in cfg.threads}

    def probe(when: str) -> None:
        for n in cfg.threads:
            s = _core.read_bandwidth_samples(cfg.bw_bytes, n, cfg.bw_repeats)
            probe_samples[n] += s
            log(f"read bandwidth {when}, {n} thread(s): {statistics.median(s):.1f} GB/s "
                f"(min {min(s):.1f}, max {max(s):.1f}; {cfg.bw_bytes >> 20} MiB x {cfg.bw_repeats})")

    probe("at start")

    t0 = time.perf_counter()
    pool = Pool(pool_bytes, rng)
    log(f"# weight pool: {pool.nbytes >> 20} MiB ({time.perf_counter() - t0:.1f} s to fill)")

    results: list[Result] = []
    saved_threads = _core.num_threads()
    n_keep = int(round(FRACTION * D_FF_SPARK))
    idx_sets = [np.sort(rng.choice(D_FF_SPARK, n_keep, replace=False)).astype(np.int32)
                for _ in range(16)]
    try:
        for dtype in cfg.dtypes:
            results += bench_dtype(cfg, dtype, pool, rng, idx_sets, log)
            probe(f"after {dtype}")
        if not cfg.chunk_only:
            x_topk = rng.standard_normal(D_FF_SPARK).astype(np.float32)
            x64 = x_topk.astype(np.float64)
            theta = x64.mean() + x64.std() * statistics.NormalDist().inv_cdf(1 - FRACTION)
            got = _core.statistical_topk(x_topk, FRACTION)[0]
            differ = np.setxor1d(got, np.flatnonzero(x64 > theta))
            if (np.abs(x64[differ] - theta) > 1e-4).any():  # f32 sums of 13824 terms: ~1e-6
                raise SystemExit("statistical_topk: kept set differs from numpy's")
            for n in cfg.threads:
                _core.set_num_threads(n)
                times = time_calls(lambda i: _core.statistical_topk(x_topk, FRACTION),
                                   cfg.repeats * 4, cfg.warmup)
                # 3 passes over x (mean, variance, threshold scan)
                results.append(result("statistical top-k", "f32", f"[{D_FF_SPARK}]", n, times,
                                      3 * 4 * D_FF_SPARK, 0))
    finally:
        _core.set_num_threads(saved_threads)

    bw = {n: {"median": statistics.median(v), "min": min(v), "max": max(v), "samples": v}
          for n, v in probe_samples.items()}
    for r in results:
        if r.kernel.startswith("dense matvec") and r.threads in bw:
            r.bw_fraction = r.gbps / bw[r.threads]["median"]
            r.bw_fraction_best = r.bytes / (r.min_ms * 1e-3) / 1e9 / bw[r.threads]["max"]
    info["loadavg_end"] = os.getloadavg()
    busy1, own1 = cpu_seconds()
    # Cores kept busy by other processes during the run: with 2 threads on 2 cores, any of it
    # delays a thread by a scheduler slice (ms) and shows in the 2-thread times.
    info["other_processes_cores"] = round(max(0.0, (busy1 - busy0) - (own1 - own0))
                                          / (time.perf_counter() - wall0), 2)
    ratios = sparse_ratios(results)
    return {"info": info, "read_bandwidth_gbps": {str(k): v for k, v in bw.items()},
            "results": [asdict(r) for r in results], "ratios": ratios}


def bench_dtype(cfg: Config, dtype: str, pool: Pool, rng: np.random.Generator,
                idx_sets: list[np.ndarray], log: Callable[[str], None]) -> list[Result]:
    out: list[Result] = []
    b = BYTES[dtype]
    x_full = rng.standard_normal(D_MODEL).astype(np.float32)
    x_spark = rng.standard_normal(D_FF_SPARK).astype(np.float32)
    x_dense_ff = rng.standard_normal(D_FF_DENSE).astype(np.float32)

    def scales(rows: int) -> np.ndarray | None:
        return (rng.uniform(0.5, 2.0, rows) / 127).astype(np.float32) if dtype == "int8" else None

    def dense(name: str, rows: int, cols: int, x: np.ndarray) -> None:
        ws = pool.copies(dtype, rows, cols)
        s = scales(rows)
        y = np.empty(rows, np.float32)
        sample = np.arange(0, rows, max(1, rows // 256))  # check a row sample: keeps it quick
        _core.matvec(ws[0], x, y, scale=s)
        w64 = to_f64(ws[0][sample], dtype) * (s[sample, None].astype(np.float64) if s is not None else 1)
        check(f"{name} {dtype}", y[sample], w64 @ x, np.abs(w64) @ np.abs(x.astype(np.float64)), cols)
        nbytes = rows * cols * b + (rows * 4 if s is not None else 0)
        for n in cfg.threads:
            _core.set_num_threads(n)
            times = time_calls(lambda i: _core.matvec(ws[i % len(ws)], x, y, scale=s),
                               cfg.repeats, cfg.warmup)
            out.append(result(f"dense matvec {name}", dtype, f"[{rows}, {cols}]", n, times,
                              nbytes, 2 * rows * cols))
            log(fmt(out[-1]))

    if not cfg.chunk_only:
        dense("gate/up", D_FF_DENSE, D_MODEL, x_full)
        dense("down", D_MODEL, D_FF_DENSE, x_dense_ff)
        dense("Spark K1", D_FF_SPARK, R_PRED, x_full[:R_PRED].copy())
        dense("Spark K2 (all rows)", D_FF_SPARK, D_MODEL - R_PRED, x_full[R_PRED:].copy())
        dense("Spark V^T (all rows)", D_MODEL, D_FF_SPARK, x_spark)

    # Chunk matmul, T tokens: compute-bound, so GFLOP/s is the figure of merit.
    ws = pool.copies(dtype, D_FF_DENSE, D_MODEL)
    s = scales(D_FF_DENSE)
    xt = rng.standard_normal((T_CHUNK, D_MODEL)).astype(np.float32)
    yt = np.empty((T_CHUNK, D_FF_DENSE), np.float32)
    _core.matmul(ws[0], xt, yt, scale=s)
    sample = np.arange(0, D_FF_DENSE, 97)
    w64 = to_f64(ws[0][sample], dtype) * (s[sample, None].astype(np.float64) if s is not None else 1)
    check(f"matmul {dtype}", yt[:, sample], xt.astype(np.float64) @ w64.T,
          np.abs(xt.astype(np.float64)) @ np.abs(w64).T, D_MODEL)
    for n in cfg.threads:
        _core.set_num_threads(n)
        times = time_calls(lambda i: _core.matmul(ws[i % len(ws)], xt, yt, scale=s),
                           max(3, cfg.repeats // 3), 1)
        out.append(result(f"chunk matmul T={T_CHUNK} gate/up", dtype,
                          f"[{D_FF_DENSE}, {D_MODEL}]", n, times,
                          D_FF_DENSE * D_MODEL * b, 2 * T_CHUNK * D_FF_DENSE * D_MODEL))
        log(fmt(out[-1]))

    # Chunk (prefill) Spark kernels, T tokens: each token keeps its own 8 % of the neurons, the
    # pairs grouped by neuron (CSR), each K2/V row read once per chunk for all its tokens. What
    # the engine runs per 64-token chunk when a layer's K2 and V do not fit the last-level cache.
    cols_k2 = D_MODEL - R_PRED
    n_keep = len(idx_sets[0])
    chunk_sets = []
    for _ in range(4):  # a few chunks, cycled with the weight copies
        active = np.zeros((T_CHUNK, D_FF_SPARK), bool)
        for t in range(T_CHUNK):
            active[t, rng.choice(D_FF_SPARK, n_keep, replace=False)] = True
        offsets = np.concatenate([[0], np.cumsum(active.sum(0))]).astype(np.int32)
        tokens = np.nonzero(active.T)[1].astype(np.int32)  # neuron by neuron, tokens ascending
        chunk_sets.append((offsets, tokens))
    nnz = len(chunk_sets[0][1])
    k2s, vs = pool.copies(dtype, D_FF_SPARK, cols_k2), pool.copies(dtype, D_FF_SPARK, D_MODEL)
    s_k2, s_v = scales(D_FF_SPARK), scales(D_FF_SPARK)
    x2t = rng.standard_normal((T_CHUNK, cols_k2)).astype(np.float32)
    ucsr = rng.standard_normal(max(len(t) for _, t in chunk_sets)).astype(np.float32)
    off0, tok0 = chunk_sets[0]
    row_of = np.repeat(np.arange(D_FF_SPARK), np.diff(off0))
    got = np.empty(nnz, np.float32)
    _core.csr_masked_matmul(k2s[0], x2t, off0, tok0, got, scale=s_k2)
    sample = np.arange(0, nnz, 97)
    w64 = to_f64(k2s[0][row_of[sample]], dtype) * (
        s_k2[row_of[sample], None].astype(np.float64) if s_k2 is not None else 1)
    xs64 = x2t[tok0[sample]].astype(np.float64)
    check(f"csr_masked_matmul {dtype}", got[sample], (w64 * xs64).sum(1),
          (np.abs(w64) * np.abs(xs64)).sum(1), cols_k2)
    yv = np.empty((T_CHUNK, D_MODEL), np.float32)
    _core.csr_sparse_matmul(vs[0], ucsr[:nnz], off0, tok0, yv, scale=s_v)
    t_chk = 5  # one token's output row, from its pairs
    mine = np.flatnonzero(tok0 == t_chk)
    w64 = to_f64(vs[0][row_of[mine]], dtype) * (
        s_v[row_of[mine], None].astype(np.float64) if s_v is not None else 1)
    u64 = ucsr[mine].astype(np.float64)
    check(f"csr_sparse_matmul {dtype}", yv[t_chk], u64 @ w64, np.abs(u64) @ np.abs(w64), len(mine))
    for n in cfg.threads:
        _core.set_num_threads(n)
        for name, cols, sc, call in (
                ("CSR masked matmul K2", cols_k2, s_k2,
                 lambda i, o, t: _core.csr_masked_matmul(k2s[i % len(k2s)], x2t, o, t,
                                                         np.empty(len(t), np.float32), scale=s_k2)),
                ("CSR sparse matmul V", D_MODEL, s_v,
                 lambda i, o, t: _core.csr_sparse_matmul(vs[i % len(vs)], ucsr[:len(t)], o, t, yv,
                                                         scale=s_v))):
            times = time_calls(lambda i: call(i, *chunk_sets[i % len(chunk_sets)]),
                               max(3, cfg.repeats // 3), 1)
            touched = int((np.diff(off0) > 0).sum())
            out.append(result(f"{name} T={T_CHUNK} 8%", dtype, f"[{D_FF_SPARK}, {cols}]", n, times,
                              touched * (cols * b + (4 if sc is not None else 0)),
                              2 * nnz * cols))
            log(fmt(out[-1]))
    if cfg.chunk_only:
        return out

    # Spark: masked K2 and sparse V over 8 % of the rows, a new index set per call.
    k2s, vs = pool.copies(dtype, D_FF_SPARK, cols_k2), pool.copies(dtype, D_FF_SPARK, D_MODEL)
    s_k2, s_v = scales(D_FF_SPARK), scales(D_FF_SPARK)
    x2 = x_full[R_PRED:].copy()
    n_keep = len(idx_sets[0])
    u = rng.standard_normal(n_keep).astype(np.float32)
    y_k2, y_v = np.empty(n_keep, np.float32), np.empty(D_MODEL, np.float32)
    idx = idx_sets[0]
    _core.masked_matvec(k2s[0], x2, idx, y_k2, scale=s_k2)
    w64 = to_f64(k2s[0][idx], dtype) * (s_k2[idx, None].astype(np.float64) if s_k2 is not None else 1)
    check(f"masked_matvec {dtype}", y_k2, w64 @ x2, np.abs(w64) @ np.abs(x2.astype(np.float64)), cols_k2)
    _core.sparse_vecmat(vs[0], u, idx, y_v, scale=s_v)
    w64 = to_f64(vs[0][idx], dtype) * (s_v[idx, None].astype(np.float64) if s_v is not None else 1)
    check(f"sparse_vecmat {dtype}", y_v, u @ w64, np.abs(u.astype(np.float64)) @ np.abs(w64), n_keep)
    nb_k2 = n_keep * (cols_k2 * b + (4 if s_k2 is not None else 0))
    nb_v = n_keep * (D_MODEL * b + (4 if s_v is not None else 0))
    for n in cfg.threads:
        _core.set_num_threads(n)
        times = time_calls(lambda i: _core.masked_matvec(
            k2s[i % len(k2s)], x2, idx_sets[i % len(idx_sets)], y_k2, scale=s_k2),
            cfg.repeats * 2, cfg.warmup)
        out.append(result("masked matvec Spark K2 8%", dtype, f"[{D_FF_SPARK}, {cols_k2}]", n,
                          times, nb_k2, 2 * n_keep * cols_k2))
        log(fmt(out[-1]))
        times = time_calls(lambda i: _core.sparse_vecmat(
            vs[i % len(vs)], u, idx_sets[i % len(idx_sets)], y_v, scale=s_v),
            cfg.repeats * 2, cfg.warmup)
        out.append(result("sparse vec-mat Spark V 8%", dtype, f"[{D_FF_SPARK}, {D_MODEL}]", n,
                          times, nb_v, 2 * n_keep * D_MODEL))
        log(fmt(out[-1]))
    return out


def sparse_ratios(results: list[Result]) -> list[dict[str, Any]]:
    by = {(r.kernel, r.dtype, r.threads): r for r in results}
    rows = []
    for (kernel, dtype, n), r in by.items():
        if kernel != "masked matvec Spark K2 8%":
            continue
        k2d = by[("dense matvec Spark K2 (all rows)", dtype, n)]
        vd = by[("dense matvec Spark V^T (all rows)", dtype, n)]
        vsp = by[("sparse vec-mat Spark V 8%", dtype, n)]
        spark = by.get(("dense matvec Spark K1", dtype, n))
        dense_ffn = [by.get((f"dense matvec {k}", dtype, n)) for k in ("gate/up", "gate/up", "down")]
        row = {
            "dtype": dtype, "threads": n,
            "k2_masked_over_dense": r.median_ms / k2d.median_ms,
            "v_sparse_over_dense": vsp.median_ms / vd.median_ms,
            "k2_plus_v_sparse_over_dense": (r.median_ms + vsp.median_ms) / (k2d.median_ms + vd.median_ms),
        }
        if spark and all(dense_ffn):
            # Whole FFN weight kernels: Spark (K1 dense + K2 masked + V sparse) vs Gemma's gated
            # FFN (gate + up + down); top-k and activations excluded from both.
            row["spark_ffn_over_dense_ffn"] = (spark.median_ms + r.median_ms + vsp.median_ms) / sum(
                d.median_ms for d in dense_ffn if d)
        rows.append(row)
    return rows


# ----------------------------------------------------------------------------- output


HEADER = (f"{'kernel':<34} {'dtype':<5} {'shape':<14} {'thr':>3} {'median ms':>10} "
          f"{'min-max ms':>17} {'GB/s':>6} {'GFLOP/s':>7} {'%BW med':>7} {'%BW best':>8}")


def fmt(r: Result) -> str:
    frac = f"{100 * r.bw_fraction:.0f} %" if r.bw_fraction is not None else ""
    best = f"{100 * r.bw_fraction_best:.0f} %" if r.bw_fraction_best is not None else ""
    return (f"{r.kernel:<34} {r.dtype:<5} {r.shape:<14} {r.threads:>3} {r.median_ms:>10.4f} "
            f"{f'{r.min_ms:.4f}-{r.max_ms:.4f}':>17} {r.gbps:>6.1f} {r.gflops:>7.1f} {frac:>7} "
            f"{best:>8}")


def report(res: dict[str, Any], log: Callable[[str], None]) -> None:
    log("")
    log(HEADER)
    log("-" * len(HEADER))
    for d in res["results"]:
        log(fmt(Result(**d)))
    log("")
    bw = res["read_bandwidth_gbps"]
    log("read bandwidth (GB/s, median of all probe passes): " +
        ", ".join(f"{k} thread(s) {v['median']:.1f}" for k, v in bw.items()))
    log(f"cores busy with other processes during the run: {res['info']['other_processes_cores']}")
    log("dense matvec GB/s as % of the read bandwidth, median call / median pass, and best call /"
        " best pass (target >= 85 % at 2 threads):")
    for d in res["results"]:
        if d["bw_fraction"] is not None:
            log(f"  {d['kernel']:<34} {d['dtype']:<5} {d['threads']} thr: "
                f"{100 * d['bw_fraction']:5.1f} %  best {100 * d['bw_fraction_best']:5.1f} %")
    log("sparse / dense time, same weights (target <= 12 %): masked K2 8 % vs dense matvec K2 "
        "[13824, 1280]; sparse V 8 % vs dense matvec V^T [2304, 13824]:")
    for r in res["ratios"]:
        extra = (f"; Spark FFN (K1 + K2 8 % + V 8 %) / dense gated FFN (gate + up + down) "
                 f"{100 * r['spark_ffn_over_dense_ffn']:.1f} %" if "spark_ffn_over_dense_ffn" in r else "")
        log(f"  {r['dtype']:<5} {r['threads']} thr: K2 {100 * r['k2_masked_over_dense']:.1f} %, "
            f"V {100 * r['v_sparse_over_dense']:.1f} %, K2 + V {100 * r['k2_plus_v_sparse_over_dense']:.1f} %"
            + extra)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer repeats (~20 s)")
    ap.add_argument("--json", type=Path, metavar="PATH", help="also write the results as JSON")
    ap.add_argument("--threads", default="1,2", help="comma-separated thread counts (default 1,2)")
    ap.add_argument("--dtypes", default="bf16,int8", help="comma-separated, of f32,bf16,int8 "
                    "(default bf16,int8)")
    ap.add_argument("--chunk-only", action="store_true",
                    help="only the chunk (prefill, T=64) kernels: dense matmul, CSR K2 and V")
    args = ap.parse_args(argv)
    dtypes = [d for d in args.dtypes.split(",") if d]
    if bad := [d for d in dtypes if d not in BYTES]:
        ap.error(f"unknown dtype(s) {bad}")
    threads = [int(t) for t in args.threads.split(",") if t]
    if any(t < 1 for t in threads):
        ap.error("thread counts must be >= 1")
    cfg = Config(quick=args.quick, threads=threads, dtypes=dtypes,
                 repeats=5 if args.quick else 21, warmup=1 if args.quick else 3,
                 bw_bytes=1 << 30,
                 bw_repeats=3 if args.quick else 7, chunk_only=args.chunk_only)

    def log(s: str) -> None:
        print(s, flush=True)

    t0 = time.perf_counter()
    res = run(cfg, log)
    report(res, log)
    res["info"]["wall_s"] = round(time.perf_counter() - t0, 1)
    log(f"# {res['info']['wall_s']} s")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(res, indent=1) + "\n")
        log(f"# wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
