"""Session tools for LangChain agents: ``search``, ``search_more`` and ``read_document`` over one
index, with the run's :class:`~lir_agent.agentic.SearchSession` kept in the agent's state.

The tools are the core's (:data:`lir_agent.agentic.tools.TOOLS`: same names, descriptions, JSON
schemas, content and data as in every other framework); this module only decides where a run's
session lives. It lives in the graph state under :data:`SESSION_KEY` (``"lir_session"``), as
:meth:`SearchSession.to_state` (a JSON-serialisable dict). Each tool call reads it through the
injected :class:`~langchain.tools.ToolRuntime`, rebuilds the session, runs the tool, and returns a
``Command`` that writes the new state and the ``ToolMessage`` (content: the text for the model;
artifact: the structured data with citations). So two agent runs, or two threads of one
checkpointed agent, never share a seen-set, and a thread's session persists across its
invocations (invoke with ``{"lir_session": {}}`` to start the thread on a fresh session).

Parallel tool calls of one model step all start from the session as it was before that step:
they do not exclude each other's documents, and together they may pass the hop or token budget
by the calls of that step. No update is lost: the state key's reducer
(:func:`merge_session_states`) appends each call's new trace events to the stored trace, so the
next step's calls see every document returned so far.

Bad arguments (schema, filter, unknown document, offset past the end) come back to the model as
a tool error (``ToolMessage`` with ``status="error"``) naming the argument, and the stored session
is left unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, NotRequired

from langchain.agents import AgentState
from langchain.agents.middleware import AgentMiddleware
from langchain.tools import ToolRuntime
from langchain_core.messages import ToolMessage
from langchain_core.tools import BaseTool, BaseToolkit, StructuredTool, ToolException
from langgraph.types import Command
from pydantic import BaseModel, ConfigDict, model_validator

from lir_agent import InvalidInputError, LIRError
from lir_agent.agentic.session import SearchSession
from lir_agent.agentic.tools import TOOLS, ToolSpec, call_tool

SESSION_KEY = "lir_session"


def merge_session_states(current: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """The reducer of the ``lir_session`` state key (``{}``: no session yet).

    ``update`` is a session state (:meth:`SearchSession.to_state`) that a tool call derived from
    some earlier value of the key; the events of its trace after the part it shares with
    ``current`` are appended to ``current``'s trace. A call made after ``current`` therefore
    replaces it, and calls made in parallel from the same value all keep their events. ``{}``
    clears the session (the next tool call starts a new one).
    """
    if not update or not current:
        return update
    stored, incoming = current["trace"], update["trace"]
    shared = 0
    while shared < min(len(stored), len(incoming)) and stored[shared] == incoming[shared]:
        shared += 1
    return {**update, "trace": stored + incoming[shared:]}


class LIRSessionState(AgentState):
    """Agent state with the run's search session (for ``create_agent(state_schema=...)`` or a
    graph of your own; :class:`LIRSessionMiddleware` adds it for you)."""

    # the channel starts as {} (the reducer's type, instantiated), so the key is always present
    lir_session: NotRequired[Annotated[dict[str, Any], merge_session_states]]


class LIRSessionTool(StructuredTool):
    """One session tool of a :class:`LIRSessionToolkit` (built by its ``get_tools()``).

    The model sees the core tool's JSON schema as is (the tool's ``args_schema``), and
    ``get_input_schema()`` is the core's pydantic model of those arguments; the arguments are
    validated once, by :func:`lir_agent.agentic.tools.call_tool`. It needs the ``ToolRuntime``
    that a LangGraph ``ToolNode`` (``create_agent``) injects, so it runs inside an agent only.
    """

    handle_tool_error: bool = True

    def get_input_schema(self, config: Any = None) -> type[BaseModel]:
        """The core pydantic model of this tool's arguments."""
        return TOOLS[self.name].args


class LIRSessionToolkit(BaseToolkit):
    """The session tools over one index: ``get_tools()`` returns ``search``, ``search_more`` and
    ``read_document``.

    ``index``: any lir_agent index (``Index``, ``ShardedIndex``, ``RayIndex``); ``k``,
    ``max_hops``, ``max_tokens``, ``passage_tokens``: the settings of each new session (see
    :class:`~lir_agent.agentic.SearchSession`; a session already in the state keeps its own).
    The agent's state must have the ``lir_session`` key: use
    ``create_agent(model, middleware=[LIRSessionMiddleware(toolkit)])``, or
    ``create_agent(model, tools=toolkit.get_tools(), state_schema=LIRSessionState)``.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    index: Any
    k: int = 5
    max_hops: int | None = None
    max_tokens: int | None = None
    passage_tokens: int = 200

    @model_validator(mode="after")
    def _check_settings(self) -> "LIRSessionToolkit":
        self.new_session()  # bad settings raise InvalidInputError here, not at the first tool call
        return self

    def new_session(self) -> SearchSession:
        """A fresh session with this toolkit's settings."""
        return SearchSession(self.index, k=self.k, max_hops=self.max_hops, max_tokens=self.max_tokens,
                             passage_tokens=self.passage_tokens)

    def session(self, state: Mapping[str, Any]) -> SearchSession:
        """The session held in an agent state (a run's result, or ``agent.get_state(config).values``),
        or a fresh one where it holds none yet: e.g. ``toolkit.session(result).evidence()``.
        InvalidInputError when the state has no ``lir_session`` key (the agent was built without
        :class:`LIRSessionMiddleware` or :class:`LIRSessionState`: its sessions would be lost)."""
        if SESSION_KEY not in state:
            raise InvalidInputError(
                f"the agent state has no {SESSION_KEY!r} key, so a search session cannot be kept: build the agent "
                "with create_agent(..., middleware=[LIRSessionMiddleware(toolkit)]) or state_schema=LIRSessionState")
        saved = state[SESSION_KEY]
        return SearchSession.from_json(self.index, saved) if saved else self.new_session()

    def get_tools(self) -> list[BaseTool]:
        """``search``, ``search_more`` and ``read_document``, as :class:`LIRSessionTool`."""
        return [self._tool(spec) for spec in TOOLS.values()]

    def _tool(self, spec: ToolSpec) -> LIRSessionTool:
        def run(runtime: ToolRuntime, **arguments: Any) -> Command:
            session = self.session(runtime.state)
            try:
                answer = call_tool(session, spec.name, arguments)
            except LIRError as exc:  # the model reads it; the state is not updated
                raise ToolException(str(exc)) from exc
            message = ToolMessage(answer.text, artifact=answer.data, name=spec.name, tool_call_id=runtime.tool_call_id)
            return Command(update={SESSION_KEY: session.to_state(), "messages": [message]})

        return LIRSessionTool(name=spec.name, description=spec.description,
                              args_schema=spec.args.model_json_schema(), func=run)


class LIRSessionMiddleware(AgentMiddleware[LIRSessionState]):
    """Gives ``create_agent`` the toolkit's tools and the ``lir_session`` state key:
    ``create_agent(model, middleware=[LIRSessionMiddleware(toolkit)])``."""

    state_schema = LIRSessionState

    def __init__(self, toolkit: LIRSessionToolkit):
        super().__init__()
        self.tools = toolkit.get_tools()
