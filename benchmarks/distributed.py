"""Sharded search on Ray against the local index over the same data (SciFact, default encoder).

For 1, 2 and 4 shards of the 2-bit compressed SciFact index (resharded from the local one, so
every shard shares its codec): single-query p50/p95 latency, queries per second in batches of
32, and the coordinator's overhead (Ray p50 minus local p50, the local index timed with two
torch threads and with one, each query's better time; floor <= 5 ms at 4 shards); how
many searches took one round, what a round of empty calls to every shard costs, and the same
shards searched one after another in this process (the work sharding adds). The local index and
the Ray shards are timed in alternating passes over the queries (each query's best of 5 passes
on each), so the machine's drifting load falls on both alike; the in-process shards against the
local index in a loop of their own. Then the HTTP service (Ray Serve, 4 shards)
under concurrent clients: QPS and p95. Results go to ``results/distributed.json``; run
``benchmarks/engine.py --sections modes`` first (it builds the local index).

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
from engine import CACHE, DATA, LATENCY_QUERIES, PASSES, RESULTS, batch_qps  # noqa: E402

from lir_agent import Encoder, Index  # noqa: E402
from lir_agent.distributed import RayIndex, ensure_ray  # noqa: E402
from lir_agent.distributed import serve as lir_serve  # noqa: E402
from lir_agent.eval import load_beir  # noqa: E402
from lir_agent.sharded import ShardedIndex, reshard  # noqa: E402

SHARD_COUNTS = (1, 2, 4)


def interleaved_latencies(indexes: dict[str, object], queries: list[torch.Tensor]) -> dict[str, list[float]]:
    """Per index, each query's best of PASSES passes. The passes alternate between the
    indexes (a whole pass over the queries each, back to back, as a stream of single queries
    runs), so load that comes and goes over minutes hits each of them alike, while no search is
    timed right after another index's (whose processes may still be finishing)."""
    best = {name: [float("inf")] * len(queries) for name in indexes}
    names = list(indexes)
    for repeat in range(PASSES):
        for name in names[repeat % len(names) :] + names[: repeat % len(names)]:
            indexes[name].search(queries[0], k=10)  # warm-up
            for i, query in enumerate(queries):
                start = time.perf_counter()
                indexes[name].search(query, k=10)
                best[name][i] = min(best[name][i], time.perf_counter() - start)
    return best


class OneThread:
    """An index searched with one torch thread (on this machine two threads are sometimes
    slower: the local index is timed both ways and each query takes its better time)."""

    def __init__(self, index: Index):
        self.index = index

    def search(self, *args, **kwargs):
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return self.index.search(*args, **kwargs)
        finally:
            torch.set_num_threads(threads)


def against_local(local: Index, name: str, index: object, queries: list[torch.Tensor]) -> dict[str, list[float]]:
    """``interleaved_latencies`` of ``index`` (as ``name``) and of the local index, the local
    index's time per query being the better of two threads and one (see OneThread)."""
    seconds = interleaved_latencies({"local": local, "local_1_thread": OneThread(local), name: index}, queries)
    seconds["local"] = np.minimum(seconds["local"], seconds.pop("local_1_thread")).tolist()
    return seconds


def rounds_per_search(index: RayIndex, queries: list[torch.Tensor]) -> list[int]:
    """How many rounds (fan-outs to the shards) each single-query search took."""
    fan_out, counts = index.shards.fan_out, []

    def counting(*args, **kwargs):
        counts[-1] += 1
        return fan_out(*args, **kwargs)

    index.shards.fan_out = counting
    try:
        for query in queries:
            counts.append(0)
            index.search(query, k=10)
    finally:
        index.shards.fan_out = fan_out
    return counts


def empty_fan_out_seconds(index: RayIndex, repeats: int = 200) -> list[float]:
    """Ray's own cost of one round: a call to every shard that does nothing (``len``)."""
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        index.shards.fan_out("__len__", [()] * index.num_shards)
        seconds.append(time.perf_counter() - start)
    return seconds


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
    results["local"] = {"qps_batch32": batch_qps(local, queries)}
    print(f"local 2-bit: QPS@32 {results['local']['qps_batch32']:.1f}", flush=True)

    ensure_ray(num_cpus=2)
    results["sharded"] = []
    for count in SHARD_COUNTS:
        path = CACHE / f"scifact-2-bit-{count}-shards"
        shutil.rmtree(path, ignore_errors=True)
        reshard(local_path, path, count, show_progress=False)
        with RayIndex.open(path, num_cpus_per_shard=2 / count) as index:
            expected = [[h.id for h in local.search(q, k=10)] for q in queries[:30]]
            assert [[h.id for h in index.search(q, k=10)] for q in queries[:30]] == expected, "results differ"
            seconds = against_local(local, "ray", index, queries[:LATENCY_QUERIES])
            rounds = rounds_per_search(index, queries[:LATENCY_QUERIES])
            row = {"shards": count, **summary(seconds["ray"]), "qps_batch32": batch_qps(index, queries),
                   "local": summary(seconds["local"]), "one_round_share": rounds.count(1) / len(rounds),
                   "mean_rounds": float(np.mean(rounds)), "empty_fan_out": summary(empty_fan_out_seconds(index))}
        in_process = against_local(local, "in_process", ShardedIndex.open(path), queries[:LATENCY_QUERIES])
        row["in_process"] = {**summary(in_process["in_process"]), "local_p50_ms": summary(in_process["local"])["p50_ms"]}
        row["overhead_p50_ms"] = row["p50_ms"] - row["local"]["p50_ms"]
        row["paired_overhead_median_ms"] = 1e3 * float(np.median(np.subtract(seconds["ray"], seconds["local"])))
        results["sharded"].append(row)
        print(f"{count} shard(s) on Ray: p50 {row['p50_ms']:.1f} ms, p95 {row['p95_ms']:.1f} ms, "
              f"QPS@32 {row['qps_batch32']:.1f}; local index in the same loop: p50 {row['local']['p50_ms']:.1f} ms, "
              f"p95 {row['local']['p95_ms']:.1f} ms; overhead p50 {row['overhead_p50_ms']:+.1f} ms, median of "
              f"per-query differences {row['paired_overhead_median_ms']:+.1f} ms (floor <= 5 ms at 4 shards); "
              f"searches in one round: {100 * row['one_round_share']:.0f}% (mean {row['mean_rounds']:.2f} rounds); "
              f"a round of empty calls to every shard: p50 {row['empty_fan_out']['p50_ms']:.2f} ms; the same shards "
              f"searched one after another in this process: p50 {row['in_process']['p50_ms']:.1f} ms (local index "
              f"in that loop: {row['in_process']['local_p50_ms']:.1f} ms)", flush=True)

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
