"""Strings that are not text (a lone UTF-16 surrogate, "\ud83d" alone) reaching the LangChain
integration: a tool call gets a tool error naming the argument, the retriever raises
InvalidInputError, and a configuration holding one is refused when the retriever is built."""

import json

import pytest
from langchain_core.messages import ToolMessage

from langchain_lir import LIRRetriever, LIRSearchTool
from lir_agent import InvalidInputError

LONE = "\ud83d"


def test_a_tool_call_holding_a_lone_surrogate_comes_back_as_a_tool_error(two_document_index):
    tool = LIRSearchTool(retriever=LIRRetriever(index_path=str(two_document_index)))
    for args, problem in [({"query": f"dice {LONE}"}, "query #0 holds a lone UTF-16 surrogate (U+D83D at character 5)"),
                          ({"query": "dice", "filter": {"lang": LONE}}, "filter.lang holds a lone UTF-16 surrogate")]:
        message = tool.invoke({"type": "tool_call", "name": tool.name, "args": args, "id": "call-1"})
        assert isinstance(message, ToolMessage) and message.status == "error"
        assert problem in message.content
    ok = tool.invoke({"type": "tool_call", "name": tool.name, "args": {"query": "dice game 🎲"}, "id": "call-2"})
    assert ok.status == "success" and ok.artifact[0].id == "dice"


async def test_the_retriever_raises_invalid_input(two_document_index):
    retriever = LIRRetriever(index_path=str(two_document_index))
    with pytest.raises(InvalidInputError, match="^query #0 holds a lone UTF-16 surrogate"):
        retriever.invoke(f"{LONE}dice")
    with pytest.raises(InvalidInputError, match="^query #0 holds a lone UTF-16 surrogate"):
        await retriever.ainvoke(f"{LONE}dice")


def test_a_configuration_holding_a_lone_surrogate_is_refused_when_built(two_document_index):
    config = json.dumps(LIRRetriever(index_path=str(two_document_index), filter={"lang": "en"}).to_config())
    assert LIRRetriever.from_config(json.loads(config)).invoke("dice")[0].id == "dice"
    bad_value = json.loads(config.replace('"en"', '"en\\ud83d"'))
    with pytest.raises(ValueError, match=r"filter\.lang holds a lone UTF-16 surrogate \(U\+D83D at character 2\)"):
        LIRRetriever.from_config(bad_value)
    bad_path = json.loads(config.replace('idx"', 'idx\\ud83d"'))
    with pytest.raises(ValueError, match=r"index_path holds a lone UTF-16 surrogate \(U\+D83D at character \d+\)"):
        LIRRetriever.from_config(bad_path)
