"""The HTTP service on Ray Serve, answering real HTTP requests: results equal to the local index,
request batching, and 4xx (never 500) answers to bad requests."""

import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests

serve = pytest.importorskip("ray.serve")

from lir_agent import Index  # noqa: E402
from lir_agent.distributed import serve as lir_serve  # noqa: E402
from lir_agent.sharded import ShardedIndex, reshard  # noqa: E402

from helpers import clustered  # noqa: E402

TOKEN = "s3cret-token"


def free_port() -> int:
    """A free port between Ray's worker ports (10002-19999 by default) and the kernel's ephemeral
    range. A port the kernel hands out (bind to port 0) is free now, but the Ray servers started
    before Serve's proxy binds it take ephemeral ports too: one took the port a CI run's proxy was
    given. Ray's fixed defaults (6379, 8265, ...) lie below this window."""
    ephemeral_low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    candidates = list(range(20000, ephemeral_low))
    random.shuffle(candidates)
    for port in candidates:
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port below the ephemeral range")


@pytest.fixture(scope="module")
def service(ray_cluster, tmp_path_factory, encoder):
    docs, matrices, _ = clustered(200, seed=21)
    root = tmp_path_factory.mktemp("serve")
    single = Index.create(root / "single", encoder, index_type="exact")
    sharded = ShardedIndex.create(root / "sharded", 2, encoder)
    for target in (single, sharded):
        target.add(docs, embeddings=matrices)
    port = free_port()
    lir_serve.run(str(root / "sharded"), port=port, token=TOKEN, blocking=False,
                  limits=lir_serve.Limits(max_k=100, max_query_chars=2000, max_batch=8),
                  index_options={"num_cpus_per_shard": 0.2})
    yield f"http://127.0.0.1:{port}", single
    serve.shutdown()


def post(url, body, token=TOKEN, raw=None):
    headers = {"Content-Type": "application/json"} | ({"Authorization": f"Bearer {token}"} if token else {})
    return requests.post(url + "/search", data=raw if raw is not None else json.dumps(body), headers=headers, timeout=60)


def test_search_answers_like_the_local_index(service):
    url, single = service
    for query, k, flt in [("cell biology of cancer", 5, None), ("protein folding", 12, {"group": {"$in": [1, 3]}})]:
        answer = post(url, {"query": query, "k": k, "filter": flt})
        assert answer.status_code == 200, answer.text
        body = answer.json()
        expected = single.search(query, k=k, filter=flt)
        assert [h["id"] for h in body["hits"]] == [h.id for h in expected]
        assert [h["score"] for h in body["hits"]] == pytest.approx([h.score for h in expected], abs=1e-4)
        assert body["partial"] is False and body["missing_shards"] == []
    batch = post(url, {"queries": ["a", "b c"], "k": 3}).json()["results"]
    assert [[h["id"] for h in r["hits"]] for r in batch] == [[h.id for h in hits] for hits in single.search_batch(["a", "b c"], k=3)]


def test_concurrent_single_queries_are_batched_correctly(service):
    url, single = service
    queries = [f"question number {i} about genes" for i in range(12)]
    answers = [None] * len(queries)

    def ask(i):
        answers[i] = post(url, {"query": queries[i], "k": 4})

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(queries))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for query, answer in zip(queries, answers):
        assert answer.status_code == 200
        assert [h["id"] for h in answer.json()["hits"]] == [h.id for h in single.search(query, k=4)]


@pytest.mark.parametrize("body, raw, status", [
    (None, "{not json", 422),
    (None, "[1, 2]", 422),
    ({"query": 42}, None, 422),
    ({"query": "x", "k": "10"}, None, 422),
    ({"query": "x", "k": 0}, None, 422),
    ({"query": "x", "k": 10**9}, None, 422),
    ({"query": "x" * 1_000_000}, None, 422),
    ({"queries": ["x"] * 9}, None, 422),
    ({"query": "x", "queries": ["y"]}, None, 422),
    ({}, None, 422),
    ({"query": "   "}, None, 422),
    ({"query": "x", "unknown": 1}, None, 422),
    ({"query": "x", "filter": {"group": {"$regex": "a"}}}, None, 400),
    ({"queries": ["x", "y"], "filter": {"$or": "bad"}}, None, 400),
])
def test_bad_requests_get_4xx_naming_the_problem(service, body, raw, status):
    url, _ = service
    answer = post(url, body, raw=raw)
    assert answer.status_code == status, answer.text
    assert answer.json()  # a JSON explanation, not an HTML error page


def test_bearer_token_and_other_endpoints(service):
    url, single = service
    assert post(url, {"query": "x"}, token=None).status_code == 401
    assert post(url, {"query": "x"}, token="wrong").status_code == 401
    assert requests.get(url + "/health", timeout=30).status_code == 401
    auth = {"Authorization": f"Bearer {TOKEN}"}
    assert requests.get(url + "/health", headers=auth, timeout=30).json()["status"] == "ok"
    info = requests.get(url + "/info", headers=auth, timeout=30).json()
    assert info["documents"] == len(single) and info["num_shards"] == 2 and info["limits"]["max_k"] == 100
    assert requests.get(url + "/nowhere", headers=auth, timeout=30).status_code == 404


def test_the_serve_command_starts_a_working_service(tmp_path, sample_index_path):
    """``lir-agent serve`` in its own process, on its own local Ray: options and the token from
    the environment reach the service, and it answers like the index it serves. Stopped with
    Ctrl-C, as a user would."""
    sharded = tmp_path / "sharded"
    reshard(sample_index_path, sharded, 2, show_progress=False)
    port = free_port()
    env = {name: value for name, value in os.environ.items() if name != "RAY_ADDRESS"} | {"LIR_AGENT_TOKEN": TOKEN}
    process = subprocess.Popen([sys.executable, "-m", "lir_agent.cli", "serve", str(sharded), "--port", str(port),
                                "--max-k", "5", "--num-cpus-per-shard", "0.25"],
                               env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    auth = {"Authorization": f"Bearer {TOKEN}"}
    try:
        deadline = time.monotonic() + 180
        while True:
            assert process.poll() is None, process.stdout.read()
            try:
                if requests.get(url + "/health", headers=auth, timeout=5).status_code == 200:
                    break
            except (requests.ConnectionError, requests.Timeout):  # not listening yet, or the app not deployed yet
                pass
            assert time.monotonic() < deadline, "the service did not come up"
            time.sleep(1)
        question = "Which magazine was started first, Arthur's Magazine or First for Women?"
        expected = ShardedIndex.open(sharded).search(question, k=5)
        hits = post(url, {"query": question, "k": 5}).json()["hits"]
        assert [h["id"] for h in hits] == [h.id for h in expected]
        assert [h["score"] for h in hits] == pytest.approx([h.score for h in expected], abs=1e-4)
        assert post(url, {"query": question, "k": 6}).status_code == 422  # --max-k
        assert post(url, {"query": question}, token=None).status_code == 401  # $LIR_AGENT_TOKEN
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
