"""Citations from the MaxSim alignment: where in a document each query token found its match.

MaxSim scores a document by summing, over the query's token vectors, the best similarity among
the document's token vectors (Khattab & Zaharia, "ColBERT", SIGIR 2020). The argmax of each of
those maxima is an alignment: query token -> document token. Mapped to character offsets
through the tokenizer's offset mapping (:meth:`~lir_agent.Encoder.token_spans`), it says which
words of the document made it relevant; no single-vector retriever can say that.

The hits are re-encoded at query time (offsets are not stored; k documents cost one encoder
batch). A document longer than the encoder reads has matches only in its encoded beginning;
:class:`Citation` says so (``truncated``, ``encoded_chars``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from ..encoder import Encoder

MIN_SIMILARITY = 0.65  # weaker matches (a query's "which" finding "by", "was" finding "was") are not highlighted


@dataclass
class TokenMatch:
    """One query token's best-matching document token."""

    query_token: str  # as the tokenizer writes it ("##gen")
    query_word: str  # the query word it belongs to ("progenitus"); the token itself when it has no text
    query_position: int  # row of the query matrix
    start: int  # character span [start, end) of the matched document token; -1 when it has none
    end: int
    similarity: float  # the token's contribution to MaxSim


@dataclass
class Highlight:
    """A span of the document text (whole words) matched by one or more query tokens."""

    start: int
    end: int
    query_words: list[str]  # the query words whose tokens matched here, each once
    score: float  # summed similarity of the query tokens that matched here


@dataclass
class Citation:
    """Why a document matched a query, in character offsets of the document text."""

    doc_id: str
    maxsim: float  # the query's MaxSim against the re-encoded document (the exact engine's score)
    matches: list[TokenMatch]  # per query row, in query order
    highlights: list[Highlight]  # in text order
    passage_start: int  # the best window of the text around the highlights (see best_window)
    passage_end: int
    encoded_chars: int  # highlights can only lie in text[:encoded_chars]
    truncated: bool  # the document is longer than the encoder reads
    text_chars: int  # length of the whole document text


def cite(encoder: Encoder, query: str, documents: Sequence[tuple[str, str]], passage_chars: int,
         min_similarity: float = MIN_SIMILARITY, query_matrix: torch.Tensor | None = None,
         doc_matrices: Sequence[torch.Tensor | None] | None = None,
         layouts: Sequence[Sequence[tuple[int, int, int]] | None] | None = None) -> list[Citation]:
    """Citations of ``documents`` ((id, text) pairs) for ``query``: the MaxSim alignment mapped
    to character spans; the matches of query words (not special tokens, expansion [MASK]s or
    punctuation) to word tokens of the document with a similarity of at least
    ``min_similarity``, merged into whole-word highlights; the best window of at most
    ``passage_chars`` characters around them. Raises InvalidInputError for text that is not text.

    ``query_matrix``: the query's (n_tokens, dim) encoding, if already computed;
    ``doc_matrices``: per document, its stored (n_tokens, dim) token matrix (an index's
    ``get_embeddings``) or None. A stored matrix with one row per token of the text (what the
    index's encoder made of it) is aligned as is, which costs a tokenization instead of an
    encoder run; any other is re-encoded from the text. ``layouts``: per document, the
    passages it was stored as (``Document.passages``) or None: such a document's rows are its
    passages' tokens in order, so the whole text is aligned (nothing was cut).
    """
    if not documents:
        return []
    texts = [text for _, text in documents]
    query_matrix = (encoder.encode_queries([query])[0] if query_matrix is None else query_matrix).float()
    query_tokens = encoder.token_spans([query], is_query=True)[0]
    words = [query[_word_start(query, a):_word_end(query, b)].lower() if a >= 0 else token
             for token, (a, b) in zip(query_tokens.tokens, query_tokens.spans.tolist())]
    is_words = [a >= 0 and any(c.isalnum() for c in query[a:b]) for a, b in query_tokens.spans.tolist()]
    layouts = list(layouts) if layouts is not None else [None] * len(texts)
    pieces = [[(a, b) for a, b, _ in layout] if layout else [(0, len(text))] for text, layout in zip(texts, layouts)]
    doc_spans = _spans_of_pieces(encoder, texts, pieces)
    doc_matrices = list(doc_matrices) if doc_matrices is not None else [None] * len(texts)
    stale = [i for i, (m, (tokens, _)) in enumerate(zip(doc_matrices, doc_spans))
             if m is None or tuple(m.shape) != (len(tokens), query_matrix.shape[1])]
    if stale:
        encoded = iter(encoder.encode_documents([texts[i][a:b] for i in stale for a, b in pieces[i]], show_progress=False))
        for i in stale:
            doc_matrices[i] = torch.cat([next(encoded) for _ in pieces[i]])
    truncated = [0 if layout else cut for layout, cut in zip(layouts, encoder.truncated_tokens(texts))]
    citations = []
    for (doc_id, text), matrix, (_, spans), cut in zip(documents, doc_matrices, doc_spans, truncated):
        similarity = query_matrix @ matrix.float().T  # (query rows, document rows)
        best, where = similarity.max(dim=1)
        matches = [TokenMatch(query_tokens.tokens[i], words[i], i, int(spans[j][0]), int(spans[j][1]), float(best[i]))
                   for i, j in enumerate(where.tolist())]
        visible = [m for m, is_word in zip(matches, is_words)
                   if is_word and m.similarity >= min_similarity and _has_word(text, m.start, m.end)]
        highlights = merge_highlights(text, visible)
        start, end = best_window(text, highlights, passage_chars)
        encoded = int(spans[:, 1].max()) if len(spans) and spans[:, 1].max() > 0 else 0
        citations.append(Citation(doc_id, float(best.sum()), matches, highlights, start, end, encoded, cut > 0, len(text)))
    return citations


def _spans_of_pieces(encoder: Encoder, texts: Sequence[str], pieces: Sequence[Sequence[tuple[int, int]]]
                     ) -> list[tuple[list[str], np.ndarray]]:
    """Per text, the token strings and character spans of its encoding made of ``pieces``
    (character ranges encoded one by one, in order: its passages, or the whole text)."""
    flat = encoder.token_spans([text[a:b] for text, parts in zip(texts, pieces) for a, b in parts])
    out, position = [], 0
    for parts in pieces:
        tokens: list[str] = []
        spans = []
        for (a, _), piece in zip(parts, flat[position : position + len(parts)]):
            tokens += piece.tokens
            spans.append(np.where(piece.spans >= 0, piece.spans + a, piece.spans))
        position += len(parts)
        out.append((tokens, np.concatenate(spans)))
    return out


def _has_word(text: str, start: int, end: int) -> bool:
    """Whether [start, end) of ``text`` is a word token (not a special token, not punctuation)."""
    return start >= 0 and any(c.isalnum() for c in text[start:end])


def merge_highlights(text: str, matches: Sequence[TokenMatch]) -> list[Highlight]:
    """Matched token spans widened to whole words, overlapping ones merged, each with the query
    words (once each) whose tokens matched inside it."""
    spans = sorted(((_word_start(text, m.start), _word_end(text, m.end), m) for m in matches), key=lambda s: s[:2])
    merged: list[Highlight] = []
    for start, end, match in spans:
        if merged and start <= merged[-1].end:
            last = merged[-1]
            last.end = max(last.end, end)
            if match.query_word not in last.query_words:
                last.query_words.append(match.query_word)
            last.score += match.similarity
        else:
            merged.append(Highlight(start, end, [match.query_word], match.similarity))
    return merged


def best_window(text: str, highlights: Sequence[Highlight], max_chars: int) -> tuple[int, int]:
    """[start, end) of at most ``max_chars`` characters holding the highest total highlight
    score (highlights wholly inside count), its slack shared before and after, its ends moved
    to word boundaries inside it. The whole text when it fits; its beginning without highlights."""
    if len(text) <= max_chars:
        return 0, len(text)
    if not highlights:
        return 0, _word_boundary_before(text, max_chars, 0)
    best, best_score = (0, 0), -1.0
    for i, first in enumerate(highlights):
        score, last = 0.0, i
        for j in range(i, len(highlights)):
            if highlights[j].end - first.start > max_chars:
                break
            score += highlights[j].score
            last = j
        if score > best_score:
            best, best_score = (i, last), score
    covered_start, covered_end = highlights[best[0]].start, highlights[best[1]].end
    covered_end = min(covered_end, covered_start + max_chars)
    slack = max_chars - (covered_end - covered_start)
    start = max(0, covered_start - slack // 2)
    end = min(len(text), start + max_chars)
    start = max(0, end - max_chars)
    return _word_boundary_after(text, start, covered_start), _word_boundary_before(text, end, covered_end)


def _word_start(text: str, position: int) -> int:
    while position > 0 and text[position - 1].isalnum():
        position -= 1
    return position


def _word_end(text: str, position: int) -> int:
    while position < len(text) and text[position].isalnum():
        position += 1
    return position


def _word_boundary_after(text: str, start: int, limit: int) -> int:
    """``start`` moved forward (not past ``limit``) to the beginning of the next word when it
    cuts one (a word: a run of non-space characters)."""
    if start == 0 or text[start - 1].isspace() or text[start].isspace():
        return start
    space = start
    while space < limit and not text[space].isspace():
        space += 1
    return space + 1 if space < limit else start


def _word_boundary_before(text: str, end: int, limit: int) -> int:
    """``end`` moved back (not before ``limit``) to the end of the previous word when it cuts one."""
    if end >= len(text) or text[end].isspace() or text[end - 1].isspace():
        return end
    space = end
    while space > limit and not text[space - 1].isspace():
        space -= 1
    return space - 1 if space > limit else end
