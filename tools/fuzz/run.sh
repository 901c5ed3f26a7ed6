#!/usr/bin/env bash
# Fuzz the file readers with atheris, each target for SECONDS, then report per target the
# inputs tried and the crashes found (libFuzzer stops a target at its first crash and keeps
# the input under $WORK/artifacts/TARGET/).
#
#   tools/fuzz/run.sh SECONDS [engine|edits|gguf|hf ...]     (default: all four)
#
# Every input must end in a typed error or a valid model (tools/fuzz/common.py); the limits
# make a crash of the extension, an input slower than 10 s, or growth past 2 GiB of memory a
# finding too. The corpus grows in $WORK/corpus/TARGET (WORK defaults to build/fuzz), so later
# runs start where earlier ones stopped; the seeds are rebuilt by make_corpus.py every run.
# Exit status 1 when any target found something.
set -euo pipefail
cd "$(dirname "$0")/../.."
seconds=${1:?usage: tools/fuzz/run.sh SECONDS [engine|edits|gguf|hf ...]}
shift
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(engine edits gguf hf)
work=${WORK:-build/fuzz}
python3 -c "import atheris" 2>/dev/null || { echo "atheris is not installed: pip install atheris" >&2; exit 2; }
rm -rf "$work/seeds"
python3 tools/fuzz/make_corpus.py "$work/seeds"
status=0
for t in "${targets[@]}"; do
  mkdir -p "$work/corpus/$t" "$work/artifacts/$t" "$work/scratch"
  rc=0
  dict=()
  [ -f "tools/fuzz/$t.dict" ] && dict=(-dict="tools/fuzz/$t.dict")
  SPARK_FUZZ_SCRATCH="$work/scratch" python3 "tools/fuzz/fuzz_$t.py" -max_total_time="$seconds" -rss_limit_mb=2048 -timeout=10 \
      -print_final_stats=1 -artifact_prefix="$work/artifacts/$t/" "${dict[@]}" \
      "$work/corpus/$t" "$work/seeds/$t" > "$work/$t.log" 2>&1 || rc=$?
  runs=$(grep -o 'stat::number_of_executed_units: [0-9]*' "$work/$t.log" | grep -o '[0-9]*$' || true)
  found=$(ls "$work/artifacts/$t" | grep -c -E '^(crash|timeout|oom|leak)-' || true)
  echo "$t: ${runs:-?} inputs in ${seconds} s, exit $rc, ${found} findings kept in $work/artifacts/$t (log: $work/$t.log)"
  [ "$rc" -eq 0 ] || status=1
  rm -rf "$work/scratch"
done
exit $status
