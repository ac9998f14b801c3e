"""What a search session costs and what it saves.

1. Overhead: a session's ``search`` (citations off) against a bare ``index.search`` of the same
   text query, SciFact, compressed 2-bit, k = 10, one torch thread. Each query is searched both
   ways back to back (order alternating), each query's best of PASSES; the session is measured
   at its first hop (nothing to exclude) and at its fifth (40 documents excluded in the engine).
   Floor (issue 11): overhead <= 10% of the bare search's p50.
2. Citation cost: ``cite`` for the 10 hits of a query, per hit: from the index's stored token
   matrices (a session's way: tokenizing for the offsets, the alignment) and re-encoding the hits.
3. Deduplication on the multi-hop sets (../shared/data/multihop/*): three searches of k = 5 per
   question (the question; its content words; the second half of its content words), once
   with a session that repeats nothing and once with repeats allowed (``include_seen``). Both
   hand out the same passages per hit; we count tokens handed out, distinct documents, tokens
   per distinct document, and the share of questions with every gold paragraph among them.

    python benchmarks/agent_session.py [--queries 60] [--questions 100] [--sections overhead citations dedup]

Results go to benchmarks/results/agent_session.json (sections not rerun are kept).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from engine import CACHE, DATA, RESULTS, build, encoded, stored  # noqa: E402  (the engine benchmark's cached indexes)

from lir_agent import Index  # noqa: E402
from lir_agent.agentic import SearchSession, cite  # noqa: E402
from lir_agent.eval import load_beir  # noqa: E402

PASSES = 3
STOPWORDS = set("""a an the of in on at to for from by with and or is are was were be been being what which who whom
whose when where why how that this these those it its as did does do has have had not no than then there their they
he she his her him i you we our your my me many much any some""".split())


def content_words(question: str) -> list[str]:
    return [w for w in re.findall(r"[\w'-]+", question) if w.lower() not in STOPWORDS]


def rephrasings(question: str) -> list[str]:
    """The question, its content words, and the second half of them (an LLM-free stand-in for
    an agent's rephrasings: a keyword query, and a query on the question's other entity)."""
    words = content_words(question) or question.split()
    return [question, " ".join(words), " ".join(words[len(words) // 2:])]


def best_ms(call) -> float:
    start = time.perf_counter()
    call()
    return 1e3 * (time.perf_counter() - start)


def compressed_scifact() -> Index:
    path = CACHE / "scifact-2-bit"
    try:
        return Index.open(path)
    except Exception:
        shutil.rmtree(path, ignore_errors=True)
    docs, vectors = stored(encoded("scifact", DATA / "scifact" / "corpus.jsonl"))
    build(path, docs, vectors, nbits=2)
    return Index.open(path)


def overhead(index: Index, queries: list[str]) -> dict:
    index.search(queries[0], k=10)  # warm-up: encoder loaded, kernels compiled
    bare, first, fifth = [], [], []
    for n, query in enumerate(queries):
        session = SearchSession(index, k=10, cite=False)
        for _ in range(4):
            session.search(query)  # 40 documents seen: the next search excludes them
        times = {"bare": [], "first": [], "fifth": []}
        for p in range(PASSES):
            calls = [("bare", lambda: index.search(query, k=10)),
                     ("first", lambda: SearchSession(index, k=10, cite=False).search(query)),
                     ("fifth", lambda: SearchSession.from_json(index, session.to_state()).search(query))]
            for name, call in (calls if (n + p) % 2 == 0 else calls[::-1]):
                times[name].append(best_ms(call))
        bare.append(min(times["bare"]))
        first.append(min(times["first"]))
        fifth.append(min(times["fifth"]))
    p50 = float(np.percentile(bare, 50))
    row = {"queries": len(queries), "bare_p50_ms": p50,
           "session_first_hop_p50_ms": float(np.percentile(first, 50)),
           "session_fifth_hop_p50_ms": float(np.percentile(fifth, 50)),
           "overhead_first_hop_ms": float(np.median(np.subtract(first, bare))),
           "overhead_fifth_hop_ms": float(np.median(np.subtract(fifth, bare)))}
    row["overhead_first_hop_pct"] = 100 * row["overhead_first_hop_ms"] / p50
    row["overhead_fifth_hop_pct"] = 100 * row["overhead_fifth_hop_ms"] / p50
    return row


def citation_cost(index: Index, queries: list[str]) -> dict:
    """Per hit: citing from the index's stored matrices (what a session does: a tokenization)
    and re-encoding the hits' texts (what it falls back to)."""
    encoder = index.encoder
    stored, encoded = [], []
    for query in queries:
        hits = index.search(query, k=10)
        documents = [(h.id, h.text) for h in hits]
        matrices = [index.get_embeddings(h.id) for h in hits]
        stored.append(min(best_ms(lambda: cite(encoder, query, documents, 800, doc_matrices=matrices))
                          for _ in range(2)) / len(hits))
        encoded.append(min(best_ms(lambda: cite(encoder, query, documents, 800)) for _ in range(2)) / len(hits))
    return {"queries": len(queries), "stored_per_hit_p50_ms": float(np.percentile(stored, 50)),
            "stored_per_hit_p95_ms": float(np.percentile(stored, 95)),
            "reencoded_per_hit_p50_ms": float(np.percentile(encoded, 50)),
            "reencoded_per_hit_p95_ms": float(np.percentile(encoded, 95))}


def deduplication(name: str, questions: int) -> dict:
    data = load_beir(DATA / "multihop" / name)
    index = encoded(name, DATA / "multihop" / name / "corpus.jsonl")
    totals = {mode: {"tokens": 0, "passages": 0, "distinct": 0, "all_gold": 0} for mode in ("dedup", "repeats")}
    for qid in list(data.queries)[:questions]:
        gold = set(data.qrels.get(qid, {}))
        for mode in totals:
            session = SearchSession(index, k=5, passage_tokens=120)
            for query in rephrasings(data.queries[qid]):
                session.search(query, include_seen=mode == "repeats")
            found = {e.id for e in session.evidence()}
            totals[mode]["tokens"] += session.budget.tokens_used
            totals[mode]["passages"] += sum(len(e.ids) for e in session.trace)
            totals[mode]["distinct"] += len(found)
            totals[mode]["all_gold"] += bool(gold) and gold <= found
    for row in totals.values():
        row["tokens_per_distinct_document"] = row["tokens"] / row["distinct"]
        row["all_gold_share"] = row["all_gold"] / questions
    return {"questions": questions, **totals,
            "tokens_per_document_saved_pct": 100 * (1 - totals["dedup"]["tokens_per_distinct_document"]
                                                     / totals["repeats"]["tokens_per_distinct_document"])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=60)
    parser.add_argument("--questions", type=int, default=100)
    parser.add_argument("--sections", nargs="+", choices=["overhead", "citations", "dedup"],
                        default=["overhead", "citations", "dedup"])
    args = parser.parse_args()
    torch.set_num_threads(1)
    RESULTS.mkdir(exist_ok=True)
    output = RESULTS / "agent_session.json"
    results = json.loads(output.read_text()) if output.exists() else {}
    queries = list(load_beir(DATA / "scifact").queries.values())[: args.queries]
    index = compressed_scifact()
    if "overhead" in args.sections:
        row = results["overhead"] = overhead(index, queries)
        print(f"session overhead (SciFact, 2-bit, k=10, {row['queries']} queries): bare search p50 "
              f"{row['bare_p50_ms']:.1f} ms; session +{row['overhead_first_hop_ms']:.2f} ms "
              f"({row['overhead_first_hop_pct']:.1f}%) at hop 1, +{row['overhead_fifth_hop_ms']:.2f} ms "
              f"({row['overhead_fifth_hop_pct']:.1f}%) at hop 5 (40 excluded)", flush=True)
    if "citations" in args.sections:
        row = results["citations"] = citation_cost(index, queries[:30])
        print(f"citations per hit, p50 (p95): {row['stored_per_hit_p50_ms']:.1f} ms "
              f"({row['stored_per_hit_p95_ms']:.1f}) from the stored matrices, {row['reencoded_per_hit_p50_ms']:.1f} ms "
              f"({row['reencoded_per_hit_p95_ms']:.1f}) re-encoding the hits", flush=True)
    for name in ("hotpotqa_train100", "musique_train100") if "dedup" in args.sections else ():
        row = results[name] = deduplication(name, args.questions)
        for mode in ("repeats", "dedup"):
            r = row[mode]
            print(f"{name} {mode:>7}: {r['tokens']} tokens, {r['passages']} passages, {r['distinct']} distinct "
                  f"documents ({r['tokens_per_distinct_document']:.0f} tokens each), all gold found for "
                  f"{r['all_gold_share']:.0%}", flush=True)
        print(f"{name}: deduplication saves {row['tokens_per_document_saved_pct']:.0f}% of the tokens per document",
              flush=True)
    output.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
