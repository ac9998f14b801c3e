"""Exact MaxSim over packed variable-length documents, chunked, with a running top-k.

The score of document ``d`` for query ``q`` is ``sum_i max_j <q_i, d_j>``. Documents are stored
packed (one ``(total_tokens, dim)`` matrix plus offsets) and the query batch is packed the same
way, so no work is spent on padding on either side. For each chunk of whole documents we compute
one matrix product for all query tokens of the batch, take the max over each document's tokens
(a segmented max), sum each query's tokens with a small 0/1 matrix product, and merge into a
running top-k. Memory stays bounded by ``max_chunk_bytes`` whatever the corpus
size. The same code runs on CPU (float32 compute) and CUDA (float16 compute).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

DEFAULT_CHUNK_BYTES = 8 * 2**20  # a chunk and its similarity block stay cache-sized


def chunk_tokens_for(query_tokens: int, dim: int, dtype: torch.dtype, max_chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> int:
    """Document tokens per chunk so that the converted chunk plus its similarity block (one row
    per query token) take about ``max_chunk_bytes``; at least 256."""
    item = torch.finfo(dtype).bits // 8
    return max(256, max_chunk_bytes // (item * (query_tokens + dim)))


def chunk_bounds(offsets: np.ndarray, chunk_tokens: int) -> list[tuple[int, int]]:
    """Splits documents into consecutive runs of about chunk_tokens tokens (at least one doc)."""
    bounds, n, start = [], len(offsets) - 1, 0
    while start < n:
        end = int(np.searchsorted(offsets, offsets[start] + chunk_tokens, side="right")) - 1
        end = min(max(end, start + 1), n)
        bounds.append((start, end))
        start = end
    return bounds


def segment_max(similarities: torch.Tensor, offsets: np.ndarray) -> torch.Tensor:
    """Row-wise max over consecutive column runs: (rows, tokens) → (rows, documents).

    ``offsets`` (n_docs + 1, starting at 0) delimit each document's columns. On CPU numpy's
    ``maximum.reduceat`` reduces each row's contiguous runs at memory speed; on CUDA
    ``segment_reduce`` does it over the transpose.
    """
    if similarities.device.type == "cpu":
        return torch.from_numpy(np.maximum.reduceat(similarities.numpy(), offsets[:-1], axis=1))
    lengths = torch.from_numpy(np.diff(offsets)).to(similarities.device)
    return torch.segment_reduce(similarities.T, "max", lengths=lengths, axis=0).T


def _max_per_document(query_tokens: torch.Tensor, chunk: torch.Tensor, offsets: np.ndarray) -> torch.Tensor:
    """(query tokens, documents): for each query token, its best similarity within each document."""
    return segment_max(query_tokens @ chunk.T, offsets)


def maxsim_topk(
    queries: Sequence[torch.Tensor],
    doc_tokens: torch.Tensor,
    doc_offsets: torch.Tensor | np.ndarray,
    k: int,
    doc_mask: torch.Tensor | np.ndarray | None = None,
    device: str | torch.device | None = None,
    max_chunk_bytes: int = DEFAULT_CHUNK_BYTES,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k documents by exact MaxSim for each query.

    Args:
        queries: one (query_tokens, dim) matrix per query; lengths may differ.
        doc_tokens: (total_tokens, dim) packed document tokens, any float dtype, CPU or CUDA
            (a read-only memory map wrapped as a tensor works).
        doc_offsets: (n_docs + 1,) token offsets, ``doc_offsets[0] == 0``.
        k: number of results per query; fewer when fewer documents are eligible.
        doc_mask: optional (n_docs,) bool, True where a document may be returned.
        device: where to compute; defaults to the device of ``doc_tokens``.

    Returns:
        (scores, indices), both (batch, k'), sorted by descending score; k' = min(k, eligible).
    """
    offsets = np.asarray(torch.as_tensor(doc_offsets).cpu(), dtype=np.int64)
    n_docs = len(offsets) - 1
    device = torch.device(device) if device is not None else doc_tokens.device
    compute_dtype = torch.float16 if device.type == "cuda" else torch.float32
    batch = len(queries)
    if doc_mask is not None:
        mask = np.asarray(torch.as_tensor(doc_mask).cpu(), dtype=bool)
        eligible = np.flatnonzero(mask)
        if len(eligible) < n_docs // 4:
            return _maxsim_subset(queries, doc_tokens, offsets, eligible, k, device, max_chunk_bytes)
    else:
        mask = None
    query_lengths = [int(q.shape[0]) for q in queries]
    query_tokens = torch.cat([torch.as_tensor(q) for q in queries]).to(device=device, dtype=compute_dtype)
    # (batch, query tokens) 0/1 matrix: row b sums the tokens of query b
    owner = torch.repeat_interleave(torch.arange(batch), torch.tensor(query_lengths))
    query_of_token = torch.nn.functional.one_hot(owner, batch).T.to(device=device, dtype=torch.float32)

    best_scores = torch.empty(batch, 0, device=device, dtype=torch.float32)
    best_ids = torch.empty(batch, 0, device=device, dtype=torch.int64)
    chunk_tokens = chunk_tokens_for(sum(query_lengths), query_tokens.shape[1], compute_dtype, max_chunk_bytes)
    pieces, owner = _pieces(offsets, chunk_tokens)
    carry: torch.Tensor | None = None  # per query token, the best so far of a document the last chunk cut
    for start, end in chunk_bounds(pieces, chunk_tokens):
        if owner is None:  # no document longer than a chunk: pieces are documents
            docs = np.arange(start, end)
        else:
            owners = owner[start:end]
            groups = np.concatenate([[0], np.flatnonzero(np.diff(owners)) + 1, [len(owners)]])
            docs = owners[groups[:-1]]
        if mask is not None and not mask[docs].any() and carry is None:
            continue
        chunk = doc_tokens[int(pieces[start]) : int(pieces[end])].to(device=device, dtype=compute_dtype)
        per_doc = _max_per_document(query_tokens, chunk, pieces[start : end + 1] - pieces[start])
        if owner is not None:  # a long document's pieces: the max over them, across chunks too
            per_doc = segment_max(per_doc, groups)
            if carry is not None:
                per_doc[:, 0] = torch.maximum(per_doc[:, 0], carry)
                carry = None
            if end < len(owner) and owner[end] == docs[-1]:  # its last document goes on in the next chunk
                carry, per_doc, docs = per_doc[:, -1].clone(), per_doc[:, :-1], docs[:-1]
                if len(docs) == 0:
                    continue
        chunk_mask = None if mask is None else torch.from_numpy(mask[docs]).to(device)
        scores = query_of_token @ per_doc.float()  # (batch, docs)
        if chunk_mask is not None:
            scores = scores.masked_fill(~chunk_mask, float("-inf"))
        ids = torch.from_numpy(docs).to(device).expand(batch, -1)
        merged_scores = torch.cat([best_scores, scores], dim=1)
        merged_ids = torch.cat([best_ids, ids], dim=1)
        keep = min(k, merged_scores.shape[1])
        best_scores, top = merged_scores.topk(keep, dim=1)
        best_ids = merged_ids.gather(1, top)
    if mask is not None:  # drop masked documents that filled the list when too few were eligible
        eligible_count = int(mask.sum())
        best_scores, best_ids = best_scores[:, :eligible_count], best_ids[:, :eligible_count]
    return best_scores, best_ids


def _pieces(offsets: np.ndarray, chunk_tokens: int) -> tuple[np.ndarray, np.ndarray | None]:
    """Offsets of pieces of at most ``chunk_tokens`` tokens (documents longer than that cut into
    several) and each piece's document; (offsets, None) when no document needs cutting. A long
    document in one chunk made its conversion and similarity block outgrow the cache: cut, a
    64k-token document scored 1.7x faster."""
    lengths = np.diff(offsets)
    if len(lengths) == 0 or lengths.max() <= chunk_tokens:
        return offsets, None
    counts = np.maximum(1, -(-lengths // chunk_tokens))  # pieces per document
    owner = np.repeat(np.arange(len(lengths)), counts)
    first = np.concatenate([[0], np.cumsum(counts)[:-1]])
    within = np.arange(len(owner)) - np.repeat(first, counts)
    starts = offsets[:-1][owner] + within * chunk_tokens
    return np.concatenate([starts, offsets[-1:]]).astype(np.int64), owner


def _maxsim_subset(queries, doc_tokens, offsets, eligible, k, device, max_chunk_bytes):
    """Selective filters: gather the eligible documents' tokens and score only those."""
    if len(eligible) == 0:
        empty = torch.empty(len(queries), 0, device=device)
        return empty, empty.long()
    lengths = offsets[eligible + 1] - offsets[eligible]
    rows = np.concatenate([np.arange(offsets[i], offsets[i + 1]) for i in eligible])
    sub_tokens = doc_tokens[torch.from_numpy(rows).to(doc_tokens.device)]
    sub_offsets = np.concatenate([[0], np.cumsum(lengths)])
    scores, local = maxsim_topk(queries, sub_tokens, sub_offsets, k, None, device, max_chunk_bytes)
    return scores, torch.from_numpy(eligible).to(local.device)[local]
