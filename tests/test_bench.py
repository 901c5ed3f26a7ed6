"""spark-infer bench (python/spark_infer/bench/), end to end on tiny random models; not timed.

Checks the JSON has the documented fields, that the sparsity it reports is what the engine's
counters say when the same tokens are replayed through a fresh engine, and that the bytes per
decode token of a dense model are the file's bytes plus the KV formula of the issue, computed
here from the config alone.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import numpy as np
import pytest

from spark_infer import _core, bench
from spark_infer.config import ModelConfig
from spark_infer.random_model import make_random_model

# Tiny Gemma-2-like shapes. attn_topk 8 < the contexts below, so Spark attention really selects;
# sliding_window 24 < 40, so the local layer's window clips the longer context.
_BASE = dict(arch="gemma2", vocab_size=512, d_model=64, n_layers=2, n_heads=2, n_kv_heads=1,
             head_dim=32, query_scale=32 ** -0.5, layer_types=("local", "global"),
             sliding_window=24, attn_softcap=50.0, final_softcap=30.0)
SPARK = ModelConfig(**_BASE, d_ff=256, ffn_predictor_dim=32, ffn_topk_fraction=0.08,
                    attn_predictor_dim=16, attn_topk=8)
DENSE = ModelConfig(**_BASE, d_ff=128)

CONTEXTS = (12, 40)
PREFILL, CHUNK, STEPS = 32, 8, 3

RESULT_FIELDS = {"model", "mode", "threads", "context", "tokens", "tok_s", "ms_per_token",
                 "breakdown_ms_per_token", "ffn_active_fraction", "attn_mean_tokens",
                 "ffn_active_mean", "attn_tokens_mean"}
DECODE_FIELDS = {"bytes_per_token", "effective_gbs", "bandwidth_gbs", "bandwidth_fraction"}
PREFILL_FIELDS = {"gflop_per_token", "gflops"}


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    d = tmp_path_factory.mktemp("bench")
    spark, dense = d / "spark.spark", d / "dense.spark"
    make_random_model(spark, SPARK, dtype="bf16", seed=3)
    make_random_model(dense, DENSE, dtype="bf16", seed=3)
    out_json, out_png = d / "out.json", d / "out.png"
    rc = bench.main(["--vs", str(spark), str(dense), "--context", *map(str, CONTEXTS),
                     "--prefill-tokens", str(PREFILL), "--chunk", str(CHUNK), "--steps",
                     str(STEPS), "--repeats", "2", "--warmup", "1", "--threads", "1",
                     "--bandwidth-bytes", str(1 << 22), "--seed", "5", "--quiet",
                     "--json", str(out_json), "--plot", str(out_png)])
    assert rc == 0
    return {"report": json.loads(out_json.read_text()), "png": out_png, "spark": spark,
            "dense": dense}


def _result(report: dict, model: str, mode: str, context: int) -> dict:
    (r,) = [r for r in report["results"]
            if r["model"] == model and r["mode"] == mode and r["context"] == context]
    return r


def test_json_has_documented_fields(run: dict) -> None:
    rep = run["report"]
    assert rep["schema"] == bench.SCHEMA
    for key in ("command", "commit", "date", "elapsed_s", "machine", "settings",
                "bandwidth_gbs", "bandwidth_samples", "models", "results", "ratios", "notes"):
        assert key in rep, key
    assert {"cpu", "physical_cores", "logical_cpus", "highway_target", "simd", "python",
            "platform"} <= set(rep["machine"])
    assert rep["machine"]["highway_target"] == _core.current_target()
    assert rep["settings"]["contexts"] == list(CONTEXTS)
    # One probe at the start, then one per kept round of decode samples (2 per context).
    assert len(rep["bandwidth_samples"]["1"]) == 1 + 2 * len(CONTEXTS)
    assert rep["bandwidth_gbs"]["1"] == pytest.approx(np.median(rep["bandwidth_samples"]["1"]))
    labels = [m["label"] for m in rep["models"]]
    assert labels == ["spark.spark", "dense.spark"]
    for m in rep["models"]:
        assert {"kind", "source", "path", "dtype", "spark", "config", "weight_bytes", "kv_bytes",
                "load_s"} <= set(m)
        assert m["dtype"] == "bf16" and m["source"] == "file"
    assert [m["spark"] for m in rep["models"]] == [True, False]
    assert ModelConfig.from_dict(rep["models"][0]["config"]) == SPARK

    # One prefill point and one decode point per context, per model.
    assert len(rep["results"]) == 2 * (1 + len(CONTEXTS))
    for r in rep["results"]:
        assert RESULT_FIELDS <= set(r), RESULT_FIELDS - set(r)
        assert r["mode"] in ("prefill", "decode")
        assert r["threads"] == 1
        t = r["tok_s"]
        assert len(t["samples"]) == 2
        assert t["min"] <= t["median"] <= t["max"] and t["min"] > 0
        assert set(r["breakdown_ms_per_token"]) == set(bench.COMPONENTS)
        assert len(r["ffn_active_fraction"]) == len(r["attn_mean_tokens"]) == 2
        if r["mode"] == "decode":
            assert DECODE_FIELDS <= set(r)
            assert r["tokens"] == STEPS
            b = r["bytes_per_token"]
            assert b["total"] == pytest.approx(b["weights"] + b["kv"])
            assert sum(b["by_component"].values()) == pytest.approx(b["total"])
        else:
            assert PREFILL_FIELDS <= set(r)
            assert r["tokens"] == r["context"] == PREFILL

    # --vs A B: one ratio per point, A over B, the median of per-sample ratios.
    assert len(rep["ratios"]) == 1 + len(CONTEXTS)
    for q in rep["ratios"]:
        assert (q["a"], q["b"]) == ("spark.spark", "dense.spark")
        a = _result(rep, q["a"], q["mode"], q["context"])["tok_s"]["samples"]
        b = _result(rep, q["b"], q["mode"], q["context"])["tok_s"]["samples"]
        assert q["median"] == pytest.approx(float(np.median(np.divide(a, b))))


def test_outputs_written(run: dict) -> None:
    assert run["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = bench.format_table(run["report"])
    assert "spark.spark" in text and "dense.spark / " not in text
    assert "spark.spark / dense.spark" in text


def _replay(path: Path, cfg: ModelConfig, seed: int) -> dict:
    """The bench's token streams through a fresh engine: (mode, context) -> (ffn, attn)."""
    ctx_tokens = bench.bench_tokens(seed, cfg.vocab_size, max(CONTEXTS), stream=0)
    step_tokens = bench.bench_tokens(seed, cfg.vocab_size, STEPS, stream=1)
    e = _core.Engine(str(path), max(CONTEXTS) + STEPS + 1, max_chunk=CHUNK)
    out = {}
    e.prefill(ctx_tokens[:PREFILL], chunk=CHUNK)
    s = e.stats()
    out[("prefill", PREFILL)] = (s["ffn_active_fraction"], s["attn_mean_tokens"])
    e.reset()
    for ctx in CONTEXTS:           # extended ascending, as the bench does
        e.prefill(ctx_tokens[e.pos:ctx], chunk=CHUNK)
        ffn, att = np.zeros(cfg.n_layers), np.zeros(cfg.n_layers)
        for tok in step_tokens:
            e.decode(int(tok))
            s = e.stats()
            ffn += s["ffn_active_fraction"]
            att += s["attn_mean_tokens"]
            e.rewind(ctx)
        out[("decode", ctx)] = (ffn / STEPS, att / STEPS)
    return out


def test_sparsity_matches_engine_counters(run: dict) -> None:
    rep = run["report"]
    replay = _replay(run["spark"], SPARK, seed=5)
    for (mode, ctx), (ffn, att) in replay.items():
        r = _result(rep, "spark.spark", mode, ctx)
        np.testing.assert_allclose(r["ffn_active_fraction"], ffn, rtol=1e-12)
        np.testing.assert_allclose(r["attn_mean_tokens"], att, rtol=1e-12)
        assert r["ffn_active_mean"] == pytest.approx(float(np.mean(ffn)))
        # Really sparse: ~8% of the FFN; attention keeps fewer tokens than it sees at 40.
        assert 0.0 < r["ffn_active_mean"] < 0.3
    assert _result(rep, "spark.spark", "decode", 40)["attn_tokens_mean"] < 24
    for r in rep["results"]:
        if r["model"] == "dense.spark":
            assert r["ffn_active_fraction"] == [1.0, 1.0]


def test_dense_bytes_per_token(run: dict) -> None:
    rep = run["report"]
    header_bytes = sum(bench.tensor_bytes(run["dense"]).values())  # every tensor is read
    c = DENSE
    for ctx in CONTEXTS:
        visible = [min(ctx + 1, c.sliding_window), ctx + 1]          # local, global layer
        kv = sum(c.n_kv_heads * v * 2 * c.head_dim * 2 for v in visible)  # bf16 cache
        b = _result(rep, "dense.spark", "decode", ctx)["bytes_per_token"]
        assert b["weights"] == header_bytes
        assert b["kv"] == kv


def test_missing_peer_is_skipped_with_a_note(monkeypatch: pytest.MonkeyPatch, tmp_path: Path
                                             ) -> None:
    import importlib.util

    from spark_infer import models

    @contextlib.contextmanager
    def fake_gguf(name: str, directory: object = None):
        yield tmp_path / "fake.gguf"

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(models, "gguf_path", fake_gguf)
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda n, *a: None if n in ("llama_cpp", "torch") else
                        real_find_spec(n, *a))
    monkeypatch.setenv("PATH", str(tmp_path))   # no llama-bench there
    args = bench.build_parser().parse_args(["x", "--peers", "llama.cpp", "llama-bench",
                                            "transformers", "--threads", "1"])
    notes: list[str] = []
    with contextlib.ExitStack() as stack:
        assert bench._make_peers(args, 64, notes, stack) == []
    assert any("llama.cpp skipped" in n and "llama-cpp-python" in n for n in notes)
    assert any("llama-bench skipped" in n for n in notes)
    assert any("transformers skipped" in n for n in notes)


FAKE_LLAMA_BENCH = """#!/usr/bin/env python3
# A stand-in for llama.cpp's llama-bench: checks the arguments the runner passes and prints one
# test in llama-bench's JSON shape, avg_ts = 1000 / (1 + n_depth / 1000) for decode.
import json, sys
a = sys.argv[1:]
opt = {a[i]: a[i + 1] for i in range(0, len(a) - 1, 2)}
assert opt["-o"] == "json" and opt["-r"] == "1" and opt["-m"].endswith(".gguf"), a
p, n, d = int(opt["-p"]), int(opt["-n"]), int(opt.get("-d", 0))
ts = 5000.0 if n == 0 else 1000.0 / (1 + d / 1000)
print(json.dumps([{"build_commit": "abc123", "build_number": 7, "n_prompt": p, "n_gen": n,
                   "n_depth": d, "n_threads": int(opt["-t"]), "avg_ts": ts,
                   "samples_ts": [ts]}]))
"""


def test_llama_bench_peer_reads_its_timings(tmp_path: Path) -> None:
    exe = tmp_path / "llama-bench"
    exe.write_text(FAKE_LLAMA_BENCH)
    exe.chmod(0o755)
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    r = bench.LlamaBenchRunner("llama-bench Q4_K_M", str(exe), gguf, "Q4_K_M", 64, 2)
    s = r.prefill(np.zeros(512, np.int32), 64)
    assert s.tokens == 512 and s.tok_s == pytest.approx(5000.0)
    r.extend(np.zeros(8, np.int32), 3000, 64)
    s = r.decode(3000, np.zeros(8, np.int32))
    assert s.tokens == 8 and s.tok_s == pytest.approx(250.0)
    assert r.info()["version"] == "llama-bench abc123 (7)"
    bad = tmp_path / "broken"
    bad.write_text("#!/bin/sh\necho nope >&2\nexit 3\n")
    bad.chmod(0o755)
    with pytest.raises(RuntimeError, match="nope"):
        bench.LlamaBenchRunner("x", str(bad), gguf, "Q4_K_M", 64, 2).prefill(np.zeros(4), 4)


def test_bad_arguments_exit_with_usage(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        bench.main(["--steps", "1"])
    assert e.value.code == 2
    assert "no model" in capsys.readouterr().err


@pytest.mark.parametrize("margin", ["-1", "nan", "inf"])
def test_bad_lm_head_screen_margin_exits_with_usage(margin: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        bench.main(["gemma2-2b", "--lm-head-screen", margin, "--steps", "1"])
    assert e.value.code == 2
    assert "--lm-head-screen must be a finite margin >= 0" in capsys.readouterr().err


def test_lm_head_screen_gives_random_models_the_screen(tmp_path: Path) -> None:
    """--lm-head-screen M: the random model's config says margin M (so its cached file is keyed
    apart from the unscreened one) and its engine decodes through the screen."""
    cfg = DENSE.replace(d_model=128)
    plain = bench._random_model_file(cfg, "d128", "bf16", 0, tmp_path)
    screened = bench._random_model_file(cfg, "d128", "bf16", 0, tmp_path, lm_head_screen=10.0)
    assert plain != screened
    from spark_infer.fileformat import read_engine_header

    assert read_engine_header(plain)["config"].get("lm_head_screen_margin", 0.0) == 0.0
    assert read_engine_header(screened)["config"]["lm_head_screen_margin"] == 10.0
    engine = _core.Engine(str(screened), context_length=16)
    assert engine.lm_head_screen
    engine.prefill(np.arange(4, dtype=np.int32), 4, False)
    engine.decode(5)
    assert engine.screen_rescored > 0


def test_bytes_per_token_of_a_screened_lm_head(tmp_path: Path) -> None:
    """With the screened LM head a decode step reads the screen (4.25 bits a weight: 4-bit
    codes and an f32 d per 128 weights) and the rescored rows of token_embd, not all of it."""
    cfg = DENSE.replace(d_model=128)
    plain = bench._random_model_file(cfg, "d128", "bf16", 0, tmp_path)
    screened = bench._random_model_file(cfg, "d128", "bf16", 0, tmp_path, lm_head_screen=10.0)
    scfg = cfg.replace(lm_head_screen_margin=10.0)
    frac, att = [1.0] * cfg.n_layers, [8.0] * cfg.n_layers
    exact = bench.decode_bytes_per_token(cfg, bench.tensor_bytes(plain), 8, frac, att)
    got = bench.decode_bytes_per_token(scfg, bench.tensor_bytes(screened), 8, frac, att,
                                       lm_head_rows=3.0)
    V, d = cfg.vocab_size, cfg.d_model
    screen = (V + 3) // 4 * (d // 128 * 272)                  # 4 rows a tile, 272 bytes a block
    norm = 4 * d                                              # output_norm, f32
    assert exact["by_component"]["logits"] == pytest.approx(2 * V * d + norm)   # bf16 head
    assert got["by_component"]["logits"] == pytest.approx(screen + 3 * 2 * d + norm)
    assert got["total"] - got["by_component"]["logits"] == pytest.approx(
        exact["total"] - exact["by_component"]["logits"])
    none = bench.decode_bytes_per_token(scfg, bench.tensor_bytes(screened), 8, frac, att)
    assert none["by_component"]["logits"] == pytest.approx(screen + norm)


def test_bytes_per_token_of_sparsified_models(tmp_path: Path) -> None:
    """Sparsified FFN: the predictor (or gate) whole, kept rows of up and down_t at the active
    fraction (abs_act: up whole too); sparsified attention: the r_a scan plus the kept rows.
    Expected bytes from the config alone (bf16 matrices, f32 norms and rotations)."""
    d, ff, hd, L = DENSE.d_model, DENSE.d_ff, DENSE.head_dim, DENSE.n_layers
    frac, att = [0.25, 0.5], [6.0, 10.0]
    ctx = 30
    for by, rank in (("abs_gelu", 0), ("abs_gelu", 8), ("abs_act", 0)):
        cfg = DENSE.replace(ffn_sparse_fraction=0.3, ffn_select_by=by, ffn_gate_rank=rank,
                            attn_sparse_topk=4, attn_sparse_dim=8, attn_sparse_recent=2)
        path = tmp_path / f"{by}{rank}.spark"
        make_random_model(path, cfg, dtype="bf16", seed=1)
        got = bench.decode_bytes_per_token(cfg, bench.tensor_bytes(path), ctx, frac, att)
        mat = 2 * ff * d                                             # one [d_ff, d] bf16 matrix
        ffn = 0.0
        for layer in range(L):
            whole = rank * (d + ff) * 2 + (mat if rank == 0 else 0) + (mat if by == "abs_act" else 0)
            kept = mat * ((1 if rank else 0) + (0 if by == "abs_act" else 1) + 1)
            ffn += 2 * d * 4 + whole + frac[layer] * kept
        assert got["by_component"]["ffn"] == pytest.approx(ffn)
        kv = 0.0
        for layer in range(L):
            n = min(ctx + 1, cfg.sliding_window) if cfg.is_local(layer) else ctx + 1
            kv += n * 8 * 2 + min(n, att[layer]) * (2 * hd - 8) * 2    # bf16 cache
        assert got["kv"] == pytest.approx(kv)
        f32 = bench.decode_bytes_per_token(cfg, bench.tensor_bytes(path), ctx, frac, att, "f32")
        assert f32["kv"] == pytest.approx(2 * kv)


def test_files_of_one_name_get_their_folder_in_the_label(tmp_path: Path) -> None:
    """runs/a/model.spark and runs/b/model.spark are two models, labelled by folder."""
    for name, cfg in (("a", SPARK), ("b", DENSE)):
        (tmp_path / name).mkdir()
        make_random_model(tmp_path / name / "model.spark", cfg, dtype="bf16", seed=1)
    out = tmp_path / "out.json"
    assert bench.main([str(tmp_path / "a" / "model.spark"), str(tmp_path / "b" / "model.spark"),
                       "--context", "12", "--modes", "decode", "--steps", "2", "--repeats", "1",
                       "--warmup", "0", "--threads", "1", "--bandwidth-bytes", str(1 << 22),
                       "--quiet", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert [m["label"] for m in report["models"]] == ["a/model.spark", "b/model.spark"]
    assert sorted(r["model"] for r in report["results"]) == ["a/model.spark", "b/model.spark"]


def test_q4_mix_is_compared_with_q4_k_m():
    """A q4 file from the Q4_K_M GGUF holds a mix ("int8+q4+q5", each matrix at its source's
    precision): its peer is llama.cpp's Q4_K_M, as plain q4's."""
    from spark_infer.bench.stats import _peer_types

    assert _peer_types("int8+q4+q5") == _peer_types("q4") == ("Q4_K_M",)
    assert _peer_types("int8") == ("Q8_0",) and _peer_types("q5") == ()


def test_text_tokens_are_the_calibration_text(tmp_path: Path) -> None:
    """--tokens text: the shipped calibration text by the model's own tokenizer, <bos> first,
    repeated to length; a model without a tokenizer is a clear error."""
    from tiny_model import write_tiny_model

    from spark_infer.bench.measure import text_tokens
    from spark_infer.data import calibration_text
    from spark_infer.tokenizer import Tokenizer

    path = tmp_path / "tok.spark"
    write_tiny_model(str(path), dtype="bf16")
    tok = Tokenizer.from_engine_file(path)
    piece = tok.encode(calibration_text())
    runner = type("R", (), {"kind": "engine", "path": path})()
    ids = text_tokens([runner], 2 * len(piece) + 5)
    assert ids[0] == tok.bos_id and ids.dtype == np.int32
    assert list(ids[1:len(piece) + 1]) == piece and list(ids[len(piece) + 1:2 * len(piece) + 1]) == piece
    make_random_model(tmp_path / "none.spark", DENSE, dtype="bf16", seed=1)
    with pytest.raises(ValueError, match="needs a model whose engine file has a tokenizer"):
        text_tokens([type("R", (), {"kind": "engine", "path": tmp_path / "none.spark"})()], 10)
    out = tmp_path / "out.json"
    assert bench.main([str(path), "--context", "12", "--modes", "decode", "--steps", "2",
                       "--repeats", "1", "--warmup", "0", "--threads", "1", "--tokens", "text",
                       "--bandwidth-bytes", str(1 << 22), "--quiet", "--json", str(out)]) == 0
    assert json.loads(out.read_text())["settings"]["tokens"] == "text"
