"""A LlamaIndex FunctionAgent that searches a lir_agent index with the LIR search tool.

    python examples/llamaindex_agent.py ["question"] [--index DIR]

A scripted function-calling LLM (LlamaIndex's MockFunctionCallingLLM) plays the agent by default,
so the example runs offline; pass any LlamaIndex function-calling LLM to ``run_agent`` instead.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import Any, Sequence

from llama_index.core.agent.workflow import FunctionAgent
from llama_index.core.base.llms.types import ChatMessage, MessageRole, ToolCallBlock
from llama_index.core.llms import LLM
from llama_index.core.llms.mock import MockFunctionCallingLLM

from llama_index.retrievers.lir import LIRRetriever, make_search_tool

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quickstart import DEFAULT_INDEX, open_or_build  # noqa: E402


def scripted_llm(tool_kwargs: dict[str, Any], answer: str) -> MockFunctionCallingLLM:
    """Calls lir_search once with ``tool_kwargs``, then answers with ``answer``."""

    def respond(messages: Sequence[ChatMessage], **kwargs: Any) -> ChatMessage:
        if any(m.role == MessageRole.TOOL for m in messages):
            return ChatMessage(role=MessageRole.ASSISTANT, content=answer)
        call = ToolCallBlock(tool_call_id="call-1", tool_name="lir_search", tool_kwargs=tool_kwargs)
        return ChatMessage(role=MessageRole.ASSISTANT, blocks=[call])

    return MockFunctionCallingLLM(response_generator=respond)


async def run_agent(index_path: str, question: str, llm: LLM | None = None):
    """Runs the agent on one question; returns its final AgentOutput (tool calls included)."""
    tool = make_search_tool(LIRRetriever(index_path=index_path, similarity_top_k=4))
    llm = llm or scripted_llm({"query": question, "k": 3},
                              "(scripted model) The passages above are the best matches in the collection.")
    agent = FunctionAgent(tools=[tool], llm=llm, system_prompt="Answer from the document collection.")
    return await agent.run(user_msg=question)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("question", nargs="?", default="Which game was originally published as Chaos Progenitus?")
    parser.add_argument("--index", default=str(DEFAULT_INDEX))
    args = parser.parse_args()
    open_or_build(args.index)
    output = asyncio.run(run_agent(args.index, args.question))
    for call in output.tool_calls:
        print(f"tool {call.tool_name}({call.tool_kwargs}):\n{call.tool_output.content}\n")
    print("answer:", output.response.content)


if __name__ == "__main__":
    main()
