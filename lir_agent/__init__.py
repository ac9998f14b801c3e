"""lir_agent: late-interaction (ColBERT-style, MaxSim) retrieval for agents.

The public API::

    from lir_agent import Encoder, Index

    index = Index.create("my-index")                  # bundled all-MiniLM-L6-v2 encoder
    index.add([{"id": "a", "text": "...", "metadata": {"year": 2020}}])
    hits = index.search("a question", k=5, filter={"year": {"$gte": 2019}})

``Index.create(path, index_type="compressed", nbits=2)`` gives the PLAID-class engine; an index
is exact until 250,000 tokens and compressed above by default. ``ShardedIndex`` (and, on Ray,
``lir_agent.distributed.RayIndex``) has the same API over shards; ``open_index`` opens either.
"""

from .codec import ResidualCodec
from .encoder import DEFAULT_MODEL, Encoder, EncoderSettings
from .errors import (
    DocumentNotFoundError,
    DuplicateIdError,
    EncoderMismatchError,
    IndexCorruptedError,
    InvalidInputError,
    LIRError,
    NotAnIndexError,
)
from .filters import Filter
from .index import Document, Index, SearchHit
from .maxsim import maxsim_topk
from .packed import PackedEmbeddings
from .sharded import ShardedIndex, open_index

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_MODEL",
    "Document",
    "DocumentNotFoundError",
    "DuplicateIdError",
    "Encoder",
    "EncoderMismatchError",
    "EncoderSettings",
    "Filter",
    "Index",
    "IndexCorruptedError",
    "InvalidInputError",
    "LIRError",
    "NotAnIndexError",
    "PackedEmbeddings",
    "ResidualCodec",
    "SearchHit",
    "ShardedIndex",
    "maxsim_topk",
    "open_index",
]
