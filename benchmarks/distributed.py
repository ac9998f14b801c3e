"""Sharded search on Ray against the local index over the same data (SciFact, default encoder).

For 1, 2 and 4 shards of the 2-bit compressed SciFact index (resharded from the local one, so
every shard shares its codec): single-query p50/p95 latency (each query's best of 3 passes),
queries per second in batches of 32, and the coordinator's overhead (Ray p50 minus local p50;
floor <= 5 ms at 4 shards), also split into Ray's own cost (Ray p50 minus the same shards
searched in this process) and the work sharding adds. Then
the HTTP service (Ray Serve, 4 shards) under concurrent clients: QPS and p95. Results go to
``results/distributed.json``; run ``benchmarks/engine.py --sections modes`` first (it builds
the local index).

    python benchmarks/distributed.py [--queries 300] [--clients 8]
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import sys
import threading
import time
from pathlib import Path

import numpy as np
import requests
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from engine import CACHE, DATA, LATENCY_REPEATS, RESULTS, batch_qps, timed_searches  # noqa: E402

from lir_agent import Encoder, Index  # noqa: E402
from lir_agent.distributed import RayIndex, ensure_ray  # noqa: E402
from lir_agent.distributed import serve as lir_serve  # noqa: E402
from lir_agent.eval import load_beir  # noqa: E402
from lir_agent.sharded import ShardedIndex, reshard  # noqa: E402

SHARD_COUNTS = (1, 2, 4)


def latencies(index, queries) -> list[float]:
    """Each query's best of LATENCY_REPEATS passes (engine.py's timing, so both benchmarks measure alike)."""
    return timed_searches(index, queries, repeats=LATENCY_REPEATS)[1]


def summary(seconds: list[float]) -> dict[str, float]:
    return {"p50_ms": 1e3 * float(np.percentile(seconds, 50)), "p95_ms": 1e3 * float(np.percentile(seconds, 95))}


def http_load(url: str, texts: list[str], clients: int, seconds: float) -> dict[str, float]:
    """``clients`` threads each posting single queries for ``seconds``."""
    latencies_s, errors, stop = [], [], time.perf_counter() + seconds
    lock = threading.Lock()

    def client(offset: int) -> None:
        session, i = requests.Session(), offset
        while time.perf_counter() < stop:
            start = time.perf_counter()
            answer = session.post(url + "/search", json={"query": texts[i % len(texts)], "k": 10}, timeout=60)
            with lock:
                (latencies_s if answer.status_code == 200 else errors).append(time.perf_counter() - start)
            i += clients

    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    return {"clients": clients, "qps": len(latencies_s) / elapsed, "errors": len(errors), **summary(latencies_s)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--http-seconds", type=float, default=20.0)
    args = parser.parse_args()
    local_path = CACHE / "scifact-2-bit"
    local = Index.open(local_path)
    data = load_beir(DATA / "scifact")
    texts = [data.queries[q] for q in list(data.queries)[: args.queries]]
    queries = Encoder.from_pretrained(device="cpu").encode_queries(texts)
    results: dict = {"machine": {"threads": torch.get_num_threads(), "cuda": torch.cuda.is_available()},
                     "documents": len(local), "queries": len(queries)}
    local_seconds = latencies(local, queries[:100])
    results["local"] = summary(local_seconds) | {"qps_batch32": batch_qps(local, queries)}
    print(f"local 2-bit: p50 {results['local']['p50_ms']:.1f} ms, p95 {results['local']['p95_ms']:.1f} ms, "
          f"QPS@32 {results['local']['qps_batch32']:.1f}", flush=True)

    ensure_ray(num_cpus=2)
    results["sharded"] = []
    for count in SHARD_COUNTS:
        path = CACHE / f"scifact-2-bit-{count}-shards"
        shutil.rmtree(path, ignore_errors=True)
        reshard(local_path, path, count, show_progress=False)
        in_process = ShardedIndex.open(path)
        in_process_p50 = summary(latencies(in_process, queries[:100]))["p50_ms"]
        with RayIndex.open(path, num_cpus_per_shard=2 / count) as index:
            expected = [[h.id for h in local.search(q, k=10)] for q in queries[:30]]
            assert [[h.id for h in index.search(q, k=10)] for q in queries[:30]] == expected, "results differ"
            row = {"shards": count, **summary(latencies(index, queries[:100])),
                   "qps_batch32": batch_qps(index, queries)}
        row["overhead_p50_ms"] = row["p50_ms"] - results["local"]["p50_ms"]
        row["in_process_p50_ms"] = in_process_p50
        row["ray_cost_p50_ms"] = row["p50_ms"] - in_process_p50
        results["sharded"].append(row)
        print(f"{count} shard(s) on Ray: p50 {row['p50_ms']:.1f} ms, p95 {row['p95_ms']:.1f} ms, "
              f"QPS@32 {row['qps_batch32']:.1f}; overhead p50 over the local index {row['overhead_p50_ms']:+.1f} ms "
              f"(floor <= 5 ms at 4 shards); the same shards searched in this process: p50 {in_process_p50:.1f} ms "
              f"(Ray's own cost {row['ray_cost_p50_ms']:+.1f} ms)", flush=True)

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    lir_serve.run(str(CACHE / "scifact-2-bit-4-shards"), port=port, blocking=False,
                  index_options={"num_cpus_per_shard": 0.25})
    url = f"http://127.0.0.1:{port}"
    http_load(url, texts, args.clients, 3.0)  # warm-up
    results["http"] = http_load(url, texts, args.clients, args.http_seconds)
    print(f"HTTP (Ray Serve, 4 shards, text queries encoded by the service): {results['http']['qps']:.1f} QPS, "
          f"p50 {results['http']['p50_ms']:.1f} ms, p95 {results['http']['p95_ms']:.1f} ms with "
          f"{args.clients} concurrent clients, {results['http']['errors']} errors", flush=True)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "distributed.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
