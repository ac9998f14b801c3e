"""The session tools, defined once for every framework: names, descriptions, argument schemas
(pydantic, so LangChain, LlamaIndex and MCP all derive the same JSON schema) and one dispatcher.

``search`` (query, k, filter), ``search_more`` (), ``read_document`` (id, start): each answers
with text for the model (:meth:`SearchResult.to_text`) and structured data (the hits with their
citations, :meth:`SearchResult.to_dict`). A framework adapter only decides where a run's
session lives (LangChain's agent state, LlamaIndex's workflow Context, an MCP client session)
and turns :class:`~lir_agent.LIRError` into a tool error the model reads.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..errors import InvalidInputError
from .session import SearchSession

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
]}


class ToolAnswer(NamedTuple):
    """What a tool call gives back: text for the model and JSON-serialisable data."""

    text: str
    data: dict[str, Any]


def call_tool(session: SearchSession, name: str, arguments: dict[str, Any]) -> ToolAnswer:
    """Validates ``arguments`` for tool ``name`` and runs it on ``session``. Raises
    InvalidInputError naming the tool or the argument that was wrong (the session unchanged),
    DocumentNotFoundError for an unknown document id."""
    if name not in TOOLS:
        raise InvalidInputError(f"unknown tool {name!r}; the tools are {', '.join(TOOLS)}")
    args = parse_arguments(name, arguments)
    if name == "search":
        result = session.search(args.query, k=args.k, filter=args.filter)
    elif name == "search_more":
        result = session.search_more()
    else:
        result = session.read(args.id, start=args.start)
    return ToolAnswer(result.to_text(), result.to_dict())


def parse_arguments(name: str, arguments: dict[str, Any]) -> BaseModel:
    """The arguments of tool ``name`` checked against its schema, or an InvalidInputError such as
    ``invalid arguments for search: k: Input should be greater than or equal to 1``."""
    try:
        return TOOLS[name].args.model_validate(arguments or {})
    except ValidationError as exc:
        raise InvalidInputError(f"invalid arguments for {name}: {describe_validation_error(exc)}") from exc


def describe_validation_error(error: ValidationError) -> str:
    """Each problem of a pydantic validation error as ``argument.path: message``, joined by "; "."""
    return "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'arguments'}: {e['msg']}" for e in error.errors())
