"""LLM-free multi-hop strategies: later hops search with the question together with evidence
from earlier hops, in the embedding space that late interaction exposes.

* :class:`Single`: one search (the baseline every strategy is measured against).
* :class:`Condensed`: Baleen's condensed retrieval (Khattab, Potts & Zaharia, "Baleen: Robust
  Multi-Hop Reasoning at Scale via Condensed Retrieval", NeurIPS 2021), without its trained
  condenser: the next hop searches the question plus the sentences of the previous hop's best
  documents that the MaxSim alignment marks as matching (:mod:`~lir_agent.agentic.citations`).
* :class:`Flipr`: Baleen's FLIPR scoring: the question's tokens and the context's tokens score a
  document separately, each part summing only its own best-matching tokens, so a document that
  matches a few context tokens (the bridge entity) is not drowned by the context's other words.
* :class:`PseudoRelevanceFeedback`: ColBERT-PRF (Wang, MacAvaney, Macdonald & Ounis, "Improving
  zero-shot retrieval using dense external expansion", IP&M 2022): the feedback documents'
  token embeddings are clustered; the rarest centroids, weighted by an IDF estimated on a sample
  of the index, are appended to the query matrix.
* :class:`Beam`: a beam over the first hop's best documents: each seeds its own condensed second
  hop, and a document ranks by the best chain (first-hop document, second-hop document) it ends.

All of them end with :func:`~lir_agent.agentic.strategies.base.interleave`: the first hop's
best ``keep`` documents stay on top, later hops' documents alternate with the first hop's rest.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from ...errors import InvalidInputError
from ...kmeans import kmeans
from ..session import SearchSession, SessionHit
from .base import (STOP_DONE, STOP_MAX_HOPS, STOP_NOVELTY, MultiHopResult, Run, Strategy, check_count,
                   interleave, matched_sentences, stop_reason)


class Single(Strategy):
    """One search for the question: the single-shot baseline."""

    name = "single"

    def run(self, question: str, session: SearchSession) -> MultiHopResult:
        run = Run(self, question, session)
        first = run.search(question, self.k)
        return run.result([h.id for h in first.hits], stop_reason(first) or f"{STOP_DONE}: one search")


def condensed_context(hits: Sequence[Any], sentences: int) -> str:
    """Each hit's title (metadata ``title`` when it has one) and its ``sentences`` sentences most
    matched by the query's MaxSim alignment, joined: the condensed context of Baleen."""
    parts = []
    for hit in hits:
        chosen = matched_sentences(hit, sentences)
        title = hit.metadata.get("title")
        if isinstance(title, str) and title and not (chosen and chosen[0].startswith(title)):
            chosen.insert(0, title + ".")
        parts.append(" ".join(chosen))
    return " ".join(parts)


def stored_in_query_space(session: SearchSession, hits: Sequence[SessionHit]) -> bool:
    """Whether the index's stored token vectors have the query encoder's dimension (a compressed
    index with a PCA projection stores them projected: they cannot be compared with a query
    outside the engine)."""
    return bool(hits) and session.index.get_embeddings(hits[0].id).shape[1] == session.index.encoder.dim


class _Chained(Strategy):
    """A first hop for the question, then up to ``hops - 1`` hops, each searching what
    :meth:`next_query` builds from the previous hop's ``context_docs`` best documents.

    A later hop may return documents an earlier hop returned (``include_seen``): the
    evidence-conditioned query re-scores the first hop's tail, which is where most second gold
    paragraphs sit. Fusion by placement: the first hop's ``keep`` best stay on top; each later
    hop's documents alternate with the rest of the ranking so far
    (:func:`~lir_agent.agentic.strategies.base.interleave`). Stops after ``hops`` hops, when a hop
    adds no document, or when its best score per query token falls under ``min_relative`` of
    the first hop's.
    """

    def __init__(self, k: int = 10, hops: int = 2, context_docs: int = 3, sentences: int = 2, keep: int = 5,
                 min_relative: float = 0.0):
        super().__init__(k)
        self.hops = check_count(self.name, "hops", hops)
        self.context_docs = check_count(self.name, "context_docs", context_docs)
        self.sentences = check_count(self.name, "sentences", sentences, minimum=0)
        self.keep = min(check_count(self.name, "keep", keep), max(1, self.k // 2))  # room for later hops in k
        if isinstance(min_relative, bool) or not isinstance(min_relative, (int, float)) or min_relative < 0:
            raise InvalidInputError(f"{self.name}: min_relative must be a number >= 0, got {min_relative!r}")
        self.min_relative = min_relative

    def next_query(self, question: str, previous: Sequence[SessionHit], session: SearchSession) -> dict[str, Any]:
        """Keyword arguments of the next :meth:`Run.hop`: query, note, and query_matrix/rerank."""
        raise NotImplementedError

    def run(self, question: str, session: SearchSession) -> MultiHopResult:
        run = Run(self, question, session)
        ranked, first, stopped = run.hop([], question, self.keep)
        previous = first.hits
        while stopped is None:
            if len(run.hops) >= self.hops:
                stopped = f"{STOP_MAX_HOPS}: {self.hops} hops"
                break
            top = set(ranked[: self.keep])
            ranked, result, stopped = run.hop(ranked, keep=self.keep,
                                              **self.next_query(question, previous[: self.context_docs], session))
            previous = [h for h in result.hits if h.id not in top]
            if stopped is None and result.relative_best is not None and result.relative_best < self.min_relative:
                stopped = (f"{STOP_NOVELTY}: hop {result.hop}'s best score per query token is "
                           f"{result.relative_best:.0%} of the first hop's")
        return run.result(ranked, stopped)


class Condensed(_Chained):
    """Baleen-style condensed context (see the module docstring): the next hop searches the
    question followed by each of the previous hop's ``context_docs`` best documents' title and
    ``sentences`` most-matched sentences, as one text (the encoder's query length cuts it: the
    question comes first, then the best document's context). ``keep``: first-hop documents
    kept on top."""

    name = "condensed"

    def next_query(self, question: str, previous: Sequence[SessionHit], session: SearchSession) -> dict[str, Any]:
        return {"query": f"{question} {condensed_context(previous, self.sentences)}",
                "note": f"question + matched sentences of {len(previous)} documents"}


class FliprReranker:
    """FLIPR scoring (Baleen, section 3.2): the first ``question_rows`` rows of the query matrix
    (the question) and the rest (the context) score a document separately; each part sums its
    ``top`` largest token MaxSims (all of the question's when ``question_top`` is None)."""

    def __init__(self, question_rows: int, context_top: int, question_top: int | None = None, depth: int = 100):
        self.question_rows, self.context_top, self.question_top, self.depth = (question_rows, context_top,
                                                                               question_top, depth)

    def score(self, query_matrix: torch.Tensor, doc_matrices: Sequence[torch.Tensor]) -> list[float]:
        query = query_matrix.float()
        scores = []
        for matrix in doc_matrices:
            best = (query @ matrix.float().T).max(dim=1).values  # (query rows,)
            question, context = best[: self.question_rows], best[self.question_rows :]
            q_top = question.numel() if self.question_top is None else min(self.question_top, question.numel())
            scores.append(float(question.topk(q_top).values.sum() +
                                context.topk(min(self.context_top, context.numel())).values.sum()))
        return scores


class Flipr(_Chained):
    """Condensed context scored the FLIPR way: the question's tokens and the context's tokens sum
    separately, the context only its ``context_top`` best-matching tokens. The engine finds
    ``depth`` candidates with the stacked matrix; FLIPR re-scores them from their stored vectors."""

    name = "flipr"

    def __init__(self, k: int = 10, hops: int = 2, context_docs: int = 3, sentences: int = 2, keep: int = 5,
                 context_top: int = 8, depth: int = 100, min_relative: float = 0.0):
        super().__init__(k, hops, context_docs, sentences, keep, min_relative)
        self.context_top = check_count(self.name, "context_top", context_top)
        self.depth = check_count(self.name, "depth", depth)

    def next_query(self, question: str, previous: Sequence[SessionHit], session: SearchSession) -> dict[str, Any]:
        encoder = session.index.encoder
        contexts = [condensed_context([hit], self.sentences) for hit in previous]
        matrices = encoder.encode_queries([question] + contexts)
        query = {"query": " ".join([question] + contexts), "query_matrix": torch.cat(matrices)}
        if not stored_in_query_space(session, previous):
            return query | {"note": "FLIPR re-scoring skipped: stored vectors are not in the query's space"}
        rerank = FliprReranker(int(matrices[0].shape[0]), self.context_top, depth=self.depth)
        return query | {"rerank": rerank,
                        "note": f"FLIPR: question + top-{self.context_top} context tokens of {len(contexts)} documents"}


class PseudoRelevanceFeedback(_Chained):
    """ColBERT-PRF (see the module docstring): the token vectors of the previous hop's
    ``context_docs`` best documents are clustered into ``clusters`` centroids; the
    ``expansion_tokens`` with the highest IDF (estimated on ``idf_sample`` stored documents: a
    centroid occurs in a document when one of its tokens has cosine >= ``occurs_at`` with it)
    are appended to the query matrix, each scaled by ``beta * idf``."""

    name = "prf"

    def __init__(self, k: int = 10, hops: int = 2, context_docs: int = 3, keep: int = 5, clusters: int = 24,
                 expansion_tokens: int = 10, beta: float = 1.0, idf_sample: int = 1000, occurs_at: float = 0.75,
                 min_relative: float = 0.0):
        super().__init__(k, hops, context_docs, 0, keep, min_relative)
        self.clusters = check_count(self.name, "clusters", clusters)
        self.expansion_tokens = check_count(self.name, "expansion_tokens", expansion_tokens)
        self.idf_sample = check_count(self.name, "idf_sample", idf_sample)
        self.beta, self.occurs_at = float(beta), float(occurs_at)
        self._sample: tuple[Any, torch.Tensor, torch.Tensor] | None = None  # (index, tokens, document of each token)

    def _sampled(self, session: SearchSession) -> tuple[torch.Tensor, torch.Tensor]:
        """Token vectors of up to ``idf_sample`` stored documents (evenly spaced ids), cached per index."""
        if self._sample is None or self._sample[0] is not session.index:
            ids = list(session.index.ids())
            step = max(1, len(ids) // self.idf_sample)
            matrices = [session.index.get_embeddings(i).float() for i in ids[::step][: self.idf_sample]]
            owner = torch.cat([torch.full((len(m),), n) for n, m in enumerate(matrices)])
            self._sample = (session.index, torch.cat(matrices), owner)
        return self._sample[1], self._sample[2]

    def next_query(self, question: str, previous: Sequence[SessionHit], session: SearchSession) -> dict[str, Any]:
        encoder = session.index.encoder
        query = encoder.encode_queries([question])[0].float()
        if not stored_in_query_space(session, previous):
            return {"query": question, "note": "PRF skipped: stored vectors are not in the query's space"}
        feedback = [session.index.get_embeddings(h.id).float() for h in previous]
        tokens = torch.cat(feedback)
        centroids = torch.nn.functional.normalize(kmeans(tokens, min(self.clusters, len(tokens))), dim=1)
        sample, owner = self._sampled(session)
        documents = int(owner.max()) + 1
        occurs = torch.zeros(len(centroids), documents, dtype=torch.bool)
        hits = (centroids @ sample.T) >= self.occurs_at  # (centroids, sample tokens)
        for c in range(len(centroids)):
            occurs[c, owner[hits[c]]] = True
        idf = torch.log((documents + 1) / (occurs.sum(dim=1).float() + 1))
        chosen = idf.topk(min(self.expansion_tokens, len(idf))).indices
        expansion = centroids[chosen] * (self.beta * idf[chosen]).unsqueeze(1)
        return {"query": question, "query_matrix": torch.cat([query, expansion]),
                "note": f"PRF: question + {len(chosen)} centroids of {len(feedback)} documents"}


class Beam(Strategy):
    """A beam over the first hop (see the module docstring): each of the first hop's ``beam`` best
    documents seeds a condensed second hop of its own (question + that document's matched
    sentences; earlier hits may come back); a chain (seed, document) scores the sum of both
    hops' MaxSim per query token, and the documents the chains end in rank by their best chain,
    interleaved after the first hop's ``keep`` best with the first hop's rest."""

    name = "beam"

    def __init__(self, k: int = 10, beam: int = 3, sentences: int = 2, keep: int = 5):
        super().__init__(k)
        self.beam = check_count(self.name, "beam", beam)
        self.sentences = check_count(self.name, "sentences", sentences, minimum=0)
        self.keep = min(check_count(self.name, "keep", keep), max(1, self.k // 2))

    def run(self, question: str, session: SearchSession) -> MultiHopResult:
        run = Run(self, question, session)
        first = run.search(question, self.k)
        stopped = stop_reason(first)
        if stopped:
            return run.result([h.id for h in first.hits], stopped)
        first_norm = {h.id: h.score / first.query_tokens for h in first.hits}
        top = {h.id for h in first.hits[: self.keep]}
        chains: dict[str, float] = {}
        per_seed = max(1, self.k // self.beam)
        for seed in first.hits[: self.beam]:
            result = run.search(f"{question} {condensed_context([seed], self.sentences)}", per_seed + self.keep,
                                include_seen=True, note=f"chain from {seed.id}")
            reason = stop_reason(result)
            if reason:
                stopped = reason
                break
            for hit in result.hits:
                if hit.id not in top and hit.id != seed.id:
                    chain = first_norm[seed.id] + hit.score / result.query_tokens
                    chains[hit.id] = max(chains.get(hit.id, float("-inf")), chain)
        later = sorted(chains, key=lambda d: -chains[d])
        return run.result(interleave([h.id for h in first.hits], later, self.keep),
                          stopped or f"{STOP_DONE}: chains from {len(run.hops) - 1} first-hop documents")
