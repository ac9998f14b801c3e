"""The session tools in real create_agent loops driven by scripted chat models: each run (and each
thread of a checkpointed agent) has its own session in the agent state, pages never repeat,
parallel tool calls of one step take turns (disjoint pages, budgets that hold, every update kept
once), budgets are reported, bad arguments are tool errors that leave the session unchanged, the
tools refuse to run outside an agent, and LangChain's standard tool tests pass."""

import asyncio
import uuid
from typing import Any

import pytest
from langchain.agents import create_agent
from langchain.tools import ToolRuntime
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, ToolMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from langchain_core.utils.function_calling import convert_to_openai_tool
from langchain_tests.unit_tests import ToolsUnitTests
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import START, StateGraph
from langgraph.prebuilt import ToolNode, tools_condition
from langgraph.runtime import ExecutionInfo

from conftest import CHAIN_QUESTION, check_multi_hop_answer
from langchain_lir import LIRSessionMiddleware, LIRSessionState, LIRSessionToolkit
from lir_agent import Index, InvalidInputError, NotAnIndexError
from lir_agent.agentic import SearchSession
from lir_agent.agentic.strategies import Condensed
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


def test_parallel_searches_of_one_query_get_disjoint_pages(index):
    toolkit = LIRSessionToolkit(index=index, k=3)
    agent = agent_for(toolkit,
                      [("search", {"query": QUERY}), ("search", {"query": QUERY}), ("read_document", {"id": FIRST})],
                      [("search", {"query": QUERY})])
    result = agent.invoke(ask())
    left, right, read, after = tool_messages(result)
    # the calls of one step take turns, each seeing what the ones before it returned: two pages
    assert sorted([hit_ids(left), hit_ids(right)]) == sorted([ranked(index, QUERY, 0, 3), ranked(index, QUERY, 3, 6)])
    assert read.status == "success"
    # the reducer keeps each call once, in the order they ran; the next step goes on after both pages
    trace = result["lir_session"]["trace"]
    assert sorted(event["kind"] for event in trace[:3]) == ["read", "search", "search"]
    assert [event["ids"] for event in trace if event["kind"] == "search"][:2] == [ranked(index, QUERY, 0, 3),
                                                                                  ranked(index, QUERY, 3, 6)]
    assert trace[3]["kind"] == "search" and len(trace) == 4
    assert hit_ids(after) == ranked(index, QUERY, 6, 9)
    assert after.artifact["budget"]["hops_used"] == 3


@pytest.mark.parametrize("mode", ["invoke", "ainvoke"])
def test_parallel_tool_calls_never_exceed_the_budgets(index, mode):
    toolkit = LIRSessionToolkit(index=index, k=3, max_hops=1, max_tokens=100)
    agent = agent_for(toolkit, [("search", {"query": QUERY}), ("search", {"query": "dice game"}),
                                ("search", {"query": QUERY})])
    result = agent.invoke(ask()) if mode == "invoke" else asyncio.run(agent.ainvoke(ask()))
    messages = tool_messages(result)
    assert len(messages) == 3
    for message in messages:  # what each call reported, in whatever order they ran
        budget = message.artifact["budget"]
        assert budget["hops_used"] <= 1 and budget["tokens_used"] <= 100
    # one search ran; the two after it were told the budget is spent, and no id came back twice
    found = [hit_ids(message) for message in messages]
    assert sorted(map(len, found)) == [0, 0, 3]
    assert sum("The search budget is spent (1 of 1 searches)" in message.content for message in messages) == 2
    ids = [doc_id for page in found for doc_id in page]
    assert len(ids) == len(set(ids))
    budget = toolkit.session(result).budget
    assert budget.hops_used == 1 and budget.tokens_used <= 100
    assert [event["ids"] for event in result["lir_session"]["trace"]] == [page for page in found if page]


async def test_concurrent_runs_with_parallel_calls_keep_their_own_sessions(index):
    toolkit = LIRSessionToolkit(index=index, k=3)
    agent = agent_for(toolkit, [("search", {"query": QUERY}), ("search", {"query": QUERY})],
                      [("search", {"query": QUERY})])
    results = await asyncio.gather(*(agent.ainvoke(ask()) for _ in range(3)))
    for result in results:  # each run pages through the query on its own: nothing of the other runs
        left, right, after = tool_messages(result)
        assert sorted([hit_ids(left), hit_ids(right)]) == sorted([ranked(index, QUERY, 0, 3),
                                                                  ranked(index, QUERY, 3, 6)])
        assert hit_ids(after) == ranked(index, QUERY, 6, 9)
        assert len(result["lir_session"]["trace"]) == 3


def test_a_graph_of_your_own_with_a_tool_node_serialises_parallel_calls(index):
    # a ToolNode in a graph of your own runs one step's calls in one task, on a thread pool
    model = ScriptedModel(script=[[("search", {"query": QUERY})] * 3])
    graph = StateGraph(LIRSessionState)
    graph.add_node("model", lambda state: {"messages": [model.invoke(state["messages"])]})
    graph.add_node("tools", ToolNode(LIRSessionToolkit(index=index, k=3).get_tools()))
    graph.add_edge(START, "model")
    graph.add_conditional_edges("model", tools_condition)
    graph.add_edge("tools", "model")
    result = graph.compile().invoke(ask())
    pages = [hit_ids(message) for message in tool_messages(result)]
    assert sorted(pages) == sorted(ranked(index, QUERY, start, start + 3) for start in (0, 3, 6))
    assert [event["ids"] for event in result["lir_session"]["trace"]] == [ranked(index, QUERY, start, start + 3)
                                                                          for start in (0, 3, 6)]


def test_calls_of_one_step_go_on_from_each_other_unless_given_another_state(index):
    # tool calls with one step's key (the ToolRuntime a ToolNode would inject, built by hand)
    search = next(tool for tool in LIRSessionToolkit(index=index, k=3).get_tools() if tool.name == "search")
    step = ExecutionInfo(checkpoint_id=str(uuid.uuid4()), checkpoint_ns="tools:task", task_id="task")

    def call(saved: dict[str, Any]) -> list[list[str]]:
        runtime = ToolRuntime(state={"lir_session": saved}, context=None, config={}, stream_writer=lambda _: None,
                              tool_call_id="call", store=None, execution_info=step)
        written = search.invoke({"query": QUERY, "runtime": runtime}).update["lir_session"]
        return [event["ids"] for event in written["trace"]]

    pages = [ranked(index, QUERY, start, start + 3) for start in range(0, 15, 3)]
    assert call({}) == pages[:1]
    assert call({}) == pages[:2]  # a sibling given the same state goes on after the first call's page
    # a state that the calls in this process did not lead to (the step met again elsewhere) is
    # taken as given, and the step's later calls go on from what that call wrote
    newer = SearchSession(index, k=3)
    for _ in range(3):
        newer.search(QUERY)
    assert call(newer.to_state()) == pages[:4]
    assert call({}) == pages[:5]


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


def test_a_thread_restarted_with_parallel_calls_starts_afresh(index):
    toolkit = LIRSessionToolkit(index=index, k=3)
    both = [("search", {"query": QUERY}), ("search", {"query": QUERY})]
    # two parallel searches per invocation (the model answers after them)
    agent = create_agent(ScriptedModel(script=[both, [], both, []]), middleware=[LIRSessionMiddleware(toolkit)],
                         checkpointer=InMemorySaver())
    thread = {"configurable": {"thread_id": "restarted"}}
    two_pages = sorted([ranked(index, QUERY, 0, 3), ranked(index, QUERY, 3, 6)])
    for payload in (ask(), {**ask(), "lir_session": {}}):  # the second invocation restarts the thread's session
        pages = [hit_ids(message) for message in tool_messages(agent.invoke(payload, thread))[-2:]]
        assert sorted(pages) == two_pages
        assert len(agent.get_state(thread).values["lir_session"]["trace"]) == 2


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


def test_multi_hop_search_gives_the_evidence_and_hop_trace_and_repeats_nothing(chain_index_path):
    # keep=1: a later hop's documents rank from the second place on, so "journal" would come back
    toolkit = LIRSessionToolkit(index=Index.open(chain_index_path), k=3, strategy=Condensed(k=3, keep=1))
    agent = agent_for(toolkit, [("search", {"query": "Who publishes the Journal of Widgetry?", "k": 1})],
                      [("multi_hop_search", {"question": CHAIN_QUESTION})], [("multi_hop_search", {})],
                      [("multi_hop_search", {"question": ""})])
    result = agent.invoke(ask(CHAIN_QUESTION))
    search, multi_hop, *errors = tool_messages(result)
    assert hit_ids(search) == ["journal"] and multi_hop.status == "success"
    found = check_multi_hop_answer(multi_hop.content, multi_hop.artifact)
    assert "journal" not in found and "society" in found  # not handed out twice in one run
    for error in errors:
        assert error.status == "error" and "invalid arguments for multi_hop_search: question: " in error.content
    # the session holds the search and the strategy's hops, nothing of the refused calls
    assert [event["ids"] for event in result["lir_session"]["trace"]] == [["journal"]] + [
        hop["ids"] for hop in multi_hop.artifact["hops"]]


def test_multi_hop_search_strategy_by_name(chain_index_path):
    toolkit = LIRSessionToolkit(index=str(chain_index_path), k=2, strategy="flipr")
    (message,) = tool_messages(agent_for(toolkit, [("multi_hop_search", {"question": CHAIN_QUESTION})]).invoke(ask()))
    assert message.artifact["strategy"] == "flipr"
    assert set(check_multi_hop_answer(message.content, message.artifact)) == {"journal", "society"}
    with pytest.raises(ValueError, match="unknown strategy 'nope'; known: default, "):
        LIRSessionToolkit(index=toolkit.index, strategy="nope")


def test_an_agent_without_the_session_state_fails_loudly(index):
    toolkit = LIRSessionToolkit(index=index)
    agent = create_agent(ScriptedModel(script=[[("search", {"query": QUERY})]]), tools=toolkit.get_tools())
    with pytest.raises(InvalidInputError, match="no 'lir_session' key"):
        agent.invoke(ask())


def test_bad_settings_fail_when_the_toolkit_is_built(index):
    with pytest.raises(ValueError, match="max_hops must be a non-negative integer"):
        LIRSessionToolkit(index=index, max_hops=-1)


@pytest.mark.parametrize("as_str", [True, False])
def test_the_toolkit_opens_an_index_path_once(index, sample_index_path, as_str):
    toolkit = LIRSessionToolkit(index=str(sample_index_path) if as_str else sample_index_path, k=5)
    assert isinstance(toolkit.index, Index) and toolkit.index.path == index.path
    opened = toolkit.index
    result = agent_for(toolkit, [("search", {"query": QUERY})], [("search_more", {})]).invoke(ask())
    first, more = tool_messages(result)
    assert hit_ids(first) == ranked(index, QUERY, 0, 5) and hit_ids(more) == ranked(index, QUERY, 5, 10)
    assert toolkit.index is opened


def test_a_path_that_holds_no_index_fails_when_the_toolkit_is_built(tmp_path):
    with pytest.raises(NotAnIndexError):
        LIRSessionToolkit(index=str(tmp_path))


@pytest.mark.parametrize("name, arguments", [("search", {"query": QUERY}), ("search_more", {}),
                                             ("read_document", {"id": FIRST}),
                                             ("multi_hop_search", {"question": QUERY})])
def test_a_tool_invoked_outside_an_agent_says_where_it_runs(index, name, arguments):
    tool = next(tool for tool in LIRSessionToolkit(index=index).get_tools() if tool.name == name)
    for call in (lambda: tool.invoke(arguments), lambda: asyncio.run(tool.ainvoke(arguments))):
        with pytest.raises(InvalidInputError, match=r"run inside an agent: create_agent\(model, "
                                                    r"middleware=\[LIRSessionMiddleware\(toolkit\)\]\).*"
                                                    r"state_schema=LIRSessionState"):
            call()


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


class TestSessionMultiHopSearchToolStandard(_SessionToolStandard):
    tool_name = "multi_hop_search"

    @property
    def tool_invoke_params_example(self):
        return {"question": "Which game was first called Chaos Progenitus?"}
