"""SciFact quality and latency before and after the SQLite document store (issue 13).

The exact and 2-bit SciFact indexes that ``benchmarks/agentic.py`` caches (built in the previous
format, documents in ``docs.jsonl``; built here the same way if absent) are searched by the
previous code (a checkout given by --baseline-repo, e.g. ``git worktree add /tmp/lir-baseline
1adce80``) and, after ``Index.upgrade()`` of a copy, by this code: the 300 test queries, encoded
once here and given to both as matrices (so encoding is not timed), k = 10, torch pinned to
--threads. Reported per index: nDCG@10 (lir_agent.eval), whether the rankings are identical, and
the search p50 / p95 (each query's best of --passes passes, old and new measured in alternating
processes so that this machine's slow spells hit both).

    OMP_NUM_THREADS=1 python benchmarks/store_scifact.py --baseline-repo /tmp/lir-baseline [--threads 2]

Results: benchmarks/results/store_scifact.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
CACHE = HERE / ".cache"
RESULTS = HERE / "results" / "store_scifact.json"
SCIFACT = REPO.parent / "shared" / "data" / "scifact"

CHILD = """
import json, sys, time
import numpy as np, torch
torch.set_num_threads(int(sys.argv[3]))
from lir_agent import Index
queries = np.load(sys.argv[2])
offsets = np.load(sys.argv[2].replace(".npy", "-offsets.npy"))
index = Index.open(sys.argv[1])
matrices = [torch.from_numpy(queries[a:b]) for a, b in zip(offsets[:-1], offsets[1:])]
index.search(matrices[0], k=10)
best, ranked = [float("inf")] * len(matrices), []
for attempt in range(int(sys.argv[4])):
    for i, m in enumerate(matrices):
        start = time.perf_counter()
        hits = index.search(m, k=10)
        best[i] = min(best[i], time.perf_counter() - start)
        if attempt == 0:
            ranked.append([[h.id, h.score] for h in hits])
print(json.dumps({"ms": [t * 1000 for t in best], "ranked": ranked}))
"""


def measure(code: Path, index: Path, queries: Path, threads: int, passes: int) -> dict:
    env = {**os.environ, "PYTHONPATH": str(code), "OMP_NUM_THREADS": str(threads)}
    out = subprocess.run([sys.executable, "-c", CHILD, str(index), str(queries), str(threads), str(passes)],
                         env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline-repo", type=Path, required=True, help="a checkout of the previous code")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--passes", type=int, default=3)
    args = parser.parse_args()

    sys.path.insert(0, str(HERE))
    from agentic import indexes  # the cached SciFact indexes (exact, 2-bit), built if absent

    from lir_agent import Encoder, Index
    from lir_agent.eval import load_beir, ndcg_at_k

    data = load_beir(SCIFACT)
    built = indexes("scifact", SCIFACT / "corpus.jsonl")
    ids = list(data.queries)
    matrices = Encoder.from_pretrained("default").encode_queries([data.queries[q] for q in ids])
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        queries = Path(tmp) / "queries.npy"
        np.save(queries, np.concatenate([m.float().numpy() for m in matrices]))
        np.save(Path(tmp) / "queries-offsets.npy", np.cumsum([0] + [m.shape[0] for m in matrices]))
        for name, index in built.items():
            upgraded = Path(tmp) / name
            shutil.copytree(index.path, upgraded)
            Index.open(upgraded).upgrade()
            old = measure(args.baseline_repo, index.path, queries, args.threads, args.passes)
            new = measure(REPO, upgraded, queries, args.threads, args.passes)
            old_again = measure(args.baseline_repo, index.path, queries, args.threads, args.passes)
            old["ms"] = list(np.minimum(old["ms"], old_again["ms"]))
            row = {"index": name, "queries": len(ids), "threads": args.threads}
            for label, result in (("previous", old), ("document store", new)):
                run = {q: {doc: score for doc, score in hits} for q, hits in zip(ids, result["ranked"])}
                row[label] = {"ndcg@10": ndcg_at_k(run, data.qrels, 10), "p50_ms": float(np.percentile(result["ms"], 50)),
                              "p95_ms": float(np.percentile(result["ms"], 95))}
            row["identical_rankings"] = sum(a == b for a, b in zip(old["ranked"], new["ranked"]))
            rows.append(row)
            print(f"{name:<7} nDCG@10 {row['previous']['ndcg@10']:.4f} -> {row['document store']['ndcg@10']:.4f}   "
                  f"p50 {row['previous']['p50_ms']:.1f} -> {row['document store']['p50_ms']:.1f} ms   "
                  f"p95 {row['previous']['p95_ms']:.1f} -> {row['document store']['p95_ms']:.1f} ms   "
                  f"identical rankings {row['identical_rankings']}/{len(ids)}", flush=True)
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
