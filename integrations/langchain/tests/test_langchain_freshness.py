"""A long-lived retriever sees what other writers commit, and its configuration names one index
wherever it is rebuilt (relative paths are resolved when it opens)."""

import os
import shutil

from langchain_core.messages import ToolMessage

from langchain_lir import LIRReadDocumentTool, LIRRetriever
from lir_agent import Index

QUERY = "Chaos Progenitus dice game"
FIRST = "hotpotqa_train100-p0"


def call(tool, args) -> ToolMessage:
    return tool.invoke({"type": "tool_call", "name": tool.name, "args": args, "id": "call-1"})


def test_a_long_lived_retriever_and_read_tool_follow_another_writer(sample_index_path, tmp_path, monkeypatch):
    shutil.copytree(sample_index_path, tmp_path / "kb")
    monkeypatch.chdir(tmp_path)
    retriever = LIRRetriever(index_path="kb", k=3)
    reader = LIRReadDocumentTool(retriever=retriever)
    assert retriever.invoke(QUERY)[0].id == FIRST
    assert call(reader, {"id": FIRST}).status == "success"

    writer = Index.open(tmp_path / "kb")  # any other writer: another object, thread or process
    writer.delete([FIRST])
    writer.add([{"id": "new", "text": "Chaos Progenitus is a dice game of the year 2031."}])

    assert FIRST not in [d.id for d in retriever.invoke(QUERY)]
    assert "new" in [d.id for d in retriever.invoke(QUERY)]
    gone = call(reader, {"id": FIRST})
    assert gone.status == "error" and FIRST in gone.content
    assert "2031" in call(reader, {"id": "new"}).content


def test_the_configuration_carries_an_absolute_path(sample_index_path, tmp_path, monkeypatch):
    shutil.copytree(sample_index_path, tmp_path / "kb")
    monkeypatch.chdir(tmp_path)
    config = LIRRetriever(index_path="kb", k=2).to_config()
    assert os.path.isabs(config["index_path"]) and config["index_path"] == str(tmp_path / "kb")
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    assert LIRRetriever.from_config(config).invoke(QUERY)[0].id == FIRST
