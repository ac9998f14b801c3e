"""A LangChain agent (create_agent) with a scripted chat model that makes real tool calls."""

import sys
from pathlib import Path

from langchain.agents import create_agent
from langchain_core.messages import AIMessage, ToolMessage

from langchain_lir import LIRRetriever, LIRToolkit

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "examples"))
from langchain_agent import ScriptedChatModel, run_agent  # noqa: E402


def test_agent_searches_then_answers(sample_index_path):
    model = ScriptedChatModel(messages=iter([
        AIMessage(content="", tool_calls=[{"name": "lir_search", "args": {"query": "Chaos Progenitus", "k": 2}, "id": "call-1"}]),
        AIMessage(content="Demon Dice was originally published as Chaos Progenitus."),
    ]))
    tools = LIRToolkit(retriever=LIRRetriever(index_path=str(sample_index_path))).get_tools()
    agent = create_agent(model, tools=tools)
    result = agent.invoke({"messages": [{"role": "user", "content": "Which game was first called Chaos Progenitus?"}]})
    messages = result["messages"]
    tool_messages = [m for m in messages if isinstance(m, ToolMessage)]
    assert len(tool_messages) == 1 and tool_messages[0].status == "success"
    assert "id=hotpotqa_train100-p0" in tool_messages[0].content
    assert [d.id for d in tool_messages[0].artifact][0] == "hotpotqa_train100-p0"
    assert messages[-1].content.startswith("Demon Dice")


def test_example_runs_offline(sample_index_path):
    messages = run_agent(str(sample_index_path), "Which game was first called Chaos Progenitus?")
    tool_message = next(m for m in messages if isinstance(m, ToolMessage))
    assert tool_message.artifact[0].id == "hotpotqa_train100-p0"
    assert messages[-1].content.startswith("(scripted model)")
