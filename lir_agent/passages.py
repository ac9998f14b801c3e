"""Long documents as passages: splitting at indexing time, passage scores at search time.

An encoder reads a few hundred tokens (the default 256); a longer text used to be cut, and what
followed the cut could never be found. An index with passages on (``Index.create(...,
passage_tokens=N, passage_overlap=M)``, on by default) splits such a text into overlapping
passages of at most N tokens, encodes each, and stores the document as **one row whose token
vectors are those of all its passages**. Its score is then MaxSim over the union: each query
token takes its best match anywhere in the document, so a query whose words are spread over
several pages still matches the whole document (document-level MaxSim; the ColBERT papers score
passages, and a document by its best passage, "MaxP": Dai & Callan, "Deeper Text Understanding
for IR with Contextual Neural Language Modeling", SIGIR 2019). Ids, metadata, filters, deletes
and upserts stay per document: a document and its passages are one row, written and deleted
atomically, in one shard.

Each stored document keeps its passages as ``(start, end, tokens)``: the character span in its
text and how many token vectors of its row belong to it, in order. Search hits carry their best
passages (:class:`HitPassage`), scored exactly from the stored vectors; ``by="passage"`` ranks
passages instead of documents.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch

from .errors import DocumentNotFoundError, InvalidInputError
from .maxsim import maxsim_topk

SENTENCE_ENDS = ".!?"
SNAP_SHARE = 4  # a passage's end moves back at most 1/SNAP_SHARE of its tokens to end a sentence
PASSAGE_CANDIDATES = 40  # by="passage": the passages of at least this many best documents compete


@dataclass(frozen=True)
class HitPassage:
    """A passage of a hit: its number in the document, character span, and MaxSim score."""

    number: int
    start: int
    end: int
    score: float


def check_passage_settings(passage_tokens: int, passage_overlap: int, document_length: int) -> None:
    """InvalidInputError unless 0 (off) or 8 <= passage_tokens <= document_length and
    0 <= passage_overlap < passage_tokens / 2."""
    for name, value in (("passage_tokens", passage_tokens), ("passage_overlap", passage_overlap)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise InvalidInputError(f"{name} must be a non-negative integer, got {value!r}")
    if passage_tokens and not 8 <= passage_tokens <= document_length:
        raise InvalidInputError(f"passage_tokens must be 0 (off) or 8..{document_length} (the encoder's document "
                                f"length), got {passage_tokens}")
    if passage_tokens and passage_overlap * 2 >= passage_tokens:
        raise InvalidInputError(f"passage_overlap must be less than half of passage_tokens ({passage_tokens}), "
                                f"got {passage_overlap}")


def passage_settings_of(manifest: dict[str, Any]) -> tuple[int, int] | None:
    """(passage tokens, overlap) an index's manifest names, or None when long texts are cut
    (``passage_tokens=0``, and indexes written before passages existed)."""
    passages = manifest.get("passages") or {}
    return (passages["tokens"], passages["overlap"]) if passages.get("tokens") else None


def split_passages(offsets: Sequence[tuple[int, int]], text: str, budget: int, overlap: int) -> list[tuple[int, int]]:
    """Character spans of the passages of ``text``, given its tokens' character ``offsets``
    (no special tokens): windows of at most ``budget`` tokens, each starting ``overlap`` tokens
    before the previous one's end; an end moves back to a sentence end if one lies in the last
    quarter of the window, else to a word edge, and a start to a word edge, so that each passage
    reads as text and tokenizes as it did inside the whole. One span (the whole text) when it fits."""
    n = len(offsets)
    if n <= budget:
        return [(0, len(text))]

    def word_edge(i: int) -> bool:  # a cut before token i does not split a word
        a = offsets[i][0]
        return a > offsets[i - 1][1] or not (text[a - 1].isalnum() and text[a].isalnum())

    spans, start = [], 0
    while True:
        end = min(start + budget, n)
        if end < n:
            floor = start + budget - budget // SNAP_SHARE
            sentence = next((i for i in range(end, floor, -1) if text[offsets[i - 1][1] - 1] in SENTENCE_ENDS
                             and offsets[i][0] > offsets[i - 1][1]), None)
            end = sentence or next((i for i in range(end, start + 1, -1) if word_edge(i)), end)
        spans.append((offsets[start][0], offsets[end - 1][1]))
        if end >= n:
            return spans
        following = max(end - overlap, start + 1)
        start = next((i for i in range(following, start, -1) if word_edge(i)), following)


def passage_scores(query: torch.Tensor, matrix: torch.Tensor, counts: Sequence[int]) -> list[float]:
    """MaxSim of ``query`` (q, dim) against each passage of a document whose stored token
    matrix ``matrix`` (n, dim) holds ``counts`` rows per passage, in order (sum(counts) == n):
    the exact MaxSim kernel with the passages as its documents (chunked, whatever the length)."""
    offsets = np.zeros(len(counts) + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    scores, order = maxsim_topk([query], matrix, offsets, k=len(counts))
    out = [0.0] * len(counts)
    for score, passage in zip(scores[0].tolist(), order[0].tolist()):
        out[passage] = score
    return out


def with_passages(index: Any, queries: Sequence[torch.Tensor], ranked: list[list[Any]], k: int, by: str,
                  make_hit: Any) -> list[list[Any]]:
    """Hits with their passages scored: ``ranked`` per query holds (score, document) pairs
    (documents best first, at least PASSAGE_CANDIDATES of them for ``by="passage"``); each
    document's passages are scored from ``index.get_embeddings`` against the query. ``by``
    "document": the k best documents, each with its passages best first; "passage": the k best
    passages, one hit each (``make_hit(document, score, rank, passages)`` builds a hit)."""
    codec = getattr(index, "codec", None)
    results = []
    for query, pairs in zip(queries, ranked):
        if codec is not None and codec.projection is not None:  # stored vectors are in the projected space
            query = codec.project(query.float())
        scored = []
        for score, doc in pairs:
            layout = doc.passages or [(0, len(doc.text), None)]
            try:
                matrix = index.get_embeddings(doc.id) if len(layout) > 1 else None
            except DocumentNotFoundError:  # deleted since the ranking: its passages go unscored
                matrix = None
            if matrix is None:  # one passage (the whole text), or deleted since the ranking
                passages = [HitPassage(0, 0, len(doc.text), score)]
            else:
                values = passage_scores(query, matrix, [p[2] for p in layout])
                passages = sorted((HitPassage(i, a, b, s) for i, ((a, b, _), s) in enumerate(zip(layout, values))),
                                  key=lambda p: -p.score)
            scored.append((score, doc, passages))
        if by == "document":
            results.append([make_hit(doc, score, rank, passages)
                            for rank, (score, doc, passages) in enumerate(scored[:k], start=1)])
        else:
            flat = sorted(((p.score, doc, p) for _, doc, passages in scored for p in passages), key=lambda t: -t[0])
            results.append([make_hit(doc, score, rank, [p]) for rank, (score, doc, p) in enumerate(flat[:k], start=1)])
    return results


def search_depth(k: int, by: str) -> int:
    """How many documents a search ranks to return k hits ``by`` documents or passages."""
    if by not in ("document", "passage"):
        raise InvalidInputError(f"by must be 'document' or 'passage', got {by!r}")
    return k if by == "document" else max(k, PASSAGE_CANDIDATES)
