"""The session tools in LlamaIndex agents: a FunctionAgent (and an AgentWorkflow) driven by a
scripted function-calling LLM through the real tool loop, the session kept in the workflow Context."""

import asyncio
import itertools
import json
from typing import Any, Sequence

import pytest
from llama_index.core.agent.workflow import AgentWorkflow, FunctionAgent
from llama_index.core.base.llms.types import ChatMessage, MessageRole, ToolCallBlock
from llama_index.core.llms.mock import MockFunctionCallingLLM
from llama_index.core.workflow import Context

from llama_index.retrievers.lir import SESSION_KEY, make_session_tools
from lir_agent import NotAnIndexError
from conftest import CHAIN_QUESTION, check_multi_hop_answer, count_loop_ticks
from lir_agent import Index, InvalidInputError
from lir_agent.agentic import SearchSession
from lir_agent.agentic.strategies import Condensed
from lir_agent.agentic.tools import TOOLS, call_tool

QUERY = "Chaos Progenitus"
_call_ids = itertools.count()
# LlamaIndex leaves the chat memory out of ctx.to_dict() and warns so; the session is in it
SKIPS_MEMORY = pytest.mark.filterwarnings("ignore:Skipping serialization of known unserializable key")


def scripted_llm(*turns: list[tuple[str, dict[str, Any]]] | str) -> MockFunctionCallingLLM:
    """A function-calling LLM that plays ``turns`` in order, one per agent step: a list of
    (tool name, arguments) is one step's tool calls (run in parallel), a string the final answer."""
    remaining = iter(turns)

    def respond(messages: Sequence[ChatMessage], **kwargs: Any) -> ChatMessage:
        turn = next(remaining)
        if isinstance(turn, str):
            return ChatMessage(role=MessageRole.ASSISTANT, content=turn)
        calls = [ToolCallBlock(tool_call_id=f"call-{next(_call_ids)}", tool_name=name, tool_kwargs=arguments)
                 for name, arguments in turn]
        return ChatMessage(role=MessageRole.ASSISTANT, blocks=calls)

    return MockFunctionCallingLLM(response_generator=respond)


@pytest.fixture(scope="module")
def index(sample_index_path, encoder):
    return Index.open(sample_index_path, encoder=encoder)  # sessions only read: the shared index stays as it is


@pytest.fixture(scope="module")
def ranking(index) -> list[str]:
    """The index's own best 9 documents for QUERY."""
    return [hit.id for hit in index.search(QUERY, k=9)]


def make_agent(index, *turns, **settings) -> FunctionAgent:
    return FunctionAgent(tools=make_session_tools(index, **settings), llm=scripted_llm(*turns),
                         system_prompt="Answer from the document collection.")


async def run(agent, ctx: Context):
    """Runs ``agent`` in ``ctx``; returns (its final output, the session state stored in ``ctx``)."""
    output = await agent.run(user_msg="Which game was first called Chaos Progenitus?", ctx=ctx)
    return output, await ctx.store.get(SESSION_KEY, default=None)


def hit_ids(call) -> list[str]:
    return [hit["id"] for hit in call.tool_output.raw_output["hits"]]


def test_tools_are_the_shared_definitions(index):
    tools = make_session_tools(index)
    assert [tool.metadata.name for tool in tools] == list(TOOLS)
    for tool in tools:
        spec = TOOLS[tool.metadata.name]
        assert tool.metadata.description == spec.description and tool.metadata.fn_schema is spec.args
        assert tool.requires_context  # the agent hands each call its run's Context
    assert tools[0].metadata.get_parameters_dict()["required"] == ["query"]


def test_bad_settings_fail_when_the_tools_are_made(index):
    with pytest.raises(ValueError, match="passage_tokens"):
        make_session_tools(index, passage_tokens=1)
    with pytest.raises(NotAnIndexError, match="not a lir_agent index"):
        make_session_tools("no/such/index")


async def test_an_index_path_is_opened_once(sample_index_path):
    tools = make_session_tools(str(sample_index_path), k=2)
    agent = FunctionAgent(tools=tools, llm=scripted_llm([("search", {"query": QUERY})], "done"), timeout=120)
    ctx = Context(agent)
    await agent.run(user_msg=QUERY, ctx=ctx)
    state = await ctx.store.get(SESSION_KEY)
    assert len(state["trace"]) == 1 and len(state["trace"][0]["ids"]) == 2


async def test_agent_pages_without_repeats_and_reads(index, ranking):
    turns = [[("search", {"query": QUERY, "k": 3})], [("search", {"query": QUERY, "k": 3})],
             [("search_more", {})], [("read_document", {"id": ranking[0]})]]
    agent = make_agent(index, *turns, "Demon Dice.")
    output, state = await run(agent, Context(agent))

    assert output.response.content == "Demon Dice."
    searches, read = output.tool_calls[:3], output.tool_calls[3]
    assert not any(call.tool_output.is_error for call in output.tool_calls)
    assert [hit_ids(call) for call in searches] == [ranking[0:3], ranking[3:6], ranking[6:9]]
    text = index.get(ranking[0]).text
    assert read.tool_output.raw_output["id"] == ranking[0] and text.startswith(read.tool_output.raw_output["text"])
    assert read.tool_output.content.startswith(f"document {ranking[0]} characters 0-")

    # the stored state is the session; the model read exactly what the core's tools answer
    assert SearchSession.from_json(index, state).seen == set(ranking)
    replay = SearchSession(index)
    for call, (name, arguments) in zip(output.tool_calls, (t[0] for t in turns)):
        assert call.tool_output.content == call_tool(replay, name, arguments).text
        assert call.tool_output.raw_input == arguments
    json.dumps([call.tool_output.raw_output for call in output.tool_calls])  # JSON all through


async def test_two_contexts_do_not_share_a_session(index, ranking):
    agent = make_agent(index, [("search", {"query": QUERY, "k": 3})], "one",
                       [("search", {"query": QUERY, "k": 3})], "two")
    first, first_state = await run(agent, Context(agent))
    second, second_state = await run(agent, Context(agent))
    assert hit_ids(first.tool_calls[0]) == hit_ids(second.tool_calls[0]) == ranking[:3]
    assert len(first_state["trace"]) == len(second_state["trace"]) == 1


@SKIPS_MEMORY
async def test_resumed_context_keeps_the_seen_set(index, ranking):
    agent = make_agent(index, [("search", {"query": QUERY, "k": 3})], "first part")
    ctx = Context(agent)
    await run(agent, ctx)
    saved = json.loads(json.dumps(ctx.to_dict()))  # the Context, session included, survives JSON

    resumed_agent = make_agent(index, [("search", {"query": QUERY, "k": 3})], "second part")
    resumed = Context.from_dict(resumed_agent, saved)
    output, state = await run(resumed_agent, resumed)
    assert hit_ids(output.tool_calls[0]) == ranking[3:6]
    assert SearchSession.from_json(index, state).seen == set(ranking[:6])


@SKIPS_MEMORY
async def test_a_resumed_session_keeps_its_own_settings(index):
    agent = make_agent(index, [("search", {"query": QUERY})], "done", max_hops=1)
    ctx = Context(agent)
    await run(agent, ctx)
    # tools made with other settings: the run's session, already in the Context, keeps its budget
    resumed_agent = make_agent(index, [("search", {"query": "Demon Dice"})], "done")
    output, state = await run(resumed_agent, Context.from_dict(resumed_agent, ctx.to_dict()))
    call = output.tool_calls[0]
    assert not call.tool_output.is_error and call.tool_output.raw_output["hits"] == []
    assert "search budget is spent" in call.tool_output.content and state["max_hops"] == 1


async def test_parallel_calls_in_one_step_lose_no_update(index, ranking):
    step = [("search", {"query": QUERY, "k": 3})] * 3
    agent = make_agent(index, step, "done")
    output, state = await run(agent, Context(agent))
    pages = [hit_ids(call) for call in output.tool_calls]
    assert sorted(pages) == sorted([ranking[0:3], ranking[3:6], ranking[6:9]])  # each its own page
    assert len(state["trace"]) == 3 and SearchSession.from_json(index, state).seen == set(ranking)


async def test_direct_calls_share_the_context_session_off_the_event_loop(index, ranking):
    search = make_session_tools(index, k=3)[0]
    ctx = Context(make_agent(index))  # a Context before any run: tools called directly, not by an agent
    await search.acall(ctx=ctx, query=QUERY)
    work = asyncio.gather(*(search.acall(ctx=ctx, query=QUERY) for _ in range(2)))
    ticks, elapsed, outputs = await count_loop_ticks(work)
    assert ticks >= max(5, int(elapsed / 0.001 * 0.1)), (ticks, elapsed)  # the searches ran in threads
    pages = sorted([hit["id"] for hit in output.raw_output["hits"]] for output in outputs)
    assert pages == sorted([ranking[3:6], ranking[6:9]])
    assert len((await ctx.store.get(SESSION_KEY))["trace"]) == 3


async def test_bad_arguments_are_tool_errors_naming_them_and_change_nothing(index, ranking):
    bad = [
        ("search_more", {}, "no earlier search"),
        ("search", {"query": QUERY, "k": 0}, "k: Input should be greater than or equal to 1"),
        ("search", {"query": QUERY, "filter": {"title": {"$regex": "Dice"}}}, "filter"),
        ("search", {"query": QUERY, "limit": 3}, "limit: Extra inputs are not permitted"),
        ("read_document", {"id": "no-such-document"}, "no document with id 'no-such-document'"),
        ("read_document", {"id": ranking[0], "start": 10**6}, "start=1000000 is past the end"),
    ]
    turns = [[(name, arguments)] for name, arguments, _ in bad[:1]] + [[("search", {"query": QUERY, "k": 3})]]
    turns += [[(name, arguments)] for name, arguments, _ in bad[1:]]
    agent = make_agent(index, *turns, "done")
    output, state = await run(agent, Context(agent))

    errors = output.tool_calls[:1] + output.tool_calls[2:]
    for call, (name, _, message) in zip(errors, bad, strict=True):
        assert call.tool_name == name and call.tool_output.is_error, call.tool_output
        assert message in call.tool_output.content
    assert "$regex" in errors[2].tool_output.content
    assert output.response.content == "done"
    # only the good search is in the session
    assert [event["kind"] for event in state["trace"]] == ["search"]
    assert SearchSession.from_json(index, state).seen == set(ranking[:3])


async def test_multi_hop_search_gives_the_evidence_and_hop_trace_and_repeats_nothing(chain_index_path):
    # keep=1: a later hop's documents rank from the second place on, so "journal" would come back
    chain = Index.open(chain_index_path)
    agent = make_agent(chain, [("search", {"query": "Who publishes the Journal of Widgetry?", "k": 1})],
                       [("multi_hop_search", {"question": CHAIN_QUESTION})], [("multi_hop_search", {})],
                       [("multi_hop_search", {"question": ""})], "done", k=3, strategy=Condensed(k=3, keep=1))
    output, state = await run(agent, Context(agent))
    search, multi_hop, *errors = output.tool_calls
    assert hit_ids(search) == ["journal"] and not multi_hop.tool_output.is_error
    data = json.loads(json.dumps(multi_hop.tool_output.raw_output))
    found = check_multi_hop_answer(multi_hop.tool_output.content, data)
    assert "journal" not in found and "society" in found  # not handed out twice in one run
    for error in errors:
        assert error.tool_output.is_error
        assert "invalid arguments for multi_hop_search: question: " in error.tool_output.content
    # the session holds the search and the strategy's hops, nothing of the refused calls
    assert [event["ids"] for event in state["trace"]] == [["journal"]] + [hop["ids"] for hop in data["hops"]]


async def test_multi_hop_search_strategy_by_name(chain_index_path):
    agent = make_agent(str(chain_index_path), [("multi_hop_search", {"question": CHAIN_QUESTION})], "done", k=2,
                       strategy="flipr")
    output, _ = await run(agent, Context(agent))
    result = output.tool_calls[0].tool_output
    assert result.raw_output["strategy"] == "flipr"
    assert set(check_multi_hop_answer(result.content, result.raw_output)) == {"journal", "society"}
    with pytest.raises(InvalidInputError, match="unknown strategy 'nope'; known: default, "):
        make_session_tools(chain_index_path, strategy="nope")


async def test_agent_workflow_keeps_the_session_in_its_context(index, ranking):
    searcher = FunctionAgent(name="searcher", description="Searches the collection.",
                             tools=make_session_tools(index, k=2),
                             llm=scripted_llm([("search", {"query": QUERY})], [("search_more", {})], "done"))
    workflow = AgentWorkflow(agents=[searcher], root_agent="searcher")
    ctx = Context(workflow)
    output = await workflow.run(user_msg="Which game was first called Chaos Progenitus?", ctx=ctx)
    assert output.response.content == "done"
    state = await ctx.store.get(SESSION_KEY)
    assert SearchSession.from_json(index, state).seen == set(ranking[:4])
