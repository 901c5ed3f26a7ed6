"""Load test of `spark-infer serve`: C concurrent clients for a bounded time, each sending
streamed /v1/completions one after another; reports requests/s, latency p50/p99, time to first
token (TTFT) p50/p99 and generated tokens/s.

    python bench/serve_load.py --model gemma3-270m --clients 4 --duration 30 \
        --parallel 2 --threads 1
    python bench/serve_load.py --url http://127.0.0.1:8000 --clients 8 --duration 60

With --model it starts the server itself (on a free loopback port) and stops it afterwards;
with --url it loads a server that is already running. Each client sends its prompt with a
distinct leading number, so no request reuses another's cached prompt prefix (--same-prompt
turns that off and shows the prefix cache at work). TTFT is the time to the first chunk that
carries text; latency is the time to `data: [DONE]`.
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import subprocess
import sys
import threading
import time

import httpx

PROMPT = ("Write a short story about a lighthouse keeper who finds a message in a bottle. "
          "The story should be gentle and end with hope.")


def percentile(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    k = (len(xs) - 1) * q
    lo = int(k)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def one_request(client: httpx.Client, body: dict) -> tuple[float, float, int]:
    """(latency s, TTFT s, completion tokens) of one streamed completion."""
    t0 = time.perf_counter()
    ttft = None
    tokens = 0
    with client.stream("POST", "/v1/completions", json=body) as r:
        if r.status_code != 200:
            r.read()
            raise RuntimeError(f"HTTP {r.status_code}: {r.text[:200]}")
        for line in r.iter_lines():
            if not line.startswith("data: "):
                continue
            data = line[len("data: "):]
            if data == "[DONE]":
                break
            chunk = json.loads(data)
            if "error" in chunk:
                raise RuntimeError(chunk["error"]["message"])
            if ttft is None and chunk["choices"] and chunk["choices"][0]["text"]:
                ttft = time.perf_counter() - t0
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
    latency = time.perf_counter() - t0
    return latency, latency if ttft is None else ttft, tokens


def run_load(url: str, clients: int, duration: float, max_tokens: int, same_prompt: bool,
             model: str | None) -> dict:
    results: list[tuple[float, float, int]] = []
    errors: list[str] = []
    lock = threading.Lock()
    deadline = time.perf_counter() + duration

    def client_loop(i: int) -> None:
        n = 0
        with httpx.Client(base_url=url, timeout=600) as c:
            while time.perf_counter() < deadline:
                prompt = PROMPT if same_prompt else f"{i}.{n} {PROMPT}"
                body = {"prompt": prompt, "max_tokens": max_tokens, "temperature": 0,
                        "stream": True, "stream_options": {"include_usage": True}}
                if model:
                    body["model"] = model
                try:
                    res = one_request(c, body)
                    with lock:
                        results.append(res)
                except Exception as e:  # a load test reports failures, it does not stop
                    with lock:
                        errors.append(str(e))
                n += 1

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client_loop, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0  # includes the requests still running at the deadline
    lat = [r[0] for r in results]
    ttft = [r[1] for r in results]
    tokens = sum(r[2] for r in results)
    return {"clients": clients, "duration_s": duration, "wall_s": round(wall, 2),
            "requests": len(results), "errors": len(errors), "first_error": errors[:1],
            "requests_per_s": round(len(results) / wall, 3),
            "latency_p50_s": round(percentile(lat, 0.5), 3),
            "latency_p99_s": round(percentile(lat, 0.99), 3),
            "ttft_p50_s": round(percentile(ttft, 0.5), 3),
            "ttft_p99_s": round(percentile(ttft, 0.99), 3),
            "completion_tokens": tokens, "completion_tokens_per_s": round(tokens / wall, 1),
            "mean_latency_s": round(statistics.fmean(lat), 3) if lat else None}


def start_server(args: argparse.Namespace) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "spark_infer.cli", "serve", "-m", args.model, "--port", str(port),
           "--parallel", str(args.parallel), "--max-queue", str(max(64, args.clients))]
    if args.dtype:
        cmd += ["--dtype", args.dtype]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    if args.context_length:
        cmd += ["--context-length", str(args.context_length)]
    proc = subprocess.Popen(cmd)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while True:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited with {proc.returncode}")
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            proc.kill()
            raise SystemExit("the server did not start within 300 s")
        time.sleep(0.3)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    where = ap.add_mutually_exclusive_group(required=True)
    where.add_argument("--url", help="a running server, e.g. http://127.0.0.1:8000")
    where.add_argument("--model", help="start `spark-infer serve -m MODEL` for the run")
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--duration", type=float, default=30.0, help="seconds new requests start")
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--same-prompt", action="store_true",
                    help="every request sends the same prompt (prefix cache hits)")
    ap.add_argument("--parallel", type=int, default=1, help="with --model: engines")
    ap.add_argument("--threads", type=int, default=None, help="with --model: threads per engine")
    ap.add_argument("--context-length", type=int, default=None)
    ap.add_argument("--dtype", default=None, help="with --model: weights of an embedded model")
    ap.add_argument("--warmup", type=int, default=1, help="requests before the timed run")
    ap.add_argument("--json", default=None, help="also write the result here")
    args = ap.parse_args(argv)
    if args.clients < 1 or args.duration <= 0:
        ap.error("--clients must be >= 1 and --duration > 0")
    proc = None
    url = args.url
    if args.model:
        proc, url = start_server(args)
    try:
        with httpx.Client(base_url=url, timeout=600) as c:
            for _ in range(args.warmup):  # page in the weights, warm the allocator
                one_request(c, {"prompt": PROMPT, "max_tokens": args.max_tokens,
                                "temperature": 0, "stream": True,
                                "stream_options": {"include_usage": True}})
        result = run_load(url, args.clients, args.duration, args.max_tokens, args.same_prompt,
                          None)  # no "model" field: whatever the server serves
        with httpx.Client(base_url=url, timeout=60) as c:
            metrics = c.get("/metrics").text
        result["server"] = {line.split(" ")[0]: float(line.split(" ")[1])
                            for line in metrics.splitlines()
                            if line and not line.startswith("#") and "{" not in line}
        result["config"] = {k: v for k, v in vars(args).items() if k != "json"}
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=30)
    print(json.dumps(result, indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
