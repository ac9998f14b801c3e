"""A long-lived retriever sees what other writers commit; its configuration carries an absolute path."""

import os
import shutil

from llama_index.retrievers.lir import LIRRetriever
from lir_agent import Index

QUERY = "Which game was originally published as Chaos Progenitus?"
FIRST = "hotpotqa_train100-p0"


def test_a_long_lived_retriever_follows_another_writer(sample_index_path, tmp_path, monkeypatch):
    shutil.copytree(sample_index_path, tmp_path / "kb")
    monkeypatch.chdir(tmp_path)
    retriever = LIRRetriever(index_path="kb", similarity_top_k=3)
    assert retriever.retrieve(QUERY)[0].node.node_id == FIRST
    writer = Index.open(tmp_path / "kb")
    writer.delete([FIRST])
    writer.add([{"id": "new", "text": "Chaos Progenitus was first published as a dice game in 2031."}])
    ids = [n.node.node_id for n in retriever.retrieve(QUERY)]
    assert FIRST not in ids and "new" in ids
    config = retriever.to_config()
    assert os.path.isabs(config["index_path"]) and config["index_path"] == str(tmp_path / "kb")
