"""The residual codec of the compressed index (ColBERTv2/PLAID style).

Each token vector ``x`` is stored as the id of its nearest centroid ``c`` plus its residual
``x - c`` quantised to ``nbits`` per dimension (1, 2 or 4), packed into bytes. Bucket cut-offs
and bucket values are learned per dimension from the residual distribution (quantiles), so a
dimension with small residuals gets fine buckets. With the residual goes a float16 ``scale``,
the inverse norm of the reconstructed vector ``c + r``, so scores against the unit-norm
decoded token need no decoding of ``c``: ``q·x = (q·c + q·r) · scale``, where ``q·c`` is the
query's centroid score (already computed for candidate generation) and ``r`` comes from one
table lookup per byte. ``nbits=16`` keeps the vector itself in float16 (lossless relative to
the exact index) next to its centroid id, which candidate generation still needs.

An optional PCA projection (fitted on the corpus, for plain encoders with wide token states)
reduces the dimension before all of this; it is applied to queries too.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .kmeans import assign, kmeans, num_centroids_for

NBITS = (1, 2, 4, 16)
ROW_TYPES = {2: torch.int16, 4: torch.int32, 8: torch.float64, 16: torch.complex128}  # one element per table row
# Residual products run in bfloat16 on CPUs that compute it natively (about 1.5x faster reranking;
# the bfloat16 rounding of q·r, a small term, moved SciFact scores by at most 0.005); float32 elsewhere.
NATIVE_CPU_BF16 = bool(getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)())
BF16_ROWS = 128  # bfloat16 products take a multiple of this many document tokens (few shapes, few compiled kernels)
BF16_QUERY_ROWS = 8  # ... and of this many query tokens (SciFact, 4-bit: 310 -> 150 MB of peak memory growth)
SAMPLE_PER_CENTROID = 32
MIN_SAMPLE = 100_000


@dataclass
class ResidualCodec:
    """Centroids, per-dimension residual buckets, and an optional projection."""

    nbits: int
    centroids: torch.Tensor  # (K, dim) float32, unit norm
    cutoffs: torch.Tensor  # (dim, 2**nbits - 1) float32 (empty for nbits=16)
    weights: torch.Tensor  # (dim, 2**nbits) float32 (empty for nbits=16)
    projection: torch.Tensor | None  # (input_dim, dim) float32 or None
    projection_mean: torch.Tensor | None  # (input_dim,)
    mean_residual_norm: float  # on the training sample; the reference for drift
    _cache: dict = field(default_factory=dict, repr=False, compare=False)  # decode tables per device

    # ------------------------------------------------------------------ fitting
    @classmethod
    def fit(cls, tokens: torch.Tensor, nbits: int = 2, num_centroids: int | None = None,
            projection_dim: int | None = None, seed: int = 0, kmeans_iterations: int = 8,
            projection_of: "ResidualCodec | None" = None) -> "ResidualCodec":
        """Learns the codec from a corpus's token vectors (a sample is drawn, seeded).

        ``projection_of``: re-train centroids and buckets on vectors already in that codec's
        projected space, keeping its projection (how a projected index is re-optimised).
        """
        if nbits not in NBITS:
            raise ValueError(f"nbits must be one of {NBITS}, got {nbits}")
        generator = torch.Generator().manual_seed(seed)
        tokens = tokens.float()
        projection = projection_mean = None
        if projection_dim is not None:
            if not 0 < projection_dim <= tokens.shape[1]:
                raise ValueError(f"projection_dim must be in 1..{tokens.shape[1]}, got {projection_dim}")
            projection_mean, projection = _fit_pca(tokens, projection_dim, generator)
            tokens = _project(tokens, projection_mean, projection)
        k = num_centroids or num_centroids_for(tokens.shape[0])
        sample_size = min(tokens.shape[0], max(MIN_SAMPLE, SAMPLE_PER_CENTROID * k))
        sample = tokens[torch.randperm(tokens.shape[0], generator=generator)[:sample_size]]
        centroids = kmeans(sample, k, iterations=kmeans_iterations, seed=seed)
        residuals = sample - centroids[assign(sample, centroids)]
        dim = tokens.shape[1]
        if nbits == 16:
            cutoffs, weights = torch.empty(dim, 0), torch.empty(dim, 0)
        else:
            cutoffs, weights = _fit_buckets(residuals, 2**nbits)
        if projection_of is not None:
            projection, projection_mean = projection_of.projection, projection_of.projection_mean
        return cls(nbits, centroids, cutoffs, weights, projection, projection_mean,
                   float(residuals.norm(dim=1).mean()))

    # ------------------------------------------------------------------ properties
    @property
    def dim(self) -> int:
        return self.centroids.shape[1]

    @property
    def input_dim(self) -> int:
        """Dimension of the vectors the codec takes (before any projection)."""
        return self.projection.shape[0] if self.projection is not None else self.dim

    @property
    def num_centroids(self) -> int:
        return self.centroids.shape[0]

    @property
    def code_dtype(self) -> np.dtype:
        return np.dtype(np.uint16) if self.num_centroids <= 2**16 else np.dtype(np.int32)

    def schema(self) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
        """Per-token arrays of an encoded vector: name -> (shape, dtype)."""
        arrays = {"codes": ((), self.code_dtype)}
        if self.nbits == 16:
            return arrays | {"residuals": ((self.dim,), np.dtype(np.float16))}
        return arrays | {"residuals": ((self.dim * self.nbits // 8,), np.dtype(np.uint8)),
                         "scales": ((), np.dtype(np.float16))}

    @property
    def bytes_per_token(self) -> int:
        return sum(int(np.prod(shape, dtype=np.int64)) * dtype.itemsize for shape, dtype in self.schema().values())

    def same_as(self, other: "ResidualCodec") -> bool:
        """Whether ``other`` encodes exactly as this codec does."""
        tensors = ("centroids", "cutoffs", "weights", "projection", "projection_mean")
        return self.nbits == other.nbits and all(
            (a is None and b is None) or (a is not None and b is not None and a.shape == b.shape and torch.equal(a, b))
            for a, b in ((getattr(self, t), getattr(other, t)) for t in tensors))

    # ------------------------------------------------------------------ transforms
    def project(self, vectors: torch.Tensor) -> torch.Tensor:
        """Applies the projection (if any) and re-normalises; identity otherwise."""
        if self.projection is None:
            return vectors
        return _project(vectors.float(), self.projection_mean, self.projection)

    def encode(self, vectors: torch.Tensor, projected: bool = False) -> tuple[dict[str, np.ndarray], torch.Tensor]:
        """The per-token arrays (see :meth:`schema`) of (n, input_dim) vectors, or of vectors
        already in the codec's space (``projected=True``, e.g. decoded ones), and the norms of
        their residuals (drift tracking)."""
        vectors = vectors.float() if projected else self.project(vectors.float())
        codes = assign(vectors, self.centroids)
        residual = vectors - self.centroids[codes]
        arrays = {"codes": codes.numpy().astype(self.code_dtype)}
        if self.nbits == 16:
            arrays["residuals"] = vectors.to(torch.float16).numpy()
        else:
            buckets = torch.searchsorted(self.cutoffs, residual.T.contiguous()).T  # (n, dim) in [0, 2**nbits)
            arrays["residuals"] = _pack(buckets.to(torch.uint8), self.nbits)
            reconstructed = self._dequantize(torch.from_numpy(arrays["residuals"]), "cpu") + self.centroids[codes]
            arrays["scales"] = reconstructed.norm(dim=1).reciprocal().to(torch.float16).numpy()
        return arrays, residual.norm(dim=1)

    def decode(self, codes: torch.Tensor | np.ndarray, residuals: torch.Tensor | np.ndarray,
               device: str | torch.device = "cpu") -> torch.Tensor:
        """Reconstructed unit-norm vectors (n, dim), float32 (float16 inputs stay exact)."""
        residuals = torch.as_tensor(residuals).to(device)
        if self.nbits == 16:
            return residuals.float()
        codes = torch.as_tensor(codes).to(device).long()
        vectors = self._dequantize(residuals, device).add_(self.centroids.to(device).index_select(0, codes))
        return vectors.div_(vectors.norm(dim=1, keepdim=True))

    def score(self, query: torch.Tensor, centroid_scores: torch.Tensor, codes: torch.Tensor,
              residuals: torch.Tensor, scales: torch.Tensor | None) -> torch.Tensor:
        """(q, n) similarities of query tokens to the decoded unit-norm tokens, computed as
        ``(q·c + q·r) · scale`` (``centroid_scores``: the query against every centroid)."""
        if self.nbits == 16:
            return query @ residuals.float().T
        if query.device.type == "cpu" and NATIVE_CPU_BF16:
            # both sides padded (oneDNN compiles and keeps a kernel per shape), the padding cut off
            values = self._dequantize(_pad_rows(residuals, BF16_ROWS), query.device, torch.bfloat16)
            products = _pad_rows(query.to(torch.bfloat16), BF16_QUERY_ROWS) @ values.T
            residual_scores = products[: query.shape[0], : residuals.shape[0]].float()
        else:
            residual_scores = query @ self._dequantize(residuals, query.device).T
        return residual_scores.add_(centroid_scores.index_select(1, codes.long())).mul_(scales.float())

    def _dequantize(self, residuals: torch.Tensor, device: str | torch.device,
                    dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """(n, dim) residual values (float32 or bfloat16) of packed residuals: one table row per byte.

        A row holds ``8 / nbits`` values; where they fill 2 to 16 bytes the row is viewed as one
        element of that size (a float64 for 8 bytes, ...), which gathers several times faster.
        """
        table = self._lookup_table(device, dtype)  # a row per (byte position, byte value)
        index = torch.add(self._byte_base(device), residuals)  # int32: row of each (token, byte)
        values = table.index_select(0, index.view(-1))
        return values.view(dtype).view(residuals.shape[0], self.dim)

    def _lookup_table(self, device: str | torch.device, dtype: torch.dtype) -> torch.Tensor:
        """Row ``byte_position · 256 + byte_value`` holds the residual values of that byte's dimensions."""
        key = ("table", str(device), dtype)
        if key not in self._cache:
            per_byte = 8 // self.nbits
            shifts = torch.arange(per_byte - 1, -1, -1) * self.nbits
            buckets = (torch.arange(256)[:, None] >> shifts[None, :]) & (2**self.nbits - 1)  # (256, per_byte)
            weights = self.weights.reshape(self.dim // per_byte, per_byte, 2**self.nbits)
            table = weights[:, torch.arange(per_byte)[None, :], buckets].reshape(-1, per_byte).to(dtype).contiguous()
            row_type = ROW_TYPES.get(per_byte * dtype.itemsize)
            self._cache[key] = (table.view(row_type).view(-1) if row_type else table).to(device)
        return self._cache[key]

    def _byte_base(self, device: str | torch.device) -> torch.Tensor:
        key = ("base", str(device))
        if key not in self._cache:
            positions = self.dim * self.nbits // 8
            self._cache[key] = (torch.arange(positions, dtype=torch.int32) * 256).to(device)
        return self._cache[key]

    # ------------------------------------------------------------------ persistence
    def save(self, directory: Path) -> None:
        """Writes centroids and buckets as .npy plus codec.json (no pickle)."""
        directory.mkdir(parents=True, exist_ok=True)
        arrays = {"centroids": self.centroids, "cutoffs": self.cutoffs, "weights": self.weights}
        if self.projection is not None:
            arrays |= {"projection": self.projection, "projection_mean": self.projection_mean}
        for name, tensor in arrays.items():
            np.save(directory / f"{name}.npy", tensor.numpy().astype(np.float32))
        meta = {"nbits": self.nbits, "mean_residual_norm": self.mean_residual_norm,
                "num_centroids": self.num_centroids, "dim": self.dim}
        (directory / "codec.json").write_text(json.dumps(meta))

    @classmethod
    def load(cls, directory: Path) -> "ResidualCodec":
        meta: dict[str, Any] = json.loads((directory / "codec.json").read_text())

        def array(name: str) -> torch.Tensor:
            return torch.from_numpy(np.load(directory / f"{name}.npy", allow_pickle=False))

        has_projection = (directory / "projection.npy").exists()
        return cls(meta["nbits"], array("centroids"), array("cutoffs"), array("weights"),
                   array("projection") if has_projection else None,
                   array("projection_mean") if has_projection else None, meta["mean_residual_norm"])


def _fit_buckets(residuals: torch.Tensor, levels: int, iterations: int = 12) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-dimension scalar quantiser (Lloyd-Max): starts from equal-probability buckets, then
    alternates bucket values = mean of their residuals, cut-offs = midpoints of adjacent values."""
    values = residuals.T.contiguous()  # (dim, sample)
    ordered = values.sort(dim=1).values
    last = ordered.shape[1] - 1
    weights = ordered[:, ((2 * torch.arange(levels) + 1) * last) // (2 * levels)].contiguous()
    for _ in range(iterations):
        cutoffs = ((weights[:, 1:] + weights[:, :-1]) / 2).contiguous()
        buckets = torch.searchsorted(cutoffs, values)
        sums = torch.zeros_like(weights).scatter_add_(1, buckets, values)
        counts = torch.zeros_like(weights).scatter_add_(1, buckets, torch.ones_like(values))
        weights = torch.where(counts > 0, sums / counts.clamp(min=1), weights)
    return ((weights[:, 1:] + weights[:, :-1]) / 2).contiguous(), weights.contiguous()


def _fit_pca(tokens: torch.Tensor, dim: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    sample = tokens[torch.randperm(tokens.shape[0], generator=generator)[:200_000]]
    mean = sample.mean(dim=0)
    centered = sample - mean
    covariance = centered.T @ centered / max(1, centered.shape[0] - 1)
    _, vectors = torch.linalg.eigh(covariance)  # ascending eigenvalues
    return mean, vectors[:, -dim:].flip(1).contiguous()


def _project(vectors: torch.Tensor, mean: torch.Tensor, projection: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize((vectors - mean) @ projection, dim=1)


def _pack(buckets: torch.Tensor, nbits: int) -> np.ndarray:
    """(n, dim) bucket ids → (n, dim·nbits/8) bytes, first dimension in the high bits."""
    per_byte = 8 // nbits
    grouped = buckets.reshape(buckets.shape[0], -1, per_byte).to(torch.int32)
    shifts = torch.arange(per_byte - 1, -1, -1, dtype=torch.int32) * nbits
    return (grouped << shifts).sum(dim=2).to(torch.uint8).numpy()


def _pad_rows(matrix: torch.Tensor, multiple: int) -> torch.Tensor:
    """``matrix`` with zero rows appended up to a multiple of ``multiple`` rows."""
    return torch.nn.functional.pad(matrix, (0, 0, 0, -matrix.shape[0] % multiple))
