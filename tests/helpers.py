"""Helpers shared by the core tests: data paths and naive reference computations."""

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("LIR_SHARED", REPO.parent / "shared"))
DATA = SHARED / "data"
MODELS = SHARED / "models"


def needs(path: Path):
    """Skip marker for tests that read ../shared (present in CI and on developer machines)."""
    return pytest.mark.skipif(not path.exists(), reason=f"{path} not present")


def random_matrices(n: int, dim: int, seed: int, min_len: int = 1, max_len: int = 40) -> list[torch.Tensor]:
    """Unit-norm random token matrices of random lengths."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(min_len, max_len + 1, (n,), generator=g)
    return [torch.nn.functional.normalize(torch.randn(int(n_), dim, generator=g), dim=1) for n_ in lengths]


def naive_maxsim(query: torch.Tensor, documents: list[torch.Tensor]) -> torch.Tensor:
    """Reference MaxSim: one document at a time, in float64."""
    q = query.double()
    return torch.stack([(q @ d.double().T).max(dim=1).values.sum() for d in documents])
