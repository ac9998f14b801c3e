"""The agent layer: search sessions (deduplication across hops, budgets, novelty, traces) and
citations from the MaxSim alignment, over any lir_agent index. The engine knows nothing of it:
this package uses the indexes' public API only (``search`` with ``exclude_ids``, ``get``,
``encoder``)."""

from .citations import Citation, Highlight, TokenMatch, cite
from .session import Budget, Evidence, ReadResult, SearchResult, SearchSession, SessionHit, TraceEvent

__all__ = ["Budget", "Citation", "Evidence", "Highlight", "ReadResult", "SearchResult", "SearchSession",
           "SessionHit", "TokenMatch", "TraceEvent", "cite"]
