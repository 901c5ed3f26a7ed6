"""Ray Serve scale-out: 2 replicas x 1 thread on a local `ray.init(num_cpus=2)` (loopback only)
serve the same app; concurrent requests are answered by both replicas (the response header
names the replica), each answer equal to the Python API's greedy answer."""

from __future__ import annotations

import concurrent.futures
import socket

import pytest

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")
ray = pytest.importorskip("ray")
serve = pytest.importorskip("ray.serve")

import spark_infer  # noqa: E402
from spark_infer.serve.ray import REPLICA_HEADER, ReplicaConfig, deployment  # noqa: E402


@pytest.mark.slow
def test_two_replicas_answer(tiny_model_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with spark_infer.load(tiny_model_path, context_length=256) as local:
        prompts = ["Ruth said", "Naomi", "And Boaz", "Whither thou goest"] * 4
        want = {p: local.generate(p, max_new_tokens=8, temperature=0) for p in set(prompts)}
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        cfg = ReplicaConfig(model=tiny_model_path, model_name="tiny", threads=1,
                            context_length=256)
        serve.run(deployment(cfg, replicas=2), name="spark-infer", route_prefix="/")

        def ask(prompt: str) -> tuple[str, str, str]:
            r = httpx.post(f"http://127.0.0.1:{port}/v1/completions", timeout=60, json={
                "model": "tiny", "prompt": prompt, "max_tokens": 8, "temperature": 0})
            assert r.status_code == 200, r.text
            return prompt, r.headers[REPLICA_HEADER], r.json()["choices"][0]["text"]

        with concurrent.futures.ThreadPoolExecutor(8) as ex:
            answers = list(ex.map(ask, prompts))
        assert all(text == want[p] for p, _, text in answers)
        assert len({replica for _, replica, _ in answers}) == 2
    finally:
        serve.shutdown()
        ray.shutdown()
