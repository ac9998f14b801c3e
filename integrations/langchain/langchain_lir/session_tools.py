"""Session tools for LangChain agents: ``search``, ``search_more``, ``read_document`` and
``multi_hop_search`` over one index, with the run's :class:`~lir_agent.agentic.SearchSession` kept in the agent's state.

The tools are the core's (:data:`lir_agent.agentic.tools.TOOLS`: same names, descriptions, JSON
schemas, content and data as in every other framework); this module only decides where a run's
session lives. It lives in the graph state under :data:`SESSION_KEY` (``"lir_session"``), as
:meth:`SearchSession.to_state` (a JSON-serialisable dict). Each tool call reads it through the
injected :class:`~langchain.tools.ToolRuntime`, rebuilds the session, runs the tool, and returns a
``Command`` that writes the new state and the ``ToolMessage`` (content: the text for the model;
artifact: the structured data with citations). So two agent runs, or two threads of one
checkpointed agent, never share a seen-set, and a thread's session persists across its
invocations (invoke with ``{"lir_session": {}}`` to start the thread on a fresh session).

Parallel tool calls of one model step all receive the state as it was before that step, so this
module serialises them: the calls of one step (one checkpoint of one graph run, whether the
``ToolNode`` runs them in threads or as coroutines) take turns under a lock, and each starts from
the session its siblings have written so far in this process. So they exclude each other's
documents and the hop and token budgets hold exactly, as in a sequential run. The state key's
reducer (:func:`merge_session_states`) keeps every call's trace events, once, in the order the
calls ran.

Bad arguments (schema, filter, unknown document, offset past the end) come back to the model as
a tool error (``ToolMessage`` with ``status="error"``) naming the argument, and the stored session
is left unchanged.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Mapping
from contextlib import nullcontext
from typing import Annotated, Any, NotRequired

from langchain.agents import AgentState
from langchain.agents.middleware import AgentMiddleware
from langchain.tools import ToolRuntime
from langchain_core.callbacks import CallbackManagerForToolRun
from langchain_core.messages import ToolMessage
from langchain_core.runnables import RunnableConfig
from langchain_core.tools import BaseTool, BaseToolkit, StructuredTool, ToolException
from langgraph.types import Command
from pydantic import BaseModel, ConfigDict, field_validator, model_validator

from lir_agent import InvalidInputError, LIRError, open_index
from lir_agent.agentic.session import SearchSession
from lir_agent.agentic.strategies import Strategy
from lir_agent.agentic.tools import TOOLS, ToolSpec, call_tool, resolve_strategy
from lir_agent.text import check_path

SESSION_KEY = "lir_session"

_AGENT_ONLY = ("the LIR session tools keep their search session in the agent state, so they run inside an agent: "
               "create_agent(model, middleware=[LIRSessionMiddleware(toolkit)]), or create_agent(model, "
               "tools=toolkit.get_tools(), state_schema=LIRSessionState); called on its own, a tool has no "
               "state to keep the session in (use lir_agent.agentic.SearchSession directly)")


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


def _saved_state(state: Mapping[str, Any]) -> dict[str, Any]:
    """The ``lir_session`` value of an agent state; InvalidInputError when the key is missing."""
    if SESSION_KEY not in state:
        raise InvalidInputError(
            f"the agent state has no {SESSION_KEY!r} key, so a search session cannot be kept: build the agent "
            "with create_agent(..., middleware=[LIRSessionMiddleware(toolkit)]) or state_schema=LIRSessionState")
    return state[SESSION_KEY]


def _extends(later: dict[str, Any], earlier: dict[str, Any]) -> bool:
    """Whether session state ``later`` is ``earlier`` (``{}``: no session yet) with more trace
    events, or ``earlier`` itself."""
    if not earlier:
        return True
    trace = earlier["trace"]
    return later["trace"][:len(trace)] == trace


class _Step:
    """The tool calls of one step of one graph run in this process: the lock they take turns
    under, and the session state the last of them wrote (None before the first)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.latest: dict[str, Any] | None = None


# the steps whose lock and latest state are kept, least recently used dropped first: a step needs
# its entry only while its tool calls run
_STEPS_KEPT = 1024

_steps: OrderedDict[tuple[Any, str], _Step] = OrderedDict()
_steps_lock = threading.Lock()


def _step_of(runtime: ToolRuntime) -> _Step | None:
    """The :class:`_Step` of the tool call ``runtime`` describes, or None where the runtime does
    not say which step it is in (the call then starts from the state it received).

    The key is the thread id (None without a checkpointer) and the id of the checkpoint the
    step runs from (``ExecutionInfo.checkpoint_id``: a fresh uuid6 for every step of every run,
    checkpointed or not, in a graph or a subgraph). Only the calls of one step share it: another
    run, another thread, the next step of the same run, or a thread restarted with
    ``{"lir_session": {}}`` (its input starts a new step) have other keys. A step resumed from its
    checkpoint (after an interrupt or a failed sibling) keeps its key, and rightly: the writes of
    the calls that finished are kept and applied with the rerun ones.
    """
    info = runtime.execution_info
    if info is None or not info.checkpoint_id:
        return None
    key = (info.thread_id, info.checkpoint_id)
    with _steps_lock:
        step = _steps.get(key)
        if step is None:
            step = _steps[key] = _Step()
            if len(_steps) > _STEPS_KEPT:
                _steps.popitem(last=False)
        else:
            _steps.move_to_end(key)
    return step


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
    that a LangGraph ``ToolNode`` (``create_agent``) injects, so it runs inside an agent only:
    ``invoke()`` on its own raises InvalidInputError saying so.
    """

    handle_tool_error: bool = True

    def get_input_schema(self, config: Any = None) -> type[BaseModel]:
        """The core pydantic model of this tool's arguments."""
        return TOOLS[self.name].args

    def _run(self, *args: Any, config: RunnableConfig, run_manager: CallbackManagerForToolRun | None = None,
             **kwargs: Any) -> Any:
        # a tool invoked outside an agent gets no ToolRuntime: say so, rather than a TypeError
        if not isinstance(kwargs.get("runtime"), ToolRuntime):
            raise InvalidInputError(_AGENT_ONLY)
        return super()._run(*args, config=config, run_manager=run_manager, **kwargs)


class LIRSessionToolkit(BaseToolkit):
    """The session tools over one index: ``get_tools()`` returns ``search``, ``search_more``,
    ``read_document`` and ``multi_hop_search``.

    ``index``: any lir_agent index (``Index``, ``ShardedIndex``, ``RayIndex``), or the path of
    one (``str`` or ``os.PathLike``: opened once, here, with :func:`lir_agent.open_index`); ``k``,
    ``max_hops``, ``max_tokens``, ``passage_tokens``: the settings of each new session (see
    :class:`~lir_agent.agentic.SearchSession`; a session already in the state keeps its own).
    ``strategy``: what ``multi_hop_search`` runs, a :class:`~lir_agent.agentic.strategies.Strategy`
    (an LLM-driven one made with your model) or the name of one, made here to return ``k``
    documents (None: the default LLM-free strategy); an unknown name fails here (a ValueError
    naming the known ones). The agent's state must have the ``lir_session`` key: use
    ``create_agent(model, middleware=[LIRSessionMiddleware(toolkit)])``, or
    ``create_agent(model, tools=toolkit.get_tools(), state_schema=LIRSessionState)``.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    index: Any
    k: int = 5
    max_hops: int | None = None
    max_tokens: int | None = None
    passage_tokens: int = 200
    strategy: Strategy | str | None = None

    @field_validator("index", mode="before")
    @classmethod
    def _open_path(cls, index: Any) -> Any:
        """An index path is opened once, when the toolkit is built."""
        return open_index(check_path(index, "index")) if isinstance(index, (str, os.PathLike)) else index

    @model_validator(mode="after")
    def _check_settings(self) -> "LIRSessionToolkit":
        self.new_session()  # bad settings raise InvalidInputError here, not at the first tool call
        self.strategy = resolve_strategy(self.strategy, self.k)
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
        return self._restore(_saved_state(state))

    def _restore(self, saved: dict[str, Any]) -> SearchSession:
        return SearchSession.from_json(self.index, saved) if saved else self.new_session()

    def get_tools(self) -> list[BaseTool]:
        """``search``, ``search_more``, ``read_document`` and ``multi_hop_search``, as
        :class:`LIRSessionTool`."""
        return [self._tool(spec) for spec in TOOLS.values()]

    def _tool(self, spec: ToolSpec) -> LIRSessionTool:
        def run(runtime: ToolRuntime, **arguments: Any) -> Command:
            received = _saved_state(runtime.state)
            step = _step_of(runtime)
            with step.lock if step is not None else nullcontext():
                # the calls of this step that ran before this one left a session that extends the received one
                latest = step.latest if step is not None else None
                session = self._restore(latest if latest is not None and _extends(latest, received) else received)
                try:
                    answer = call_tool(session, spec.name, arguments, self.strategy)
                except LIRError as exc:  # the model reads it; the state is not updated
                    raise ToolException(str(exc)) from exc
                state = session.to_state()
                if step is not None:
                    step.latest = state
            message = ToolMessage(answer.text, artifact=answer.data, name=spec.name, tool_call_id=runtime.tool_call_id)
            return Command(update={SESSION_KEY: state, "messages": [message]})

        return LIRSessionTool(name=spec.name, description=spec.description,
                              args_schema=spec.args.model_json_schema(), func=run)


class LIRSessionMiddleware(AgentMiddleware[LIRSessionState]):
    """Gives ``create_agent`` the toolkit's tools and the ``lir_session`` state key:
    ``create_agent(model, middleware=[LIRSessionMiddleware(toolkit)])``."""

    state_schema = LIRSessionState

    def __init__(self, toolkit: LIRSessionToolkit):
        super().__init__()
        self.tools = toolkit.get_tools()
