"""A LangChain agent that searches a lir_agent index with the LIR tools.

    python examples/langchain_agent.py ["question"] [--index DIR] [--model provider:model]

By default a scripted chat model plays the agent (it searches for the question, then answers),
so the example runs offline. Pass ``--model`` (e.g. ``openai:gpt-4.1-mini``, with that provider's
package and key installed) to let a real model drive the same tools.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from langchain.agents import create_agent
from langchain_core.language_models import BaseChatModel
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, BaseMessage

from langchain_lir import LIRRetriever, LIRToolkit

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quickstart import DEFAULT_INDEX, open_or_build  # noqa: E402


class ScriptedChatModel(GenericFakeChatModel):
    """A fake chat model that replays scripted messages (tool calls included) and accepts tools."""

    def bind_tools(self, tools: Any, **kwargs: Any) -> "ScriptedChatModel":
        return self


def scripted_model(question: str) -> ScriptedChatModel:
    """Searches for the question once, then gives a fixed closing answer."""
    return ScriptedChatModel(messages=iter([
        AIMessage(content="", tool_calls=[{"name": "lir_search", "args": {"query": question, "k": 3}, "id": "call-1"}]),
        AIMessage(content="(scripted model) The passages above are the best matches in the collection."),
    ]))


def run_agent(index_path: str, question: str, model: BaseChatModel | None = None) -> list[BaseMessage]:
    """Runs the agent on one question; returns the whole conversation."""
    tools = LIRToolkit(retriever=LIRRetriever(index_path=index_path, k=4)).get_tools()
    agent = create_agent(model or scripted_model(question), tools=tools,
                         system_prompt="Answer from the document collection; search it with lir_search.")
    return agent.invoke({"messages": [{"role": "user", "content": question}]})["messages"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("question", nargs="?", default="Which game was originally published as Chaos Progenitus?")
    parser.add_argument("--index", default=str(DEFAULT_INDEX))
    parser.add_argument("--model", help="a chat model for langchain's init_chat_model, e.g. openai:gpt-4.1-mini")
    args = parser.parse_args()
    open_or_build(args.index)
    model = None
    if args.model:
        from langchain.chat_models import init_chat_model

        model = init_chat_model(args.model)
    for message in run_agent(args.index, args.question, model):
        message.pretty_print()


if __name__ == "__main__":
    main()
