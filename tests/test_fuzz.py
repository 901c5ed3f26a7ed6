"""A bounded fuzz run of each file reader (tools/fuzz/: atheris over the engine-file, GGUF and
Hugging Face safetensors readers, and edits to valid engine files run by the engine; seeded by
tools/fuzz/make_corpus.py). Each target runs 2000 inputs (at most 30 s) in a subprocess and must
end cleanly: every input gave a typed error or a valid model, none crashed, hung past 10 s or
grew the process past 2 GiB. `tools/fuzz/run.sh SECONDS` runs longer."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

pytest.importorskip("atheris")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FUZZ = os.path.join(REPO, "tools", "fuzz")
RUNS = 2000


@pytest.fixture(scope="module")
def seeds(tmp_path_factory):
    root = tmp_path_factory.mktemp("seeds")
    subprocess.run([sys.executable, os.path.join(FUZZ, "make_corpus.py"), str(root)], check=True,
                   capture_output=True)
    return root


_SPAWN = "import subprocess, sys; sys.exit(subprocess.run(sys.argv[1:]).returncode)"


@pytest.mark.parametrize("target", ["engine", "edits", "gguf", "hf"])
def test_bounded_fuzz_run(target, seeds, tmp_path):
    corpus, artifacts = tmp_path / "corpus", tmp_path / "artifacts"
    corpus.mkdir()
    artifacts.mkdir()
    words = os.path.join(FUZZ, f"{target}.dict")
    # Through an intermediate process: a child exec'd straight from pytest keeps pytest's peak
    # RSS as its own (Linux carries ru_maxrss across fork + exec), which libFuzzer's
    # -rss_limit_mb reads, so a suite that peaked past 2 GB before this test would fail it; a
    # grandchild starts from the small intermediate's.
    run = subprocess.run(
        [sys.executable, "-c", _SPAWN, sys.executable, os.path.join(FUZZ, f"fuzz_{target}.py"),
         f"-runs={RUNS}", "-seed=1",
         "-max_total_time=30", "-rss_limit_mb=2048", "-timeout=10", "-print_final_stats=1",
         f"-artifact_prefix={artifacts}/", *([f"-dict={words}"] if os.path.exists(words) else []),
         str(corpus), str(seeds / target)],
        capture_output=True, text=True, timeout=600,
        env={**os.environ, "SPARK_FUZZ_SCRATCH": str(tmp_path)})
    log = run.stdout + run.stderr
    assert run.returncode == 0, f"fuzz target {target} found a failure:\n{log[-4000:]}"
    assert not os.listdir(artifacts)
    # Coverage feedback reached the target (without it libFuzzer mutates blindly).
    assert re.search(r"INITED cov: [1-9]", log), log[-2000:]
    executed = int(re.search(r"stat::number_of_executed_units: (\d+)", log).group(1))
    assert executed >= min(RUNS, len(os.listdir(seeds / target)))
