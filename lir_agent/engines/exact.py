"""The exact engine: float16 token vectors, exact MaxSim."""

from __future__ import annotations

import warnings
from typing import Any, Sequence

import numpy as np
import torch

from ..errors import InvalidInputError
from ..maxsim import maxsim_topk
from .pipeline import Ranked, concatenate
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

    def exact_round(self, stores: list[ExactSegment], masks: list[np.ndarray | None], queries: list[torch.Tensor],
                    k: int) -> list[Ranked]:
        """Per query, the best k documents over all segments (each segment's exact top-k, merged)."""
        per_segment = []
        for segment, (store, mask) in enumerate(zip(stores, masks)):
            scores, rows = maxsim_topk(queries, store.tokens, store.offsets, k, doc_mask=mask, device=store.device)
            scores, rows = scores.cpu().numpy(), rows.cpu().numpy()
            per_segment.append([Ranked(scores[q], np.full(rows.shape[1], segment), rows[q]) for q in range(len(queries))])
        return [concatenate([part[q] for part in per_segment]).best(k) for q in range(len(queries))]

    def prepare_queries(self, matrices: list[torch.Tensor], device: str) -> list[torch.Tensor]:
        return matrices

    def search_params(self, k: int, overrides: dict[str, Any]) -> None:
        if overrides:
            raise InvalidInputError(f"search settings {sorted(overrides)} apply to compressed indexes only")
        return None
