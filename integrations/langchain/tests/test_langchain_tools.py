"""The agent tools: content within budget, artifacts, errors returned to the model, paging."""

from langchain_core.messages import ToolMessage

from langchain_lir import LIRReadDocumentTool, LIRRetriever, LIRSearchTool, LIRToolkit
from lir_agent.formatting import approximate_tokens


def call(tool, args):
    return tool.invoke({"type": "tool_call", "name": tool.name, "args": args, "id": "call-1"})


def test_search_content_and_artifact(sample_index_path):
    tool = LIRSearchTool(retriever=LIRRetriever(index_path=str(sample_index_path), k=4), max_tokens=2000)
    message = call(tool, {"query": "Chaos Progenitus dice game", "k": 3})
    assert isinstance(message, ToolMessage) and message.status == "success"
    assert [d.id for d in message.artifact][0] == "hotpotqa_train100-p0" and len(message.artifact) == 3
    lines = message.content.split("\n\n")
    assert lines[0].startswith("[1] id=hotpotqa_train100-p0 score=")
    assert lines[2].startswith("[3] id=")


def test_search_content_respects_the_token_budget(sample_index_path):
    tool = LIRSearchTool(retriever=LIRRetriever(index_path=str(sample_index_path), k=10), max_tokens=120)
    message = call(tool, {"query": "a band formed in the 1990s"})
    assert approximate_tokens(message.content) <= 120 + 30  # passages within budget, plus the closing note
    assert "more results not shown" in message.content or "…" in message.content
    assert len(message.artifact) == 10  # the artifact keeps every document


def test_bad_arguments_come_back_as_tool_errors(sample_index_path):
    tool = LIRSearchTool(retriever=LIRRetriever(index_path=str(sample_index_path)))
    empty = call(tool, {"query": "   "})
    assert empty.status == "error" and "empty" in empty.content
    operator = call(tool, {"query": "dice", "filter": {"title": {"$regex": "x"}}})
    assert operator.status == "error" and "$regex" in operator.content
    too_many = call(tool, {"query": "dice", "k": 10_000})
    assert too_many.status == "error" and "k: Input should be less than or equal to 100" in too_many.content
    no_query = call(tool, {"k": 3})
    assert no_query.status == "error" and "query: Field required" in no_query.content


async def test_async_tool_matches_sync(sample_index_path):
    tool = LIRSearchTool(retriever=LIRRetriever(index_path=str(sample_index_path), k=3))
    args = {"type": "tool_call", "name": tool.name, "args": {"query": "dice game designer"}, "id": "c"}
    sync_message, async_message = tool.invoke(args), await tool.ainvoke(args)
    assert async_message.content == sync_message.content
    assert [d.id for d in async_message.artifact] == [d.id for d in sync_message.artifact]


def test_read_document_pages_through_text(sample_index_path):
    retriever = LIRRetriever(index_path=str(sample_index_path))
    tool = LIRReadDocumentTool(retriever=retriever, max_tokens=50)
    full = retriever.index.get("hotpotqa_train100-p0").text
    pieces, offset = [], 0
    while True:
        message = call(tool, {"id": "hotpotqa_train100-p0", "offset": offset})
        assert message.status == "success"
        pieces.append(message.artifact.page_content)
        if "continues: call again with offset=" not in message.content:
            break
        offset = int(message.content.rsplit("offset=", 1)[1].rstrip(")"))
    assert "".join(pieces) == full and len(pieces) > 1
    missing = call(tool, {"id": "no-such-doc"})
    assert missing.status == "error" and "no-such-doc" in missing.content


def test_toolkit_hands_out_all_tools(sample_index_path):
    toolkit = LIRToolkit(retriever=LIRRetriever(index_path=str(sample_index_path)), max_tokens=300)
    tools = toolkit.get_tools()
    assert [t.name for t in tools] == ["lir_search", "lir_read_document"]
    assert all(t.max_tokens == 300 for t in tools)
