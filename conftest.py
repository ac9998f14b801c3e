"""Fixtures shared by every test suite of the repository (core and integrations)."""

import asyncio
import time
from pathlib import Path

import pytest

from lir_agent import Encoder, Index
from lir_agent.corpus import read_documents

SAMPLE_CORPUS = Path(__file__).resolve().parent / "examples" / "data" / "hotpotqa_paragraphs.jsonl"
SAMPLE_SIZE = 120


@pytest.fixture(scope="session")
def encoder() -> Encoder:
    """The bundled default encoder, loaded once."""
    return Encoder.from_pretrained(device="cpu")


@pytest.fixture(scope="session")
def sample_index_path(tmp_path_factory, encoder) -> Path:
    """A real index of the first 120 paragraphs of the shipped HotpotQA sample, built once.
    Tests must not write to it; copy it first."""
    path = tmp_path_factory.mktemp("sample") / "index"
    index = Index.create(path, encoder=encoder)
    index.add(list(read_documents(SAMPLE_CORPUS))[:SAMPLE_SIZE])
    return path


@pytest.fixture
def two_document_index(tmp_path, encoder) -> Path:
    """A small exact index the integrations' text-policy tests search: two documents, one
    holding a real emoji (a valid surrogate pair), with "lang" metadata."""
    path = tmp_path / "idx"
    Index.create(path, encoder, index_type="exact").add([
        {"id": "dice", "text": "Chaos Progenitus is a dice game 🎲.", "metadata": {"lang": "en"}},
        {"id": "rome", "text": "Rome is the capital of Italy.", "metadata": {"lang": "en"}},
    ])
    return path


# A two-hop chain (the question names the journal; the answer is in the society's document) among distractors
CHAIN_QUESTION = "Who was the first president of the society that publishes the Journal of Widgetry?"
CHAIN_DOCUMENTS = [
    {"id": "journal", "text": "The Journal of Widgetry is published by the Gearwright Society."},
    {"id": "society", "text": "The Gearwright Society's first president was Ada Quill."},
    {"id": "tides", "text": "Tides are caused by the gravitational pull of the Moon and the Sun."},
    {"id": "rome", "text": "Rome is the capital of Italy."},
    {"id": "bakery", "text": "The bakery on Elm Street sells rye bread every Tuesday."},
    {"id": "chess", "text": "The first world chess champion was Wilhelm Steinitz."},
]


@pytest.fixture(scope="session")
def chain_index_path(tmp_path_factory, encoder) -> Path:
    """A small exact index of CHAIN_DOCUMENTS (the multi_hop_search tool's tests), built once.
    Tests must not write to it."""
    path = tmp_path_factory.mktemp("chain") / "index"
    Index.create(path, encoder, index_type="exact").add(CHAIN_DOCUMENTS)
    return path


def check_multi_hop_answer(text: str, data: dict) -> list[str]:
    """Asserts that a ``multi_hop_search`` answer (its text and its data, as JSON) holds the
    evidence and the hop trace: more than one hop, distinct documents, each numbered with its id
    in the text, a line per hop and why it stopped. Returns the documents' ids."""
    ids = [document["id"] for document in data["documents"]]
    assert len(data["hops"]) > 1 and ids and len(ids) == len(set(ids)), data
    for rank, doc_id in enumerate(ids, start=1):
        assert f"[{rank}] id={doc_id} " in text, text
    for hop in data["hops"]:
        assert f"hop {hop['number']}: {hop['query']!r} -> " in text, text
    assert f"Stopped: {data['stopped']}." in text and "Budget: " in text, text
    return ids


async def count_loop_ticks(work) -> tuple[int, float, object]:
    """Awaits ``work`` while a coroutine ticks every millisecond on the same event loop; returns
    (ticks, seconds, result). A loop blocked by ``work`` ticks about once."""
    ticks, done = 0, asyncio.Event()

    async def ticker():
        nonlocal ticks
        while not done.is_set():
            ticks += 1
            await asyncio.sleep(0.001)

    task = asyncio.create_task(ticker())
    start = time.perf_counter()
    try:
        result = await work
    finally:
        done.set()
        await task
    return ticks, time.perf_counter() - start, result


@pytest.fixture(scope="session")
def ray_cluster():
    """One simulated three-node Ray cluster (one CPU each) shared by every Ray test of the run."""
    ray = pytest.importorskip("ray")
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    for _ in range(2):
        cluster.add_node(num_cpus=1)
    ray.init(address=cluster.address, logging_level="WARNING", log_to_driver=False)
    cluster.wait_for_nodes()
    yield cluster
    ray.shutdown()
    cluster.shutdown()
