"""The LlamaIndex retriever: nodes, scores, filters, async, config round trip, instrumentation."""

import asyncio
import json
import subprocess
import sys

import pytest
from llama_index.core.instrumentation import get_dispatcher
from llama_index.core.instrumentation.event_handlers import BaseEventHandler
from llama_index.core.instrumentation.events.retrieval import RetrievalEndEvent, RetrievalStartEvent
from llama_index.core.llms.mock import MockLLM
from llama_index.core.query_engine import RetrieverQueryEngine
from llama_index.core.schema import NodeWithScore, TextNode
from llama_index.core.vector_stores.types import FilterCondition, FilterOperator, MetadataFilter, MetadataFilters

from llama_index.retrievers.lir import LIRRetriever, to_lir_filter
from conftest import count_loop_ticks
from lir_agent import Index

QUERY = "Which game was originally published as Chaos Progenitus?"


def test_nodes_carry_ids_text_metadata_and_maxsim_scores(sample_index_path):
    index = Index.open(sample_index_path)
    nodes = LIRRetriever(index=index, similarity_top_k=4).retrieve(QUERY)
    hits = index.search(QUERY, k=4)
    assert all(isinstance(n, NodeWithScore) and isinstance(n.node, TextNode) for n in nodes)
    assert [n.node.node_id for n in nodes] == [h.id for h in hits]
    assert [n.score for n in nodes] == pytest.approx([h.score for h in hits])
    assert nodes[0].node.get_content() == hits[0].text and nodes[0].node.metadata == hits[0].metadata


def metadata_filters(*filters, condition=FilterCondition.AND):
    return MetadataFilters(filters=list(filters), condition=condition)


@pytest.mark.parametrize(
    "filters, keep",
    [
        (metadata_filters(MetadataFilter(key="title", value="Demon Dice")), lambda m: m["title"] == "Demon Dice"),
        (metadata_filters(MetadataFilter(key="title", value=["Demon Dice", "David Parlett"], operator=FilterOperator.IN)),
         lambda m: m["title"] in ("Demon Dice", "David Parlett")),
        (metadata_filters(MetadataFilter(key="title", value="M", operator=FilterOperator.GTE),
                          MetadataFilter(key="title", value="T", operator=FilterOperator.LT)),
         lambda m: "M" <= m["title"] < "T"),
        (metadata_filters(MetadataFilter(key="title", value="Demon Dice"),
                          metadata_filters(MetadataFilter(key="title", value="B", operator=FilterOperator.LTE),
                                           MetadataFilter(key="title", value="Z", operator=FilterOperator.GT)),
                          condition=FilterCondition.OR),
         lambda m: m["title"] == "Demon Dice" or (m["title"] <= "B" and m["title"] > "Z")),
        (metadata_filters(MetadataFilter(key="title", value=["Demon Dice"], operator=FilterOperator.NIN),
                          MetadataFilter(key="title", value="David Parlett", operator=FilterOperator.NE)),
         lambda m: m["title"] not in ("Demon Dice", "David Parlett")),
    ],
)
def test_metadata_filters_are_applied(sample_index_path, filters, keep):
    index = Index.open(sample_index_path)
    nodes = LIRRetriever(index=index, similarity_top_k=5, filters=filters).retrieve(QUERY)
    expected = index.search(QUERY, k=5, filter=keep)
    assert [n.node.node_id for n in nodes] == [h.id for h in expected]
    assert all(keep(n.node.metadata) for n in nodes)


@pytest.mark.parametrize("operator", [FilterOperator.TEXT_MATCH, FilterOperator.CONTAINS, FilterOperator.ANY])
def test_unsupported_operators_are_refused(sample_index_path, operator):
    filters = metadata_filters(MetadataFilter(key="title", value="Dice", operator=operator))
    with pytest.raises(ValueError, match=f"does not support the {operator.name} filter operator"):
        LIRRetriever(index_path=str(sample_index_path), filters=filters)
    with pytest.raises(ValueError, match="NOT filter condition"):
        to_lir_filter(metadata_filters(MetadataFilter(key="a", value=1), condition=FilterCondition.NOT))


async def test_aretrieve_matches_and_does_not_block(sample_index_path):
    retriever = LIRRetriever(index_path=str(sample_index_path), similarity_top_k=3)
    await retriever.aretrieve(QUERY)
    work = asyncio.gather(*(retriever.aretrieve(f"{QUERY} {i}") for i in range(8)))
    ticks, elapsed, results = await count_loop_ticks(work)
    assert ticks >= max(5, int(elapsed / 0.001 * 0.1)), (ticks, elapsed)
    assert [n.node.node_id for n in results[0]] == [n.node.node_id for n in retriever.retrieve(f"{QUERY} 0")]


def test_config_round_trip_in_another_process(sample_index_path):
    filters = metadata_filters(MetadataFilter(key="title", value="Demon Dice", operator=FilterOperator.NE))
    retriever = LIRRetriever(index_path=str(sample_index_path), similarity_top_k=3, filters=filters)
    script = (
        "import json, sys\n"
        "from llama_index.retrievers.lir import LIRRetriever\n"
        "r = LIRRetriever.from_config(json.loads(sys.argv[1]))\n"
        f"print(json.dumps([[n.node.node_id, n.score] for n in r.retrieve({QUERY!r})]))\n"
    )
    out = subprocess.run([sys.executable, "-c", script, json.dumps(retriever.to_config())],
                         capture_output=True, text=True, check=True)
    remote = json.loads(out.stdout.strip().splitlines()[-1])
    local = [[n.node.node_id, n.score] for n in retriever.retrieve(QUERY)]
    assert [r[0] for r in remote] == [l[0] for l in local] and "hotpotqa_train100-p0" not in [r[0] for r in remote]
    assert [r[1] for r in remote] == pytest.approx([l[1] for l in local], abs=1e-4)


class RetrievalEvents(BaseEventHandler):
    events: list = []

    @classmethod
    def class_name(cls) -> str:
        return "RetrievalEvents"

    def handle(self, event, **kwargs):
        if isinstance(event, (RetrievalStartEvent, RetrievalEndEvent)):
            self.events.append(event)


def test_retrieval_events_fire(sample_index_path):
    handler = RetrievalEvents(events=[])
    dispatcher = get_dispatcher()
    dispatcher.add_event_handler(handler)
    try:
        nodes = LIRRetriever(index_path=str(sample_index_path), similarity_top_k=2).retrieve(QUERY)
    finally:
        dispatcher.event_handlers.remove(handler)
    start, end = handler.events
    assert isinstance(start, RetrievalStartEvent) and start.str_or_query_bundle == QUERY
    assert isinstance(end, RetrievalEndEvent) and [n.node.node_id for n in end.nodes] == [n.node.node_id for n in nodes]


def test_works_inside_retriever_query_engine(sample_index_path):
    retriever = LIRRetriever(index_path=str(sample_index_path), similarity_top_k=3)
    engine = RetrieverQueryEngine.from_args(retriever, llm=MockLLM())
    response = engine.query(QUERY)
    assert [n.node.node_id for n in response.source_nodes][0] == "hotpotqa_train100-p0"
    assert len(response.source_nodes) == 3
    assert "Chaos Progenitus" in str(response)  # MockLLM echoes its prompt, which holds the context


def test_a_sharded_index_by_path_answers_like_the_single_one(sample_index_path, tmp_path):
    from lir_agent.sharded import reshard

    reshard(sample_index_path, tmp_path / "sharded", 3, show_progress=False)
    single = LIRRetriever(index_path=str(sample_index_path), similarity_top_k=6).retrieve(QUERY)
    sharded = LIRRetriever(index_path=str(tmp_path / "sharded"), similarity_top_k=6).retrieve(QUERY)
    assert [n.node.node_id for n in sharded] == [n.node.node_id for n in single]
    assert [n.score for n in sharded] == pytest.approx([n.score for n in single], abs=1e-5)
