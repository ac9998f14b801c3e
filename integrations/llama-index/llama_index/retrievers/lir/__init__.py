"""LlamaIndex integration of lir_agent: a retriever, MetadataFilters translation, agent tools
(a stateless search tool, and session tools that keep a run's search session in the workflow
Context)."""

from llama_index.retrievers.lir.base import LIRRetriever
from llama_index.retrievers.lir.filters import to_lir_filter
from llama_index.retrievers.lir.session_tools import SESSION_KEY, make_session_tools
from llama_index.retrievers.lir.tools import SearchArgs, make_search_tool

__all__ = ["LIRRetriever", "SESSION_KEY", "SearchArgs", "make_search_tool", "make_session_tools", "to_lir_filter"]
