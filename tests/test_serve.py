"""`spark-infer serve`: the real server (a subprocess on 127.0.0.1, a free port, a tiny model),
driven by the `openai` client and httpx. Answers are checked against the Python API and numpy
run in this process on the same file, never against the server's own earlier output."""

from __future__ import annotations

import concurrent.futures
import json
import re
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("sse_starlette")
pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")
openai = pytest.importorskip("openai")

import spark_infer  # noqa: E402

from test_completion import greedy_chain  # noqa: E402

# A long context: greedy decoding of "Ruth said" on the tiny model never ends, and running to
# the end of 65536 positions takes tens of seconds, so a cancelled request is plain to see.
CONTEXT = 65536
ENGINES, QUEUE = 2, 2


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tiny_model_path):
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "spark_infer.cli", "serve", "-m", tiny_model_path,
         "-c", str(CONTEXT), "--parallel", str(ENGINES), "-t", "1", "--max-queue", str(QUEUE),
         "--port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            assert proc.poll() is None, proc.stdout.read()
            try:
                if httpx.get(base + "/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the server did not start"
            time.sleep(0.2)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        proc.stdout.close()


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server, timeout=120) as c:
        yield c


@pytest.fixture(scope="module")
def client(server):
    with openai.OpenAI(base_url=server + "/v1", api_key="none", max_retries=0,
                       timeout=120) as c:
        yield c


@pytest.fixture(scope="module")
def local(tiny_model_path):
    """The same file in this process: the reference for greedy answers and logprobs."""
    with spark_infer.load(tiny_model_path, context_length=512) as m:
        yield m


def metrics(http) -> dict[str, float]:
    text = http.get("/metrics").text
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def test_models_and_health(client, http):
    (m,) = client.models.list().data
    assert m.id == "tiny.spark"
    h = http.get("/health").json()
    assert h["status"] == "ok" and h["engines"] == ENGINES


def test_completion_equals_python_api(client, local):
    r = client.completions.create(model="tiny.spark", prompt="Naomi said", max_tokens=10,
                                  temperature=0)
    want = local.generate("Naomi said", max_new_tokens=10, temperature=0)
    assert r.choices[0].text == want and r.object == "text_completion"
    assert r.usage.prompt_tokens == len(local.tokenize("Naomi said"))
    assert r.usage.completion_tokens == local.last_stats.generated_tokens
    streamed = client.completions.create(model="tiny.spark", prompt="Naomi said", max_tokens=10,
                                         temperature=0, stream=True,
                                         stream_options={"include_usage": True})
    chunks = list(streamed)
    assert "".join(c.choices[0].text for c in chunks if c.choices) == want
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == \
        r.usage.completion_tokens


def test_chat_streamed_and_not(client, local):
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Who is Ruth?"}]
    r = client.chat.completions.create(model="tiny.spark", messages=msgs, max_tokens=8,
                                       temperature=0)
    want = local.chat(msgs, max_new_tokens=8, temperature=0)
    assert r.choices[0].message.content == want and r.choices[0].message.role == "assistant"
    assert r.usage.prompt_tokens == len(local.chat_ids(msgs))
    stream = client.chat.completions.create(model="tiny.spark", messages=msgs, max_tokens=8,
                                            temperature=0, stream=True)
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == want
    assert chunks[-1].choices[0].finish_reason == r.choices[0].finish_reason


def test_raw_sse_format(http):
    with http.stream("POST", "/v1/completions", json={
            "prompt": "Ruth", "max_tokens": 3, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}}) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        data = [line[len("data: "):] for line in r.iter_lines() if line.startswith("data: ")]
    assert data[-1] == "[DONE]"
    usage = json.loads(data[-2])
    assert usage["choices"] == [] and usage["usage"]["completion_tokens"] <= 3


def test_logprobs_equal_numpy(client, local):
    r = client.completions.create(model="tiny.spark", prompt="Ruth said", max_tokens=5,
                                  temperature=0, logprobs=3)
    lp = r.choices[0].logprobs
    chain, rows = greedy_chain(local, local.tokenize("Ruth said"), len(lp.tokens))
    np.testing.assert_allclose(lp.token_logprobs, rows[np.arange(len(chain)), chain], atol=1e-3)
    for top, row in zip(lp.top_logprobs, rows):
        assert sorted(top.values(), reverse=True)[0] == pytest.approx(row.max(), abs=1e-3)
    msgs = [{"role": "user", "content": "Naomi"}]
    c = client.chat.completions.create(model="tiny.spark", messages=msgs, max_tokens=4,
                                       temperature=0, logprobs=True, top_logprobs=2)
    content = c.choices[0].logprobs.content
    chain, rows = greedy_chain(local, local.chat_ids(msgs), len(content))
    np.testing.assert_allclose([t.logprob for t in content], rows[np.arange(len(chain)), chain],
                               atol=1e-3)
    for t, row in zip(content, rows):
        second = np.sort(row)[-2]
        assert [a.logprob for a in t.top_logprobs] == pytest.approx([row.max(), second], abs=1e-3)


def test_stop_strings(client, local):
    base = local.generate("Ruth said", max_new_tokens=12, temperature=0)
    stop = base[4:7]
    r = client.completions.create(model="tiny.spark", prompt="Ruth said", max_tokens=12,
                                  temperature=0, stop=[stop, "never-there"])
    assert r.choices[0].text == base[:base.index(stop)]
    assert r.choices[0].finish_reason == "stop"


def test_seed_reproducible(client):
    def draw(seed: int) -> str:
        return client.completions.create(model="tiny.spark", prompt="Naomi", max_tokens=12,
                                         temperature=1.0, top_p=1.0, seed=seed,
                                         extra_body={"top_k": 0, "min_p": 0.0}).choices[0].text

    assert draw(7) == draw(7)
    assert len({draw(s) for s in range(1, 5)}) > 1


@pytest.mark.parametrize("body, status, words", [
    ({"model": "gpt-4"}, 404, "not served"),
    ({"n": 2}, 400, "n must be 1"),
    ({"temperature": -0.5}, 400, "temperature"),
    ({"prompt": "Ruth " * 70000}, 400, "context holds 65536"),
    ({"top_p": 0}, 400, "top_p"),
    ({"logprobs": 50}, 400, "logprobs"),
    ({"frobnicate": 1}, 400, "frobnicate"),
    ({"max_tokens": "many"}, 400, "max_tokens"),
])
def test_bad_requests_are_clear_4xx(http, body, status, words):
    r = http.post("/v1/completions", json={"prompt": "Ruth", "max_tokens": 2, **body})
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert words in err["message"] and err["type"] == "invalid_request_error"


def test_openai_client_raises_on_bad_request(client):
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])
    with pytest.raises(openai.BadRequestError, match="context"):
        client.chat.completions.create(model="tiny.spark", messages=[
            {"role": "user", "content": "Ruth " * 70000}])


def test_tokenize_detokenize(http, local):
    ids = http.post("/tokenize", json={"content": "Ruth said"}).json()["tokens"]
    assert ids == local.tokenize("Ruth said")
    assert http.post("/detokenize", json={"tokens": ids[1:]}).json()["content"] == "Ruth said"
    assert http.post("/detokenize", json={"tokens": [10 ** 6]}).status_code == 400


def wait_for(http, pred, timeout=30.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        m = metrics(http)
        if pred(m):
            return m
        assert time.monotonic() < deadline, m
        time.sleep(0.05)


def test_stream_disconnect_stops_generation(http):
    before = metrics(http)
    # max_tokens None: until the context is full (about 65k tokens, tens of seconds)
    with http.stream("POST", "/v1/completions", json={
            "prompt": "Ruth said", "max_tokens": None, "temperature": 0, "stream": True}) as r:
        for line in r.iter_lines():
            if line.startswith("data: "):
                break
    m = wait_for(http, lambda m: m["spark_infer_requests_cancelled_total"]
                 > before["spark_infer_requests_cancelled_total"])
    made = m["spark_infer_completion_tokens_total"] - before["spark_infer_completion_tokens_total"]
    assert 0 < made < CONTEXT // 4


def test_non_streamed_disconnect_stops_generation(server, http):
    before = metrics(http)
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(server + "/v1/completions", json={"prompt": "Ruth said", "max_tokens": None,
                                                     "temperature": 0}, timeout=1.0)
    m = wait_for(http, lambda m: m["spark_infer_requests_cancelled_total"]
                 > before["spark_infer_requests_cancelled_total"])
    made = m["spark_infer_completion_tokens_total"] - before["spark_infer_completion_tokens_total"]
    assert 0 < made < CONTEXT // 2
    assert http.get("/health").json()["running"] == 0


def test_concurrent_requests_equal_sequential_greedy(client, http, local):
    prompts = ["Ruth said", "Naomi", "And Boaz", "Whither thou goest"]
    want = [local.generate(p, max_new_tokens=16, temperature=0) for p in prompts]
    before = metrics(http)

    def ask(p: str):
        return client.completions.create(model="tiny.spark", prompt=p, max_tokens=16,
                                         temperature=0)

    with concurrent.futures.ThreadPoolExecutor(len(prompts)) as ex:  # 2 run, 2 queue
        got = list(ex.map(ask, prompts))
    assert [r.choices[0].text for r in got] == want
    m = metrics(http)
    key = 'spark_infer_requests_total{endpoint="/v1/completions",status="200"}'
    assert m[key] - before.get(key, 0) == len(prompts)
    made = m["spark_infer_completion_tokens_total"] - before["spark_infer_completion_tokens_total"]
    assert made == sum(r.usage.completion_tokens for r in got)
    assert m["spark_infer_queue_depth"] == 0 and m["spark_infer_requests_running"] == 0


def test_queue_full_is_503(server, http):
    long = {"prompt": "Ruth said", "max_tokens": None, "temperature": 0, "stream": True}
    streams, readers = [], []  # readers: a dropped line iterator would close its connection
    with httpx.Client(base_url=server, timeout=120) as a, httpx.Client(base_url=server,
                                                                       timeout=120) as b:
        try:
            for c in (a, b):  # occupy both engines
                cm = c.stream("POST", "/v1/completions", json=long)
                r = cm.__enter__()
                streams.append(cm)
                readers.append(r.iter_lines())
                assert next(readers[-1]).startswith("data: ")
            assert http.get("/health").json()["running"] == ENGINES
            with concurrent.futures.ThreadPoolExecutor(QUEUE) as ex:
                queued = [ex.submit(httpx.post, server + "/v1/completions", timeout=120,
                                    json={"prompt": "Naomi", "max_tokens": 2, "temperature": 0})
                          for _ in range(QUEUE)]
                wait_for(http, lambda m: m["spark_infer_queue_depth"] == QUEUE)
                r = http.post("/v1/completions", json={"prompt": "x", "max_tokens": 1})
                assert r.status_code == 503 and r.json()["error"]["code"] == "queue_full"
                assert metrics(http)["spark_infer_requests_rejected_total"] >= 1
                for cm in streams:  # free the engines: the queued requests run
                    cm.__exit__(None, None, None)
                streams = []
                assert [f.result().status_code for f in queued] == [200] * QUEUE
        finally:
            for cm in streams:
                cm.__exit__(None, None, None)


def test_chat_next_turn_reuses_the_cached_prefix(client, http):
    msgs = [{"role": "user", "content": "Tell me of Moab."}]
    first = client.chat.completions.create(model="tiny.spark", messages=msgs, max_tokens=6,
                                           temperature=0)
    before = metrics(http)
    msgs += [{"role": "assistant", "content": first.choices[0].message.content},
             {"role": "user", "content": "And then?"}]
    second = client.chat.completions.create(model="tiny.spark", messages=msgs, max_tokens=6,
                                            temperature=0)
    m = metrics(http)
    def grew(name: str) -> float:
        return m[f"spark_infer_{name}"] - before[f"spark_infer_{name}"]

    cached, prefilled = grew("prompt_tokens_cached_total"), grew("prefill_tokens_total")
    # The first exchange came from the cache (all but the last answer token, which was sampled
    # but never run), on whichever of the engines holds it; only the rest was prefilled.
    assert cached == first.usage.prompt_tokens + first.usage.completion_tokens - 1
    assert prefilled == second.usage.prompt_tokens - cached


def test_metrics_text(http):
    missing = http.get("/no/such/page")
    assert missing.status_code == 404 and "error" in missing.json()
    text = http.get("/metrics").text
    assert 'endpoint="other",status="404"' in text and "/no/such/page" not in text
    for name in ("requests_total", "requests_cancelled_total", "prompt_tokens_total",
                 "completion_tokens_total", "queue_depth", "prefill_tokens_per_second",
                 "decode_tokens_per_second"):
        assert re.search(rf"^# TYPE spark_infer_{name} ", text, re.M), name
    m = metrics(http)
    assert m["spark_infer_decode_tokens_per_second"] > 0 and m["spark_infer_engines"] == ENGINES


def test_api_key(tiny_model_path):
    from starlette.testclient import TestClient

    from spark_infer.serve import create_app

    with spark_infer.load(tiny_model_path, context_length=64) as m:
        app = create_app([m], model_name="tiny", api_key="sesame")
        with TestClient(app) as c:
            r = c.post("/v1/completions", json={"prompt": "Ruth", "max_tokens": 1})
            assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
            ok = c.post("/v1/completions", json={"prompt": "Ruth", "max_tokens": 1},
                        headers={"Authorization": "Bearer sesame"})
            assert ok.status_code == 200 and ok.json()["model"] == "tiny"
            assert c.get("/health").status_code == 200


def test_penalties_pass_through_to_sampling(client, local):
    """presence/frequency penalties and repeat_last_n reach SamplingParams: the greedy answer
    equals the Python API's with the same values (and differs from the plain greedy one)."""
    kw = dict(presence_penalty=1.5, frequency_penalty=0.5)
    r = client.completions.create(model="tiny.spark", prompt="Ruth said", max_tokens=12,
                                  temperature=0, extra_body={"repeat_last_n": 16}, **kw)
    want = local.generate("Ruth said", max_new_tokens=12, temperature=0, repeat_last_n=16, **kw)
    assert r.choices[0].text == want
    assert want != local.generate("Ruth said", max_new_tokens=12, temperature=0)


def test_load_script(server, http, tmp_path):
    """bench/serve_load.py against the running server: every request answered, and the tokens
    it counted from the streams equal what the server counted."""
    import importlib.util
    import os

    path = os.path.join(os.path.dirname(__file__), os.pardir, "bench", "serve_load.py")
    spec = importlib.util.spec_from_file_location("serve_load", path)
    load = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(load)
    before = metrics(http)
    out = tmp_path / "load.json"
    assert load.main(["--url", server, "--clients", "2", "--duration", "1", "--max-tokens", "4",
                      "--warmup", "0", "--json", str(out)]) == 0
    r = json.loads(out.read_text())
    assert r["errors"] == 0 and r["requests"] > 0
    assert r["ttft_p50_s"] <= r["latency_p99_s"] and r["latency_p50_s"] <= r["latency_p99_s"]
    made = r["server"]["spark_infer_completion_tokens_total"] \
        - before["spark_infer_completion_tokens_total"]
    assert made == r["completion_tokens"] > 0
