"""LIRRetriever: a LlamaIndex retriever over any lir_agent index."""

from __future__ import annotations

import asyncio
from typing import Any

from llama_index.core.base.base_retriever import BaseRetriever
from llama_index.core.callbacks import CallbackManager
from llama_index.core.schema import NodeWithScore, QueryBundle, TextNode
from llama_index.core.vector_stores.types import MetadataFilters

from llama_index.retrievers.lir.filters import to_lir_filter
from lir_agent import open_index
from lir_agent.filters import compile_filter
from lir_agent.text import check_path


class LIRRetriever(BaseRetriever):
    """Late-interaction (MaxSim) retrieval from a lir_agent index.

    Built from an index object (``index=``) or from configuration alone (``index_path=``);
    :meth:`to_config` / :meth:`from_config` carry it to another process. Returns
    ``NodeWithScore(TextNode(id_=document id, text, metadata), score=MaxSim)``. ``filters`` are
    LlamaIndex MetadataFilters (EQ, NE, GT, GTE, LT, LTE, IN, NIN; AND/OR, nested); other
    operators are refused when the retriever is built.
    """

    def __init__(
        self,
        index: Any = None,
        index_path: str | None = None,
        similarity_top_k: int = 4,
        filters: MetadataFilters | None = None,
        callback_manager: CallbackManager | None = None,
        verbose: bool = False,
    ) -> None:
        if index is None:
            if index_path is None:
                raise ValueError("LIRRetriever needs index= (an index object) or index_path=")
            index = open_index(check_path(index_path, "index_path"))
        if similarity_top_k < 1:
            raise ValueError(f"similarity_top_k must be positive, got {similarity_top_k}")
        self.index = index
        # absolute (the index's own resolved path): the config must mean the same index anywhere
        self.index_path = str(index.path) if getattr(index, "path", None) is not None else index_path
        self.similarity_top_k = similarity_top_k
        self.filters = filters
        self._filter = to_lir_filter(filters)
        compile_filter(self._filter)  # a bad filter fails here, not at the first search
        super().__init__(callback_manager=callback_manager, verbose=verbose)

    def search(self, query: str, k: int | None = None, filter: dict[str, Any] | None = None) -> list[NodeWithScore]:
        """Searches with per-call overrides of k and of the filter (in lir_agent's filter language)."""
        hits = self.index.search(query, k=k or self.similarity_top_k, filter=self._filter if filter is None else filter)
        return [NodeWithScore(node=TextNode(id_=hit.id, text=hit.text, metadata=dict(hit.metadata)), score=hit.score)
                for hit in hits]

    def _retrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        return self.search(query_bundle.query_str)

    async def _aretrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        # Search is CPU/GPU work in torch, which releases the GIL: keep it off the event loop.
        return await asyncio.to_thread(self.search, query_bundle.query_str)

    def to_config(self) -> dict[str, Any]:
        """JSON-serialisable settings from which :meth:`from_config` rebuilds this retriever."""
        if self.index_path is None:
            raise ValueError("this retriever's index has no path, so it cannot be rebuilt from configuration")
        return {
            "index_path": self.index_path,
            "similarity_top_k": self.similarity_top_k,
            "filters": self.filters.model_dump(mode="json") if self.filters is not None else None,
        }

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "LIRRetriever":
        filters = config.get("filters")
        return cls(
            index_path=config["index_path"],
            similarity_top_k=config.get("similarity_top_k", 4),
            filters=MetadataFilters.model_validate(filters) if filters is not None else None,
        )
