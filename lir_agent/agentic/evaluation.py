"""Offline evaluation of multi-hop strategies on BEIR-layout sets (``lir-agent eval-multihop``).

Metrics, per question then averaged over the questions:

* ``R@k`` (k = 2, 5): the share of the question's gold paragraphs among the strategy's first k
  distinct documents (the protocol of HippoRAG, Gutiérrez et al., NeurIPS 2024, tables 2-3);
* ``all-gold@k`` (k = 10, 20): 1 when every gold paragraph is among the first k, else 0;
* ``nDCG@10`` (trec_eval's definition, :func:`lir_agent.eval.ndcg_at_k`), for single-hop sets;
* hops (session searches), tokens handed out by the session, milliseconds per question.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

from ..eval import BeirDataset, Qrels, ndcg_at_k
from .session import SearchSession
from .strategies import DEFAULT_STRATEGY
from .strategies.base import MultiHopResult, Strategy

RECALL_AT = (2, 5)
ALL_GOLD_AT = (10, 20)
EVAL_DEPTH = max(ALL_GOLD_AT)  # documents each strategy returns per question in an evaluation


def strategy_label(name: str) -> str:
    """How a report names the strategy asked for as ``name``: "default" shows the default
    strategy's own name in brackets (``default [condensed]``)."""
    return f"default [{DEFAULT_STRATEGY}]" if name == "default" else name


def recall_at(ranked: Sequence[str], gold: set[str], k: int) -> float:
    """Share of ``gold`` among the first ``k`` of ``ranked`` (0 for a question without gold)."""
    return len(gold.intersection(ranked[:k])) / len(gold) if gold else 0.0


def all_gold_at(ranked: Sequence[str], gold: set[str], k: int) -> float:
    """1.0 when every id of a non-empty ``gold`` is among the first ``k`` of ``ranked``."""
    return float(bool(gold) and gold.issubset(ranked[:k]))


@dataclass
class StrategyReport:
    """One strategy's figures on one set."""

    strategy: str  # the name the line starts with ("default" for the default strategy)
    description: str  # the strategy's own name and settings
    questions: int
    metrics: dict[str, float]  # R@2, R@5, all-gold@10, all-gold@20, nDCG@10
    hops: float  # mean session searches per question
    tokens: float  # mean tokens of passage text handed out per question
    ms: float  # mean milliseconds per question
    stopped: dict[str, int] = field(default_factory=dict)  # how often each stop reason ended a run
    notes: int = 0  # runs with notes (unparsable model output, ...)

    def line(self, name_width: int = 12) -> str:
        """``single      R@2 0.512  R@5 0.634  all-gold@10 0.420  ...`` (the CLI's line)."""
        figures = "  ".join(f"{name} {value:.3f}" for name, value in self.metrics.items())
        return (f"{self.strategy:<{name_width}}{figures}  hops {self.hops:.1f}  tokens {self.tokens:.0f}  "
                f"ms {self.ms:.0f}")


def score_run(results: Mapping[str, MultiHopResult], qrels: Qrels) -> dict[str, float]:
    """The metrics of the module docstring for ``results`` (question id -> result)."""
    per_question = []
    for qid, result in results.items():
        ranked, gold = result.ids, {d for d, rel in qrels.get(qid, {}).items() if rel > 0}
        row = {f"R@{k}": recall_at(ranked, gold, k) for k in RECALL_AT}
        row |= {f"all-gold@{k}": all_gold_at(ranked, gold, k) for k in ALL_GOLD_AT}
        per_question.append(row)
    metrics = {name: statistics.fmean(row[name] for row in per_question) for name in per_question[0]}
    run = {qid: {doc: 1.0 / rank for rank, doc in enumerate(r.ids, start=1)} for qid, r in results.items()}
    metrics["nDCG@10"] = ndcg_at_k(run, {q: qrels[q] for q in results if q in qrels}, 10)
    return metrics


def evaluate_strategy(index: Any, dataset: BeirDataset, strategy: Strategy, label: str | None = None,
                      question_ids: Sequence[str] | None = None,
                      session: Callable[[Any], SearchSession] = SearchSession,
                      on_result: Callable[[str, MultiHopResult], None] | None = None) -> StrategyReport:
    """Runs ``strategy`` on each question of ``dataset`` (or those of ``question_ids``), each in a
    fresh session made by ``session(index)``, and scores the results (see the module docstring).
    The first question is run once more before the timed runs, as a warm-up.
    The strategy's ``k`` should be at least EVAL_DEPTH for all-gold@20 to mean anything."""
    ids = list(question_ids) if question_ids is not None else list(dataset.queries)
    if ids:  # warm-up, not counted: the first run pays for lazy loading (the strategy's, torch's)
        strategy.run(dataset.queries[ids[0]], session(index))
    results: dict[str, MultiHopResult] = {}
    for qid in ids:
        results[qid] = strategy.run(dataset.queries[qid], session(index))
        if on_result:
            on_result(qid, results[qid])
    stopped: dict[str, int] = {}
    for result in results.values():
        reason = result.stopped.split(":")[0]
        stopped[reason] = stopped.get(reason, 0) + 1
    return StrategyReport(label or strategy.name, strategy.describe(), len(ids), score_run(results, dataset.qrels),
                          statistics.fmean(sum(1 for h in r.hops if h.number > 0) for r in results.values()),
                          statistics.fmean(r.tokens for r in results.values()),
                          statistics.fmean(r.ms for r in results.values()), stopped,
                          sum(1 for r in results.values() if r.notes))
