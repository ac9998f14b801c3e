"""The agent layer: search sessions (deduplication across hops, budgets, novelty, traces) and
citations from the MaxSim alignment, context assembly of long documents' passages, over any
lir_agent index. The engine knows nothing of it:
this package uses the indexes' public API only (``search`` with ``exclude_ids``, ``get``,
``encoder``)."""

from .citations import Citation, Highlight, TokenMatch, cite
from .context import Context, Window, assemble_context
from .session import Budget, Evidence, ReadResult, SearchResult, SearchSession, SessionHit, TraceEvent

__all__ = ["Budget", "Citation", "Context", "Evidence", "Highlight", "ReadResult", "SearchResult", "SearchSession",
           "SessionHit", "TokenMatch", "TraceEvent", "Window", "assemble_context", "cite"]
