"""The session tools, defined once for every framework: names, descriptions, argument schemas
(pydantic, so LangChain, LlamaIndex and MCP all derive the same JSON schema) and one dispatcher.

``search`` (query, k, filter), ``search_more`` (), ``read_document`` (id, start): each answers
with text for the model (:meth:`SearchResult.to_text`) and structured data (the hits with their
citations, :meth:`SearchResult.to_dict`). ``multi_hop_search`` (question) runs a multi-hop
strategy (:mod:`lir_agent.agentic.strategies`) on the session: its text is the evidence, the hop
trace and why it stopped (:meth:`MultiHopResult.to_text`), then the budget left; its data
:meth:`MultiHopResult.to_dict`. The strategy is chosen when the tools are made
(:func:`resolve_strategy`), and the adapters pass it to :func:`call_tool`. A framework adapter only
decides where a run's session lives (LangChain's agent state, LlamaIndex's workflow Context, an
MCP client session) and turns :class:`~lir_agent.LIRError` into a tool error the model reads.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..errors import InvalidInputError, describe_validation_error
from .session import SearchSession
from .strategies import Strategy, make_strategy

MAX_TOOL_K = 50  # hits one tool call may ask for


class SearchArgs(BaseModel):
    """Arguments of ``search``."""

    model_config = ConfigDict(extra="forbid")

    query: str = Field(description="What to look for, in natural language.")
    k: int | None = Field(default=None, ge=1, le=MAX_TOOL_K,
                          description="How many documents to return (default: the session's).")
    filter: dict[str, Any] | None = Field(
        default=None,
        description='Optional metadata filter, e.g. {"year": {"$gte": 2020}} or {"source": {"$in": ["a", "b"]}}; '
                    "operators: $eq $ne $in $nin $gt $gte $lt $lte $and $or.")


class SearchMoreArgs(BaseModel):
    """``search_more`` takes no arguments."""

    model_config = ConfigDict(extra="forbid")


class ReadDocumentArgs(BaseModel):
    """Arguments of ``read_document``."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(description="The id of a document, as a search result shows it.")
    start: int = Field(default=0, ge=0, description="Character offset to start reading at (a search result's "
                                                    "chars=START-END, or the offset a previous read gave).")


class MultiHopSearchArgs(BaseModel):
    """Arguments of ``multi_hop_search``."""

    model_config = ConfigDict(extra="forbid")

    question: str = Field(min_length=1, description="The whole question, in natural language (not keywords): "
                                                    "later searches are built from it and what earlier ones found.")


class ToolSpec(NamedTuple):
    name: str
    description: str
    args: type[BaseModel]


TOOLS: dict[str, ToolSpec] = {spec.name: spec for spec in [
    ToolSpec("search", "Search the document collection by meaning (late-interaction MaxSim). Returns numbered "
                       "passages, each with its document id, score, character span and the words that matched, "
                       "then how many documents are new and what budget is left. Documents already returned in "
                       "this run are not repeated: rephrase or search for a different aspect to find more.",
             SearchArgs),
    ToolSpec("search_more", "The next page of results for the last search (documents not returned yet).",
             SearchMoreArgs),
    ToolSpec("read_document", "Read a document's text from a character offset, one window at a time; the answer "
                              "says where the next window starts.", ReadDocumentArgs),
    ToolSpec("multi_hop_search", "Search for the evidence a question needs when its answer takes several facts "
                                 "that build on each other (e.g. 'who founded the company that makes X?'). Runs "
                                 "several searches, each later one built from the question and what the earlier "
                                 "ones found, and returns the distinct documents found, as numbered passages with "
                                 "ids and character spans, then one line per search (the hop trace), why it "
                                 "stopped, and what budget is left. Documents already returned in this run are "
                                 "not repeated.", MultiHopSearchArgs),
]}


class ToolAnswer(NamedTuple):
    """What a tool call gives back: text for the model and JSON-serialisable data."""

    text: str
    data: dict[str, Any]


def call_tool(session: SearchSession, name: str, arguments: dict[str, Any],
              strategy: Strategy | str | None = None) -> ToolAnswer:
    """Validates ``arguments`` for tool ``name`` and runs it on ``session``; ``multi_hop_search``
    runs ``strategy`` (see :func:`resolve_strategy`; None: the default strategy returning the
    session's ``k`` documents). Raises InvalidInputError naming the tool or the argument that was
    wrong (the session unchanged) or an unknown strategy, DocumentNotFoundError for an unknown
    document id; when a strategy raises (a model's server failing mid-run), its searches are
    taken back from the session (nothing counts as handed out) and the error propagates."""
    if name not in TOOLS:
        raise InvalidInputError(f"unknown tool {name!r}; the tools are {', '.join(TOOLS)}")
    args = parse_arguments(name, arguments)
    if name == "multi_hop_search":
        trace = list(session.trace)
        try:
            found = resolve_strategy(strategy, session.k).run(args.question, session)
        except BaseException:  # e.g. the model's server failed mid-run: hand nothing out, charge nothing
            session.trace = trace
            raise
        return ToolAnswer(f"{found.to_text()}\n{session.budget.describe()}", found.to_dict())
    if name == "search":
        result = session.search(args.query, k=args.k, filter=args.filter)
    elif name == "search_more":
        result = session.search_more()
    else:
        result = session.read(args.id, start=args.start)
    return ToolAnswer(result.to_text(), result.to_dict())


def resolve_strategy(strategy: Strategy | str | None, k: int) -> Strategy:
    """The strategy ``multi_hop_search`` runs: ``strategy`` itself when it is a Strategy, else
    the one it names (None: "default") made with :func:`~lir_agent.agentic.strategies.make_strategy`
    to return ``k`` documents. The adapters call it when they make the tools, so that a wrong
    choice fails there: InvalidInputError naming the known strategies for an unknown name (or
    saying that a strategy needs a model: pass an instance made with one)."""
    if isinstance(strategy, Strategy):
        return strategy
    if strategy is None or isinstance(strategy, str):
        return make_strategy("default" if strategy is None else strategy, k=k)
    raise InvalidInputError(f"strategy: expected a Strategy or the name of one, got {type(strategy).__name__}")


def parse_arguments(name: str, arguments: dict[str, Any]) -> BaseModel:
    """The arguments of tool ``name`` checked against its schema, or an InvalidInputError such as
    ``invalid arguments for search: k: Input should be greater than or equal to 1``."""
    try:
        return TOOLS[name].args.model_validate(arguments or {})
    except ValidationError as exc:
        raise InvalidInputError(f"invalid arguments for {name}: {describe_validation_error(exc)}") from exc
