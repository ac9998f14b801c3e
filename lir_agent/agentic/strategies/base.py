"""The interface every multi-hop strategy implements, its result, and the pieces they share.

A strategy answers ``strategy.run(question, session) -> MultiHopResult``: it searches through a
:class:`~lir_agent.agentic.SearchSession` (so later hops never return a document again, budgets
hold, and every call is in the session's trace), decides what to search next from what it
found, and stops on the session's budget, on its novelty signal, or on its own criterion. The
result lists distinct documents in the strategy's rank order, the hops it took, and why it
stopped.
"""

from __future__ import annotations

import re
import time
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar, Sequence

from ...errors import InvalidInputError
from ...index import check_k
from ...text import check_text
from ..session import SearchResult, SearchSession, SessionHit

# Why a strategy stopped (MultiHopResult.stopped starts with one of these).
STOP_BUDGET = "budget"  # the session's hop or token budget is spent
STOP_NOVELTY = "novelty"  # a hop found nothing new, or nothing close to the first hop's evidence
STOP_DONE = "done"  # the strategy's plan is complete (all hops it plans were taken)
STOP_MODEL = "model"  # the model said it can answer
STOP_MAX_HOPS = "max hops"  # the strategy's own hop limit
STOP_BAD_OUTPUT = "bad output"  # the model's output could not be used (the notes say why)

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"'(\[])")


@dataclass
class Hop:
    """One search a strategy made: what it searched for and what was new."""

    number: int  # the session's hop number (from 1); 0 when the session refused the search
    query: str  # the text searched (for embedding-space queries: the text they were built from)
    ids: list[str]  # documents the hop returned, best first
    scores: list[float]  # their scores (the engine's MaxSim, or the strategy's re-scoring)
    new: int  # how many of them the session had not returned before (a hop with include_seen re-ranks others)
    note: str | None = None  # e.g. how the query was built, a model's output that could not be parsed


@dataclass
class MultiHopResult:
    """What a strategy found for one question."""

    question: str
    strategy: str
    documents: list[SessionHit]  # distinct documents in the strategy's rank order, with cited passages
    hops: list[Hop]
    stopped: str  # why it stopped: one of the STOP_* reasons, then details
    tokens: int  # tokens of passage text the session handed out for it
    ms: float  # wall-clock time of the run
    answer: str | None = None  # LLM-driven strategies: the model's answer, when it gave one
    notes: list[str] = field(default_factory=list)  # what went wrong on the way (unparsable model output, ...)

    @property
    def ids(self) -> list[str]:
        return [d.id for d in self.documents]

    def to_text(self, max_documents: int | None = None) -> str:
        """The evidence and the hop trace as text for a model: numbered passages with ids and
        character spans, then one line per hop, then why the search stopped."""
        documents = self.documents if max_documents is None else self.documents[:max_documents]
        blocks = []
        for rank, hit in enumerate(documents, start=1):
            passage = " ".join(hit.passage.split())
            blocks.append(f"[{rank}] id={hit.id} hop={hit.hop} chars={hit.start}-{hit.end} of {hit.text_chars}\n{passage}")
        trace = [f"hop {h.number}: {h.query!r} -> {len(h.ids)} returned, {h.new} new" + (f" ({h.note})" if h.note else "")
                 for h in self.hops]
        tail = [f"Stopped: {self.stopped}."] + [f"Note: {n}" for n in self.notes]
        if self.answer:
            tail.insert(0, f"Answer proposed by the model: {self.answer}")
        return "\n\n".join(blocks + ["\n".join(trace + tail)])

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable form (the tools' artifact)."""
        return asdict(self)


class Strategy(ABC):
    """A multi-hop search strategy (see the module docstring). ``k``: how many distinct
    documents ``run`` returns at most."""

    name: ClassVar[str]
    needs_llm: ClassVar[bool] = False

    def __init__(self, k: int = 10):
        self.k = check_k(k)

    @abstractmethod
    def run(self, question: str, session: SearchSession) -> MultiHopResult:
        """Searches ``session`` for the evidence ``question`` needs. Raises InvalidInputError for
        an empty question."""

    def describe(self) -> str:
        """The strategy's name and settings, one line."""
        settings = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_")
                             and isinstance(v, (int, float, str, bool)))
        return f"{self.name}({settings})"


def check_count(strategy: str, option: str, value: Any, minimum: int = 1) -> int:
    """``value`` when it is an integer >= ``minimum``; else InvalidInputError such as
    ``condensed: hops must be an integer >= 1, got 0``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise InvalidInputError(f"{strategy}: {option} must be an integer >= {minimum}, got {value!r}")
    return value


class Run:
    """The bookkeeping of one ``Strategy.run``: hops, notes, timing, the result."""

    def __init__(self, strategy: Strategy, question: str, session: SearchSession):
        question = check_text(question, "question")
        if not question.strip():
            raise InvalidInputError("question: is empty")
        self.strategy, self.question, self.session = strategy, question, session
        self.hops: list[Hop] = []
        self.notes: list[str] = []
        self.hits: dict[str, SessionHit] = {}
        self._started = time.perf_counter()
        self._tokens_before = session.budget.tokens_used
        self._seen_before = session.seen  # an agent's earlier searches: never in this run's result

    def search(self, query: str, k: int, note: str | None = None, **options: Any) -> SearchResult:
        """One session search, recorded as a hop (``options``: include_seen, query_matrix, rerank, filter)."""
        seen = self.session.seen
        result = self.session.search(query, k=k, **options)
        self.hops.append(Hop(result.hop, query, [h.id for h in result.hits], [h.score for h in result.hits],
                             sum(1 for h in result.hits if h.id not in seen), note))
        for hit in result.hits:
            self.hits.setdefault(hit.id, hit)
        return result

    def hop(self, ranked: Sequence[str], query: str, keep: int, note: str | None = None,
            **options: Any) -> tuple[list[str], SearchResult, str | None]:
        """One hop of a chain, fused into ``ranked`` (empty before the first hop): the first hop
        searches the strategy's ``k`` documents; a later one ``k + keep`` that may include earlier
        hops' documents (``include_seen``: the evidence-conditioned query re-ranks them), and its
        documents other than ``ranked[:keep]`` are interleaved after them (:func:`interleave`).
        Returns the new ranking, the hop's result, and the reason to stop: the session's
        (:func:`stop_reason`), or novelty when the hop found no document ``ranked`` lacks."""
        later = bool(self.hops)
        k = self.strategy.k + keep if later else self.strategy.k
        result = self.search(query, k, note, include_seen=later, **options)
        top = set(ranked[:keep])
        found = [h.id for h in result.hits if h.id not in top]
        stopped = stop_reason(result)
        if stopped is None and not set(found) - set(ranked):
            stopped = f"{STOP_NOVELTY}: hop {result.hop} found no document the earlier hops had not"
        return interleave(ranked, found, keep), result, stopped

    def result(self, ranked_ids: Sequence[str], stopped: str, answer: str | None = None) -> MultiHopResult:
        """The result with the documents in ``ranked_ids`` order (each once, at most k), leaving out
        those the session had returned before this run."""
        ordered = list(dict.fromkeys(i for i in ranked_ids if i in self.hits and i not in self._seen_before))
        ordered = ordered[: self.strategy.k]
        return MultiHopResult(self.question, self.strategy.name, [self.hits[i] for i in ordered], self.hops, stopped,
                              self.session.budget.tokens_used - self._tokens_before,
                              round((time.perf_counter() - self._started) * 1000, 3), answer, self.notes)


def stop_reason(result: SearchResult) -> str | None:
    """The session's own reason to stop after ``result``: a spent budget or nothing new."""
    if result.hop == 0:
        return f"{STOP_BUDGET}: {result.message}"
    if not result.hits:
        return f"{STOP_NOVELTY}: {result.message or 'no new documents'}"
    return None


def interleave(first: Sequence[str], later: Sequence[str], keep: int) -> list[str]:
    """Fusion by placement: ``first[:keep]``, then ``later`` and ``first[keep:]`` alternately
    (``later`` first), each id once. Unlike reciprocal rank fusion it needs no document to be in
    both lists, which a session's later hops (that exclude earlier hits) never are."""
    fused = list(first[:keep])
    rest = list(first[keep:])
    for i in range(max(len(later), len(rest))):
        fused += later[i : i + 1] + rest[i : i + 1]
    return list(dict.fromkeys(fused))


def reciprocal_rank_fusion(rankings: Sequence[Sequence[str]], k: int = 60) -> list[str]:
    """Ids ordered by sum over ``rankings`` of 1 / (k + rank) (Cormack, Clarke & Büttcher, SIGIR
    2009, k = 60); ties keep first-seen order."""
    scores: dict[str, float] = {}
    for ranking in rankings:
        for rank, doc_id in enumerate(ranking, start=1):
            scores[doc_id] = scores.get(doc_id, 0.0) + 1.0 / (k + rank)
    return sorted(scores, key=lambda d: -scores[d])


def sentences(text: str) -> list[tuple[int, int]]:
    """[start, end) character spans of the sentences of ``text`` (split after . ! ? before a
    capital, digit, quote or bracket)."""
    spans, start = [], 0
    for match in _SENTENCE_END.finditer(text):
        spans.append((start, match.start()))
        start = match.end()
    if start < len(text):
        spans.append((start, len(text)))
    return [(a, b) for a, b in spans if text[a:b].strip()]


def matched_sentences(hit: SessionHit, count: int) -> list[str]:
    """The ``count`` sentences of a hit's passage that its MaxSim alignment matched most
    (summed highlight scores), in text order; the passage's first sentence when nothing matched."""
    spans = sentences(hit.passage)
    if not spans:
        return []
    weight = [0.0] * len(spans)
    for h in hit.highlights:
        position = h.start - hit.start
        for i, (a, b) in enumerate(spans):
            if a <= position < b:
                weight[i] += h.score
                break
    best = sorted(range(len(spans)), key=lambda i: -weight[i])[:count]
    chosen = sorted(i for i in best if weight[i] > 0) or [0]
    return [" ".join(hit.passage[spans[i][0] : spans[i][1]].split()) for i in chosen]
