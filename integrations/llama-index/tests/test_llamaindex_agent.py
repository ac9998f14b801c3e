"""The FunctionTool search tool and a FunctionAgent driving it with a scripted function-calling LLM."""

import sys
from pathlib import Path

from llama_index.core.tools import ToolOutput

from llama_index.retrievers.lir import LIRRetriever, SearchArgs, make_search_tool

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "examples"))
from llamaindex_agent import run_agent, scripted_llm  # noqa: E402


def test_tool_schema_and_output(sample_index_path):
    tool = make_search_tool(LIRRetriever(index_path=str(sample_index_path)), max_tokens=200)
    assert tool.metadata.name == "lir_search" and tool.metadata.fn_schema is SearchArgs
    schema = tool.metadata.get_parameters_dict()
    assert set(schema["properties"]) == {"query", "k", "filter"} and schema["required"] == ["query"]
    output = tool.call(query="Chaos Progenitus", k=5)
    assert isinstance(output, ToolOutput) and not output.is_error
    assert output.content.startswith("[1] id=hotpotqa_train100-p0 score=")
    assert len(output.content) <= 200 * 4 + 200
    assert [n.node.node_id for n in output.raw_output][0] == "hotpotqa_train100-p0" and len(output.raw_output) == 5
    assert output.raw_input["query"] == "Chaos Progenitus"


async def test_async_tool_and_filter_argument(sample_index_path):
    tool = make_search_tool(LIRRetriever(index_path=str(sample_index_path)))
    output = await tool.acall(query="Chaos Progenitus", k=2, filter={"title": {"$ne": "Demon Dice"}})
    assert len(output.raw_output) == 2 and all(n.node.metadata["title"] != "Demon Dice" for n in output.raw_output)


async def test_function_agent_searches_then_answers(sample_index_path):
    llm = scripted_llm({"query": "Chaos Progenitus", "k": 2}, "Demon Dice.")
    output = await run_agent(str(sample_index_path), "Which game was first called Chaos Progenitus?", llm)
    assert len(output.tool_calls) == 1
    call = output.tool_calls[0]
    assert call.tool_name == "lir_search" and not call.tool_output.is_error
    assert [n.node.node_id for n in call.tool_output.raw_output][0] == "hotpotqa_train100-p0"
    assert "id=hotpotqa_train100-p0" in call.tool_output.content
    assert output.response.content == "Demon Dice."


async def test_bad_tool_arguments_reach_the_model_as_errors(sample_index_path):
    llm = scripted_llm({"query": "   "}, "I could not search.")
    output = await run_agent(str(sample_index_path), "?", llm)
    call = output.tool_calls[0]
    assert call.tool_output.is_error and "empty" in call.tool_output.content
    assert output.response.content == "I could not search."


async def test_example_runs_offline(sample_index_path):
    output = await run_agent(str(sample_index_path), "Which game was first called Chaos Progenitus?")
    assert output.tool_calls[0].tool_output.raw_output[0].node.node_id == "hotpotqa_train100-p0"
