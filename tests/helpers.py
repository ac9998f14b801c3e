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


DIM = 384  # the default encoder's


def clustered(n_docs: int, seed: int, n_topics: int = 60, spread: float = 0.5):
    """Documents whose tokens gather around shared topic directions, like real text's."""
    g = torch.Generator().manual_seed(seed)
    topics = torch.nn.functional.normalize(torch.randn(n_topics, DIM, generator=g), dim=1)
    docs, matrices = [], []
    for i in range(n_docs):
        length = int(torch.randint(20, 60, (1,), generator=g))
        own = topics[torch.randint(0, n_topics, (3,), generator=g)]
        picks = own[torch.randint(0, 3, (length,), generator=g)]
        noise = torch.randn(length, DIM, generator=g) * spread / DIM**0.5
        matrices.append(torch.nn.functional.normalize(picks + noise, dim=1))
        docs.append({"id": f"d{seed}-{i}", "text": f"document {i} of batch {seed}",
                     "metadata": {"group": i % 7, "batch": seed}})
    return docs, matrices, topics


def queries_for(topics, count, seed):
    g = torch.Generator().manual_seed(seed)
    return [torch.nn.functional.normalize(topics[torch.randint(0, len(topics), (8,), generator=g)]
                                          + torch.randn(8, DIM, generator=g) * 0.5 / DIM**0.5, dim=1)
            for _ in range(count)]
