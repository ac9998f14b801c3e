"""The compressed engine: centroid codes + n-bit residuals, searched in three stages.

Per segment (at most 65,536 documents, so inverted lists hold uint16 local document ids):

* ``codes.npy`` (n_tokens,) centroid id of each token, ``residuals.npy`` (n_tokens, dim·n/8)
  packed residuals and ``scales.npy`` (n_tokens,) float16 inverse norms of the reconstructed
  vectors (or, with nbits=16, float16 vectors and no scales);
* ``ivf.npy`` / ``ivf_offsets.npy``: for each centroid, the sorted ids of the documents that
  have a token there (deduplicated).

A query (after the codec's projection, if any) is scored against all centroids once. Then:

1. **Probe** (WARP-style): each query token takes its ``nprobe`` best centroids; every document
   in their inverted lists gets, for that query token, the best probed centroid score it
   reached, and the score of the token's weakest probed centroid where it reached none (an
   estimate of what an unprobed token would score). Summed over query tokens this ranks the
   probed documents; the best ``candidates`` of them go on. Filters and deletions are applied
   here, before any scoring, and if fewer than k matching documents were probed, every matching
   document becomes a candidate, so filtered searches still return k results.
2. **Centroid interaction** (PLAID): MaxSim of the query against each candidate's centroids
   (all of its tokens, no residuals) keeps the best ``rerank`` documents.
3. **Rerank**: exact MaxSim against those documents' decompressed tokens, computed from the
   query's centroid scores plus the query against the dequantised residuals (see the codec).

Each stage keeps its best documents over all segments (and shards) together, so the results of
an index do not depend on how its documents are split into segments or shards: the stages are
rounds of :mod:`lir_agent.engines.pipeline`.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any, Sequence

import numpy as np
import torch

from ..codec import ResidualCodec
from ..errors import IndexCorruptedError, InvalidInputError
from ..maxsim import chunk_bounds, segment_max
from ..storage import ArraySchema, SegmentData
from .exact import as_tensor
from .pipeline import Ranked, concatenate

MAX_SEGMENT_DOCS = 2**16
RERANK_CHUNK_TOKENS = 2048  # decoded vectors per step of the rerank (stays in cache)
TIEBREAK_SCALE = 1e-4  # largest id-derived offset added to approximate scores
PREPARED_KEPT = 8  # recently prepared query batches kept (every round of a search brings the same queries)


@dataclass(frozen=True)
class SearchParams:
    """Knobs of the compressed search; :meth:`for_k` gives the defaults for a given k.
    ``probe_scored`` and ``rerank_scored`` are set by the coordinator (see
    :mod:`~lir_agent.engines.pipeline`): how many of its best candidates the probe round scores
    by interaction, and how many of those, the best by interaction, it reranks (None: all of
    the candidates; ``rerank``; 0: none, the coordinator asks for a rerank round)."""

    nprobe: int
    candidates: int
    rerank: int
    probe_scored: int | None = None
    rerank_scored: int | None = None

    @classmethod
    def for_k(cls, k: int) -> "SearchParams":
        if k <= 10:
            return cls(nprobe=8, candidates=256, rerank=128)
        if k <= 100:
            return cls(nprobe=12, candidates=max(512, 4 * k), rerank=max(128, 2 * k))
        return cls(nprobe=16, candidates=4 * k, rerank=2 * k)


@dataclass
class QueryBatch:
    """Queries in the codec's space and their scores against every centroid."""

    vectors: list[torch.Tensor]  # (q_i, dim) float32 each
    centroid_scores: list[torch.Tensor]  # (q_i, K) each


def _ranges(starts: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Concatenation of arange(s, s + l) for each (start, length), vectorised."""
    total = int(lengths.sum())
    if total == 0:
        return torch.empty(0, dtype=torch.int64, device=starts.device)
    bases = torch.repeat_interleave(starts - torch.cumsum(lengths, 0) + lengths, lengths)
    return bases + torch.arange(total, device=starts.device)


class CompressedSegment:
    def __init__(self, codec: ResidualCodec, data: SegmentData, device: str):
        missing = sorted(set(codec.schema()) - set(data.arrays))
        if missing:
            raise IndexCorruptedError(f"a compressed segment lacks {missing} (written by an older lir_agent? rebuild it)")
        self.codec, self.device = codec, device
        self.offsets = data.offsets
        self.offsets_t = torch.from_numpy(data.offsets).to(device)
        self.codes = as_tensor(data.arrays["codes"], device)
        self.residuals = data.arrays["residuals"]
        self.scales = data.arrays.get("scales")
        self.ivf = as_tensor(data.arrays["ivf"], device)
        self.ivf_offsets = torch.from_numpy(data.arrays["ivf_offsets"].astype(np.int64)).to(device)
        self.num_docs = len(data.offsets) - 1
        # Approximate scores tie often (they are sums of a few centroid scores); a tiny offset
        # derived from each document's id breaks ties the same way whatever the segmentation.
        self.tiebreak = torch.from_numpy(data.arrays["id_hash"].astype(np.float64)).mul_(
            TIEBREAK_SCALE / 2**32).float().to(device)

    # -------------------------------------------------------------- stored data
    def _tokens_of(self, docs: torch.Tensor) -> tuple[torch.Tensor, np.ndarray]:
        """Token positions of ``docs`` (concatenated) and their local offsets."""
        starts, ends = self.offsets_t[docs], self.offsets_t[docs + 1]
        lengths = ends - starts
        local = np.zeros(len(docs) + 1, dtype=np.int64)
        np.cumsum(lengths.cpu().numpy(), out=local[1:])
        return _ranges(starts, lengths), local

    def _memory_mapped(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Residuals and scales of the tokens at ``positions``, read from the mapped files."""
        index = positions.cpu().numpy()
        scales = None if self.scales is None else torch.from_numpy(self.scales[index]).to(self.device)
        return torch.from_numpy(self.residuals[index]).to(self.device), scales

    def payload(self, row: int) -> dict[str, np.ndarray]:
        a, b = int(self.offsets[row]), int(self.offsets[row + 1])
        arrays = {"codes": self.codes[a:b].cpu().numpy().copy(), "residuals": np.array(self.residuals[a:b])}
        return arrays if self.scales is None else arrays | {"scales": np.array(self.scales[a:b])}

    def vectors(self, row: int) -> torch.Tensor:
        a, b = int(self.offsets[row]), int(self.offsets[row + 1])
        residuals, _ = self._memory_mapped(torch.arange(a, b))
        return self.codec.decode(self.codes[a:b], residuals, device=self.device).cpu().to(torch.float16)

    # -------------------------------------------------------------- the three stages
    def probe(self, centroid_scores: torch.Tensor, nprobe: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Stage 1: approximate score of every document, and which documents were probed.

        Per query token, a document's score is the best score among the probed centroids it has
        a token in, or the token's weakest probed centroid score where it has none.
        """
        q = centroid_scores.shape[0]
        nprobe = min(nprobe, centroid_scores.shape[1])
        probe_scores, probe_ids = centroid_scores.topk(nprobe, dim=1)
        starts = self.ivf_offsets[probe_ids.reshape(-1)]
        lengths = self.ivf_offsets[probe_ids.reshape(-1) + 1] - starts
        docs = self.ivf[_ranges(starts, lengths)].long()
        token_of_entry = torch.repeat_interleave(torch.arange(q, device=self.device).repeat_interleave(nprobe), lengths)
        approx = probe_scores[:, -1:].expand(q, self.num_docs).contiguous()
        approx.view(-1).scatter_reduce_(0, token_of_entry * self.num_docs + docs,
                                        torch.repeat_interleave(probe_scores.reshape(-1), lengths), reduce="amax")
        probed = torch.zeros(self.num_docs, dtype=torch.bool, device=self.device)
        probed[docs] = True
        return approx.sum(dim=0) + self.tiebreak, probed

    def interaction(self, centroid_scores: torch.Tensor, docs: torch.Tensor) -> torch.Tensor:
        """Stage 2: MaxSim of the query against the centroids of every token of ``docs``."""
        positions, local = self._tokens_of(docs)
        return segment_max(centroid_scores[:, self.codes[positions].long()], local).sum(dim=0) + self.tiebreak[docs]

    def rerank(self, query: torch.Tensor, centroid_scores: torch.Tensor, docs: torch.Tensor) -> torch.Tensor:
        """Stage 3: MaxSim on the decompressed tokens of ``docs``, a cache-sized chunk at a time."""
        positions, local = self._tokens_of(docs)
        scores = torch.empty(len(docs), device=self.device)
        for start, end in chunk_bounds(local, RERANK_CHUNK_TOKENS):
            chunk = positions[local[start] : local[end]]
            residuals, scales = self._memory_mapped(chunk)
            similarities = self.codec.score(query, centroid_scores, self.codes[chunk], residuals, scales)
            scores[start:end] = segment_max(similarities, local[start : end + 1] - local[start]).sum(dim=0)
        return scores


class CompressedEngine:
    """Centroid + n-bit residual storage searched by probe → centroid interaction → rerank."""

    kind = "compressed"

    def __init__(self, codec: ResidualCodec):
        self.codec = codec
        self._prepared: OrderedDict[tuple, QueryBatch] = OrderedDict()
        self._prepared_lock = threading.Lock()

    def schema(self) -> ArraySchema:
        return self.codec.schema()

    def encode(self, matrices: Sequence[torch.Tensor],
               projected: bool = False) -> tuple[list[dict[str, np.ndarray]], dict[str, float]]:
        """Payloads of token matrices (``projected``: already in the codec's space), and the
        residual statistics that drift tracking adds up."""
        lengths = [int(m.shape[0]) for m in matrices]
        arrays, norms = self.codec.encode(torch.cat(list(matrices)), projected=projected)
        bounds = np.concatenate([[0], np.cumsum(lengths)])
        payloads = [{name: values[a:b] for name, values in arrays.items()} for a, b in zip(bounds[:-1], bounds[1:])]
        return payloads, {"tokens": float(len(norms)), "residual_norm_sum": float(norms.sum())}

    def derived(self, arrays: dict[str, np.ndarray], offsets: np.ndarray) -> dict[str, np.ndarray]:
        """Inverted lists: for each centroid, the sorted local ids of documents with a token there."""
        num_docs = len(offsets) - 1
        if num_docs > MAX_SEGMENT_DOCS:
            raise ValueError(f"a compressed segment holds at most {MAX_SEGMENT_DOCS} documents")
        doc_of_token = np.repeat(np.arange(num_docs, dtype=np.int64), np.diff(offsets))
        pairs = np.unique(np.asarray(arrays["codes"]).astype(np.int64) * num_docs + doc_of_token)
        centroid, doc = np.divmod(pairs, num_docs)
        ivf_offsets = np.zeros(self.codec.num_centroids + 1, dtype=np.int64)
        np.cumsum(np.bincount(centroid, minlength=self.codec.num_centroids), out=ivf_offsets[1:])
        return {"ivf": doc.astype(np.uint16), "ivf_offsets": ivf_offsets}

    def open(self, data: SegmentData, device: str) -> CompressedSegment:
        return CompressedSegment(self.codec, data, device)

    # -------------------------------------------------------------- search rounds (see pipeline)
    def probe_round(self, stores: list[CompressedSegment], masks: list[np.ndarray | None], queries: QueryBatch,
                    params: SearchParams, take_all: list[bool] | None) -> tuple[list[Ranked], list[int]]:
        """Stages 1-3 per query: the best ``candidates`` documents by approximate score, the
        first ``probe_scored`` of them (or all) with their centroid-interaction scores (stage 2;
        NaN for the rest), the best ``rerank_scored`` (or ``rerank``) of those by interaction
        with their exact scores (stage 3; NaN for the rest), and how many matching documents
        were probed (``take_all[q]``: every matching document is a candidate)."""
        eligible = [None if m is None else torch.from_numpy(m).to(s.device) for s, m in zip(stores, masks)]

        def one(q: int) -> tuple[Ranked, int]:
            parts, probed_count = [], 0
            for segment, (store, allowed) in enumerate(zip(stores, eligible)):
                totals, probed = store.probe(queries.centroid_scores[q].to(store.device), params.nprobe)
                keep = probed if allowed is None else probed & allowed
                probed_count += int(keep.sum())
                if take_all is not None and take_all[q]:
                    keep = torch.ones_like(probed) if allowed is None else allowed
                docs = torch.nonzero(keep).squeeze(1)
                parts.append(Ranked(totals[docs].cpu().numpy(), np.full(len(docs), segment), docs.cpu().numpy()))
            candidates = concatenate(parts).best(params.candidates)
            scored = candidates.take(np.arange(min(len(candidates), params.probe_scored or len(candidates))))
            candidates.interaction = np.full(len(candidates), np.nan, dtype=np.float32)
            candidates.interaction[: len(scored)] = _interaction(stores, queries.centroid_scores[q], scored).scores
            rerank_count = params.rerank if params.rerank_scored is None else params.rerank_scored
            reranked = np.argsort(-candidates.interaction[: len(scored)], kind="stable")[:rerank_count]
            candidates.exact = np.full(len(candidates), np.nan, dtype=np.float32)
            candidates.exact[reranked] = _rerank(stores, queries, q, candidates.take(reranked)).scores
            return candidates, probed_count

        results = _per_query(one, len(queries.vectors), stores)
        return [ranked for ranked, _ in results], [count for _, count in results]

    def interaction_round(self, stores: list[CompressedSegment], queries: QueryBatch,
                          selections: list[Ranked]) -> list[Ranked]:
        """Stage 2 per query for the selected candidates the probe round left unscored."""
        return _per_query(lambda q: _interaction(stores, queries.centroid_scores[q], selections[q]),
                          len(queries.vectors), stores)

    def rerank_round(self, stores: list[CompressedSegment], queries: QueryBatch, selections: list[Ranked],
                     k: int) -> list[Ranked]:
        """Stage 3 per query: exact MaxSim on the decompressed tokens of the selected documents; the best k."""
        return _per_query(lambda q: _rerank(stores, queries, q, selections[q]).best(k), len(queries.vectors), stores)

    def prepare_queries(self, matrices: list[torch.Tensor], device: str) -> QueryBatch:
        """The queries projected and scored against every centroid. A shard receives the same
        query matrices in each round of a search, so the last few batches are kept."""
        matrices = [m.float().cpu().contiguous() for m in matrices]
        digest = hashlib.blake2b(digest_size=16)
        for m in matrices:
            digest.update(m.numpy().tobytes())
        key = (device, tuple(tuple(m.shape) for m in matrices), digest.digest())
        with self._prepared_lock:
            if key in self._prepared:
                self._prepared.move_to_end(key)
                return self._prepared[key]
        vectors = [self.codec.project(m) for m in matrices]
        centroids = self.codec.centroids.to(device)
        prepared = QueryBatch(vectors, [v.to(device) @ centroids.T for v in vectors])
        with self._prepared_lock:
            self._prepared[key] = prepared
            while len(self._prepared) > PREPARED_KEPT:
                self._prepared.popitem(last=False)
        return prepared

    def search_params(self, k: int, overrides: dict[str, Any]) -> SearchParams:
        params = SearchParams.for_k(k)
        unknown = set(overrides) - {"nprobe", "candidates", "rerank"}
        if unknown:
            raise InvalidInputError(f"unknown search settings {sorted(unknown)} (use nprobe, candidates, rerank)")
        for name, value in overrides.items():
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise InvalidInputError(f"search setting {name} must be a positive integer, got {value!r}")
        params = replace(params, **overrides)
        return replace(params, rerank=max(params.rerank, k), candidates=max(params.candidates, params.rerank, k))


def _interaction(stores: list[CompressedSegment], centroid_scores: torch.Tensor, selection: Ranked) -> Ranked:
    return _score_selection(selection, stores, lambda store, docs: store.interaction(centroid_scores.to(store.device), docs))


def _rerank(stores: list[CompressedSegment], queries: QueryBatch, q: int, selection: Ranked) -> Ranked:
    return _score_selection(selection, stores, lambda store, docs: store.rerank(
        queries.vectors[q].to(store.device), queries.centroid_scores[q].to(store.device), docs))


def _score_selection(selection: Ranked, stores: list[CompressedSegment], score: Any) -> Ranked:
    """``selection`` with its scores replaced by ``score(store, local document ids)``, segment by segment."""
    scores = np.empty(len(selection), dtype=np.float32)
    for segment in np.unique(selection.segments):
        at = np.flatnonzero(selection.segments == segment)
        store = stores[int(segment)]
        scores[at] = score(store, torch.from_numpy(selection.rows[at]).to(store.device)).cpu().numpy()
    return Ranked(scores, selection.segments, selection.rows)


def _per_query(one: Any, count: int, stores: list[CompressedSegment]) -> list[Any]:
    """``[one(q) for q in range(count)]``; on CPU the queries of a batch run side by side, one per
    core, each with single-threaded operations (a query's work is many small operations; torch's
    thread count is process-wide, so it is lowered for the duration of the batch)."""
    workers = min(count, torch.get_num_threads())
    if workers <= 1 or not all(s.device == "cpu" for s in stores):
        return [one(q) for q in range(count)]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            return list(pool.map(one, range(count)))
    finally:
        torch.set_num_threads(threads)
