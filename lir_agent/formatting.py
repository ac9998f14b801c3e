"""Search results as text for a language model: numbered passages cut to a token budget."""

from __future__ import annotations

import math
from typing import Callable, Iterable

TokenCounter = Callable[[str], int]
CHARS_PER_TOKEN = 4  # the usual rule of thumb for English subword tokenizers


def approximate_tokens(text: str) -> int:
    """A token count estimate: one token per four characters."""
    return math.ceil(len(text) / CHARS_PER_TOKEN)


def format_passages(
    passages: Iterable[tuple[str, float, str]],
    max_tokens: int = 1500,
    count_tokens: TokenCounter = approximate_tokens,
) -> str:
    """``[1] id=… score=…`` headers with each passage's text, until ``max_tokens`` is spent.

    ``passages``: (id, score, text) in rank order. The passage that crosses the budget is cut
    (marked with "…"); the ones after it are counted in a closing note, so the model knows.
    """
    passages = list(passages)
    if not passages:
        return "No results."
    lines, used = [], 0
    for number, (doc_id, score, text) in enumerate(passages, start=1):
        header = f"[{number}] id={doc_id} score={score:.3f}"
        text = " ".join(text.split())
        budget = max_tokens - used - count_tokens(header)
        if budget <= 0:
            lines.append(f"({len(passages) - number + 1} more results not shown: token budget reached)")
            break
        if count_tokens(text) > budget:
            text = _cut(text, budget, count_tokens) + " …"
        lines.append(f"{header}\n{text}")
        used += count_tokens(header) + count_tokens(text)
    return "\n\n".join(lines)


def _cut(text: str, budget: int, count_tokens: TokenCounter) -> str:
    """The longest prefix of whole words that fits in ``budget`` tokens (binary search)."""
    words = text.split(" ")
    low, high = 0, len(words)
    while low < high:
        mid = (low + high + 1) // 2
        if count_tokens(" ".join(words[:mid])) <= budget:
            low = mid
        else:
            high = mid - 1
    return " ".join(words[:low])
