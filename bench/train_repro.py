"""Small-scale reproduction of the Spark claim: a dense and a Spark Gemma 3 model of the same
parameter count, the same recipe, batches and token budget, trained from scratch on the King
James Bible (Debian bible-kjv-text), then their validation losses, realised FFN sparsity per
layer and decode speed in the engine.

    python bench/train_repro.py --steps 120 --threads 2 --out /tmp/train-repro

Runs `python -m spark_infer.train --preset small-{spark,dense}` one after the other, then
`spark-infer bench OUT/spark/model.spark OUT/dense/model.spark --threads T --context 256
--modes decode`, and writes bench/results/train-repro.json and .md (the weights stay in OUT).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=120)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="/tmp/train-repro")
    ap.add_argument("--preset", default="small")
    ap.add_argument("--name", default="train-repro", help="results file stem")
    a = ap.parse_args()
    out = Path(a.out)
    reports = {}
    for kind in ("spark", "dense"):
        cmd = [sys.executable, "-m", "spark_infer.train", "--preset", f"{a.preset}-{kind}",
               "--steps", str(a.steps), "--threads", str(a.threads), "--out", str(out / kind)]
        print("$", " ".join(cmd[1:]), flush=True)
        subprocess.run(cmd, check=True)
        reports[kind] = json.loads((out / kind / "report.json").read_text())
    bench_json = out / "bench.json"
    cmd = ["spark-infer", "bench", str(out / "spark" / "model.spark"),
           str(out / "dense" / "model.spark"), "--threads", str(a.threads), "--context", "256",
           "--modes", "decode", "--json", str(bench_json)]
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)
    bench = json.loads(bench_json.read_text())
    result = {"command": f"python bench/train_repro.py --steps {a.steps} --threads {a.threads}",
              "reports": reports, "bench": bench}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{a.name}.json").write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: {"val_loss": r["val_loss"], "ffn": r["ffn_active_fraction"]}
                      for k, r in reports.items()}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
