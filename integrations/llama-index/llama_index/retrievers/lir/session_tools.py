"""The session tools (``search``, ``search_more``, ``read_document``, ``multi_hop_search``) for
LlamaIndex agents.

Each tool is a FunctionTool whose function takes the running workflow's ``Context``, which a
``FunctionAgent`` / ``AgentWorkflow`` injects, and keeps the run's :class:`SearchSession` in the
Context's store as its JSON state. A run therefore never gets the same document twice, two runs
(two Contexts) share nothing, and a Context serialised with ``ctx.to_dict()`` and restored with
``Context.from_dict`` resumes the session where it was. Names, descriptions, argument schemas,
the content the model reads and the raw output are those of :mod:`lir_agent.agentic.tools`.
"""

# No ``from __future__ import annotations`` here: FunctionTool finds the Context parameter by
# its annotation object, which a string annotation would hide.

import asyncio
import os
from typing import Any
from weakref import WeakKeyDictionary

from llama_index.core.tools import FunctionTool, ToolMetadata, ToolOutput
from llama_index.core.workflow import Context

from lir_agent.agentic.session import SearchSession
from lir_agent.agentic.strategies import Strategy
from lir_agent.sharded import open_index
from lir_agent.text import check_path
from lir_agent.agentic.tools import TOOLS, ToolAnswer, call_tool, resolve_strategy
from lir_agent.errors import LIRError

SESSION_KEY = "lir_session"

# One lock per run's state store (a Context's store is one object for the whole run): the
# read-modify-write of a session is serialised, so parallel tool calls of one step see each
# other's results and none of their updates is lost.
_LOCKS: "WeakKeyDictionary[Any, asyncio.Lock]" = WeakKeyDictionary()


def make_session_tools(index: Any, k: int = 5, max_hops: int | None = None, max_tokens: int | None = None,
                       passage_tokens: int = 200, state_key: str = SESSION_KEY,
                       strategy: Strategy | str | None = None) -> list[FunctionTool]:
    """The ``search``, ``search_more``, ``read_document`` and ``multi_hop_search`` tools over
    ``index`` (an ``Index``, ``ShardedIndex`` or ``RayIndex``, or the path of an index directory,
    opened here once), for a ``FunctionAgent`` or ``AgentWorkflow``.

    ``k``, ``max_hops``, ``max_tokens`` and ``passage_tokens`` are the settings of each run's
    new :class:`~lir_agent.agentic.SearchSession` (checked here: bad ones raise
    InvalidInputError); a run that already holds a session (a resumed Context) keeps its own.
    The session lives in the workflow Context's store under ``state_key`` as JSON
    (``SearchSession.to_state()``). Each tool answers with a ToolOutput whose content is the
    text for the model and whose raw_output is the JSON-serialisable data; bad arguments (or an
    unknown document id) give a ToolOutput with ``is_error=True`` whose content names the
    argument, and leave the stored session as it was.

    ``strategy``: what ``multi_hop_search`` runs, a
    :class:`~lir_agent.agentic.strategies.Strategy` (an LLM-driven one made with your LLM) or the
    name of one, made here to return ``k`` documents (None: the default LLM-free strategy); an
    unknown name raises InvalidInputError here, naming the known ones.
    """
    if isinstance(index, (str, os.PathLike)):
        index = open_index(check_path(str(index), "index"))
    initial = SearchSession(index, k=k, max_hops=max_hops, max_tokens=max_tokens,
                            passage_tokens=passage_tokens).to_state()
    strategy = resolve_strategy(strategy, k)

    def step(state: dict[str, Any], name: str, arguments: dict[str, Any]) -> tuple[ToolAnswer, dict[str, Any]]:
        session = SearchSession.from_json(index, state)
        answer = call_tool(session, name, arguments, strategy)
        return answer, session.to_state()

    def make_tool(name: str) -> FunctionTool:
        async def run(ctx: Context, **arguments: Any) -> ToolOutput:
            async with _LOCKS.setdefault(ctx.store, asyncio.Lock()):
                state = await ctx.store.get(state_key, default=None) or initial
                try:  # the search is torch work, which releases the GIL: keep it off the event loop
                    answer, state = await asyncio.to_thread(step, state, name, arguments)
                except LIRError as exc:
                    return ToolOutput(content=str(exc), tool_name=name, raw_input=arguments, is_error=True,
                                      exception=exc)
                await ctx.store.set(state_key, state)
            return ToolOutput(content=answer.text, tool_name=name, raw_input=arguments, raw_output=answer.data)

        spec = TOOLS[name]
        metadata = ToolMetadata(name=spec.name, description=spec.description, fn_schema=spec.args)
        # run() already answers with the ToolOutput: the callback hands it on as the tool's output.
        return FunctionTool(async_fn=run, metadata=metadata, async_callback=_as_output)

    return [make_tool(name) for name in TOOLS]


async def _as_output(output: ToolOutput) -> ToolOutput:
    return output
