"""Evaluation on BEIR-layout data sets: loader, nDCG@k, Recall@k, MRR@k, and a runner.

Metric definitions follow trec_eval: nDCG uses linear gains (the judged relevance value) and an
ideal ranking built from all judged documents; Recall@k and MRR@k count relevance > 0.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Mapping, Sequence

from .corpus import read_documents, read_jsonl
from .errors import InvalidInputError

if TYPE_CHECKING:
    from .index import Index

Qrels = dict[str, dict[str, int]]
Run = dict[str, dict[str, float]]
DEFAULT_METRICS = ("nDCG@10", "Recall@10", "Recall@100", "MRR@10")


@dataclass
class BeirDataset:
    """A BEIR folder: corpus records, the judged queries of one split, and their judgements."""

    name: str
    corpus: list[dict]
    queries: dict[str, str]
    qrels: Qrels


def load_beir(directory: str | Path, split: str = "test") -> BeirDataset:
    """Reads corpus.jsonl, queries.jsonl and qrels/<split>.tsv; keeps only judged queries."""
    directory = Path(directory)
    qrels_path = directory / "qrels" / f"{split}.tsv"
    for required in (directory / "corpus.jsonl", directory / "queries.jsonl", qrels_path):
        if not required.exists():
            raise InvalidInputError(f"{directory} is not a BEIR folder: {required} is missing")
    qrels: Qrels = {}
    with open(qrels_path, encoding="utf-8") as f:
        reader = csv.reader(f, delimiter="\t")
        for row in reader:
            if not row or row[0] == "query-id":
                continue
            qrels.setdefault(row[0], {})[row[1]] = int(float(row[2]))
    queries = {str(r["_id"]): r["text"] for r in read_jsonl(directory / "queries.jsonl") if str(r["_id"]) in qrels}
    qrels = {q: judged for q, judged in qrels.items() if q in queries}
    return BeirDataset(directory.name, list(read_documents(directory / "corpus.jsonl")), queries, qrels)


def _ranked(scores: Mapping[str, float], k: int) -> list[str]:
    # trec_eval order: score descending, then document id descending
    return [d for d, _ in sorted(scores.items(), key=lambda item: (item[1], item[0]), reverse=True)[:k]]


def ndcg_at_k(run: Run, qrels: Qrels, k: int) -> float:
    total = 0.0
    for qid, judged in qrels.items():
        ranked = _ranked(run.get(qid, {}), k)
        dcg = sum(judged.get(d, 0) / math.log2(i + 2) for i, d in enumerate(ranked) if judged.get(d, 0) > 0)
        ideal = sorted((r for r in judged.values() if r > 0), reverse=True)[:k]
        idcg = sum(r / math.log2(i + 2) for i, r in enumerate(ideal))
        total += dcg / idcg if idcg > 0 else 0.0
    return total / len(qrels) if qrels else 0.0


def recall_at_k(run: Run, qrels: Qrels, k: int) -> float:
    total = 0.0
    for qid, judged in qrels.items():
        relevant = {d for d, r in judged.items() if r > 0}
        if relevant:
            total += len(relevant.intersection(_ranked(run.get(qid, {}), k))) / len(relevant)
    return total / len(qrels) if qrels else 0.0


def mrr_at_k(run: Run, qrels: Qrels, k: int) -> float:
    total = 0.0
    for qid, judged in qrels.items():
        for i, d in enumerate(_ranked(run.get(qid, {}), k)):
            if judged.get(d, 0) > 0:
                total += 1.0 / (i + 1)
                break
    return total / len(qrels) if qrels else 0.0


_METRICS = {"ndcg": ndcg_at_k, "recall": recall_at_k, "mrr": mrr_at_k}


def compute_metrics(run: Run, qrels: Qrels, metrics: Sequence[str] = DEFAULT_METRICS) -> dict[str, float]:
    """Metric names like "nDCG@10", "Recall@100", "MRR@10" → mean value over judged queries."""
    out = {}
    for name in metrics:
        measure, _, cutoff = name.partition("@")
        if measure.lower() not in _METRICS or not cutoff.isdigit():
            raise InvalidInputError(f"unknown metric {name!r} (use nDCG@k, Recall@k or MRR@k)")
        out[name] = _METRICS[measure.lower()](run, qrels, int(cutoff))
    return out


def run_queries(index: "Index", queries: Mapping[str, str], k: int = 100, batch_size: int = 32,
                show_progress: bool | None = None, **search_params: int) -> Run:
    """Searches every query; returns {query id: {doc id: score}}."""
    from tqdm.auto import tqdm

    ids = list(queries)
    run: Run = {}
    starts = range(0, len(ids), batch_size)
    for start in tqdm(starts, desc="searching", unit="batch", disable=show_progress is False or None):
        batch = ids[start : start + batch_size]
        for qid, hits in zip(batch, index.search_batch([queries[q] for q in batch], k=k, **search_params)):
            run[qid] = {hit.id: hit.score for hit in hits}
    return run


def evaluate(index: "Index", dataset: BeirDataset, metrics: Sequence[str] = DEFAULT_METRICS,
             show_progress: bool | None = None, **search_params: int) -> dict[str, float]:
    """Runs the data set's judged queries against ``index`` and scores the run."""
    depth = max(int(m.partition("@")[2] or 10) for m in metrics)
    run = run_queries(index, dataset.queries, k=depth, show_progress=show_progress, **search_params)
    return compute_metrics(run, dataset.qrels, metrics)
