"""The exact engine: float16 token vectors, exact MaxSim."""

from __future__ import annotations

import warnings
from typing import Any, Sequence

import numpy as np
import torch

from ..errors import InvalidInputError
from ..maxsim import maxsim_topk
from ..storage import ArraySchema, SegmentData


def as_tensor(array: np.ndarray, device: str) -> torch.Tensor:
    """A tensor over a (read-only, memory-mapped) array without copying it on CPU."""
    with warnings.catch_warnings():  # the memory map is never written through
        warnings.simplefilter("ignore", UserWarning)
        tensor = torch.from_numpy(array)
    return tensor if device == "cpu" else tensor.to(device)


class ExactSegment:
    def __init__(self, tokens: torch.Tensor, offsets: np.ndarray, device: str):
        self.tokens, self.offsets, self.device = tokens, offsets, device

    def payload(self, row: int) -> dict[str, np.ndarray]:
        return {"tokens": self.vectors(row).numpy()}

    def vectors(self, row: int) -> torch.Tensor:
        return self.tokens[int(self.offsets[row]) : int(self.offsets[row + 1])].cpu().clone()


class ExactEngine:
    """Stores every token vector in float16 and scores every token."""

    kind = "exact"

    def __init__(self, dim: int):
        self.dim = dim

    def schema(self) -> ArraySchema:
        return {"tokens": ((self.dim,), np.dtype(np.float16))}

    def encode(self, matrices: Sequence[torch.Tensor]) -> tuple[list[dict[str, np.ndarray]], dict[str, float]]:
        return [{"tokens": m.to(torch.float16).numpy()} for m in matrices], {}

    def derived(self, arrays: dict[str, np.ndarray], offsets: np.ndarray) -> dict[str, np.ndarray]:
        return {}

    def open(self, data: SegmentData, device: str) -> ExactSegment:
        return ExactSegment(as_tensor(data.arrays["tokens"], device), data.offsets, device)

    def search(self, stores: list[ExactSegment], masks: list[np.ndarray | None], queries: list[torch.Tensor],
               k: int, params: None) -> list[list[tuple[float, int, int]]]:
        """Per query, the best (score, segment, row) triples: each segment's exact top-k, merged."""
        all_scores, all_segments, all_rows = [], [], []
        for segment, (store, mask) in enumerate(zip(stores, masks)):
            scores, rows = maxsim_topk(queries, store.tokens, store.offsets, k, doc_mask=mask, device=store.device)
            all_scores.append(scores.cpu())
            all_rows.append(rows.cpu())
            all_segments.append(torch.full_like(rows.cpu(), segment))
        if not all_scores:
            return [[] for _ in queries]
        scores, segments, rows = (torch.cat(parts, dim=1) for parts in (all_scores, all_segments, all_rows))
        top_scores, top = scores.topk(min(k, scores.shape[1]), dim=1)
        return [list(zip(top_scores[q].tolist(), segments[q, top[q]].tolist(), rows[q, top[q]].tolist()))
                for q in range(len(queries))]

    def prepare_queries(self, matrices: list[torch.Tensor], device: str) -> list[torch.Tensor]:
        return matrices

    def search_params(self, k: int, overrides: dict[str, Any]) -> None:
        if overrides:
            raise InvalidInputError(f"search settings {sorted(overrides)} apply to compressed indexes only")
        return None
