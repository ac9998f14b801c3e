"""The session tools in real create_agent loops driven by scripted chat models: each run (and each
thread of a checkpointed agent) has its own session in the agent state, pages never repeat,
parallel tool calls keep every update, budgets are reported, bad arguments are tool errors that
leave the session unchanged, and LangChain's standard tool tests pass."""

import asyncio
from typing import Any

import pytest
from langchain.agents import create_agent
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, ToolMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from langchain_core.utils.function_calling import convert_to_openai_tool
from langchain_tests.unit_tests import ToolsUnitTests
from langgraph.checkpoint.memory import InMemorySaver

from langchain_lir import LIRSessionMiddleware, LIRSessionState, LIRSessionToolkit
from lir_agent import Index, InvalidInputError
from lir_agent.agentic.tools import TOOLS

QUERY = "Chaos Progenitus dice game"
FIRST = "hotpotqa_train100-p0"


class ScriptedModel(BaseChatModel):
    """Plays a script of steps, each a list of (tool name, arguments) calls made in parallel. The
    step is chosen by how many AI messages the conversation already holds, so one model can serve
    concurrent runs and the threads of a checkpointed agent; past the script it answers "done"."""

    script: list[list[tuple[str, dict[str, Any]]]]

    @property
    def _llm_type(self) -> str:
        return "scripted"

    def bind_tools(self, tools: Any, **kwargs: Any) -> "ScriptedModel":
        return self

    def _generate(self, messages: list[BaseMessage], stop: Any = None, run_manager: Any = None,
                  **kwargs: Any) -> ChatResult:
        step = sum(isinstance(m, AIMessage) for m in messages)
        calls = self.script[step] if step < len(self.script) else []
        message = AIMessage(content="" if calls else "done", tool_calls=[
            {"name": name, "args": args, "id": f"call-{step}-{i}"} for i, (name, args) in enumerate(calls)])
        return ChatResult(generations=[ChatGeneration(message=message)])


@pytest.fixture(scope="module")
def index(sample_index_path):
    return Index.open(sample_index_path)


def agent_for(toolkit: LIRSessionToolkit, *script: list[tuple[str, dict[str, Any]]], **kwargs: Any):
    return create_agent(ScriptedModel(script=list(script)), middleware=[LIRSessionMiddleware(toolkit)], **kwargs)


def ask(question: str = "Which game was first called Chaos Progenitus?") -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": question}]}


def tool_messages(result: dict[str, Any]) -> list[ToolMessage]:
    return [m for m in result["messages"] if isinstance(m, ToolMessage)]


def hit_ids(message: ToolMessage) -> list[str]:
    assert message.status == "success", message.content
    return [hit["id"] for hit in message.artifact["hits"]]


def ranked(index: Index, query: str, start: int, stop: int) -> list[str]:
    return [hit.id for hit in index.search(query, k=stop)][start:stop]


def test_the_tools_are_the_core_tools(index):
    tools = LIRSessionToolkit(index=index).get_tools()
    assert [(t.name, t.description) for t in tools] == [(s.name, s.description) for s in TOOLS.values()]
    for tool in tools:
        spec = TOOLS[tool.name]
        parameters = convert_to_openai_tool(tool)["function"]["parameters"]
        assert parameters["properties"].keys() == spec.args.model_fields.keys()  # no `runtime`: it is injected
        assert parameters["additionalProperties"] is False
        assert tool.get_input_schema() is spec.args


async def test_two_concurrent_runs_do_not_share_a_session(index):
    toolkit = LIRSessionToolkit(index=index, k=5)
    agent = agent_for(toolkit, [("search", {"query": QUERY})], [("search", {"query": QUERY})])
    results = await asyncio.gather(agent.ainvoke(ask()), agent.ainvoke(ask()))
    for result in results:  # each run: the first page, then the second; nothing of the other run
        first, second = tool_messages(result)
        assert hit_ids(first) == ranked(index, QUERY, 0, 5)
        assert hit_ids(second) == ranked(index, QUERY, 5, 10)
        assert first.content.startswith(f"[1] id={FIRST} score=") and first.artifact["hits"][0]["passage"]
        assert [event["ids"] for event in result["lir_session"]["trace"]] == [hit_ids(first), hit_ids(second)]


def test_one_run_pages_through_a_query_without_repeats(index):
    toolkit = LIRSessionToolkit(index=index, k=5)
    agent = agent_for(toolkit, [("search", {"query": QUERY})], [("read_document", {"id": FIRST, "start": 10})],
                      [("search", {"query": QUERY})], [("search_more", {})])
    result = agent.invoke(ask())
    first, read, second, more = tool_messages(result)
    assert hit_ids(first) == ranked(index, QUERY, 0, 5)
    assert read.status == "success" and read.artifact["start"] == 10
    assert read.content.startswith(f"document {FIRST} characters 10-")
    assert hit_ids(second) == ranked(index, QUERY, 5, 10)  # reading a document does not change the pages
    assert hit_ids(more) == ranked(index, QUERY, 10, 15)
    assert "5 new documents (15 seen in this session)" in more.content
    assert [e.id for e in toolkit.session(result).evidence()] == ranked(index, QUERY, 0, 15)


def test_parallel_tool_calls_in_one_step_keep_every_update(index):
    toolkit = LIRSessionToolkit(index=index, k=3)
    agent = agent_for(toolkit,
                      [("search", {"query": QUERY}), ("search", {"query": QUERY}), ("read_document", {"id": FIRST})],
                      [("search", {"query": QUERY})])
    result = agent.invoke(ask())
    left, right, read, after = tool_messages(result)
    # calls of one step start from the same session, so the same query gets the same page twice ...
    assert hit_ids(left) == hit_ids(right) == ranked(index, QUERY, 0, 3)
    assert read.status == "success"
    # ... and the reducer keeps all three calls: the next step goes on after that page
    assert [event["kind"] for event in result["lir_session"]["trace"]] == ["search", "search", "read", "search"]
    assert hit_ids(after) == ranked(index, QUERY, 3, 6)
    assert after.artifact["budget"]["hops_used"] == 3


def test_threads_of_a_checkpointed_agent_keep_separate_sessions(index):
    toolkit = LIRSessionToolkit(index=index, k=5)
    search = [("search", {"query": QUERY})]
    # one search per invocation (the model answers after it)
    agent = create_agent(ScriptedModel(script=[search, [], search, [], search, []]), tools=toolkit.get_tools(),
                         state_schema=LIRSessionState, checkpointer=InMemorySaver())
    thread_a, thread_b = ({"configurable": {"thread_id": name}} for name in ("a", "b"))

    def last_page(config: dict[str, Any], payload: dict[str, Any] | None = None) -> list[str]:
        return hit_ids(tool_messages(agent.invoke(payload or ask(), config))[-1])

    assert last_page(thread_a) == ranked(index, QUERY, 0, 5)
    assert last_page(thread_b) == ranked(index, QUERY, 0, 5)  # thread b has its own session
    assert last_page(thread_a) == ranked(index, QUERY, 5, 10)  # thread a's persists across invocations
    assert len(agent.get_state(thread_a).values["lir_session"]["trace"]) == 2
    assert len(agent.get_state(thread_b).values["lir_session"]["trace"]) == 1
    # an empty session in the input starts the thread afresh
    assert last_page(thread_a, {**ask(), "lir_session": {}}) == ranked(index, QUERY, 0, 5)
    assert len(agent.get_state(thread_a).values["lir_session"]["trace"]) == 1


def test_budgets_are_reported(index):
    toolkit = LIRSessionToolkit(index=index, k=2, max_hops=2, max_tokens=400)
    agent = agent_for(toolkit, [("search", {"query": QUERY})], [("search", {"query": "a band formed in the 1990s"})],
                      [("search", {"query": "a film director"})])
    first, second, refused = tool_messages(agent.invoke(ask()))
    assert "Budget: 1 of 2 searches left" in first.content and "of 400 tokens left" in first.content
    assert "Budget: 0 of 2 searches left" in second.content
    assert refused.status == "success" and refused.artifact["hits"] == []
    assert "The search budget is spent (2 of 2 searches)" in refused.content
    assert second.artifact["budget"]["tokens_used"] <= 400


def test_bad_arguments_are_tool_errors_naming_the_argument_and_leave_the_session_unchanged(index):
    toolkit = LIRSessionToolkit(index=index, k=5)
    bad_calls = [
        (("search", {"query": QUERY, "k": 0}), "k: Input should be greater than or equal to 1"),
        (("search", {"query": QUERY, "filter": {"title": {"$regex": "Dice"}}}),
         "filter on 'title': unknown operator '$regex'"),
        (("search", {"query": QUERY, "limit": 3}), "limit: Extra inputs are not permitted"),
        (("read_document", {"id": "no-such-doc"}), "no document with id 'no-such-doc'"),
        (("read_document", {"id": FIRST, "start": 100_000}), f"start=100000 is past the end of document '{FIRST}'"),
    ]
    agent = agent_for(toolkit, [("search_more", {})], [("search", {"query": QUERY})], [call for call, _ in bad_calls],
                      [("search", {"query": QUERY})])
    result = agent.invoke(ask())
    early, first, *errors, second = tool_messages(result)
    assert early.status == "error" and "search_more: there is no earlier search" in early.content
    assert len(errors) == len(bad_calls)
    for message, (_, problem) in zip(errors, bad_calls):
        assert message.status == "error" and problem in message.content
    # only the two good searches are in the session, and the second one goes on after the first
    assert [event["ids"] for event in result["lir_session"]["trace"]] == [hit_ids(first), hit_ids(second)]
    assert hit_ids(second) == ranked(index, QUERY, 5, 10)


def test_an_agent_without_the_session_state_fails_loudly(index):
    toolkit = LIRSessionToolkit(index=index)
    agent = create_agent(ScriptedModel(script=[[("search", {"query": QUERY})]]), tools=toolkit.get_tools())
    with pytest.raises(InvalidInputError, match="no 'lir_session' key"):
        agent.invoke(ask())


def test_bad_settings_fail_when_the_toolkit_is_built(index):
    with pytest.raises(ValueError, match="max_hops must be a non-negative integer"):
        LIRSessionToolkit(index=index, max_hops=-1)


class _SessionToolStandard(ToolsUnitTests):
    """LangChain's standard unit tests for one session tool (built by the toolkit)."""

    tool_name = ""
    index_path = None

    @pytest.fixture(autouse=True)
    def _sample_index(self, sample_index_path):
        type(self).index_path = sample_index_path

    @property
    def tool_constructor(self):
        tools = LIRSessionToolkit(index=Index.open(self.index_path)).get_tools()
        return next(tool for tool in tools if tool.name == self.tool_name)


class TestSessionSearchToolStandard(_SessionToolStandard):
    tool_name = "search"

    @property
    def tool_invoke_params_example(self):
        return {"query": "a collectible dice game", "k": 2, "filter": {"title": {"$ne": "nothing"}}}


class TestSessionSearchMoreToolStandard(_SessionToolStandard):
    tool_name = "search_more"


class TestSessionReadDocumentToolStandard(_SessionToolStandard):
    tool_name = "read_document"

    @property
    def tool_invoke_params_example(self):
        return {"id": FIRST, "start": 10}
