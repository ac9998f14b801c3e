"""lir_agent: late-interaction (ColBERT-style, MaxSim) retrieval for agents.

The public API::

    from lir_agent import Encoder, Index

    index = Index.create("my-index")                  # bundled all-MiniLM-L6-v2 encoder
    index.add([{"id": "a", "text": "...", "metadata": {"year": 2020}}])
    hits = index.search("a question", k=5, filter={"year": {"$gte": 2019}})

``Index.create(path, index_type="compressed", nbits=2)`` gives the PLAID-class engine; an index
is exact until 250,000 tokens and compressed above by default. ``ShardedIndex`` (and, on Ray,
``lir_agent.distributed.RayIndex``) has the same API over shards; ``open_index`` opens either.

The names below are imported on first use (PEP 562), so ``import lir_agent`` (and the
``lir-agent`` command's argument parsing) does not load torch or transformers.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> the submodule that defines it
_EXPORTS = {
    "DEFAULT_MODEL": "encoder",
    "Document": "docstore",
    "DocumentNotFoundError": "errors",
    "DuplicateIdError": "errors",
    "Encoder": "encoder",
    "EncoderMismatchError": "errors",
    "EncoderSettings": "encoder",
    "Filter": "filters",
    "Index": "index",
    "IndexCorruptedError": "errors",
    "InvalidInputError": "errors",
    "LIRError": "errors",
    "NotAnIndexError": "errors",
    "PackedEmbeddings": "packed",
    "ResidualCodec": "codec",
    "SearchHit": "index",
    "ShardedIndex": "sharded",
    "maxsim_topk": "maxsim",
    "open_index": "sharded",
}

__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:  # static analysers and IDEs see the eager imports
    from .codec import ResidualCodec
    from .encoder import DEFAULT_MODEL, Encoder, EncoderSettings
    from .errors import (DocumentNotFoundError, DuplicateIdError, EncoderMismatchError, IndexCorruptedError,
                         InvalidInputError, LIRError, NotAnIndexError)
    from .filters import Filter
    from .docstore import Document
    from .index import Index, SearchHit
    from .maxsim import maxsim_topk
    from .packed import PackedEmbeddings
    from .sharded import ShardedIndex, open_index


def __getattr__(name: str) -> Any:
    """Imports the submodule that defines a public name when the name is first asked for."""
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    """The module's attributes and the public names not imported yet."""
    return sorted(set(globals()) | set(_EXPORTS))
