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
