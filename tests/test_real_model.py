"""The engine on the real Gemma 3 270M against Hugging Face transformers (reference values in
tests/data/gemma3_270m_reference.{json,npz}, made by tools/make_gemma3_reference.py from the same
GGUF, dequantized to f32). These run the C++ engine through the public API; test_real_model_data
checks the numpy reference against the same values."""

from __future__ import annotations

import numpy as np
import pytest

import gemma3_real as real
import spark_infer

LOGIT_TOL = 0.05      # the bar: next-token logits within 0.05 absolute
NEAR_TIE = 0.15       # greedy must agree wherever HF's top-2 margin exceeds this
PPL_REL_TOL = 0.002   # f32 perplexity equals HF's to 0.2 %


@pytest.fixture(scope="module")
def f32_model():
    if not real.models.is_available("gemma3-270m"):
        pytest.skip(real.SKIP_REASON)
    return spark_infer.load(str(real.engine_file("f32")), context_length=2048)


def _prompts():
    return real.reference_data()["prompts"]


@real.needs_gemma3
def test_next_token_logits_match_hf(f32_model):
    arrays = real.reference_arrays()
    short = [e for e in _prompts() if e["prompt"] != "LONG"]
    worst = 0.0
    for k, entry in enumerate(_prompts()):
        last = f32_model.logits(entry["ids"])[-1].astype(np.float64)
        top = np.array(entry["top_ids"])
        diff = float(np.abs(last[top] - np.array(entry["top_logits"])).max())
        assert diff < LOGIT_TOL, (entry["prompt"][:30], diff)
        worst = max(worst, diff)
        if entry in short and f"logits_prompt{short.index(entry)}" in arrays:
            full = arrays[f"logits_prompt{short.index(entry)}"].astype(np.float64)
            # the stored row is float16: add its spacing (0.0156 at |x| in [16, 32)) to the bar
            assert np.abs(last - full).max() < LOGIT_TOL + 0.016
    print(f"\nengine vs HF, top-50 next-token logits over {len(_prompts())} prompts: "
          f"max |diff| {worst:.4f}")


@real.needs_gemma3
def test_greedy_continuations_match_hf(f32_model):
    engine = f32_model.engine
    for entry in _prompts():
        engine.reset()
        f32_model.reset()
        logits = engine.prefill(np.asarray(entry["ids"], np.int32))
        for j, step in enumerate(entry["greedy"]):
            if step["margin"] <= NEAR_TIE:
                break  # a near tie: the two implementations may legitimately part here
            ours = int(np.argmax(logits))
            assert ours == step["id"], (entry["prompt"][:30], j)
            logits = engine.decode(ours)


@real.needs_gemma3
def test_generate_text_matches_hf_greedy(f32_model):
    entry = _prompts()[0]
    assert entry["prompt"] == "The capital of France is"
    steps = entry["greedy"]
    n = next((j for j, s in enumerate(steps) if s["margin"] <= NEAR_TIE), len(steps))
    assert n >= 4
    text = f32_model.generate(entry["prompt"], max_new_tokens=n, temperature=0)
    expected = f32_model.detokenize([s["id"] for s in steps[:n]])
    assert text == expected
    assert text.startswith(" the capital of")


@real.needs_gemma3
def test_perplexity_matches_hf(f32_model):
    ref = real.reference_data()["perplexity"]
    text = (real.DATA / ref["text_file"]).read_text(encoding="utf-8")
    ids = f32_model.tokenize(text)
    assert len(ids) == ref["n_tokens"]
    ppl = f32_model.perplexity(text)
    print(f"\nperplexity f32: ours {ppl:.4f}, HF {ref['ppl']:.4f}")
    assert abs(ppl / ref["ppl"] - 1) < PPL_REL_TOL


@real.needs_gemma3
@pytest.mark.parametrize("dtype, rel_tol", [("bf16", 0.03), ("int8", 0.06)])
def test_lower_precision_perplexity_stays_close(dtype, rel_tol):
    ref = real.reference_data()["perplexity"]
    text = (real.DATA / ref["text_file"]).read_text(encoding="utf-8")
    model = spark_infer.load(str(real.engine_file(dtype)), context_length=2048)
    ppl = model.perplexity(text)
    print(f"\nperplexity {dtype}: {ppl:.4f} (HF f32 {ref['ppl']:.4f})")
    assert abs(ppl / ref["ppl"] - 1) < rel_tol


@real.needs_gemma3
def test_q4_keeps_the_gguf_precision_within_two_percent_of_f32(f32_model):
    """--dtype q4 from the Q4_K_M GGUF keeps each matrix's precision (Q4_K as q4, Q5_0 as q5,
    Q6_K and Q8_0 as int8; the LM head is Q8_0, so int8): the issue's bar is perplexity within
    2 % of f32, with the q4 setting's screened LM head and without it. On the first 768 tokens
    of the KJV text (one window) this measured f32 11.3000, q4 11.3244 (+0.22 %) screened and
    11.3341 (+0.30 %) exact; every matrix re-fitted to q4, as before, gave 13.4850 here
    (+19.3 %), so the bound tells the two apart."""
    ref = real.reference_data()["perplexity"]
    ids = f32_model.tokenize((real.DATA / ref["text_file"]).read_text(encoding="utf-8"))[:768]
    q4 = spark_infer.load(str(real.engine_file("q4")), context_length=768)
    assert q4.engine.weight_type == "int8+q4+q5"
    assert q4.lm_head_screen    # the q4 setting's default (models.DEFAULT_LM_HEAD_SCREEN)
    p32 = f32_model.perplexity(ids, window=768)
    p4 = q4.perplexity(ids, window=768)
    q4.lm_head_screen = False
    exact = q4.perplexity(ids, window=768)
    print(f"\nperplexity, first 768 KJV tokens: f32 {p32:.4f}, q4 {p4:.4f} ({p4 / p32 - 1:+.2%}), "
          f"q4 with the exact LM head {exact:.4f} ({exact / p32 - 1:+.2%})")
    assert abs(p4 / p32 - 1) < 0.02
    assert abs(exact / p32 - 1) < 0.02


@real.needs_gemma3
def test_embedded_default_setting_is_within_one_percent_of_f32():
    """load()'s default weights (models.DEFAULT_DTYPE, DEFAULT_EMBED_DTYPE) were chosen as the
    fastest setting within 1 % of f32's perplexity (bench/lm_head.py): hold them to it against
    Hugging Face's f32 perplexity."""
    from spark_infer import models

    ref = real.reference_data()["perplexity"]
    text = (real.DATA / ref["text_file"]).read_text(encoding="utf-8")
    path = real.engine_file(models.DEFAULT_DTYPE, models.DEFAULT_EMBED_DTYPE)
    ppl = spark_infer.load(str(path), context_length=2048).perplexity(text)
    print(f"\nperplexity {models.default_setting()}: {ppl:.4f} (HF f32 {ref['ppl']:.4f})")
    assert abs(ppl / ref["ppl"] - 1) < 0.01
