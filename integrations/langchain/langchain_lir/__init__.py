"""LangChain integration of lir_agent: a retriever, agent tools and toolkits.

``LIRRetriever``, ``LIRSearchTool``, ``LIRReadDocumentTool`` and ``LIRToolkit`` need only
langchain-core. The session tools (``LIRSessionToolkit`` and the rest of
:mod:`langchain_lir.session_tools`) keep each agent run's search session in the agent's state and
need ``langchain`` (``pip install "langchain-lir[agent]"``); they are imported on first use.
"""

from typing import Any

from langchain_lir.retrievers import LIRRetriever
from langchain_lir.tools import LIRReadDocumentTool, LIRSearchTool, LIRToolkit

_SESSION_NAMES = ("LIRSessionMiddleware", "LIRSessionState", "LIRSessionTool", "LIRSessionToolkit", "SESSION_KEY",
                  "merge_session_states")


def __getattr__(name: str) -> Any:
    if name in _SESSION_NAMES:
        from langchain_lir import session_tools

        return getattr(session_tools, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["LIRReadDocumentTool", "LIRRetriever", "LIRSearchTool", "LIRToolkit", *_SESSION_NAMES]
