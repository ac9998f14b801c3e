"""Context assembly: the best passages of some hits as contiguous windows within a token budget.

Given search hits with their scored passages (:class:`lir_agent.passages.HitPassage`, from
``index.search``) and a budget of tokens, :func:`assemble_context` takes passages best first
while they fit, merges those of one document that overlap or touch into one window (a span of
its text), orders the windows by document (the best document first) and in text order within
one, and returns the text with a citation per window: document id and character span. No
character of a document appears twice (overlapping passages are merged, never repeated), and
the total never exceeds the budget as the given token counter counts it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

from ..errors import InvalidInputError
from ..formatting import TokenCounter, approximate_tokens

SEPARATOR = "\n\n"


@dataclass(frozen=True)
class Window:
    """A contiguous span of one document's text, cited by id and character span."""

    doc_id: str
    start: int
    end: int
    text: str
    score: float  # the best passage score inside it
    tokens: int

    @property
    def citation(self) -> str:
        return f"[{self.doc_id} {self.start}-{self.end}]"


@dataclass(frozen=True)
class Context:
    """Windows in reading order, their text with citations, and the tokens it holds."""

    windows: list[Window]
    text: str
    tokens: int  # of ``text``, citations included


def _merged(spans: list[tuple[int, int, float]]) -> list[tuple[int, int, float]]:
    """Spans of one document merged where they overlap or touch, in text order (best score kept)."""
    out: list[tuple[int, int, float]] = []
    for start, end, score in sorted(spans):
        if out and start <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], end), max(out[-1][2], score))
        else:
            out.append((start, end, score))
    return out


def assemble_context(hits: Sequence[Any], max_tokens: int, count_tokens: TokenCounter = approximate_tokens) -> Context:
    """The best passages of ``hits`` (objects with ``id``, ``text``, ``score`` and ``passages``:
    search hits) as windows within ``max_tokens`` (see the module docstring): the returned text,
    citations and separators included, counts at most ``max_tokens`` with ``count_tokens``. When
    the best passage alone is longer than the budget, its beginning is taken, cut at a word; a
    later passage that does not fit any more is skipped (a smaller one after it may still fit).
    A hit without scored passages stands for its whole text. Raises InvalidInputError for a
    budget below one token."""
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise InvalidInputError(f"max_tokens must be a positive integer, got {max_tokens!r}")
    texts = {hit.id: hit.text for hit in hits}
    candidates = sorted(((p.score, hit.id, p.start, p.end) for hit in hits for p in (hit.passages or [_Whole(hit)])),
                        key=lambda c: -c[0])
    chosen: dict[str, list[tuple[int, int, float]]] = {}  # insertion order: documents by their best passage
    context = _context(texts, chosen, count_tokens)
    for score, doc_id, start, end in candidates:
        def attempt(stop: int) -> tuple[dict, Context]:
            trial = {**chosen, doc_id: chosen.get(doc_id, []) + [(start, stop, score)]}
            return trial, _context(texts, trial, count_tokens)

        trial, tried = attempt(end)
        if tried.tokens > max_tokens and not chosen:  # the best passage alone is too long: its longest
            stop = _longest_fit(texts[doc_id], start, end, lambda e: attempt(e)[1].tokens <= max_tokens)
            trial, tried = attempt(stop) if stop > start else (trial, tried)  # beginning that fits, cut at a word
        if tried.tokens <= max_tokens:
            chosen, context = trial, tried
    return context


def _longest_fit(text: str, start: int, end: int, fits: Callable[[int], bool]) -> int:
    """The largest word end e in (start, end] with fits(e) (binary search), or start if none."""
    ends = [i for i in range(start + 1, end) if text[i].isspace() and not text[i - 1].isspace()]
    low, high = 0, len(ends)
    while low < high:
        mid = (low + high + 1) // 2
        if fits(ends[mid - 1]):
            low = mid
        else:
            high = mid - 1
    return ends[low - 1] if low else start


def _context(texts: dict[str, str], chosen: dict[str, list[tuple[int, int, float]]],
             count_tokens: TokenCounter) -> Context:
    windows = [Window(doc_id, a, b, texts[doc_id][a:b], score, count_tokens(texts[doc_id][a:b]))
               for doc_id, spans in chosen.items() for a, b, score in _merged(spans)]
    text = SEPARATOR.join(f"{w.citation}\n{w.text}" for w in windows)
    return Context(windows, text, count_tokens(text) if text else 0)


@dataclass(frozen=True)
class _Whole:
    """A hit without scored passages: its whole text, at its score."""

    hit: Any

    @property
    def score(self) -> float:
        return self.hit.score

    @property
    def start(self) -> int:
        return 0

    @property
    def end(self) -> int:
        return len(self.hit.text)
