"""Search engines: how a segment stores its token vectors and how it is searched.

An engine turns token matrices into per-token arrays for the segment files (``schema``,
``encode``, ``derived``), opens a segment's arrays for search (``open``), and prepares a query
batch once for all segments (``prepare_queries``). The index around it (ids, text, metadata,
filters, tombstones, crash-safe writes) is the same for every engine.

* :class:`ExactEngine`: float16 vectors, exact MaxSim over every token.
* :class:`CompressedEngine`: centroid codes plus n-bit residuals, searched PLAID-style.
"""

from .compressed import CompressedEngine, SearchParams
from .exact import ExactEngine

__all__ = ["CompressedEngine", "ExactEngine", "SearchParams"]
