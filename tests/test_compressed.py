"""The compressed engine: recall against exact search, updates equal to a rebuild, optimize,
filters, auto conversion, projection, long documents, settings, and CPU/CUDA parity."""

import numpy as np
import pytest
import torch

import lir_agent.index as index_module
from lir_agent import Index, InvalidInputError
from lir_agent.codec import ResidualCodec
from lir_agent.engines import CompressedEngine

from helpers import DIM, clustered, queries_for




@pytest.fixture(scope="module")
def corpus():
    return clustered(600, seed=1)


@pytest.fixture(scope="module")
def exact_index(tmp_path_factory, encoder, corpus):
    docs, matrices, _ = corpus
    index = Index.create(tmp_path_factory.mktemp("exact") / "idx", encoder=encoder, index_type="exact")
    index.add(docs, embeddings=matrices)
    return index


@pytest.mark.parametrize("nbits, floor", [(16, 0.97), (4, 0.95), (2, 0.85)])
def test_recall_against_exact_search(tmp_path, encoder, corpus, exact_index, nbits, floor):
    docs, matrices, topics = corpus
    index = Index.create(tmp_path / "idx", encoder=encoder, index_type="compressed", nbits=nbits)
    index.add(docs, embeddings=matrices)
    assert index.index_type == "compressed" and index.info()["codec"]["nbits"] == nbits
    overlaps = []
    for query in queries_for(topics, 25, seed=5):
        expected = {h.id for h in exact_index.search(query, k=10)}
        overlaps.append(len(expected & {h.id for h in index.search(query, k=10)}) / 10)
    assert np.mean(overlaps) >= floor, np.mean(overlaps)
    # with every document reranked the only loss left is residual precision
    wide = [len({h.id for h in exact_index.search(q, k=10)} &
                {h.id for h in index.search(q, k=10, nprobe=64, candidates=600, rerank=600)}) / 10
            for q in queries_for(topics, 10, seed=6)]
    assert np.mean(wide) >= max(floor, np.mean(overlaps) - 0.02)


def test_updates_equal_a_rebuild_with_the_same_codec(tmp_path, encoder):
    docs, matrices, topics = clustered(300, seed=2)
    more, more_matrices, _ = clustered(120, seed=3)
    index = Index.create(tmp_path / "updated", encoder=encoder, index_type="compressed", nbits=2)
    index.add(docs[:200], embeddings=matrices[:200])  # trains the codec
    index.add(docs[200:], embeddings=matrices[200:])
    index.add(more, embeddings=more_matrices)
    index.delete([d["id"] for d in docs[::5]])
    replaced = [{**d, "text": d["text"] + " (new)"} for d in docs[1:40:3]]
    replaced_matrices = [m.flip(0) for m in matrices[1:40:3]]
    index.upsert(replaced, embeddings=replaced_matrices)
    assert index.info()["segments"] >= 3

    final = {d["id"]: (d, m) for d, m in zip(docs + more, matrices + more_matrices)}
    for d in docs[::5]:
        del final[d["id"]]
    final.update({d["id"]: (d, m) for d, m in zip(replaced, replaced_matrices)})
    codec = ResidualCodec.load(index.path / index._state.manifest["codec"]["dir"])
    rebuilt = Index.create(tmp_path / "rebuilt", encoder=encoder, codec=codec)
    rebuilt.add([d for d, _ in final.values()], embeddings=[m for _, m in final.values()])
    assert sorted(index.ids()) == sorted(rebuilt.ids())
    for query in queries_for(topics, 20, seed=7):
        for params in ({}, {"nprobe": 2, "candidates": 20, "rerank": 10}):
            got, want = index.search(query, k=10, **params), rebuilt.search(query, k=10, **params)
            assert [h.id for h in got] == [h.id for h in want]
            np.testing.assert_allclose([h.score for h in got], [h.score for h in want], rtol=1e-5)
    assert index.get(replaced[0]["id"]).text.endswith("(new)")


def test_optimize_retrains_and_preserves_documents(tmp_path, encoder):
    docs, matrices, topics = clustered(200, seed=4)
    index = Index.create(tmp_path / "idx", encoder=encoder, index_type="compressed", nbits=2)
    index.add(docs, embeddings=matrices)
    assert index.optimize() is False  # no drift yet
    shifted, shifted_matrices, shifted_topics = clustered(200, seed=9)  # other topics: the codec fits worse
    index.add(shifted, embeddings=shifted_matrices)
    drift = index.drift()
    assert drift["added_tokens"] == sum(m.shape[0] for m in shifted_matrices) and drift["ratio"] > 1.15
    before = {i: index.get(i) for i in index.ids()}
    old_codec = index._state.manifest["codec"]["dir"]
    assert index.optimize() is True
    reopened = Index.open(index.path)
    assert reopened._state.manifest["codec"]["dir"] != old_codec and reopened.drift()["ratio"] == pytest.approx(1.0)
    assert {i: reopened.get(i) for i in reopened.ids()} == before
    assert not (index.path / old_codec).exists()
    query = queries_for(shifted_topics, 1, seed=3)[0]
    assert reopened.search(query, k=5)[0].id.startswith("d9-")


def test_filters_return_k_matching_results(tmp_path, encoder, corpus, exact_index):
    docs, matrices, topics = corpus
    index = Index.create(tmp_path / "idx", encoder=encoder, index_type="compressed", nbits=2)
    index.add(docs, embeddings=matrices)
    query = queries_for(topics, 1, seed=8)[0]
    for spec, size in (({"group": 3}, 86), ({"group": {"$in": [1, 2]}}, 172), (lambda m: m["group"] == 0 and False, 0)):
        hits = index.search(query, k=10, filter=spec, nprobe=1, candidates=10, rerank=10)
        assert len(hits) == min(10, size)
        assert index.count(spec) == size
        if size:
            predicate = spec if callable(spec) else None
            assert all(predicate(h.metadata) if predicate else True for h in hits)
    selective = index.search(query, k=10, filter={"group": 3})
    assert len(selective) == 10 and all(h.metadata["group"] == 3 for h in selective)
    rare = index.search(query, k=10, filter={"$or": [{"group": 5}, {"group": 6}]}, nprobe=1)
    assert len(rare) == 10 and {h.metadata["group"] for h in rare} <= {5, 6}


def test_auto_index_type_compresses_above_the_threshold(tmp_path, encoder, monkeypatch):
    monkeypatch.setattr(index_module, "AUTO_COMPRESS_TOKENS", 5000)
    docs, matrices, topics = clustered(200, seed=11)
    index = Index.create(tmp_path / "idx", encoder=encoder)  # index_type="auto"
    index.add(docs[:50], embeddings=matrices[:50])
    assert index.index_type == "exact" and index.info()["compresses_at_tokens"] == 5000
    index.add(docs[50:], embeddings=matrices[50:])
    assert index.index_type == "compressed" and len(index) == 200
    reopened = Index.open(index.path)
    assert reopened.index_type == "compressed" and sorted(reopened.ids()) == sorted(d["id"] for d in docs)
    assert reopened.get(docs[3]["id"]).metadata == docs[3]["metadata"]
    assert len(reopened.search(queries_for(topics, 1, seed=2)[0], k=10)) == 10


def test_projection_reduces_dimension(tmp_path, encoder, corpus, exact_index):
    docs, matrices, topics = corpus
    index = Index.create(tmp_path / "idx", encoder=encoder, index_type="compressed", nbits=16, projection_dim=128)
    index.add(docs, embeddings=matrices)
    info = index.info()
    assert info["codec"]["dim"] == 128 and info["codec"]["projected"] and info["dim"] == DIM
    assert index.get_embeddings(docs[0]["id"]).shape == (matrices[0].shape[0], 128)
    overlaps = [len({h.id for h in exact_index.search(q, k=10)} & {h.id for h in index.search(q, k=10)}) / 10
                for q in queries_for(topics, 15, seed=12)]
    assert np.mean(overlaps) >= 0.85


def test_long_documents(tmp_path, encoder):
    g = torch.Generator().manual_seed(13)
    long_matrix = torch.nn.functional.normalize(torch.randn(6000, DIM, generator=g), dim=1)
    docs, matrices, _ = clustered(100, seed=14)
    for index_type in ("exact", "compressed"):
        index = Index.create(tmp_path / index_type, encoder=encoder, index_type=index_type, nbits=4)
        index.add(docs + [{"id": "long", "text": "a very long document"}], embeddings=matrices + [long_matrix])
        hits = index.search(long_matrix[2500:2510], k=3)
        assert hits[0].id == "long"
        assert index.get_embeddings("long").shape == (6000, DIM)


def test_search_settings_are_checked(tmp_path, encoder, corpus, exact_index):
    docs, matrices, topics = corpus
    query = queries_for(topics, 1, seed=1)[0]
    with pytest.raises(InvalidInputError, match="compressed indexes only"):
        exact_index.search(query, k=5, nprobe=4)
    index = Index.create(tmp_path / "idx", encoder=encoder, index_type="compressed")
    index.add(docs[:100], embeddings=matrices[:100])
    with pytest.raises(InvalidInputError, match="unknown search settings"):
        index.search(query, k=5, nprob=4)
    with pytest.raises(InvalidInputError, match="positive integer"):
        index.search(query, k=5, nprobe=0)
    with pytest.raises(InvalidInputError, match="nbits"):
        Index.create(tmp_path / "bad", encoder=encoder, nbits=3)
    with pytest.raises(InvalidInputError, match="index_type"):
        Index.create(tmp_path / "bad", encoder=encoder, index_type="fast")
    assert len(index.search(query, k=5, nprobe=1, candidates=5, rerank=5)) == 5


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_gives_the_cpu_top10(tmp_path, encoder, corpus):
    docs, matrices, topics = corpus
    index = Index.create(tmp_path / "idx", encoder=encoder, index_type="compressed", nbits=2)
    index.add(docs, embeddings=matrices)
    on_gpu = Index.open(index.path, device="cuda")
    for query in queries_for(topics, 10, seed=15):
        assert [h.id for h in on_gpu.search(query, k=10)] == [h.id for h in index.search(query, k=10)]


def test_batch_search_equals_single_searches(tmp_path, encoder, corpus):
    docs, matrices, topics = corpus
    index = Index.create(tmp_path / "idx", encoder=encoder, index_type="compressed", nbits=2)
    index.add(docs, embeddings=matrices)
    queries = queries_for(topics, 12, seed=21)
    threads = torch.get_num_threads()
    batched = index.search_batch(queries, k=7, filter={"group": {"$lte": 4}})
    assert torch.get_num_threads() == threads  # restored after the batch
    for query, hits in zip(queries, batched):
        single = index.search(query, k=7, filter={"group": {"$lte": 4}})
        assert [h.id for h in hits] == [h.id for h in single]
        np.testing.assert_allclose([h.score for h in hits], [h.score for h in single], rtol=1e-5)


def test_optimize_keeps_the_projection(tmp_path, encoder):
    docs, matrices, topics = clustered(200, seed=16)
    index = Index.create(tmp_path / "idx", encoder=encoder, index_type="compressed", nbits=4, projection_dim=96)
    index.add(docs, embeddings=matrices)
    query = queries_for(topics, 1, seed=4)[0]
    before = [h.id for h in index.search(query, k=5)]
    assert index.optimize(force=True) is True
    reopened = Index.open(index.path)
    assert reopened.info()["codec"]["dim"] == 96 and reopened.info()["codec"]["projected"]
    assert reopened.get_embeddings(docs[0]["id"]).shape == (matrices[0].shape[0], 96)
    after = [h.id for h in reopened.search(query, k=5)]
    assert len(set(before) & set(after)) >= 4


def test_prepared_queries_are_reused_only_for_the_same_matrices(corpus):
    """Every round of a sharded search re-sends the queries; the engine keeps their preparation,
    keyed by content and shape (the same values split into other queries are other queries)."""
    _, matrices, _ = corpus
    engine = CompressedEngine(ResidualCodec.fit(torch.cat(matrices[:200]), nbits=2, num_centroids=32))
    values = torch.nn.functional.normalize(torch.randn(6, DIM), dim=1)
    first = engine.prepare_queries([values[:2], values[2:]], "cpu")
    assert engine.prepare_queries([values[:2].clone(), values[2:].clone()], "cpu") is first
    other = engine.prepare_queries([values[:3], values[3:]], "cpu")
    assert [v.shape[0] for v in other.vectors] == [3, 3]
    for vectors, scores in zip(other.vectors, other.centroid_scores):
        torch.testing.assert_close(scores, vectors @ engine.codec.centroids.T)
