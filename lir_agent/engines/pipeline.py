"""Search as rounds over shards, with exact merging between rounds.

An index answers a search in rounds; each round runs on every shard (a single index is one
shard) and the coordinator merges the shards' answers before the next:

* exact engine: one round, ``"exact"``: each shard's top k; the merge keeps the best k.
* compressed engine (see :mod:`lir_agent.engines.compressed`), usually one round, ``"probe"``:
  each shard's best ``candidates`` by approximate score, with centroid-interaction scores for
  the best of them and exact (rerank) scores for the best of those → the coordinator merges
  to the best ``candidates`` over all shards, of those the best ``rerank`` by interaction, of
  those the best k by exact score.

Because every cut is made over all shards together, a sharded index returns exactly what one
index holding the same documents (and the same codec) returns: a document among the best
``candidates`` of all shards is among the best ``candidates`` of its own shard.

The later stages are speculative, so that N shards do little more work than one index and a
search takes one round trip: in the probe round a shard scores by interaction only its first
``probe_scored`` candidates and reranks only the best ``rerank_scored`` of those, each its
expected share of the global cut plus a margin of standard deviations (documents are routed by
a hash, so a shard's share of a cut is about binomial); a large batch, whose round trips are
shared by its queries, reranks in a second round instead. When the global cuts reach beyond what
a shard scored, an ``"interaction"`` or ``"rerank"`` round scores the rest, and a
``"documents"`` round fetches hits whose documents were not sent (all rare: they cost a round
trip, never a different result). A single index is one shard with nothing left to speculate.
A shard answers a round with a :class:`Ranked` per query.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any, Callable, NamedTuple, Sequence

import numpy as np

from ..errors import LIRError


@dataclass
class Ranked:
    """Scored documents of one shard for one query, as parallel arrays (segment, row address a
    document inside the shard). The probe round also fills ``interaction`` and ``exact`` (NaN:
    not scored at that stage); ``documents``, when set, holds the rows' documents (None where
    not sent)."""

    scores: np.ndarray  # float32
    segments: np.ndarray  # int64
    rows: np.ndarray  # int64
    documents: list[Any] | None = None
    interaction: np.ndarray | None = None  # centroid-interaction scores
    exact: np.ndarray | None = None  # rerank scores

    @classmethod
    def empty(cls) -> "Ranked":
        nothing = np.zeros(0, np.float32)
        return cls(nothing, np.zeros(0, np.int64), np.zeros(0, np.int64), [], nothing, nothing)

    def __len__(self) -> int:
        return len(self.scores)

    def take(self, positions: np.ndarray) -> "Ranked":
        documents = None if self.documents is None else [self.documents[i] for i in positions]
        interaction = None if self.interaction is None else self.interaction[positions]
        exact = None if self.exact is None else self.exact[positions]
        return Ranked(self.scores[positions], self.segments[positions], self.rows[positions], documents, interaction, exact)

    def best(self, count: int) -> "Ranked":
        """The ``count`` highest-scoring entries, best first (ties: lower position first)."""
        order = np.argsort(-self.scores, kind="stable")[:count]
        return self.take(order)

    def known(self, field_name: str) -> np.ndarray:
        """Positions whose ``interaction`` or ``exact`` score was computed."""
        values = getattr(self, field_name)
        return np.flatnonzero(~np.isnan(values))


@dataclass
class Round:
    """A shard's answer to one round: per query a Ranked, the shard's generation (rounds of one
    search must all see the same one), and, for the probe round, how many matching documents
    each query probed."""

    generation: int
    ranked: list[Ranked]
    probed: list[int] = field(default_factory=list)


def concatenate(parts: Sequence[Ranked]) -> Ranked:
    """The entries of ``parts`` one after another, with their scores and, where any part has
    them, documents (None for the entries of parts without)."""
    if not parts:
        return Ranked.empty()
    documents = (None if all(p.documents is None for p in parts)
                 else [d for p in parts for d in (p.documents if p.documents is not None else [None] * len(p))])
    return Ranked(np.concatenate([p.scores for p in parts]).astype(np.float32, copy=False),
                  np.concatenate([p.segments for p in parts]).astype(np.int64, copy=False),
                  np.concatenate([p.rows for p in parts]).astype(np.int64, copy=False), documents)


class StaleSearchError(LIRError):
    """A shard changed between the rounds of one search (the search is retried)."""


def merge(parts: Sequence[Ranked], count: int, by: str = "scores") -> list[Ranked]:
    """The ``count`` best entries over all shards' ``parts`` by ``by`` ("scores",
    "interaction" or "exact"), returned per shard in their original order."""
    scores = np.concatenate([getattr(p, by) for p in parts]) if parts else np.zeros(0, np.float32)
    shard_of = np.concatenate([np.full(len(p), i) for i, p in enumerate(parts)]) if parts else np.zeros(0, int)
    position = np.concatenate([np.arange(len(p)) for p in parts]) if parts else np.zeros(0, int)
    keep = np.argsort(-scores, kind="stable")[:count]
    return [part.take(np.sort(position[keep[shard_of[keep] == i]])) for i, part in enumerate(parts)]


FanOut = Callable[[str, Any, "list[list[Ranked] | None] | None", "list[bool] | None"], "list[Round | None]"]
"""``fan_out(stage, params, selections, flags)``: runs a round on the shards (see :func:`run_search`)."""

SPECULATION_SIGMAS = 3.0  # margin over a shard's expected share of the candidate cut (see above)
RERANK_SPECULATION_SIGMAS = 2.5  # margin over its expected share of the rerank cut
# Speculative reranking saves a round trip at the price of reranking more documents; a batch of
# more queries than this shares one round trip, so it reranks exactly the global cut instead.
SPECULATIVE_RERANK_QUERIES = 4


def speculative_share(total: int, num_shards: int, sigmas: float) -> int | None:
    """A shard's expected share of a cut of ``total`` documents plus ``sigmas`` standard
    deviations (None: the whole cut, nothing to gain from speculating)."""
    share = total / num_shards
    count = max(1, math.ceil(share + sigmas * math.sqrt(share * (1 - 1 / num_shards))))
    return None if count >= total else count


def run_search(kind: str, fan_out: FanOut, num_queries: int, num_shards: int, k: int,
               params: Any) -> list[list[tuple[float, int, Any]]]:
    """Runs the rounds of a search; returns per query the best k (score, shard, document).

    ``fan_out(stage, params, selections, flags)`` runs one round and returns the shards' Rounds
    in shard order; ``selections[shard][query]`` narrows a round to those documents, and a shard
    whose selection is None is not asked (its Round is None); ``flags[query]`` makes the probe
    round return every matching document (too few were probed).
    """
    if kind == "exact":
        hits = _top_k(_per_query(fan_out("exact", params, None, None), num_queries), k)
        return [[(hit.score, hit.shard, hit.document) for hit in query_hits] for query_hits in hits]
    rerank_scored = (speculative_share(params.rerank, num_shards, RERANK_SPECULATION_SIGMAS)
                     if num_queries <= SPECULATIVE_RERANK_QUERIES else 0)
    probe_params = replace(params, probe_scored=speculative_share(params.candidates, num_shards, SPECULATION_SIGMAS),
                           rerank_scored=None if num_shards == 1 else rerank_scored)
    rounds = fan_out("probe", probe_params, None, None)
    generation = [r.generation for r in rounds]
    too_few = [sum(r.probed[q] for r in rounds) < k for q in range(num_queries)]
    if any(too_few):  # fewer than k matching documents probed: those queries take all that match
        retry = fan_out("probe", probe_params, None, too_few)
        _check_generation(retry, generation)
        rounds = [Round(a.generation, [b.ranked[q] if too_few[q] else a.ranked[q] for q in range(num_queries)])
                  for a, b in zip(rounds, retry)]
    candidates = [merge(parts, params.candidates) for parts in _per_query(rounds, num_queries)]
    unscored = _unknown(candidates, "interaction")
    if any(selection is not None for selection in unscored):
        answers = fan_out("interaction", params, unscored, None)
        _check_generation(answers, generation)
        for q, parts in enumerate(candidates):
            for part, answer in zip(parts, answers):
                if answer is not None and len(answer.ranked[q]):  # else missing (partial): NaN sorts last
                    part.interaction[np.isnan(part.interaction)] = answer.ranked[q].scores
    selected = [merge(parts, params.rerank, by="interaction") for parts in candidates]
    final = [[_exact_scored(part) for part in parts] for parts in selected]
    unranked = _unknown(selected, "exact")
    if any(selection is not None for selection in unranked):
        answers = fan_out("rerank", params, unranked, None)  # each shard's best k of what it had left
        _check_generation(answers, generation)
        for q, parts in enumerate(final):
            for s, answer in enumerate(answers):
                if answer is not None:
                    parts[s] = concatenate([parts[s], answer.ranked[q]])
    hits = _top_k(final, k)
    _fetch_documents(fan_out, params, hits, num_shards, generation)
    return [[(hit.score, hit.shard, hit.document) for hit in query_hits] for query_hits in hits]


class Hit(NamedTuple):
    score: float
    shard: int
    segment: int
    row: int
    document: Any  # None until its shard sent it


def _top_k(parts_per_query: list[list[Ranked]], k: int) -> list[list[Hit]]:
    """Per query, the best k entries over all shards, best first."""
    results = []
    for parts in parts_per_query:
        best = merge(parts, k)
        hits = [Hit(float(score), shard, int(segment), int(row), None if part.documents is None else part.documents[i])
                for shard, part in enumerate(best)
                for i, (score, segment, row) in enumerate(zip(part.scores.tolist(), part.segments, part.rows))]
        results.append(sorted(hits, key=lambda hit: -hit.score))
    return results


def _fetch_documents(fan_out: FanOut, params: Any, hits: list[list[Hit]], num_shards: int,
                     generation: list[int]) -> None:
    """Fills in the documents of hits whose shard did not send them (one round, rarely needed);
    a hit whose shard is gone by then (a partial search) is dropped."""
    wanted: list[list[list[Hit]]] = [[[] for _ in hits] for _ in range(num_shards)]
    for q, query_hits in enumerate(hits):
        for hit in query_hits:
            if hit.document is None:
                wanted[hit.shard][q].append(hit)
    if not any(any(per_query) for per_query in wanted):
        return
    selections = [[Ranked(np.zeros(len(w), np.float32), np.array([h.segment for h in w], np.int64),
                          np.array([h.row for h in w], np.int64)) for w in per_query]
                  if any(per_query) else None for per_query in wanted]
    answers = fan_out("documents", params, selections, None)
    _check_generation(answers, generation)
    for q, query_hits in enumerate(hits):
        found = {hit[:4]: document for s, answer in enumerate(answers) if answer is not None
                 for hit, document in zip(wanted[s][q], answer.ranked[q].documents)}
        query_hits[:] = [hit if hit.document is not None else hit._replace(document=found[hit[:4]])
                         for hit in query_hits if hit.document is not None or hit[:4] in found]


def _unknown(table: list[list[Ranked]], field_name: str) -> list[list[Ranked] | None]:
    """Per shard, per query: the entries of ``table`` (per query, per shard) whose
    ``field_name`` score was not computed; None for a shard with none."""
    result = []
    for parts in _transpose(table):
        rest = [part.take(np.flatnonzero(np.isnan(getattr(part, field_name)))) for part in parts]
        result.append(rest if any(len(r) for r in rest) else None)
    return result


def _exact_scored(part: Ranked) -> Ranked:
    """The entries of ``part`` that have an exact score, scored by it."""
    known = part.take(part.known("exact"))
    return Ranked(known.exact, known.segments, known.rows, known.documents)


def _per_query(rounds: list[Round], num_queries: int) -> list[list[Ranked]]:
    return [[r.ranked[q] for r in rounds] for q in range(num_queries)]


def _transpose(table: list[list[Ranked]]) -> list[list[Ranked]]:
    """Per query per shard ↔ per shard per query."""
    return [list(column) for column in zip(*table)]


def _check_generation(rounds: list[Round | None], expected: list[int]) -> None:
    if any(r is not None and r.generation != e for r, e in zip(rounds, expected)):
        raise StaleSearchError("a shard was written to during the search")
