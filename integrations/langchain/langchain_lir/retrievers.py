"""LIRRetriever: a LangChain retriever over any lir_agent index."""

from __future__ import annotations

import asyncio
from typing import Any

from langchain_core.callbacks import AsyncCallbackManagerForRetrieverRun, CallbackManagerForRetrieverRun
from langchain_core.documents import Document
from langchain_core.retrievers import BaseRetriever
from pydantic import ConfigDict, Field, model_validator

from lir_agent import open_index
from lir_agent.filters import compile_filter
from lir_agent.text import check_path


class LIRRetriever(BaseRetriever):
    """Late-interaction (MaxSim) retrieval from a lir_agent index.

    Build it from an index object (``index=``) or from configuration alone (``index_path=``),
    which is what :meth:`to_config` / :meth:`from_config` carry to another process. ``k`` and
    ``filter`` are defaults that each call may override: ``invoke(query, k=3, filter={...})``.
    Each Document has the index's id, the text, and in metadata the document's own metadata
    plus ``score`` (MaxSim) and ``rank`` (from 1).
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    index: Any = Field(default=None, exclude=True)
    index_path: str | None = None
    k: int = Field(default=4, ge=1)
    filter: Any = None

    @model_validator(mode="after")
    def _open_index(self) -> "LIRRetriever":
        compile_filter(self.filter)  # a bad default filter fails here, not at the first search
        if self.index is None:
            if self.index_path is None:
                raise ValueError("LIRRetriever needs index= (an index object) or index_path=")
            self.index = open_index(check_path(self.index_path, "index_path"))
        if getattr(self.index, "path", None) is not None:
            self.index_path = str(self.index.path)  # absolute: the config must mean the same index anywhere
        return self

    def _search(self, query: str, k: int | None, filter: Any) -> list[Document]:
        hits = self.index.search(query, k=self.k if k is None else k, filter=self.filter if filter is None else filter)
        return [
            Document(id=hit.id, page_content=hit.text, metadata={**hit.metadata, "score": hit.score, "rank": hit.rank})
            for hit in hits
        ]

    def _get_relevant_documents(self, query: str, *, run_manager: CallbackManagerForRetrieverRun,
                                k: int | None = None, filter: Any = None) -> list[Document]:
        return self._search(query, k, filter)

    async def _aget_relevant_documents(self, query: str, *, run_manager: AsyncCallbackManagerForRetrieverRun,
                                       k: int | None = None, filter: Any = None) -> list[Document]:
        # The search is CPU/GPU work that releases the GIL in torch: run it off the event loop.
        return await asyncio.to_thread(self._search, query, k, filter)

    def to_config(self) -> dict[str, Any]:
        """JSON-serialisable settings from which :meth:`from_config` rebuilds this retriever."""
        if self.index_path is None:
            raise ValueError("this retriever's index has no path, so it cannot be rebuilt from configuration")
        if callable(self.filter):
            raise ValueError("a callable filter cannot be carried in a configuration; use a dict filter")
        return {"index_path": self.index_path, "k": self.k, "filter": self.filter}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "LIRRetriever":
        return cls(**config)
