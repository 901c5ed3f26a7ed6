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
the tokens fed to decode, step i of every sample getting token i. `--tokens text` takes both
from the shipped calibration text instead (`measure.text_tokens`, by the first engine file's
tokenizer), decode continuing the text after each context: what the screened LM head and the
sparsified FFNs see in use (random ids give flat next-token distributions).

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

Layout (one concern per module; the peer runners import their peers lazily):
  cli.py (options, `run`, `main`), specs.py (model arguments -> engine files), engine_runner.py
  (`Sample`, our engine's runner), peers.py (llama.cpp, llama-bench, transformers),
  measure.py (token streams, the interleaved loop), stats.py (result points, ratios),
  bytes_model.py (bytes / FLOPs per token), machine.py (machine info, bandwidth probe),
  report.py (schema, table), plotting.py (PNG). This package may import spark_infer's config,
  models, fileformat, random_model and _core; nothing in spark_infer imports it but cli.py
  (and train's trainer, for `_cpu_model`).
"""

from __future__ import annotations

from spark_infer.bench.bytes_model import (decode_bytes_per_token, prefill_flops_per_token,
                                           tensor_bytes)
from spark_infer.bench.cli import DEFAULT_CONTEXTS, add_arguments, build_parser, main, run
from spark_infer.bench.engine_runner import COMPONENTS, EngineRunner, Sample
from spark_infer.bench.machine import BandwidthProbe, _commit, _cpu_model, machine_info
from spark_infer.bench.measure import bench_tokens, measure
from spark_infer.bench.peers import (LlamaBenchRunner, LlamaCppRunner, TransformersRunner,
                                     _make_peers)
from spark_infer.bench.plotting import plot
from spark_infer.bench.report import SCHEMA, format_table
from spark_infer.bench.specs import _random_model_file, resolve_spec
from spark_infer.bench.stats import ratios

__all__ = ["add_arguments", "run", "main", "build_parser", "bench_tokens", "decode_bytes_per_token",
           "prefill_flops_per_token", "tensor_bytes", "machine_info", "SCHEMA",
           # also used by bench/*.py scripts and tests
           "COMPONENTS", "DEFAULT_CONTEXTS", "BandwidthProbe", "EngineRunner", "LlamaBenchRunner",
           "LlamaCppRunner", "Sample", "TransformersRunner", "format_table", "measure", "plot",
           "ratios", "resolve_spec", "_commit", "_cpu_model", "_make_peers", "_random_model_file"]
