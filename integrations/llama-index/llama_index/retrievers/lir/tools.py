"""Agent tools over a LIRRetriever, built with FunctionTool."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from llama_index.core.schema import NodeWithScore
from llama_index.core.tools import FunctionTool, ToolOutput
from pydantic import BaseModel, Field

from llama_index.retrievers.lir.base import LIRRetriever
from lir_agent.formatting import format_passages

SEARCH_DESCRIPTION = (
    "Search the document collection. Returns numbered passages with their ids and relevance scores. "
    "Rephrase and search again if the passages do not answer the question."
)


class SearchArgs(BaseModel):
    """Arguments of the search tool."""

    query: str = Field(description="What to look for, in natural language.")
    k: int | None = Field(default=None, ge=1, le=100, description="How many passages to return.")
    filter: dict[str, Any] | None = Field(
        default=None,
        description='Optional metadata filter, e.g. {"year": {"$gte": 2020}} or {"source": {"$in": ["a", "b"]}}.',
    )


@dataclass
class _Search:
    arguments: dict[str, Any]
    nodes: list[NodeWithScore]


def make_search_tool(retriever: LIRRetriever, name: str = "lir_search", description: str = SEARCH_DESCRIPTION,
                     max_tokens: int = 1500) -> FunctionTool:
    """A search tool: content = numbered passages cut to ``max_tokens``; raw_output = the nodes.

    Unlike RetrieverTool it passes the model's query string through unchanged and takes ``k``
    and ``filter`` arguments.
    """

    def search(query: str, k: int | None = None, filter: dict[str, Any] | None = None) -> _Search:
        arguments = SearchArgs(query=query, k=k, filter=filter).model_dump()
        return _Search(arguments, retriever.search(query, k=k, filter=filter))

    async def asearch(query: str, k: int | None = None, filter: dict[str, Any] | None = None) -> _Search:
        return await asyncio.to_thread(search, query, k, filter)

    def to_output(result: _Search) -> ToolOutput:
        passages = [(n.node.node_id, n.score, n.node.get_content()) for n in result.nodes]
        return ToolOutput(content=format_passages(passages, max_tokens), tool_name=name,
                          raw_input=result.arguments, raw_output=result.nodes)

    async def ato_output(result: _Search) -> ToolOutput:
        return to_output(result)

    return FunctionTool.from_defaults(fn=search, async_fn=asearch, name=name, description=description,
                                      fn_schema=SearchArgs, callback=to_output, async_callback=ato_output)
