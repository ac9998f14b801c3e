"""Strings that are not text (a lone UTF-16 surrogate, "\ud83d" alone) reaching the LlamaIndex
integration: an agent's tool call gets a tool error naming the argument, the retriever raises
InvalidInputError, and a configuration holding one is refused when the retriever is built."""

import json
import sys
from pathlib import Path

import pytest

from llama_index.retrievers.lir import LIRRetriever
from lir_agent import InvalidInputError

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "examples"))
from llamaindex_agent import run_agent, scripted_llm  # noqa: E402

LONE = "\ud83d"


async def test_a_tool_call_holding_a_lone_surrogate_reaches_the_model_as_an_error(two_document_index):
    llm = scripted_llm({"query": f"dice {LONE}"}, "I could not search.")
    output = await run_agent(str(two_document_index), "?", llm)
    call = output.tool_calls[0]
    assert call.tool_output.is_error
    assert "query #0 holds a lone UTF-16 surrogate (U+D83D at character 5)" in call.tool_output.content
    assert output.response.content == "I could not search."


async def test_the_retriever_raises_invalid_input(two_document_index):
    retriever = LIRRetriever(index_path=str(two_document_index))
    with pytest.raises(InvalidInputError, match="^query #0 holds a lone UTF-16 surrogate"):
        retriever.retrieve(f"{LONE}dice")
    with pytest.raises(InvalidInputError, match="^query #0 holds a lone UTF-16 surrogate"):
        await retriever.aretrieve(f"{LONE}dice")
    with pytest.raises(InvalidInputError, match=r"^filter\.lang holds a lone UTF-16 surrogate"):
        retriever.search("dice", filter={"lang": LONE})
    assert [n.node.node_id for n in retriever.retrieve("dice game 🎲")][0] == "dice"


def test_a_configuration_holding_a_lone_surrogate_is_refused_when_built(two_document_index):
    config = json.dumps({"index_path": str(two_document_index), "similarity_top_k": 2,
                         "filters": {"filters": [{"key": "lang", "value": "en", "operator": "=="}], "condition": "and"}})
    assert LIRRetriever.from_config(json.loads(config)).retrieve("dice")[0].node.node_id == "dice"
    with pytest.raises(InvalidInputError, match=r"^filter\.\$and\[0\]\.lang\.\$eq holds a lone UTF-16 surrogate"):
        LIRRetriever.from_config(json.loads(config.replace('"en"', '"en\\ud83d"')))
    with pytest.raises(InvalidInputError, match=r"^index_path holds a lone UTF-16 surrogate \(U\+D83D at character \d+\)"):
        LIRRetriever.from_config(json.loads(config.replace('idx"', 'idx\\ud83d"')))
