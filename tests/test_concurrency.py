"""Reads racing writes: every search and read runs on one committed snapshot (threads of one
process, a forced interleaving inside a search, sharded indexes), readers catch up with another
process's commits with one ``stat`` when nothing changed, and paths are resolved once, at open."""

import os
import subprocess
import sys
import threading
import zlib

import pytest
import torch

from lir_agent import DocumentNotFoundError, Index, ResidualCodec, storage
from lir_agent.engines import CompressedEngine, ExactEngine
from lir_agent.sharded import ShardedIndex

from helpers import DIM, REPO, naive_maxsim


def embed(text: str) -> torch.Tensor:
    """A document's token matrix as a pure function of its text, so that a hit's score can be
    checked against the text it came back with."""
    g = torch.Generator().manual_seed(zlib.crc32(text.encode()))
    length = int(torch.randint(4, 24, (1,), generator=g))
    return torch.nn.functional.normalize(torch.randn(length, DIM, generator=g), dim=1).half()


def doc(doc_id: str, version: int) -> dict:
    return {"id": doc_id, "text": f"{doc_id} version {version}", "metadata": {"version": version}}


def add(index, docs, upsert=False):
    index.add(docs, embeddings=[embed(d["text"]) for d in docs], upsert=upsert)


def query(seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.nn.functional.normalize(torch.randn(6, DIM, generator=g), dim=1)


def check_hits(q: torch.Tensor, hits, k: int) -> None:
    """Each hit's score is the MaxSim of the text it came with; ids match texts; ranked, k of them."""
    assert len(hits) == k
    expected = naive_maxsim(q, [embed(h.text).float() for h in hits])
    for hit, score in zip(hits, expected.tolist()):
        assert hit.text.split(" ")[0] == hit.id
        assert hit.score == pytest.approx(score, abs=2e-3), (hit.id, hit.text)
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)


def hammer(index, min_searches: int = 10, k: int = 5) -> list[BaseException]:
    """Three threads search while a fourth upserts, deletes, adds and compacts 40 times."""
    errors: list[BaseException] = []
    done = threading.Event()

    def writer():
        try:
            for i in range(40):
                add(index, [doc(f"d{i % 30}", i + 1)], upsert=True)
                index.delete([f"d{30 + i}"])
                add(index, [doc(f"n{i}", 0)])
                if i % 4 == 3:
                    index.compact()
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)
        finally:
            done.set()

    def reader(seed: int):
        try:
            i = 0
            while not done.is_set() or i < min_searches:  # for as long as the writer writes
                q = query(seed * 1000 + i % 50)
                check_hits(q, index.search(q, k=k), k)
                i += 1
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=writer)] + [threading.Thread(target=reader, args=(s,)) for s in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return errors


@pytest.fixture
def seeded_index(tmp_path, encoder):
    index = Index.create(tmp_path / "index", encoder, index_type="exact")
    add(index, [doc(f"d{i}", 0) for i in range(80)])
    return index


def test_threads_search_while_another_writes(seeded_index):
    errors = hammer(seeded_index)
    assert not errors, errors[0]
    assert len(seeded_index) == 80  # 40 deleted, 40 added
    assert seeded_index.get("d3").text == "d3 version 34"


def test_sharded_threads_search_while_another_writes(tmp_path, encoder):
    index = ShardedIndex.create(tmp_path / "sharded", 3, encoder)
    add(index, [doc(f"d{i}", 0) for i in range(80)])
    errors = hammer(index)
    assert not errors, errors[0]
    assert len(index) == 80


@pytest.mark.parametrize("index_type", ["exact", "compressed"])
def test_a_search_keeps_its_snapshot_when_a_compaction_runs_inside_it(tmp_path, encoder, monkeypatch, index_type):
    """Forces the interleaving: the engine has scored the candidates when another writer deletes
    early documents and compacts (every row number moves). The hits must be the documents that
    were scored, with their own scores."""
    docs = [doc(f"d{i}", 0) for i in range(60)]
    matrices = [embed(d["text"]) for d in docs]
    codec = ResidualCodec.fit(torch.cat(matrices).float(), nbits=4, num_centroids=16) if index_type == "compressed" else None
    index = Index.create(tmp_path / "index", encoder, index_type=index_type, codec=codec)
    for start in range(0, 60, 20):  # three segments
        index.add(docs[start:start + 20], embeddings=matrices[start:start + 20])
    engine_class, stage = (ExactEngine, "exact_round") if index_type == "exact" else (CompressedEngine, "probe_round")
    original = getattr(engine_class, stage)
    writes = []

    def scored_then_compacted(self, *args, **kwargs):
        result = original(self, *args, **kwargs)
        if not writes:
            writes.append(1)
            index.delete([f"d{i}" for i in range(0, 40, 2)])
            index.compact()
        return result

    q = query(7)
    scores = {h.id: h.score for h in index.search(q, k=60)}  # every document's score, before any write
    monkeypatch.setattr(engine_class, stage, scored_then_compacted)
    hits = index.search(q, k=10)
    assert writes and index.info()["segments"] == 1 and len(index) == 40
    assert [(h.id, h.score) for h in hits] == [(i, scores[i]) for i in sorted(scores, key=scores.get, reverse=True)[:10]]
    assert all(h.text.split(" ")[0] == h.id for h in hits)


WRITER = """
import sys
sys.path.insert(0, {tests!r})
from test_concurrency import add, doc
from lir_agent import Index
index = Index.open({path!r})
index.delete(["d1"])
add(index, [doc("fresh", 0)])
"""


def test_a_reader_catches_up_with_another_process_and_only_stats_when_nothing_changed(seeded_index, monkeypatch):
    reader = Index.open(seeded_index.path)
    q = embed("fresh version 0").float()  # the new document is its own best match
    assert reader.get("d1").text == "d1 version 0"
    reads = []
    real_read = storage.read_manifest
    monkeypatch.setattr(storage, "read_manifest", lambda root: reads.append(root) or real_read(root))
    for _ in range(3):
        reader.search(q, k=3)
        reader.get("d2")
    assert reads == []  # unchanged: a stat each time, no re-read
    script = WRITER.format(tests=str(REPO / "tests"), path=str(seeded_index.path))
    subprocess.run([sys.executable, "-c", script], check=True, cwd=REPO, timeout=300)
    assert reader.search(q, k=1)[0].id == "fresh"
    with pytest.raises(DocumentNotFoundError):
        reader.get("d1")
    assert "d1" not in reader and len(reader) == 80
    assert len(reads) == 1  # caught up once
    add(reader, [doc("after", 0)])  # and it can write on top of the other process's commit
    assert Index.open(seeded_index.path).get("fresh").text == "fresh version 0"


def test_relative_paths_are_resolved_once_at_open(tmp_path, encoder, monkeypatch):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    monkeypatch.chdir(tmp_path / "a")
    index = Index.create("kb", encoder, index_type="exact")
    sharded = ShardedIndex.create("kb-sharded", 2, encoder)
    assert index.path == tmp_path / "a" / "kb" and sharded.path == tmp_path / "a" / "kb-sharded"
    monkeypatch.chdir(tmp_path / "b")
    Index.create("kb", encoder, index_type="exact")  # another index with the same relative name
    add(index, [doc("x", 0)])
    add(sharded, [doc("x", 0)])
    assert "x" in Index.open(tmp_path / "a" / "kb") and "x" not in Index.open(tmp_path / "b" / "kb")
    assert "x" in ShardedIndex.open(tmp_path / "a" / "kb-sharded")
    assert os.path.isabs(Index.open("kb").path)
