"""Variable-length token matrices stored as one packed matrix plus offsets (no padding)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch


@dataclass
class PackedEmbeddings:
    """``tokens[offsets[i]:offsets[i+1]]`` are the token vectors of item ``i``."""

    tokens: torch.Tensor  # (total_tokens, dim)
    offsets: torch.Tensor  # (n + 1,) int64, offsets[0] == 0

    @classmethod
    def from_list(cls, matrices: Sequence[torch.Tensor | np.ndarray], dim: int | None = None) -> "PackedEmbeddings":
        """Packs a list of (n_tokens, dim) matrices."""
        tensors = [torch.as_tensor(m) for m in matrices]
        if not tensors:
            if dim is None:
                raise ValueError("cannot pack an empty list without knowing dim")
            return cls(torch.empty(0, dim, dtype=torch.float16), torch.zeros(1, dtype=torch.int64))
        lengths = torch.tensor([t.shape[0] for t in tensors], dtype=torch.int64)
        offsets = torch.zeros(len(tensors) + 1, dtype=torch.int64)
        torch.cumsum(lengths, 0, out=offsets[1:])
        return cls(torch.cat(tensors, dim=0), offsets)

    def __len__(self) -> int:
        return self.offsets.numel() - 1

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.tokens[int(self.offsets[i]) : int(self.offsets[i + 1])]

    @property
    def lengths(self) -> torch.Tensor:
        return self.offsets[1:] - self.offsets[:-1]

    def to_list(self) -> list[torch.Tensor]:
        return [self[i] for i in range(len(self))]
