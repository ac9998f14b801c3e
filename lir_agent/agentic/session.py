"""Search sessions: the state an agent's run keeps across its search calls.

An agent that calls a retriever three times gets the same top documents three times, cannot
tell what it already saw, floods its context, and cannot cite. A :class:`SearchSession` wraps
any index (``Index``, ``ShardedIndex``, ``RayIndex``: it uses their public ``search``/``get``)
and gives each call:

* **deduplication**: ``search`` returns only documents this session has not returned before
  (excluded inside the engine, before scoring, so k new ones come back whenever k exist);
  ``search_more`` the next page of the last query;
* **budgets**: hops (search calls) and tokens of text handed out; when one is spent the result
  says so in words, and the limit is never exceeded;
* **novelty**: how many returned documents are new and how their best score compares with the
  first hop's, so a strategy can stop when a hop adds nothing;
* **citations**: each hit's passage is the best window around its MaxSim alignment
  (:mod:`lir_agent.agentic.citations`), with character offsets to cite or ``read`` around;
* **a trace** of every call, exportable to JSON; the session's whole state *is* its trace
  (:meth:`SearchSession.to_json` / :meth:`SearchSession.from_json`), so an agent framework can
  keep it in its own run state and rebuild the session on each tool call.

Calls with bad arguments raise :class:`~lir_agent.InvalidInputError` (or
:class:`~lir_agent.DocumentNotFoundError`) and leave the session unchanged; tools turn them into
errors the model reads.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Callable, Literal, Protocol, Sequence

import torch

from pydantic import TypeAdapter, ValidationError

from ..errors import DocumentNotFoundError, InvalidInputError
from ..filters import compile_filter
from ..formatting import CHARS_PER_TOKEN, approximate_tokens
from ..index import SearchHit, check_k, check_matrix
from ..text import check_text
from .citations import Highlight, best_window, cite
from .context import assemble_context

TRACE_FORMAT = "lir-agent-session"
TRACE_VERSION = 1
MIN_PASSAGE_TOKENS = 16  # a hit is not handed out with less text than this
MAX_WORD_CHARS = 30  # a matched query word is shown at most this long
TOKENS_SPENT = "The token budget is spent: answer from the evidence gathered so far."


class Reranker(Protocol):
    """Re-scores a search's candidates (see :meth:`SearchSession.search`)."""

    depth: int  # how many of the engine's best new documents it re-scores

    def score(self, query_matrix: torch.Tensor, doc_matrices: Sequence[torch.Tensor]) -> Sequence[float]:
        """One score per document matrix ((n_i, dim) each), higher is better."""
        ...


@dataclass
class Budget:
    """What a session may still hand out (None: no limit)."""

    hops_used: int
    max_hops: int | None
    tokens_used: int
    max_tokens: int | None

    @property
    def hops_left(self) -> int | None:
        return None if self.max_hops is None else max(0, self.max_hops - self.hops_used)

    @property
    def tokens_left(self) -> int | None:
        return None if self.max_tokens is None else max(0, self.max_tokens - self.tokens_used)

    def describe(self) -> str:
        hops = "no hop limit" if self.max_hops is None else f"{self.hops_left} of {self.max_hops} searches left"
        tokens = "no token limit" if self.max_tokens is None else f"{self.tokens_left} of {self.max_tokens} tokens left"
        return f"Budget: {hops}, {tokens}."


@dataclass
class SessionHit:
    """A document handed out by a search, with the passage of its text that was handed out."""

    id: str
    score: float  # the engine's MaxSim score
    rank: int  # from 1, within this call
    hop: int  # the session hop that returned it (from 1)
    metadata: dict[str, Any]
    passage: str  # text[start:end]
    start: int  # character offsets of the passage in the document text
    end: int
    text_chars: int  # length of the document text
    highlights: list[Highlight]  # spans matched by query tokens (within the encoded part); [] without citations
    truncated: bool  # the encoder reads only the first ``encoded_chars`` characters
    encoded_chars: int | None  # None when the session does not cite


@dataclass
class SearchResult:
    """What a ``search`` or ``search_more`` call hands the agent."""

    kind: Literal["search", "search_more"]
    query: str
    filter: Any
    hop: int  # this call's hop number (0 when the hop budget was already spent)
    hits: list[SessionHit]
    new: int  # documents in ``hits`` this session had not returned before
    seen: int  # documents the session has returned so far, these included
    best_score: float | None
    first_hop_best: float | None  # the best score of the session's first search with hits
    tokens: int  # tokens of passage text handed out by this call
    budget: Budget
    message: str | None = None  # in words: a budget spent, nothing new, ...
    query_tokens: int = 0  # rows of this call's query matrix (MaxSim sums over them)
    first_hop_query_tokens: int = 0

    @property
    def relative_best(self) -> float | None:
        """This call's best score per query token over the first hop's (< 1: weaker evidence
        than at the start). Per token, because MaxSim sums over the query's tokens: a short
        rephrasing scores lower than a long question without matching worse."""
        if self.best_score is None or not self.first_hop_best or not self.query_tokens or not self.first_hop_query_tokens:
            return None
        return (self.best_score / self.query_tokens) / (self.first_hop_best / self.first_hop_query_tokens)

    def novelty(self) -> str:
        """One line on what this call added."""
        if not self.hits:
            return "No new documents."
        line = f"{self.new} new document{'s' if self.new != 1 else ''} ({self.seen} seen in this session)"
        if self.relative_best is not None and self.hop > 1:
            line += (f"; best score per query token {self.best_score / self.query_tokens:.2f} = "
                     f"{self.relative_best:.0%} of the first search's")
        return line + "."

    def to_text(self) -> str:
        """The content a tool hands the model: numbered passages with ids, scores and spans,
        then a line on what is new and what budget is left."""
        blocks = []
        for hit in self.hits:
            header = (f"[{hit.rank}] id={hit.id} score={hit.score:.3f} chars={hit.start}-{hit.end} "
                      f"of {hit.text_chars}")
            if hit.highlights:
                header += "\nmatched: " + "; ".join(
                    f"{h.start}-{h.end} ({', '.join(w[:MAX_WORD_CHARS] for w in h.query_words[:6])})"
                    for h in hit.highlights[:6])
            if hit.truncated:
                header += (f"\n(only the first {hit.encoded_chars} characters were searchable)" if hit.encoded_chars
                           else "\n(only the beginning of this document was searchable)")
            passage = " ".join(hit.passage.split())
            blocks.append(f"{header}\n{passage}")
        status = [self.message] if self.message else []
        status += [self.novelty(), self.budget.describe()]
        return "\n\n".join(blocks + [" ".join(status)])

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable form (the tools' artifact / raw output)."""
        return _as_dict(self) | {"relative_best": self.relative_best}


@dataclass
class ReadResult:
    """A window of a document's text, where it sits, and where to go on."""

    id: str
    start: int
    end: int
    text: str  # text[start:end] of the document
    text_chars: int
    next_start: int | None  # where the next window starts; None at the end of the document
    tokens: int
    budget: Budget
    message: str | None = None

    def to_text(self) -> str:
        """The content a tool hands the model."""
        head = f"document {self.id} characters {self.start}-{self.end} of {self.text_chars}"
        if self.message:  # nothing was read: no invitation to go on
            return "\n".join([head, f"{self.message} {self.budget.describe()}"])
        follow = (f"(continues: read again with start={self.next_start})" if self.next_start is not None
                  else "(end of document)")
        return "\n".join([head, self.text, follow, self.budget.describe()])

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable form (the tool's artifact / raw output)."""
        return _as_dict(self)


@dataclass
class TraceEvent:
    """One call of a session: what was asked, what came back, what it cost."""

    kind: Literal["search", "search_more", "read"]
    query: str | None = None
    filter: Any = None
    k: int | None = None
    include_seen: bool = False
    ids: list[str] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)
    tokens: int = 0
    ms: float = 0.0
    hop: int = 0  # searches: the hop; reads: 0
    start: int | None = None  # reads: where the window started
    query_tokens: int = 0  # searches: rows of the query matrix


@dataclass
class Evidence:
    """A document the session handed out, the first time it did."""

    id: str
    hop: int
    query: str
    score: float
    rank: int


class SearchSession:
    """Per-run search state over one index (see the module docstring).

    ``k``: default hits per search; ``max_hops``: how many ``search``/``search_more`` calls
    may return hits; ``max_tokens``: tokens of document text (passages and reads) the session
    may hand out in all; ``passage_tokens``: the longest passage per hit; ``cite``: passages are
    the best window around each hit's MaxSim alignment (re-encodes the k hits: see
    :mod:`~lir_agent.agentic.citations`), else each document's beginning (a document stored as
    passages: its best passages, which the engine scored, either way); ``count_tokens``: the
    model's token counter (default: four characters a token). Not for sharing between threads:
    one session per agent run.
    """

    def __init__(self, index: Any, k: int = 5, max_hops: int | None = None, max_tokens: int | None = None,
                 passage_tokens: int = 200, cite: bool = True,
                 count_tokens: Callable[[str], int] = approximate_tokens):
        self.index = index
        self.k = check_k(k)
        for name, value in (("max_hops", max_hops), ("max_tokens", max_tokens)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
                raise InvalidInputError(f"{name} must be a non-negative integer or None, got {value!r}")
        if isinstance(passage_tokens, bool) or not isinstance(passage_tokens, int) or passage_tokens < MIN_PASSAGE_TOKENS:
            raise InvalidInputError(f"passage_tokens must be an integer >= {MIN_PASSAGE_TOKENS}, got {passage_tokens!r}")
        self.max_hops, self.max_tokens, self.passage_tokens = max_hops, max_tokens, passage_tokens
        self.cite, self.count_tokens = cite, count_tokens
        self.trace: list[TraceEvent] = []

    # ---------------------------------------------------------------- state, derived from the trace
    @property
    def budget(self) -> Budget:
        hops = sum(1 for e in self.trace if e.kind != "read" and e.hop > 0)
        return Budget(hops, self.max_hops, sum(e.tokens for e in self.trace), self.max_tokens)

    @property
    def seen(self) -> set[str]:
        """Ids of every document a search of this session returned."""
        return {i for e in self.trace if e.kind != "read" for i in e.ids}

    def evidence(self) -> list[Evidence]:
        """Every document the session's searches returned, in order, with the hop that found it."""
        found: dict[str, Evidence] = {}
        query = None
        for event in self.trace:
            if event.kind == "read":
                continue
            query = event.query if event.query is not None else query
            for rank, (doc_id, score) in enumerate(zip(event.ids, event.scores), start=1):
                found.setdefault(doc_id, Evidence(doc_id, event.hop, query, score, rank))
        return list(found.values())

    def _first_hop_best(self) -> tuple[float | None, int]:
        """The best score of the first search with hits, and its query's token count."""
        first = next((e for e in self.trace if e.kind != "read" and e.scores), None)
        return (None, 0) if first is None else (first.scores[0], first.query_tokens)

    # ---------------------------------------------------------------- calls
    def search(self, query: str, k: int | None = None, filter: Any = None, include_seen: bool = False,
               query_matrix: torch.Tensor | None = None, rerank: Reranker | None = None) -> SearchResult:
        """The best ``k`` documents for ``query`` (matching ``filter``) that this session has not
        returned before (all documents with ``include_seen``), each with its cited passage.

        For strategies that search in the embedding space (:mod:`lir_agent.agentic.strategies`):
        ``query_matrix``, a (n_tokens, dim) float tensor, is searched instead of ``query``'s
        encoding (``query`` then only describes it in the trace and the citations);
        ``rerank`` re-scores the engine's best ``rerank.depth`` new documents from their stored
        token matrices and hands out its best ``k`` with its scores. Raises InvalidInputError
        for a matrix that is not (n_tokens >= 1, dim) finite floats (the index's own check).
        """
        query = check_text(query, "query")
        if not query.strip():
            raise InvalidInputError("query: is empty")
        k = self.k if k is None else _checked("k", k, check_k)
        if filter is not None and not isinstance(filter, dict):
            raise InvalidInputError(f"filter: a session takes a JSON filter (a dict), got {type(filter).__name__}")
        _checked("filter", filter, compile_filter)
        if query_matrix is not None:
            query_matrix = check_matrix(query_matrix, self.index.encoder.dim, "query_matrix")
        return self._search("search", query, k, filter, include_seen, set() if include_seen else self.seen,
                            query_matrix, rerank)

    def search_more(self) -> SearchResult:
        """The next page of the last query: its next best documents not handed out yet."""
        last = next((e for e in reversed(self.trace) if e.kind == "search"), None)
        if last is None:
            raise InvalidInputError("search_more: there is no earlier search in this session to continue")
        if last.include_seen:  # the pages of that query so far
            position = self.trace.index(last)
            exclude = {i for e in self.trace[position:] if e.kind != "read" for i in e.ids}
        else:
            exclude = self.seen
        return self._search("search_more", last.query, last.k, last.filter, last.include_seen, exclude)

    def _search(self, kind: Literal["search", "search_more"], query: str, k: int, filter: Any,
                include_seen: bool, exclude: set[str], query_matrix: torch.Tensor | None = None,
                rerank: Reranker | None = None) -> SearchResult:
        started = time.perf_counter()
        budget = self.budget
        refusal = _spent(budget)
        if refusal:
            first_best, first_tokens = self._first_hop_best()
            return SearchResult(kind, query, filter, 0, [], 0, len(self.seen), None, first_best, 0, budget, refusal,
                                first_hop_query_tokens=first_tokens)
        hop = budget.hops_used + 1
        tokens_left = budget.tokens_left
        if tokens_left is not None:  # no more hits than the budget gives each a useful passage
            k = min(k, tokens_left // MIN_PASSAGE_TOKENS)
        encoder = self.index.encoder
        encoded_query = query_matrix is None  # the matrix is the query text's encoding: citations reuse it
        if encoded_query:
            query_matrix = encoder.encode_queries([query])[0]  # once, for the search and the citations
        if rerank is None:
            found = self.index.search(query_matrix, k=k, filter=filter, exclude_ids=exclude)
        else:
            found = self._reranked(query_matrix, k, filter, exclude, rerank)
        passage_tokens = self.passage_tokens
        if tokens_left is not None and found:
            passage_tokens = min(passage_tokens, tokens_left // len(found))
        passage_chars = passage_tokens * CHARS_PER_TOKEN
        if self.cite:
            windows = [(c.passage_start, c.passage_end, c.highlights, c.truncated, c.encoded_chars) for c in
                       cite(encoder, query, [(h.id, h.text) for h in found], passage_chars,
                            query_matrix=query_matrix if encoded_query else None,
                            doc_matrices=[self._stored_matrix(h.id) for h in found],
                            layouts=[self._layout(h.id) for h in found])]
        else:
            windows = [(*best_window(h.text, [], passage_chars), [], h.truncated_tokens > 0, None) for h in found]
        seen_before = self.seen
        hits, used = [], 0
        for hit, (start, end, highlights, truncated, encoded_chars) in zip(found, windows):
            if len(hit.passages) > 1:  # a long document: the window is its best passages, or within the best one
                start, end = self._passage_window(hit, highlights, passage_tokens)
            passage = hit.text[start:end]
            while passage and self.count_tokens(passage) > passage_tokens:  # a tokenizer denser than 4 chars/token
                end = start + int(len(passage) * 0.9)
                passage = hit.text[start:end]
            used += self.count_tokens(passage)
            hits.append(SessionHit(hit.id, hit.score, hit.rank, hop, hit.metadata, passage, start, end,
                                   len(hit.text), highlights, truncated, encoded_chars))
        new = sum(1 for h in hits if h.id not in seen_before)
        self.trace.append(TraceEvent(kind, query if kind == "search" else None, filter, k, include_seen,
                                     [h.id for h in hits], [h.score for h in hits], used,
                                     round((time.perf_counter() - started) * 1000, 3), hop,
                                     query_tokens=int(query_matrix.shape[0])))
        message = None if hits else ("No documents left that match." if filter is None
                                     else "No documents left that match the filter.")
        first_best, first_tokens = self._first_hop_best()
        return SearchResult(kind, query, filter, hop, hits, new, len(self.seen), hits[0].score if hits else None,
                            first_best, used, self.budget, message, int(query_matrix.shape[0]), first_tokens)

    def _reranked(self, query_matrix: torch.Tensor, k: int, filter: Any, exclude: set[str],
                  rerank: Reranker) -> list[SearchHit]:
        """The engine's best ``rerank.depth`` candidates, re-scored by ``rerank``; its best k."""
        candidates = self.index.search(query_matrix, k=max(k, rerank.depth), filter=filter, exclude_ids=exclude)
        matrices = [self._stored_matrix(hit.id) for hit in candidates]
        kept = [(hit, m) for hit, m in zip(candidates, matrices) if m is not None]
        if not kept:
            return []
        scores = rerank.score(query_matrix, [m for _, m in kept])
        order = sorted(range(len(kept)), key=lambda i: -float(scores[i]))[:k]
        return [replace(kept[i][0], score=float(scores[i]), rank=rank) for rank, i in enumerate(order, start=1)]

    def _passage_window(self, hit: Any, highlights: Sequence[Highlight], passage_tokens: int) -> tuple[int, int]:
        """The span handed out for a hit stored as passages: the best-scoring window that context
        assembly makes of its passages within ``passage_tokens``; when not even one passage fits,
        the best window around the highlights inside its best passage."""
        context = assemble_context([hit], passage_tokens, self.count_tokens)
        if context.windows:
            best = max(context.windows, key=lambda w: w.score)
            return best.start, best.end
        top = hit.passages[0]
        inside = [h for h in highlights if top.start <= h.start and h.end <= top.end]
        start, end = best_window(hit.text[top.start:top.end], [replace(h, start=h.start - top.start, end=h.end - top.start)
                                                               for h in inside], passage_tokens * CHARS_PER_TOKEN)
        return top.start + start, top.start + end

    def _layout(self, doc_id: str) -> Any:
        """The passages a hit was stored as (None: one; or gone since the search)."""
        try:
            return self.index.get(doc_id).passages
        except DocumentNotFoundError:
            return None

    def _stored_matrix(self, doc_id: str) -> Any:
        """The index's stored token matrix of a hit (its citation then needs no encoder run), or
        None if it is gone (deleted since the search)."""
        try:
            return self.index.get_embeddings(doc_id)
        except DocumentNotFoundError:
            return None

    def read(self, doc_id: str, start: int = 0, max_tokens: int | None = None) -> ReadResult:
        """A window of document ``doc_id``'s text from character ``start``, of at most
        ``max_tokens`` (default: ``passage_tokens``) tokens and never more than the budget left,
        ending at a word boundary. Raises DocumentNotFoundError for an unknown id and
        InvalidInputError for a ``start`` outside the text."""
        started = time.perf_counter()
        doc_id = check_text(doc_id, "id")
        if isinstance(start, bool) or not isinstance(start, int) or start < 0:
            raise InvalidInputError(f"start must be a non-negative integer, got {start!r}")
        max_tokens = self.passage_tokens if max_tokens is None else _checked("max_tokens", max_tokens, check_k)
        document = self.index.get(doc_id)
        text = document.text
        if start >= len(text):
            raise InvalidInputError(f"start={start} is past the end of document {doc_id!r} ({len(text)} characters)")
        budget = self.budget
        if budget.tokens_left is not None:
            max_tokens = min(max_tokens, budget.tokens_left)
            if budget.tokens_left < MIN_PASSAGE_TOKENS:
                return ReadResult(doc_id, start, start, "", len(text), start, 0, budget, TOKENS_SPENT)
        end = min(len(text), start + max_tokens * CHARS_PER_TOKEN)
        if end < len(text):  # pages end at a passage's end where one lies in the window, else at a word's
            passage_ends = [b for _, b, _ in document.passages or () if start < b <= end]
            cut = max(passage_ends) if passage_ends else text.rfind(" ", start + 1, end)
            end = cut if cut > start else end
        window = text[start:end]
        while window and self.count_tokens(window) > max_tokens:
            end = start + int(len(window) * 0.9)
            window = text[start:end]
        tokens = self.count_tokens(window)
        self.trace.append(TraceEvent("read", ids=[doc_id], tokens=tokens, start=start,
                                     ms=round((time.perf_counter() - started) * 1000, 3)))
        return ReadResult(doc_id, start, end, window, len(text), end if end < len(text) else None, tokens, self.budget)

    # ---------------------------------------------------------------- trace
    def to_json(self) -> str:
        """The session's settings and trace as JSON (all of its state)."""
        return json.dumps(self.to_state(), ensure_ascii=False)

    def to_state(self) -> dict[str, Any]:
        """The session's settings and trace as a JSON-serialisable dict."""
        return {"format": TRACE_FORMAT, "version": TRACE_VERSION, "k": self.k, "max_hops": self.max_hops,
                "max_tokens": self.max_tokens, "passage_tokens": self.passage_tokens, "cite": self.cite,
                "trace": [asdict(e) for e in self.trace]}

    @classmethod
    def from_json(cls, index: Any, data: str | dict[str, Any],
                  count_tokens: Callable[[str], int] = approximate_tokens) -> "SearchSession":
        """The session :meth:`to_json` (or :meth:`to_state`) saved, over ``index``; InvalidInputError
        when ``data`` is not such a session."""
        try:
            state = json.loads(data) if isinstance(data, str) else data
            if state.get("format") != TRACE_FORMAT or state.get("version") != TRACE_VERSION:
                raise ValueError(f"not a {TRACE_FORMAT} v{TRACE_VERSION} document")
            session = cls(index, k=state["k"], max_hops=state["max_hops"], max_tokens=state["max_tokens"],
                          passage_tokens=state["passage_tokens"], cite=state["cite"],
                          count_tokens=count_tokens)
            session.trace = [_TRACE_EVENT.validate_python(event) for event in state["trace"]]
            if any(e.tokens < 0 or e.hop < 0 or e.query_tokens < 0 or len(e.ids) != len(e.scores) and e.kind != "read"
                   for e in session.trace):
                raise ValueError("a trace event has negative counts, or ids and scores that do not pair up")
        except (ValueError, KeyError, TypeError, AttributeError, ValidationError) as exc:
            raise InvalidInputError(f"not a saved search session: {exc}") from exc
        return session


_TRACE_EVENT = TypeAdapter(TraceEvent)


def _as_dict(result: "SearchResult | ReadResult") -> dict[str, Any]:
    """A result's fields as a dict, its budget with what is left."""
    data = asdict(result)
    data["budget"] |= {"hops_left": result.budget.hops_left, "tokens_left": result.budget.tokens_left}
    return data


def _spent(budget: Budget) -> str | None:
    if budget.hops_left == 0:
        return (f"The search budget is spent ({budget.max_hops} of {budget.max_hops} searches): "
                "answer from the evidence gathered so far.")
    if budget.tokens_left is not None and budget.tokens_left < MIN_PASSAGE_TOKENS:
        return TOKENS_SPENT
    return None


def _checked(name: str, value: Any, check: Callable[[Any], Any]) -> Any:
    """``check(value)``, its InvalidInputError reworded to name the argument."""
    try:
        return check(value)
    except InvalidInputError as exc:
        message = str(exc)
        raise InvalidInputError(message if message.startswith(name) else f"{name}: {message}") from exc
