"""LIRRetriever behaviour beyond the standard suite: fields, overrides, async, config, callbacks."""

import asyncio
import json
import subprocess
import sys
from typing import Any

import pytest
from langchain_core.callbacks import BaseCallbackHandler

from langchain_lir import LIRRetriever
from conftest import count_loop_ticks
from lir_agent import Index

QUERY = "Which game was originally published as Chaos Progenitus?"


def test_documents_carry_id_score_rank_and_match_the_index(sample_index_path):
    index = Index.open(sample_index_path)
    retriever = LIRRetriever(index=index, k=5)
    docs = retriever.invoke(QUERY)
    hits = index.search(QUERY, k=5)
    assert [d.id for d in docs] == [h.id for h in hits]
    assert [d.metadata["score"] for d in docs] == pytest.approx([h.score for h in hits])
    assert [d.metadata["rank"] for d in docs] == [1, 2, 3, 4, 5]
    assert docs[0].page_content == hits[0].text
    assert docs[0].metadata["title"] == hits[0].metadata["title"]
    assert retriever.index_path == str(sample_index_path)


def test_k_and_filter_per_call_override_fields(sample_index_path):
    retriever = LIRRetriever(index_path=str(sample_index_path), k=5, filter={"title": "Demon Dice"})
    assert [d.id for d in retriever.invoke(QUERY)] == ["hotpotqa_train100-p0"]
    docs = retriever.invoke(QUERY, k=2, filter={"title": {"$ne": "Demon Dice"}})
    assert len(docs) == 2 and all(d.metadata["title"] != "Demon Dice" for d in docs)
    assert len(retriever.invoke(QUERY, filter={})) == 5


def test_needs_an_index():
    with pytest.raises(ValueError, match="index_path"):
        LIRRetriever()


async def test_async_search_does_not_block_the_event_loop(sample_index_path):
    retriever = LIRRetriever(index_path=str(sample_index_path), k=3)
    await retriever.ainvoke(QUERY)  # warm up (loads the encoder)
    work = asyncio.gather(*(retriever.ainvoke(f"{QUERY} {i}") for i in range(8)))
    ticks, elapsed, results = await count_loop_ticks(work)
    assert all(len(r) == 3 for r in results)
    # a blocked loop would tick about once; a free one ticks throughout the searches
    assert ticks >= max(5, int(elapsed / 0.001 * 0.1)), (ticks, elapsed)
    assert [d.id for d in results[0]] == [d.id for d in retriever.invoke(f"{QUERY} 0")]


def test_config_round_trip_in_another_process(sample_index_path):
    retriever = LIRRetriever(index_path=str(sample_index_path), k=3, filter={"title": {"$ne": "Demon Dice"}})
    config = json.dumps(retriever.to_config())
    script = (
        "import json, sys\n"
        "from langchain_lir import LIRRetriever\n"
        "r = LIRRetriever.from_config(json.loads(sys.argv[1]))\n"
        f"print(json.dumps([[d.id, d.metadata['score']] for d in r.invoke({QUERY!r})]))\n"
    )
    out = subprocess.run([sys.executable, "-c", script, config], capture_output=True, text=True, check=True)
    remote = json.loads(out.stdout.strip().splitlines()[-1])
    local = [[d.id, d.metadata["score"]] for d in retriever.invoke(QUERY)]
    assert [r[0] for r in remote] == [l[0] for l in local]
    assert [r[1] for r in remote] == pytest.approx([l[1] for l in local], abs=1e-4)
    with pytest.raises(ValueError, match="callable filter"):
        LIRRetriever(index_path=str(sample_index_path), filter=lambda m: True).to_config()


class Recorder(BaseCallbackHandler):
    def __init__(self):
        self.events: list[tuple[str, Any]] = []

    def on_retriever_start(self, serialized, query, **kwargs):
        self.events.append(("start", query))

    def on_retriever_end(self, documents, **kwargs):
        self.events.append(("end", [d.id for d in documents]))

    def on_retriever_error(self, error, **kwargs):
        self.events.append(("error", str(error)))


def test_callbacks_fire(sample_index_path):
    retriever = LIRRetriever(index_path=str(sample_index_path), k=2)
    recorder = Recorder()
    docs = retriever.invoke(QUERY, config={"callbacks": [recorder]})
    assert recorder.events == [("start", QUERY), ("end", [d.id for d in docs])]
    with pytest.raises(ValueError):
        retriever.invoke("   ", config={"callbacks": [recorder]})
    assert recorder.events[-1][0] == "error" and "empty" in recorder.events[-1][1]


def test_a_sharded_index_by_path_answers_like_the_single_one(sample_index_path, tmp_path):
    from lir_agent.sharded import reshard

    reshard(sample_index_path, tmp_path / "sharded", 3, show_progress=False)
    single = LIRRetriever(index_path=str(sample_index_path), k=6).invoke(QUERY, filter={"title": {"$ne": "Demon Dice"}})
    sharded = LIRRetriever(index_path=str(tmp_path / "sharded"), k=6).invoke(QUERY, filter={"title": {"$ne": "Demon Dice"}})
    assert [d.id for d in sharded] == [d.id for d in single]
    assert [d.metadata["score"] for d in sharded] == pytest.approx([d.metadata["score"] for d in single], abs=1e-5)
