"""What a report records of the machine and the checkout (CPU, SIMD, load, commit), and the
read-bandwidth probe run between samples."""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
from pathlib import Path
from typing import Any


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
