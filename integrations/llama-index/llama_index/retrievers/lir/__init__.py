"""LlamaIndex integration of lir_agent: a retriever, MetadataFilters translation, agent tools."""

from llama_index.retrievers.lir.base import LIRRetriever
from llama_index.retrievers.lir.filters import to_lir_filter
from llama_index.retrievers.lir.tools import SearchArgs, make_search_tool

__all__ = ["LIRRetriever", "SearchArgs", "make_search_tool", "to_lir_filter"]
