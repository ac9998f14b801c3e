"""Long documents: needle-in-a-haystack retrieval with passages, document-level MaxSim and MaxP.

Haystacks are built from a BEIR corpus (seeded, reproducible): the documents (title. text) are
shuffled and concatenated, separated by blank lines, into haystacks of about --lengths tokens
(default 1k, 4k, 16k, 64k: on SciFact's 5,183 abstracts about 1,300 haystacks of 1k tokens, 80 of
16k, 20 of 64k). A haystack is relevant to a query when it holds one of the query's relevant
documents. Per length, on exact indexes with the default encoder (torch pinned to --threads):

* (a) truncation: ``passage_tokens=0``, the encoder reads each haystack's first 256 tokens;
* (b) MaxP: each passage of (c) as its own document (its stored vectors copied, nothing encoded
  again), a haystack ranked by its best passage (Dai & Callan, SIGIR 2019);
* (c) document MaxSim: ``Index.create(passage_tokens=256, passage_overlap=32)`` (the defaults),
  each haystack scored by MaxSim over the token vectors of all its passages.

Relevance: judgements of at least --min-grade (MS MARCO's pool judges about 95 passages per query
relevant, most of them marginally: there the needles are its grade-3 passages, about 16 a query).
Reported: document-level Recall@1 and nDCG@10 per method; for the default method (c) and MaxP,
how often the best window (``assemble_context`` of the top hit, 1,000-token budget) holds the
relevant document's text when the top haystack is right ("window" = the window covers the whole
relevant document, "overlap" = it covers at least half of it); index size, build time and search
p50 (text queries encoded first, k = 10). Baseline latency: the corpus indexed as plain documents.

    OMP_NUM_THREADS=1 python benchmarks/long_context.py [--corpus scifact] [--lengths 1000,4000,16000,64000]
    OMP_NUM_THREADS=1 python benchmarks/long_context.py --latency 60   # p50s again, on a quiet machine

Indexes are cached in benchmarks/.cache/long/; results go to benchmarks/results/long_context_<corpus>.json.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import statistics
import time
from pathlib import Path

import torch

from lir_agent import Encoder, Index
from lir_agent.agentic.context import assemble_context
from lir_agent.eval import load_beir, ndcg_at_k

HERE = Path(__file__).resolve().parent
DATA = HERE.parent.parent / "shared" / "data"
CACHE = HERE / ".cache" / "long"
RESULTS = HERE / "results"
WINDOW_TOKENS = 1000
ADD_TOKENS = 150_000  # tokens encoded per add call (memory)
SEED = 13


def haystacks(corpus: list[dict], encoder: Encoder, length: int) -> list[dict]:
    """Shuffled documents concatenated into haystacks of about ``length`` tokens, each with the
    character span of every document it holds."""
    docs = list(corpus)
    random.Random(SEED).shuffle(docs)
    texts = [f"{d.get('title') or ''}. {d['text']}".strip(". ") for d in docs]
    sizes = [len(ids) for ids in encoder.tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"]]
    out, parts, spans, tokens = [], [], {}, 0
    for doc, text, size in zip(docs, texts, sizes):
        start = sum(len(p) + 2 for p in parts)
        parts.append(text)
        spans[doc["_id"]] = (start, start + len(text))
        tokens += size
        if tokens >= length:
            out.append({"id": f"h{length}-{len(out)}", "text": "\n\n".join(parts), "spans": spans})
            parts, spans, tokens = [], {}, 0
    if parts:
        out.append({"id": f"h{length}-{len(out)}", "text": "\n\n".join(parts), "spans": spans})
    return out


def build(path: Path, docs: list[dict], encoder: Encoder, **options) -> tuple[Index, float]:
    """The index of ``docs`` at ``path``: cached when a build finished there (build.json), else built anew."""
    if (path / "build.json").exists():
        return Index.open(path), json.loads((path / "build.json").read_text())["seconds"]
    shutil.rmtree(path, ignore_errors=True)
    started = time.perf_counter()
    index = Index.create(path, encoder=encoder, index_type="exact", exist_ok=False, **options)
    step = max(1, ADD_TOKENS // max(1, len(docs[0]["text"]) // 4))  # about ADD_TOKENS tokens per add
    for start in range(0, len(docs), step):
        index.add(docs[start : start + step], show_progress=False)
    seconds = time.perf_counter() - started
    (path / "build.json").write_text(json.dumps({"seconds": seconds}))
    return index, seconds


def passage_index(path: Path, source: Index, encoder: Encoder) -> Index:
    """Each passage of ``source`` as its own document (id ``parent#n``), its vectors copied."""
    if (path / "build.json").exists():
        return Index.open(path)
    shutil.rmtree(path, ignore_errors=True)
    index = Index.create(path, encoder=encoder, index_type="exact", passage_tokens=0)
    docs, matrices = [], []
    for doc_id in source.ids():
        doc, matrix = source.get(doc_id), source.get_embeddings(doc_id)
        layout = doc.passages or [(0, len(doc.text), matrix.shape[0])]
        offset = 0
        for n, (a, b, count) in enumerate(layout):
            docs.append({"id": f"{doc_id}#{n}", "text": doc.text[a:b], "metadata": {"parent": doc_id, "start": a}})
            matrices.append(matrix[offset : offset + count])
            offset += count
        if len(docs) >= 2048:
            index.add(docs, embeddings=matrices)
            docs, matrices = [], []
    if docs:
        index.add(docs, embeddings=matrices)
    (path / "build.json").write_text(json.dumps({"copied_from": str(source.path)}))
    return index


def disk_mb(path: Path) -> float:
    return round(sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 2**20, 1)


def measure(name: str, corpus_dir: Path, length: int, encoder: Encoder, queries: dict, qrels: dict,
            corpus: list[dict]) -> dict:
    stacks = haystacks(corpus, encoder, length)
    relevant = {q: {h["id"] for h in stacks if any(d in h["spans"] for d in docs)} for q, docs in qrels.items()}
    docs = [{"id": h["id"], "text": h["text"]} for h in stacks]
    base = CACHE / f"{name}-{length}"
    truncated, truncated_s = build(base.with_name(base.name + "-truncated"), docs, encoder, passage_tokens=0)
    passages, passages_s = build(base.with_name(base.name + "-passages"), docs, encoder)
    maxp_index = passage_index(base.with_name(base.name + "-maxp"), passages, encoder)
    spans = {h["id"]: h["spans"] for h in stacks}
    ids = list(queries)
    matrices = encoder.encode_queries([queries[q] for q in ids])
    row = {"length": length, "haystacks": len(stacks), "queries": len(ids),
           "token_vectors_per_haystack": round(passages.info()["tokens"] / len(stacks))}
    for method, index in (("truncation", truncated), ("document MaxSim", passages), ("MaxP", maxp_index)):
        times, run, windows = [], {}, []
        for q, matrix in zip(ids, matrices):
            started = time.perf_counter()
            if method == "MaxP":
                hits, ranked = index.search(matrix, k=200), {}
                for hit in hits:  # a haystack ranks at its best passage
                    ranked.setdefault(hit.metadata["parent"], hit.score)
                ranking = list(ranked.items())[:10]
            else:
                hits = index.search(matrix, k=10)
                ranking = [(h.id, h.score) for h in hits]
            times.append(time.perf_counter() - started)
            run[q] = dict(ranking)
            if method == "document MaxSim" and hits and hits[0].id in relevant[q]:
                parent = hits[0].id
                context = assemble_context([hits[0]], WINDOW_TOKENS)
                needles = [spans[parent][d] for d in qrels[q] if d in spans[parent]]
                covered = [max((min(b, w.end) - max(a, w.start)) / (b - a) for w in context.windows) for a, b in needles]
                windows.append((max(covered) >= 1.0, max(covered) >= 0.5))
        qrel_run = {q: {h: 1 for h in relevant[q]} for q in ids}
        row[method] = {
            "recall@1": statistics.fmean(1.0 if run[q] and next(iter(run[q])) in relevant[q] else 0.0 for q in ids),
            "ndcg@10": ndcg_at_k(run, qrel_run, 10),
            "p50_ms": 1000 * statistics.median(times),
            "window_holds_needle": statistics.fmean(w for w, _ in windows) if windows else None,
            "window_overlaps_needle": statistics.fmean(o for _, o in windows) if windows else None,
            "index_mb": disk_mb(index.path),
        }
    row["build_s"] = {"truncation": truncated_s, "document MaxSim": passages_s}
    return row


def latency(corpus_name: str, lengths: list[int], queries: dict, encoder: Encoder, count: int) -> dict:
    """Search p50 of the cached indexes (plain documents and each length's document MaxSim), one
    query at a time in one loop (plain, then each length, per query), so that this machine's slow
    spells hit all alike; each query's best of 3."""
    indexes = {"plain": Index.open(CACHE / f"{corpus_name}-plain")}
    indexes |= {str(n): Index.open(CACHE / f"{corpus_name}-{n}-passages") for n in lengths}
    matrices = encoder.encode_queries(list(queries.values())[:count])
    times: dict[str, list[float]] = {name: [] for name in indexes}
    for matrix in matrices:
        for name, index in indexes.items():
            best = float("inf")
            for _ in range(3):
                started = time.perf_counter()
                index.search(matrix, k=10)
                best = min(best, time.perf_counter() - started)
            times[name].append(best)
    return {name: 1000 * statistics.median(t) for name, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", default="scifact", help="a BEIR folder under ../shared/data (e.g. scifact)")
    parser.add_argument("--lengths", default="1000,4000,16000,64000")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--min-grade", type=int, default=1,
                        help="judgements at least this grade are needles (MS MARCO's pool: 3, its most relevant)")
    parser.add_argument("--queries", type=int, help="only the first this many judged queries (default: all)")
    parser.add_argument("--latency", type=int, metavar="QUERIES",
                        help="only re-measure search p50 on the cached indexes, over this many queries in one loop")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    CACHE.mkdir(parents=True, exist_ok=True)
    corpus_dir = DATA / args.corpus
    data = load_beir(corpus_dir)
    corpus = [json.loads(line) for line in open(corpus_dir / "corpus.jsonl", encoding="utf-8")]
    encoder = Encoder.from_pretrained("default")
    qrels = {q: [d for d, rel in judged.items() if rel >= args.min_grade] for q, judged in data.qrels.items()}
    queries = {q: text for q, text in data.queries.items() if qrels.get(q)}
    queries = dict(list(queries.items())[: args.queries])
    if args.latency:
        lengths = [int(x) for x in args.lengths.split(",")]
        p50 = latency(args.corpus, lengths, queries, encoder, args.latency)
        print("search p50 ms, one loop:", {name: round(ms, 1) for name, ms in p50.items()}, flush=True)
        path = RESULTS / f"long_context_{args.corpus.replace('/', '_')}.json"
        results = json.loads(path.read_text()) if path.exists() else {}
        results["latency_one_loop"] = {"queries": args.latency, "threads": args.threads, "p50_ms": p50}
        path.write_text(json.dumps(results, indent=1))
        return
    plain, plain_s = build(CACHE / f"{args.corpus}-plain", [{"id": d["_id"], "text": f"{d.get('title') or ''}. {d['text']}"}
                                                            for d in corpus], encoder)
    times = []
    for matrix in encoder.encode_queries(list(queries.values())):
        started = time.perf_counter()
        plain.search(matrix, k=10)
        times.append(time.perf_counter() - started)
    results = {"corpus": args.corpus, "min_grade": args.min_grade, "plain_p50_ms": 1000 * statistics.median(times), "plain_build_s": plain_s,
               "lengths": []}
    print(f"{args.corpus}: {len(corpus)} documents, {len(queries)} queries; plain documents p50 "
          f"{results['plain_p50_ms']:.1f} ms", flush=True)
    for length in (int(x) for x in args.lengths.split(",")):
        row = measure(args.corpus, corpus_dir, length, encoder, queries, qrels, corpus)
        results["lengths"].append(row)
        for method in ("truncation", "MaxP", "document MaxSim"):
            m = row[method]
            extra = "" if m["window_holds_needle"] is None else \
                f"  window holds {m['window_holds_needle']:.2f} overlaps {m['window_overlaps_needle']:.2f}"
            print(f"{length:>6} tokens ({row['haystacks']:>5} haystacks)  {method:<16} R@1 {m['recall@1']:.3f}  "
                  f"nDCG@10 {m['ndcg@10']:.3f}  p50 {m['p50_ms']:.1f} ms  {m['index_mb']} MB{extra}", flush=True)
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / f"long_context_{args.corpus.replace('/', '_')}.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
