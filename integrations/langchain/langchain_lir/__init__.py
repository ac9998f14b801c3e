"""LangChain integration of lir_agent: a retriever, agent tools and a toolkit."""

from langchain_lir.retrievers import LIRRetriever
from langchain_lir.tools import LIRReadDocumentTool, LIRSearchTool, LIRToolkit

__all__ = ["LIRReadDocumentTool", "LIRRetriever", "LIRSearchTool", "LIRToolkit"]
