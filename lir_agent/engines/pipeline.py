"""Search as rounds over shards, with exact merging between rounds.

An index answers a search in rounds; each round runs on every shard (a single index is one
shard) and the coordinator merges the shards' answers before the next:

* exact engine: one round, ``"exact"``: each shard's top k; the merge keeps the best k.
* compressed engine (see :mod:`lir_agent.engines.compressed`): ``"probe"``: each shard's best
  ``candidates`` by approximate score → merge to the best ``candidates`` over all shards, then of
  those the best ``rerank`` by centroid interaction → ``"rerank"``: exact MaxSim on the
  decompressed tokens of the survivors, each shard's best k → merge to k.

Because every cut is made over all shards together, a sharded index returns exactly what one
index holding the same documents (and the same codec) returns: a document among the best
``candidates`` of all shards is among the best ``candidates`` of its own shard.

The interaction scores are speculative: in the probe round a shard scores only its first
``probe_scored`` candidates: its expected share of the global cut plus a margin of
``SPECULATION_SIGMAS`` standard deviations (documents are routed by a hash, so a shard's share of
the best ``candidates`` is about binomial), so N shards do little more interaction work than one
index rather than N times as much. When a shard holds more of the global cut than it scored, an
``"interaction"`` round scores the rest (rare: it costs a round trip, never a different result). A shard answers a round with a
:class:`Ranked` per query; the last round attaches its hits' documents, so no further round trip
is needed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Sequence

import numpy as np

from ..errors import LIRError


@dataclass
class Ranked:
    """Scored documents of one shard for one query, as parallel arrays (segment, row address a
    document inside the shard; ``documents``, when set, are those rows' documents)."""

    scores: np.ndarray  # float32
    segments: np.ndarray  # int64
    rows: np.ndarray  # int64
    documents: list[Any] | None = None  # set by the last round of a search
    interaction: np.ndarray | None = None  # centroid-interaction scores (probe round; NaN: not scored)

    @classmethod
    def empty(cls) -> "Ranked":
        return cls(np.zeros(0, np.float32), np.zeros(0, np.int64), np.zeros(0, np.int64), [], np.zeros(0, np.float32))

    def __len__(self) -> int:
        return len(self.scores)

    def take(self, positions: np.ndarray) -> "Ranked":
        documents = None if self.documents is None else [self.documents[i] for i in positions]
        interaction = None if self.interaction is None else self.interaction[positions]
        return Ranked(self.scores[positions], self.segments[positions], self.rows[positions], documents, interaction)

    def best(self, count: int) -> "Ranked":
        """The ``count`` highest-scoring entries, best first (ties: lower position first)."""
        order = np.argsort(-self.scores, kind="stable")[:count]
        return self.take(order)


@dataclass
class Round:
    """A shard's answer to one round: per query a Ranked, the shard's generation (rounds of one
    search must all see the same one), and, for the probe round, how many matching documents
    each query probed."""

    generation: int
    ranked: list[Ranked]
    probed: list[int] = field(default_factory=list)


def concatenate(parts: Sequence[Ranked]) -> Ranked:
    if not parts:
        return Ranked.empty()
    return Ranked(np.concatenate([p.scores for p in parts]).astype(np.float32, copy=False),
                  np.concatenate([p.segments for p in parts]).astype(np.int64, copy=False),
                  np.concatenate([p.rows for p in parts]).astype(np.int64, copy=False))


class StaleSearchError(LIRError):
    """A shard changed between the rounds of one search (the search is retried)."""


def merge(parts: Sequence[Ranked], count: int, by_interaction: bool = False) -> list[Ranked]:
    """The ``count`` best entries over all shards' ``parts`` (by score, or by interaction
    score), returned per shard."""
    scores = (np.concatenate([p.interaction if by_interaction else p.scores for p in parts]) if parts
              else np.zeros(0, np.float32))
    shard_of = np.concatenate([np.full(len(p), i) for i, p in enumerate(parts)]) if parts else np.zeros(0, int)
    position = np.concatenate([np.arange(len(p)) for p in parts]) if parts else np.zeros(0, int)
    keep = np.argsort(-scores, kind="stable")[:count]
    return [part.take(np.sort(position[keep[shard_of[keep] == i]])) for i, part in enumerate(parts)]


FanOut = Callable[[str, Any, "list[list[Ranked]] | None", "list[bool] | None"], list[Round]]
"""``fan_out(stage, params, selections, flags)``: runs a round on every shard (see :func:`run_search`)."""

SPECULATION_SIGMAS = 4.0  # margin over a shard's expected share of the candidate cut (see above)


def run_search(kind: str, fan_out: FanOut, num_queries: int, num_shards: int, k: int,
               params: Any) -> list[list[tuple[float, int, Any]]]:
    """Runs the rounds of a search; returns per query the best k (score, shard, document).

    ``fan_out(stage, params, selections, flags)`` runs one round on every shard and returns
    their Rounds in shard order; ``selections[shard][query]`` narrows a round to those
    documents; ``flags[query]`` makes the probe round return every matching document (too few
    were probed).
    """
    if kind == "exact":
        final = _per_query(fan_out("exact", params, None, None), num_queries)
    else:
        share = params.candidates / num_shards
        scored = max(1, math.ceil(share + SPECULATION_SIGMAS * math.sqrt(share * (1 - 1 / num_shards))))
        probe_params = replace(params, probe_scored=None if scored >= params.candidates else scored)
        rounds = fan_out("probe", probe_params, None, None)
        generation = [r.generation for r in rounds]
        too_few = [sum(r.probed[q] for r in rounds) < k for q in range(num_queries)]
        if any(too_few):  # fewer than k matching documents probed: those queries take all that match
            retry = fan_out("probe", probe_params, None, too_few)
            _check_generation(retry, generation)
            rounds = [Round(a.generation, [b.ranked[q] if too_few[q] else a.ranked[q] for q in range(num_queries)])
                      for a, b in zip(rounds, retry)]
        candidates = _transpose([merge(parts, params.candidates) for parts in _per_query(rounds, num_queries)])
        unscored = [[part.take(np.flatnonzero(np.isnan(part.interaction))) for part in parts] for parts in candidates]
        if any(len(part) for parts in unscored for part in parts):
            scored = fan_out("interaction", params, unscored, None)
            _check_generation(scored, generation)
            for parts, answer in zip(candidates, scored):
                for part, interaction in zip(parts, answer.ranked):
                    if len(interaction):  # else the shard is missing (a partial search) and its NaNs sort last
                        part.interaction[np.isnan(part.interaction)] = interaction.scores
        selected = [merge(parts, params.rerank, by_interaction=True) for parts in _transpose(candidates)]
        reranked = fan_out("rerank", params, _transpose(selected), None)
        _check_generation(reranked, generation)
        final = _per_query(reranked, num_queries)
    results = []
    for parts in final:
        best = merge(parts, k)
        hits = [(float(score), shard, doc) for shard, part in enumerate(best)
                for score, doc in zip(part.scores.tolist(), part.documents)]
        results.append(sorted(hits, key=lambda hit: -hit[0]))
    return results


def _per_query(rounds: list[Round], num_queries: int) -> list[list[Ranked]]:
    return [[r.ranked[q] for r in rounds] for q in range(num_queries)]


def _transpose(table: list[list[Ranked]]) -> list[list[Ranked]]:
    """Per query per shard ↔ per shard per query."""
    return [list(column) for column in zip(*table)]


def _check_generation(rounds: list[Round], expected: list[int]) -> None:
    if [r.generation for r in rounds] != expected:
        raise StaleSearchError("a shard was written to during the search")
