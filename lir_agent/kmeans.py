"""Seeded spherical k-means in torch (CPU or CUDA), for the compressed index's centroids."""

from __future__ import annotations

import math

import torch

ASSIGN_CHUNK_BYTES = 64 * 2**20


def num_centroids_for(num_tokens: int) -> int:
    """Centroid count that grows with the square root of the token count, as in ColBERTv2
    (which uses 2^floor(log2(16·sqrt(T)))); we use 4·sqrt(T), a quarter as many, to keep
    training affordable on small machines. At least 16, at most num_tokens."""
    target = 4 * math.sqrt(max(num_tokens, 1))
    return int(min(max(16, 2 ** math.floor(math.log2(max(target, 1)))), max(num_tokens, 1)))


def assign(points: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """Index of the most similar centroid (largest dot product) of each point, in chunks.

    The products run in bfloat16 on CPU and float16 on CUDA (about twice as fast as float32);
    a near-tie may pick the second-best centroid, which only makes that residual slightly larger.
    """
    dtype = torch.float16 if centroids.device.type == "cuda" else torch.bfloat16
    low = centroids.to(dtype)
    chunk = max(1024, ASSIGN_CHUNK_BYTES // (4 * centroids.shape[0]))
    out = torch.empty(points.shape[0], dtype=torch.int64, device=centroids.device)
    for start in range(0, points.shape[0], chunk):
        block = points[start : start + chunk].to(device=centroids.device, dtype=dtype)
        out[start : start + chunk] = (block @ low.T).argmax(dim=1)
    return out


def kmeans(points: torch.Tensor, k: int, iterations: int = 8, seed: int = 0) -> torch.Tensor:
    """Spherical k-means: unit-norm centroids maximising the points' dot products.

    Deterministic for a given seed and device. Empty clusters are re-seeded with random points.
    """
    if points.shape[0] < k:
        raise ValueError(f"k-means needs at least k={k} points, got {points.shape[0]}")
    generator = torch.Generator(device="cpu").manual_seed(seed)
    points = points.float()
    centroids = points[torch.randperm(points.shape[0], generator=generator)[:k]].clone()
    centroids = torch.nn.functional.normalize(centroids, dim=1)
    for _ in range(iterations):
        labels = assign(points, centroids)
        sums = torch.zeros_like(centroids).index_add_(0, labels, points)
        counts = torch.bincount(labels, minlength=k)
        empty = counts == 0
        if bool(empty.any()):
            refill = torch.randint(0, points.shape[0], (int(empty.sum()),), generator=generator)
            sums[empty] = points[refill.to(points.device)]
        centroids = torch.nn.functional.normalize(sums, dim=1)
    return centroids
