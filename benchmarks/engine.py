"""The compressed engine against exact search: quality, latency, size, memory, build time.

Corpus A: ../shared/data/scifact encoded with the default encoder (about 1.2M tokens).
Corpus B: >= 10M real encoded tokens: SciFact, the MS MARCO pool, HotpotQA and MuSiQue
paragraphs, plus perturbed copies of those documents (token vectors + small Gaussian noise,
re-normalised) until the target size, so the cluster structure is that of real text.

For each mode (fp16, 4-, 2-, 1-bit) and a small grid of search settings it prints nDCG@10
(corpus A), top-10 overlap with exact search, the overlap of the final candidates scored exactly
(what candidate generation alone would allow: the rest is lost to residual precision), p50/p95
single-query latency (each query's best of LATENCY_REPEATS passes, exact search too), the speed-up
over exact search measured in one loop (each query searched with exact search and with default
settings back to back, each query's best of PASSES: this machine's speed swings from minute to
minute, so latencies measured minutes apart do not divide fairly), batch-of-32 QPS, bytes per
token on disk, peak resident memory of a process that opens the index and searches, and build
time excluding encoding. Results go to benchmarks/results/engine.json and a latency-vs-overlap
plot engine.png.

    python benchmarks/engine.py [--modes 16 4 2 1] [--sections modes pca b] [--corpus-b-tokens 10000000]

PCA: the same modes with the token space reduced to --pca-dims (default 192 and 128) dimensions.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import resource
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

from lir_agent import Encoder, Index
from lir_agent.corpus import read_documents
from lir_agent.eval import compute_metrics, load_beir
from lir_agent.kmeans import num_centroids_for
from lir_agent.maxsim import maxsim_topk
from lir_agent.engines.pipeline import merge
from lir_agent.packed import PackedEmbeddings

HERE = Path(__file__).resolve().parent
DATA = Path(os.environ.get("LIR_SHARED", HERE.parent.parent / "shared")) / "data"
CACHE = HERE / ".cache"
RESULTS = HERE / "results"
GRID = [dict(nprobe=4, candidates=128, rerank=32), dict(), dict(nprobe=16, candidates=512, rerank=128)]
MODE_NAMES = {16: "fp16", 4: "4-bit", 2: "2-bit", 1: "1-bit"}
LATENCY_QUERIES = 100
LATENCY_REPEATS = 3  # passes over the latency queries; each query's best counts
PASSES = 5  # searches per query when indexes are compared in one loop (this machine's speed swings)
SAME_LOOP_QUERIES = 30  # exact search takes ~0.35 s a query


def encoded(name: str, corpus: Path) -> Index:
    """An exact index of a corpus with the default encoder, built once and cached."""
    path = CACHE / f"{name}-exact"
    try:
        return Index.open(path)
    except Exception:
        shutil.rmtree(path, ignore_errors=True)
    print(f"encoding {corpus} (cached in {path})", flush=True)
    index = Index.create(path, index_type="exact")
    docs = list(read_documents(corpus))
    for start in range(0, len(docs), 2048):
        index.add(docs[start : start + 2048], show_progress=True)
    return index


def stored(index: Index) -> tuple[list, list[torch.Tensor]]:
    ids = list(index.ids())
    return [index.get(i) for i in ids], [index.get_embeddings(i) for i in ids]


def build(path: Path, docs, embeddings, nbits: int, num_centroids: int | None = None, chunk: int = 4096,
          projection_dim: int | None = None) -> float:
    """Builds a compressed index from stored vectors; returns seconds (no encoding in it)."""
    shutil.rmtree(path, ignore_errors=True)
    start = time.perf_counter()
    index = Index.create(path, encoder="default", index_type="compressed", nbits=nbits, num_centroids=num_centroids,
                         projection_dim=projection_dim)
    for i in range(0, len(docs), chunk):
        index.add(docs[i : i + chunk], embeddings=embeddings[i : i + chunk])
    return time.perf_counter() - start


def timed_searches(index: Index, queries: list[torch.Tensor], repeats: int = 1, **params) -> tuple[list, list[float]]:
    """Hits of every query, and the latency of each of the first LATENCY_QUERIES queries: the
    least of ``repeats`` passes (this machine is shared; transient load from elsewhere inflates
    single passes by up to 2x, and taking each query's best pass keeps that out of p50/p95)."""
    index.search(queries[0], k=10, **params)  # warm-up
    hits, seconds = [], []
    for q in queries:
        start = time.perf_counter()
        hits.append(index.search(q, k=10, **params))
        seconds.append(time.perf_counter() - start)
    for _ in range(repeats - 1):
        for i, q in enumerate(queries[:LATENCY_QUERIES]):
            start = time.perf_counter()
            index.search(q, k=10, **params)
            seconds[i] = min(seconds[i], time.perf_counter() - start)
    return hits, seconds


def paired_latencies(indexes: dict[str, Index], queries: list[torch.Tensor]) -> dict[str, list[float]]:
    """For two indexes, each query's best of PASSES searches on each, the two searches of a query
    back to back in an order that flips every query and every pass: both are timed in the same
    seconds, whatever state the machine is in (sustained load slowed it by up to 1.5x after ten
    seconds or so; whole passes of a 0.4 s exact search and a 15 ms compressed one would not)."""
    best = {name: [float("inf")] * len(queries) for name in indexes}
    for name, index in indexes.items():
        index.search(queries[0], k=10)  # warm-up
    for repeat in range(PASSES):
        for i, query in enumerate(queries):
            names = list(indexes) if (i + repeat) % 2 else list(indexes)[::-1]
            for name in names:
                start = time.perf_counter()
                indexes[name].search(query, k=10)
                best[name][i] = min(best[name][i], time.perf_counter() - start)
    return best


def batch_qps(index: Index, queries: list[torch.Tensor], **params) -> float:
    index.search_batch(queries[:32], k=10, **params)
    start = time.perf_counter()
    for i in range(0, len(queries), 32):
        index.search_batch(queries[i : i + 32], k=10, **params)
    return len(queries) / (time.perf_counter() - start)


def candidate_ceiling(index: Index, exact_vectors: dict, queries, exact_top: list[list[str]], params: dict) -> float:
    """Top-10 overlap with exact search if the final candidates were scored with the exact
    index's vectors (``exact_vectors``: id -> float16 token matrix)."""
    overlaps = []
    state = index._state  # benchmark-only look inside the pipeline
    settings = state.engine.search_params(10, params)
    for query, expected in zip(queries, exact_top):
        probe = index.search_round("probe", index.prepare_queries([query]), 10, settings)
        survivors = merge(merge(probe.ranked[:1], settings.candidates), settings.rerank, by="interaction")[0]
        ids = [state.segments[s].documents[row].id for s, row in zip(survivors.segments, survivors.rows)]
        packed = PackedEmbeddings.from_list([exact_vectors[i] for i in ids])
        _, best = maxsim_topk([query], packed.tokens, packed.offsets, 10)
        overlaps.append(len({ids[i] for i in best[0].tolist()} & set(expected)) / 10)
    return float(np.mean(overlaps))


def measure(path: str, queries, qids, qrels, exact_top, exact_path, grid, out) -> None:
    """Runs in a child process so that its peak resident memory is the search's own (its
    reading of the exact vectors, for the candidate diagnostic, comes after the timings)."""
    index = Index.open(path)
    rows = []
    for params in grid:
        hits, seconds = timed_searches(index, queries, repeats=LATENCY_REPEATS, **params)
        run = {q: {h.id: h.score for h in hs} for q, hs in zip(qids, hits)}
        overlap = np.mean([len({h.id for h in hs} & set(e)) / 10 for hs, e in zip(hits, exact_top)])
        row = {"params": params or "default", "p50_ms": 1e3 * float(np.percentile(seconds[:LATENCY_QUERIES], 50)),
               "p95_ms": 1e3 * float(np.percentile(seconds[:LATENCY_QUERIES], 95)), "overlap@10": float(overlap),
               "qps_single": len(seconds) / sum(seconds), "qps_batch32": batch_qps(index, queries, **params)}
        if qrels is not None:
            row["ndcg@10"] = compute_metrics(run, qrels, ["nDCG@10"])["nDCG@10"]
        rows.append(row)
    peak_rss_mb = peak_resident_mb()
    if exact_path is not None:
        exact = Index.open(exact_path)
        exact_vectors = {i: exact.get_embeddings(i) for i in exact.ids()}
        for row, params in zip(rows, grid):
            row["candidate_overlap@10"] = candidate_ceiling(index, exact_vectors, queries, exact_top, params)
        same_loop = paired_latencies({"exact": exact, "compressed": index}, queries[:SAME_LOOP_QUERIES])
        exact_p50, p50 = (1e3 * float(np.median(same_loop[name])) for name in ("exact", "compressed"))
        rows[grid.index({})]["same_loop"] = {"exact_p50_ms": exact_p50, "p50_ms": p50, "speedup": exact_p50 / p50}
    out.put({"rows": rows, "peak_rss_mb": peak_rss_mb, "info": index.info()})


def peak_resident_mb() -> float:
    """This process's peak resident memory (VmHWM, which unlike ru_maxrss is not inherited from
    the parent across fork + exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def in_child(*args):
    """Runs ``measure`` in a fresh (spawned, not forked: torch's thread pool is not fork-safe) process."""
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    child = context.Process(target=measure, args=(*args, queue))
    child.start()
    result = queue.get()
    child.join()
    return result


def token_bytes(info: dict) -> float:
    """Bytes per token of the per-token files (codes, residuals, scales, inverted lists)."""
    path = Path(info["path"]) / "segments"
    total = sum(f.stat().st_size for f in path.rglob("*") if f.name in ("codes.npy", "residuals.npy", "scales.npy", "ivf.npy"))
    return total / info["tokens"]


def corpus_b(target_tokens: int, rng: np.random.Generator):
    """Real encoded documents of four corpora, then perturbed copies, shuffled."""
    sources = [("scifact", DATA / "scifact" / "corpus.jsonl"), ("msmarco", DATA / "msmarco_5k" / "corpus.jsonl"),
               ("hotpotqa", DATA / "multihop" / "hotpotqa_train100" / "corpus.jsonl"),
               ("musique", DATA / "multihop" / "musique_train100" / "corpus.jsonl")]
    docs, vectors = [], []
    for name, path in sources:
        d, v = stored(encoded(name, path))
        docs += d
        vectors += v
    real = len(docs)
    total = sum(int(v.shape[0]) for v in vectors)
    copy = 0
    while total < target_tokens:
        copy += 1
        for i in range(real):
            if total >= target_tokens:
                break
            noisy = vectors[i].float() + torch.from_numpy(rng.normal(0, 0.3 / 384**0.5, tuple(vectors[i].shape))).float()
            docs.append(type(docs[i])(f"{docs[i].id}#copy{copy}", docs[i].text, docs[i].metadata))
            vectors.append(torch.nn.functional.normalize(noisy, dim=1).half())
            total += int(vectors[-1].shape[0])
    order = rng.permutation(len(docs))
    return [docs[i] for i in order], [vectors[i] for i in order], total


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for mode in results["corpus_a"]["modes"]:
        rows = sorted(mode["rows"], key=lambda r: r["p50_ms"])
        ax.plot([r["p50_ms"] for r in rows], [r["overlap@10"] for r in rows], marker="o", label=mode["mode"])
    ax.axhline(1.0, color="grey", lw=0.5)
    ax.set_xlabel("p50 single-query latency (ms), SciFact, 2 CPU cores")
    ax.set_ylabel("top-10 overlap with exact search")
    ax.set_title(f"exact p50: {results['corpus_a']['exact']['p50_ms']:.0f} ms")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--modes", type=int, nargs="+", default=[16, 4, 2, 1])
    parser.add_argument("--corpus-b-tokens", type=int, default=10_000_000)
    parser.add_argument("--sections", nargs="+", choices=["modes", "pca", "b"], default=["modes", "pca", "b"])
    parser.add_argument("--pca-dims", type=int, nargs="+", default=[192, 128])
    parser.add_argument("--queries", type=int, default=300)
    args = parser.parse_args()
    RESULTS.mkdir(exist_ok=True)
    torch.manual_seed(0)
    output = RESULTS / "engine.json"
    results: dict = json.loads(output.read_text()) if output.exists() else {}  # sections not rerun are kept
    results["machine"] = {"threads": torch.get_num_threads(), "cuda": torch.cuda.is_available()}

    # ---------------------------------------------------------------- corpus A
    data = load_beir(DATA / "scifact")
    exact = encoded("scifact", DATA / "scifact" / "corpus.jsonl")
    qids = list(data.queries)[: args.queries]
    queries = Encoder.from_pretrained(device="cpu").encode_queries([data.queries[q] for q in qids])
    docs, vectors = stored(exact)
    exact_hits = []
    for i in range(0, len(queries), 32):
        exact_hits += exact.search_batch(queries[i : i + 32], k=10)
    exact_top = [[h.id for h in hs] for hs in exact_hits]
    exact_run = {q: {h.id: h.score for h in hs} for q, hs in zip(qids, exact_hits)}
    _, exact_seconds = timed_searches(exact, queries[:30], repeats=LATENCY_REPEATS)
    exact_row = {"ndcg@10": compute_metrics(exact_run, data.qrels, ["nDCG@10"])["nDCG@10"],
                 "p50_ms": 1e3 * float(np.percentile(exact_seconds, 50)),
                 "p95_ms": 1e3 * float(np.percentile(exact_seconds, 95)),
                 "bytes_per_token": exact.info()["bytes_per_token"], "tokens": exact.info()["tokens"]}
    print(f"corpus A: {len(docs)} docs, {exact_row['tokens']} tokens; exact nDCG@10 {exact_row['ndcg@10']:.4f}, "
          f"p50 {exact_row['p50_ms']:.1f} ms, p95 {exact_row['p95_ms']:.1f} ms", flush=True)
    results.setdefault("corpus_a", {})["exact"] = exact_row
    header = (f"{'mode':>6} {'settings':<42} {'nDCG@10':>7} {'overlap':>7} {'cand.ov':>7} {'p50 ms':>7} "
              f"{'p95 ms':>7} {'QPS@1':>6} {'QPS@32':>7} {'B/tok':>6} {'tokB':>6} {'RSS MB':>7} {'build s':>7}")
    print(header)
    if "modes" in args.sections:
        results["corpus_a"]["modes"] = []
    for nbits in args.modes if "modes" in args.sections else []:
        path = CACHE / f"scifact-{MODE_NAMES[nbits]}"
        build_seconds = build(path, docs, vectors, nbits)
        measured = in_child(str(path), queries, qids, data.qrels, exact_top, str(exact.path), GRID)
        mode = {"mode": MODE_NAMES[nbits], "build_s": build_seconds, "peak_rss_mb": measured["peak_rss_mb"],
                "bytes_per_token": measured["info"]["bytes_per_token"], "token_bytes": token_bytes(measured["info"]),
                "num_centroids": measured["info"]["codec"]["num_centroids"], "rows": measured["rows"]}
        results["corpus_a"]["modes"].append(mode)
        for row in mode["rows"]:
            print(f"{mode['mode']:>6} {str(row['params']):<42} {row['ndcg@10']:>7.4f} {row['overlap@10']:>7.3f} "
                  f"{row['candidate_overlap@10']:>7.3f} {row['p50_ms']:>7.1f} {row['p95_ms']:>7.1f} "
                  f"{row['qps_single']:>6.1f} {row['qps_batch32']:>7.1f} {mode['bytes_per_token']:>6.1f} {mode['token_bytes']:>6.1f} "
                  f"{mode['peak_rss_mb']:>7.0f} {build_seconds:>7.1f}", flush=True)
    defaults = {m["mode"]: m["rows"][1] for m in results["corpus_a"].get("modes", [])}
    for name, row in defaults.items():
        print(f"{name} default: nDCG@10 {row['ndcg@10'] - exact_row['ndcg@10']:+.4f} vs exact, overlap "
              f"{row['overlap@10']:.3f}, exact/{name} p50 = {row['same_loop']['speedup']:.1f}x in one loop "
              f"({row['same_loop']['exact_p50_ms']:.0f} / {row['same_loop']['p50_ms']:.1f} ms; floor 20x), "
              f"batch/single QPS = {row['qps_batch32'] / row['qps_single']:.2f}x")
    default_2bit = defaults.get("2-bit")

    # ---------------------------------------------------------------- PCA dimension reduction
    if "pca" in args.sections:
        results["corpus_a"]["pca"] = []
        print(f"PCA: {'dims':>4} {'mode':>6} {'nDCG@10':>7} {'vs exact':>8} {'overlap':>7} {'p50 ms':>7} {'B/tok':>6}")
        for dims in args.pca_dims:
            for nbits in args.modes:
                path = CACHE / f"scifact-{MODE_NAMES[nbits]}-pca{dims}"
                build_seconds = build(path, docs, vectors, nbits, projection_dim=dims)
                measured = in_child(str(path), queries, qids, data.qrels, exact_top, None, [dict()])
                row = {"dims": dims, "mode": MODE_NAMES[nbits], "build_s": build_seconds,
                       "bytes_per_token": measured["info"]["bytes_per_token"], **measured["rows"][0]}
                results["corpus_a"]["pca"].append(row)
                print(f"PCA: {dims:>4} {row['mode']:>6} {row['ndcg@10']:>7.4f} {row['ndcg@10'] - exact_row['ndcg@10']:>+8.4f} "
                      f"{row['overlap@10']:>7.3f} {row['p50_ms']:>7.1f} {row['bytes_per_token']:>6.1f}", flush=True)

    # ---------------------------------------------------------------- corpus B
    if "b" in args.sections:
        docs_b, vectors_b, tokens_b = corpus_b(args.corpus_b_tokens, np.random.default_rng(0))
        path = CACHE / "corpus-b-2-bit"
        build_seconds = build(path, docs_b, vectors_b, 2, num_centroids=num_centroids_for(tokens_b))
        del docs_b, vectors_b
        measured = in_child(str(path), queries, qids, None, exact_top, None, [dict()])
        row = measured["rows"][0]
        results["corpus_b"] = {"tokens": tokens_b, "build_s": build_seconds, "peak_rss_mb": measured["peak_rss_mb"],
                               "bytes_per_token": measured["info"]["bytes_per_token"], **row}
        if default_2bit is None:
            default_2bit = next(m["rows"][1] for m in results["corpus_a"]["modes"] if m["mode"] == "2-bit")
        ratio = row["p50_ms"] / default_2bit["p50_ms"]
        print(f"corpus B: {tokens_b} tokens ({tokens_b / exact_row['tokens']:.1f}x A), 2-bit default: "
              f"p50 {row['p50_ms']:.1f} ms, p95 {row['p95_ms']:.1f} ms, QPS@32 {row['qps_batch32']:.1f}, "
              f"build {build_seconds:.0f} s, RSS {measured['peak_rss_mb']:.0f} MB; p50 B/A = {ratio:.2f} (floor < 3)")
    with open(output, "w") as f:
        json.dump(results, f, indent=1)
    if results["corpus_a"].get("modes"):
        plot(results, RESULTS / "engine.png")


if __name__ == "__main__":
    sys.exit(main())
