#!/usr/bin/env bash
# Build the extension with AddressSanitizer + UndefinedBehaviorSanitizer (CMake option
# SPARK_SANITIZE) into its own virtualenv and build dir, and run the tests of the C++ code under
# it: kernels, engine, loader (engine files and the readers' limits) and threads.
#
#   tools/sanitize.sh                   # build (or reuse) build/sanitize-venv, run the tests
#   tools/sanitize.sh -k decode         # extra arguments go to pytest
#
# Then every input of the fuzz corpora (tools/fuzz: the seeds, and what tools/fuzz/run.sh has
# grown in build/fuzz/corpus) runs once through each fuzz target on the sanitized build (libFuzzer
# -runs=0: a replay; coverage-guided fuzzing itself needs the plain build, see tools/fuzz/run.sh).
#
# Recipe: gcc's libasan must be the first library in the process, so python runs with
# LD_PRELOAD of libasan.so and libstdc++.so (python itself does not link libstdc++, and without
# it preloaded ASan's __cxa_throw interceptor finds no real one and aborts on the first C++
# exception); detect_leaks=0 because CPython keeps its objects alive at exit (every run would
# "leak"); any ASan or UBSan report aborts the run, and --capture=sys lets the report through.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${SANITIZE_VENV:-build/sanitize-venv}
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv --system-site-packages "$venv"
fi
# A non-editable install in its own build dir: the normal build in build/{wheel_tag} is untouched.
"$venv/bin/pip" install -q --no-deps --no-build-isolation --force-reinstall \
  -Cbuild-dir=build/sanitize -Ccmake.define.SPARK_SANITIZE=ON -Ccmake.build-type=RelWithDebInfo .
asan="$(g++ -print-file-name=libasan.so) $(g++ -print-file-name=libstdc++.so)"
export ASAN_OPTIONS=detect_leaks=0:abort_on_error=1:strict_string_checks=1:detect_stack_use_after_return=1
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
tests=(tests/test_kernels.py tests/test_kernels_batch.py tests/test_engine.py tests/test_fileformat.py
       tests/test_limits.py tests/test_threads.py)
# The installed module, not a checkout's build, must be the one under test.
LD_PRELOAD="$asan" "$venv/bin/python" -c \
  "import spark_infer._core as c, sys; sys.exit('not the sanitized build: ' + c.__file__) if '$venv' not in c.__file__ else print('sanitized _core:', c.__file__)"
LD_PRELOAD="$asan" "$venv/bin/python" -m pytest -q -p no:cacheprovider --capture=sys "${tests[@]}" "$@"

if "$venv/bin/python" -c "import atheris" 2>/dev/null || "$venv/bin/pip" install -q atheris; then
  rm -rf build/sanitize/seeds
  LD_PRELOAD="$asan" "$venv/bin/python" tools/fuzz/make_corpus.py build/sanitize/seeds
  for t in engine edits gguf hf; do
    dirs=(build/sanitize/seeds/$t)
    [ -d build/fuzz/corpus/$t ] && dirs+=(build/fuzz/corpus/$t)
    echo "replaying the $t corpus ($(ls "${dirs[@]}" | wc -l) inputs) under ASan + UBSan"
    rc=0
    mkdir -p build/sanitize/scratch
    SPARK_FUZZ_SCRATCH=build/sanitize/scratch LD_PRELOAD="$asan" "$venv/bin/python" "tools/fuzz/fuzz_$t.py" -runs=0 -rss_limit_mb=4096 \
      -timeout=60 -artifact_prefix=build/sanitize/ "${dirs[@]}" > "build/sanitize/$t.log" 2>&1 || rc=$?
    grep -E "INITED|^Done" "build/sanitize/$t.log" || true
    [ "$rc" -eq 0 ] || { tail -60 "build/sanitize/$t.log"; echo "the $t corpus failed under the sanitizers" >&2; exit 1; }
  done
else
  echo "atheris is not installable here: the fuzz corpora were not replayed" >&2
fi
