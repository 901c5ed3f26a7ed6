"""The `spark-infer` command line: generate, chat, info, convert, perplexity, serve, bench.

Every subcommand prints one clear message and exits non-zero on bad input (a missing file, a
bad sampling value, a prompt longer than the context); nothing prints a traceback for those.
`chat` is the exception for context overflow: it drops old turns or refuses the one message and
keeps the session.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
from collections.abc import Sequence

from spark_infer.fileformat import DTYPES

__all__ = ["main"]

log = logging.getLogger("spark_infer")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("-m", "--model", default=None,
                   help="engine file, or an embedded model name (default: gemma3-270m)")
    p.add_argument("--dtype", default=None, choices=DTYPES,
                   help="matrix weights of an embedded model (default: q4 for gemma3-270m, "
                        "the fastest within 1%% of f32's perplexity; int8 for gemma3-270m-sparse)")
    p.add_argument("--embed-dtype", default=None, choices=DTYPES,
                   help="embedding / LM-head weights of an embedded model (default: --dtype, "
                        "or the model's default)")
    p.add_argument("-t", "--threads", type=_positive_int, default=None,
                   help="kernel threads (default: physical cores)")
    p.add_argument("--mmap", action="store_true",
                   help="map the engine file instead of reading it into memory (load(use_mmap="
                        "True); README, \"Weights in memory\"): lazy loading, pages shared with "
                        "other processes and serve's --parallel engines, decode a few %% slower")
    p.add_argument("-c", "--context-length", type=_positive_int, default=None,
                   help="KV-cache positions (default: 4096)")


def _add_sampling_args(p: argparse.ArgumentParser, max_new_tokens: int) -> None:
    p.add_argument("-n", "--max-new-tokens", type=_positive_int, default=max_new_tokens)
    p.add_argument("--temperature", type=float, default=0.8, help="0 is greedy (default: 0.8)")
    p.add_argument("--top-k", type=int, default=40)
    p.add_argument("--top-p", type=float, default=0.95)
    p.add_argument("--min-p", type=float, default=0.05)
    p.add_argument("--repetition-penalty", type=float, default=1.0)
    p.add_argument("--repeat-last-n", type=int, default=64,
                   help="tokens the penalties look back over (default: 64; 0: none; -1: all)")
    p.add_argument("--frequency-penalty", type=float, default=0.0,
                   help="subtract this times each token's count in the window (-2..2)")
    p.add_argument("--presence-penalty", type=float, default=0.0,
                   help="subtract this from each token in the window (-2..2)")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--stop", action="append", default=None, help="stop string (repeatable)")


def _sampling_params(args: argparse.Namespace):
    """The sampling flags as SamplingParams (ValueError for a bad value, before any work)."""
    from spark_infer.sampling import SamplingParams

    return SamplingParams(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                          min_p=args.min_p, repetition_penalty=args.repetition_penalty,
                          repeat_last_n=args.repeat_last_n,
                          frequency_penalty=args.frequency_penalty,
                          presence_penalty=args.presence_penalty, seed=args.seed)


def _sampling_kwargs(args: argparse.Namespace) -> dict:
    return dict(dataclasses.asdict(_sampling_params(args)), max_new_tokens=args.max_new_tokens,
                stop=args.stop)


def _load(args: argparse.Namespace):
    from spark_infer.model import load

    return load(args.model, threads=args.threads, context_length=args.context_length,
                dtype=args.dtype, embed_dtype=args.embed_dtype, use_mmap=args.mmap)


def _print_speed(model) -> None:
    s = model.last_stats
    print(f"\nprefill: {s.prefill_tokens} tokens in {s.prefill_seconds:.2f} s "
          f"({s.prefill_tokens_per_second:.1f} tokens/s); "
          f"decode: {s.generated_tokens} tokens in {s.decode_seconds:.2f} s "
          f"({s.decode_tokens_per_second:.1f} tokens/s)", file=sys.stderr)


def _cmd_generate(args: argparse.Namespace) -> int:
    model = _load(args)
    # Validate everything before the first token is printed.
    pieces = model.generate(args.prompt, stream=True, **_sampling_kwargs(args))
    if args.echo:
        sys.stdout.write(args.prompt)
    for piece in pieces:
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write("\n")
    _print_speed(model)
    return 0


CHAT_HELP = "commands: /reset clears the conversation, /exit quits (or EOF); Ctrl-C stops an answer"


def _cmd_chat(args: argparse.Namespace) -> int:
    from spark_infer.errors import ContextLengthError

    sampling = _sampling_kwargs(args)   # a bad flag fails here, not after the first message
    model = _load(args)
    # Tokens kept free for each answer when old turns must go (at most half the context).
    room = min(args.max_new_tokens, model.context_length // 2)
    messages: list[dict[str, str]] = []
    if args.system:
        messages.append({"role": "system", "content": args.system})
    print(f"spark-infer chat with {os.path.basename(model.path)} ({CHAT_HELP})", file=sys.stderr)
    while True:
        try:
            line = input("> ")
        except EOFError:
            print(file=sys.stderr)
            return 0
        except KeyboardInterrupt:
            print(file=sys.stderr)
            continue
        text = line.strip()
        if not text:
            continue
        if text in ("/exit", "/quit"):
            return 0
        if text == "/reset":
            messages = messages[:1] if args.system else []
            model.reset()
            print("(conversation cleared)", file=sys.stderr)
            continue
        try:
            fitted = model.fit_chat(messages + [{"role": "user", "content": line}], room=room)
        except ContextLengthError as e:
            print(f"(not sent: {e}; the conversation is kept, /reset clears it)", file=sys.stderr)
            continue
        dropped = len(messages) + 1 - len(fitted)
        if dropped:
            print(f"(dropped the {dropped} oldest message{'s' if dropped != 1 else ''} to fit "
                  f"the context of {model.context_length} tokens)", file=sys.stderr)
        messages = fitted
        answer: list[str] = []
        pieces = None
        try:
            pieces = model.chat(messages, stream=True, **sampling)
            for piece in pieces:
                answer.append(piece)
                sys.stdout.write(piece)
                sys.stdout.flush()
        except KeyboardInterrupt:
            if pieces is not None:
                pieces.close()  # the model stays usable; keep what was said
            print(" [stopped]", end="", file=sys.stderr)
        sys.stdout.write("\n")
        sys.stdout.flush()
        messages.append({"role": "assistant", "content": "".join(answer)})
        _print_speed(model)


def _cmd_info(args: argparse.Namespace) -> int:
    from spark_infer.fileformat import read_engine_header

    info = read_engine_header(args.file)
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    cfg = info["config"]
    print(f"file:        {info['path']} ({info['file_bytes'] / 2**20:.1f} MiB)")
    print(f"format:      {info['format']} v{info['format_version']}")
    print(f"arch:        {cfg['arch']}: {cfg['n_layers']} layers, d_model {cfg['d_model']}, "
          f"d_ff {cfg['d_ff']}, heads {cfg['n_heads']}/{cfg['n_kv_heads']} x {cfg['head_dim']}, "
          f"vocab {cfg['vocab_size']}")
    print(f"parameters:  {info['parameters'] / 1e6:.1f} M")
    print(f"dtypes:      " + ", ".join(f"{k} x{v}" for k, v in sorted(info["dtypes"].items())))
    print(f"matrices:    " + ", ".join(f"{k} x{v}" for k, v in sorted(info["matrix_types"].items())))
    ffn = (f"Spark FFN: predictor {cfg['ffn_predictor_dim']}, top {cfg['ffn_topk_fraction']:.1%}"
           if cfg["ffn_predictor_dim"] else "dense GeGLU FFN")
    if cfg.get("ffn_sparse_fraction"):
        ffn = (f"sparsified FFN: {cfg['ffn_sparse_fraction']:.0%} of the neurons by "
               f"{cfg['ffn_select_by']}"
               + (f", low-rank predictor {cfg['ffn_gate_rank']}" if cfg["ffn_gate_rank"] else "")
               + (", weighted" if cfg["ffn_select_weighted"] else "")
               + (", calibrated quantiles" if cfg["ffn_sparse_quantiles"] else ", Gaussian quantile"))
    att = (f"Spark attention: predictor {cfg['attn_predictor_dim']} dims, top {cfg['attn_topk']} tokens"
           if cfg["attn_predictor_dim"] else "dense attention")
    if cfg.get("attn_sparse_topk"):
        att = (f"sparsified attention: top {cfg['attn_sparse_topk']} tokens by {cfg['attn_sparse_dim']}"
               f" rotated dims, {cfg['attn_sparse_recent']} newest always")
    print(f"sparsity:    {ffn}; {att}")
    if cfg.get("lm_head_screen_margin"):
        print(f"LM head:     screened by a 4-bit copy (screen4: 128-weight blocks), logits "
              f"within {cfg['lm_head_screen_margin']:g} of the largest recomputed exactly")
    if info.get("sparsify"):
        rec = info["sparsify"]
        print(f"sparsified:  {rec.get('method')}; calibration {rec.get('calibration')}")
        if rec.get("refit"):
            r = rec["refit"]
            print(f"refit:       {', '.join(r.get('tensors', []))} by ridge least squares to the "
                  f"dense FFN's output, lambda {r.get('lambda'):g} x {r.get('lambda_scale')}, "
                  f"{r.get('tokens')} tokens in {r.get('sequences')} sequences")
    layers = cfg["layer_types"]
    print(f"attention:   {layers.count('local')} local (window {cfg['sliding_window']}) / "
          f"{layers.count('global')} global layers; RoPE {cfg['rope_base_local']:g} / "
          f"{cfg['rope_base_global']:g}; soft-caps {cfg['attn_softcap']:g} / {cfg['final_softcap']:g}"
          f"; QK-norm {'yes' if cfg['qk_norm'] else 'no'}")
    print(f"tokenizer:   {'embedded' if info['has_tokenizer'] else 'none'}")
    return 0


def _cmd_convert(args: argparse.Namespace) -> int:
    from spark_infer.convert import convert

    convert(args.src, args.output, dtype=args.dtype, progress=not args.quiet,
            embed_dtype=args.embed_dtype, sparsify=args.sparsify, calibrate=args.calibrate,
            lm_head_screen=args.lm_head_screen)
    print(f"wrote {args.output}", file=sys.stderr)
    return 0


def _cmd_perplexity(args: argparse.Namespace) -> int:
    with open(args.text, encoding="utf-8") as f:
        text = f.read()
    model = _load(args)
    d = model.perplexity_details(text, window=args.window, stride=args.stride)
    print(f"perplexity: {d.perplexity:.4f} over {d.scored_tokens} tokens ({args.text}; "
          f"{d.windows} window{'s' if d.windows != 1 else ''} of {d.window} tokens, "
          f"stride {d.stride}, {d.seconds:.1f} s)")
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    from spark_infer import bench

    return bench.run(args)


def _cmd_serve(args: argparse.Namespace) -> int:
    from spark_infer.serve import server

    return server.run(args)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="spark-infer", description=(
        "CPU inference for Gemma models and their Spark Transformer variants."))
    ap.add_argument("-v", "--verbose", action="store_true", help="log progress to stderr")
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("generate", help="continue a prompt (streams to stdout)")
    p.add_argument("prompt")
    p.add_argument("--echo", action="store_true", help="print the prompt before the output")
    _add_model_args(p)
    _add_sampling_args(p, 256)
    p.set_defaults(fn=_cmd_generate)

    p = sub.add_parser("chat", help="interactive multi-turn chat (" + CHAT_HELP + ")")
    p.add_argument("--system", default=None, help="a system prompt")
    _add_model_args(p)
    _add_sampling_args(p, 512)
    p.set_defaults(fn=_cmd_chat)

    p = sub.add_parser("info", help="config, dtypes, size and sparsity settings of an engine file")
    p.add_argument("file")
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=_cmd_info)

    p = sub.add_parser("convert", help="GGUF file, Hugging Face directory or engine file -> "
                                       "engine file (optionally sparsified)")
    p.add_argument("src", help="a .gguf file (gemma2/gemma3), a Hugging Face checkpoint "
                               "directory, a spark_infer.train checkpoint directory, or a "
                               "dense engine file")
    p.add_argument("-o", "--output", required=True)
    p.add_argument("--dtype", default="bf16", choices=DTYPES)
    p.add_argument("--embed-dtype", default=None, choices=DTYPES,
                   help="token_embd / LM head dtype (default: --dtype)")
    p.add_argument("--sparsify", default=None, metavar="SPEC",
                   help="training-free sparsity, e.g. ffn=0.5 or ffn=0.5,attn=128 (also: "
                        "rank=R low-rank gate predictor, wina, attn_dim=D, recent=N, refit[=LAM] "
                        "least-squares refit of the down projection on the calibration text)")
    p.add_argument("--calibrate", default=None, metavar="TEXT",
                   help="UTF-8 text file to calibrate the per-layer FFN quantiles on, so the "
                        "realised fraction matches ffn=F (its first 2048 tokens; a refit reads "
                        "all of it); with a q4 dtype, the text whose "
                        "inputs weigh the q4 fit (default: the shipped calibration text)")
    p.add_argument("--lm-head-screen", type=float, default=None, metavar="MARGIN",
                   help="add the screened LM head: a 4-bit copy (screen4: 128-weight blocks; "
                        "d_model a multiple of 128) of the embedding scores every "
                        "token, logits within MARGIN of the largest are recomputed exactly "
                        "(e.g. 10; 0 removes it; default: as the source)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(fn=_cmd_convert)

    p = sub.add_parser("perplexity", help="perplexity of a text file")
    p.add_argument("--text", required=True, help="UTF-8 text file")
    p.add_argument("--window", type=int, default=None,
                   help="tokens per window, <bos> included (default: min(context length, 2048))")
    p.add_argument("--stride", type=int, default=None,
                   help="tokens each window starts after the previous one; only tokens no "
                        "earlier window scored are scored (default: window // 2)")
    _add_model_args(p)
    p.set_defaults(fn=_cmd_perplexity)

    p = sub.add_parser("serve", help="OpenAI-compatible HTTP server (needs the [server] extra)")
    _add_model_args(p)
    from spark_infer.serve.server import add_arguments as add_serve_arguments
    add_serve_arguments(p)
    p.set_defaults(fn=_cmd_serve)

    p = sub.add_parser("bench", help="CPU wall time: prefill and decode, dense vs Spark")
    try:
        from spark_infer import bench
        bench.add_arguments(p)
    except ImportError:  # pragma: no cover - bench is part of the package
        pass
    p.set_defaults(fn=_cmd_bench)
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(message)s")
    try:
        return args.fn(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    except (FileNotFoundError, IsADirectoryError, PermissionError) as e:
        print(f"spark-infer: error: {e}", file=sys.stderr)
        return 2
    except (ValueError, TypeError, RuntimeError) as e:
        # FormatError, ContextLengthError, ConversionError and bad arguments are ValueErrors;
        # ModelNotAvailable / ModelBusyError are RuntimeErrors. One line, no traceback.
        print(f"spark-infer: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
