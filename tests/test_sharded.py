"""The sharded layout searched in this process: routing, equality with one index holding the
same documents, writes routed by id, and resharding."""

import hashlib
import json

import numpy as np
import pytest
import torch

from lir_agent import DocumentNotFoundError, DuplicateIdError, Index, InvalidInputError, NotAnIndexError, ResidualCodec
from lir_agent.engines import pipeline
from lir_agent.sharded import ShardedIndex, reshard, shard_of

from helpers import clustered, queries_for

DEFAULT_SIGMAS = pipeline.SPECULATION_SIGMAS
DEFAULT_RERANK_SIGMAS = pipeline.RERANK_SPECULATION_SIGMAS
FILTERS = [None, {"group": {"$in": [1, 2]}}, {"group": 3, "batch": 1}, {"group": 99}]


def test_routing_is_a_stable_hash_of_the_id():
    for doc_id in ["a", "doc-17", "ünïcode", "x" * 300]:
        expected = int.from_bytes(hashlib.blake2b(doc_id.encode(), digest_size=8).digest(), "little") % 7
        assert shard_of(doc_id, 7) == expected
    counts = np.bincount([shard_of(f"doc-{i}", 4) for i in range(8000)], minlength=4)
    assert counts.min() > 0.9 * 2000 and counts.max() < 1.1 * 2000


@pytest.fixture(scope="module")
def corpus():
    return clustered(500, seed=4)


@pytest.fixture(scope="module")
def codec(corpus):
    _, matrices, _ = corpus
    return ResidualCodec.fit(torch.cat(matrices), nbits=2, num_centroids=64)


def build_pair(tmp_path, encoder, corpus, codec, num_shards):
    """One index and a sharded one over the same documents (added in two calls, with deletes)."""
    docs, matrices, _ = corpus
    index_type = "exact" if codec is None else "compressed"
    single = Index.create(tmp_path / "single", encoder, index_type=index_type, codec=codec)
    sharded = ShardedIndex.create(tmp_path / "sharded", num_shards, encoder, index_type=index_type, codec=codec)
    for target in (single, sharded):
        target.add(docs[:300], embeddings=matrices[:300])
        target.add(docs[300:], embeddings=matrices[300:])
        target.delete([d["id"] for d in docs[::50]])
    return single, sharded


@pytest.mark.parametrize("kind", ["exact", "compressed"])
def test_sharded_search_equals_one_index(tmp_path, encoder, corpus, codec, kind):
    single, sharded = build_pair(tmp_path, encoder, corpus, codec if kind == "compressed" else None, num_shards=3)
    assert len(single) == len(sharded) == 490
    queries = queries_for(corpus[2], 12, seed=5)
    for flt in FILTERS:
        for k in (1, 10, 40):
            expected = single.search_batch(queries, k=k, filter=flt)
            got = sharded.search_batch(queries, k=k, filter=flt)
            assert len(got) == len(expected)
            for e, g in zip(expected, got):
                assert [h.id for h in g] == [h.id for h in e]
                np.testing.assert_allclose([h.score for h in g], [h.score for h in e], rtol=0, atol=1e-5)
                assert [h.rank for h in g] == list(range(1, len(g) + 1)) and not g.partial
    if kind == "compressed":  # per-call settings reach every round
        settings = {"nprobe": 2, "candidates": 40, "rerank": 20}
        for e, g in zip(single.search_batch(queries, k=10, **settings), sharded.search_batch(queries, k=10, **settings)):
            assert [h.id for h in g] == [h.id for h in e]



@pytest.mark.parametrize("sigmas, rerank_sigmas, speculative_batch, drop_documents, extra_rounds", [
    (DEFAULT_SIGMAS, DEFAULT_RERANK_SIGMAS, 12, False, set()),
    (-3.0, DEFAULT_RERANK_SIGMAS, 12, False, {"interaction", "rerank"}),  # unscored candidates were not reranked
    (0.0, -3.0, 12, False, {"interaction", "rerank"}),
    (DEFAULT_SIGMAS, -3.0, 12, False, {"rerank"}),
    (DEFAULT_SIGMAS, DEFAULT_RERANK_SIGMAS, 12, True, {"documents"}),
    (DEFAULT_SIGMAS, DEFAULT_RERANK_SIGMAS, 11, False, {"rerank"}),  # a larger batch reranks in its own round
])
def test_what_the_probe_round_left_undone_gets_its_own_round(tmp_path, encoder, corpus, codec, monkeypatch, sigmas,
                                                             rerank_sigmas, speculative_batch, drop_documents,
                                                             extra_rounds):
    """Shards score only part of their candidates by interaction, and rerank only part of
    those, in the probe round; whatever the global cuts keep beyond that is scored in extra
    rounds (and documents the shards did not send are fetched), and the results do not change.
    With the default margins a search of 12 queries is one round here."""
    single, sharded = build_pair(tmp_path, encoder, corpus, codec, num_shards=3)
    monkeypatch.setattr(pipeline, "SPECULATION_SIGMAS", sigmas)
    monkeypatch.setattr(pipeline, "RERANK_SPECULATION_SIGMAS", rerank_sigmas)
    monkeypatch.setattr(pipeline, "SPECULATIVE_RERANK_QUERIES", speculative_batch)
    stages = []
    fan_out = sharded.shards.fan_out

    def recording_fan_out(method, args, shards=None, allow_partial=False):
        stages.append(args[0][0])
        rounds = fan_out(method, args, shards, allow_partial)
        if drop_documents and args[0][0] == "probe":  # a shard that sends no documents with its hits
            for ranked in (r for round_ in rounds for r in round_.ranked):
                ranked.documents = None
        return rounds

    monkeypatch.setattr(sharded.shards, "fan_out", recording_fan_out)
    queries = queries_for(corpus[2], 12, seed=6)
    for flt in FILTERS[:3]:
        for k in (1, 10):
            for e, g in zip(single.search_batch(queries, k=k, filter=flt), sharded.search_batch(queries, k=k, filter=flt)):
                assert [h.id for h in g] == [h.id for h in e]
                np.testing.assert_allclose([h.score for h in g], [h.score for h in e], rtol=0, atol=1e-5)
                assert [(h.text, h.metadata) for h in g] == [(h.text, h.metadata) for h in e]
    assert set(stages) - {"probe"} == extra_rounds


def test_writes_go_to_the_owning_shard(tmp_path, encoder, corpus):
    docs, matrices, _ = corpus
    sharded = ShardedIndex.create(tmp_path / "s", 4, encoder)
    sharded.add(docs[:100], embeddings=matrices[:100])
    for i, name in enumerate(sharded.layout["shards"]):
        held = set(Index.open(tmp_path / "s" / name).ids())
        assert held == {d["id"] for d in docs[:100] if shard_of(d["id"], 4) == i}
    before = sorted(sharded.ids())
    with pytest.raises(DuplicateIdError):
        sharded.add(docs[95:110], embeddings=matrices[95:110])
    assert sorted(sharded.ids()) == before  # nothing of the refused call was written
    with pytest.raises(DocumentNotFoundError):
        sharded.delete([docs[0]["id"], "no-such-id"])
    assert docs[0]["id"] in sharded
    assert sharded.delete([docs[0]["id"], "no-such-id"], missing_ok=True) == 1
    sharded.upsert([{**docs[1], "text": "replaced"}], embeddings=[matrices[2]])
    assert sharded.get(docs[1]["id"]).text == "replaced"
    torch.testing.assert_close(sharded.get_embeddings(docs[1]["id"]), matrices[2].half())
    with pytest.raises(InvalidInputError):
        sharded.add([{"id": "bad", "text": "x"}], embeddings=[torch.zeros(3, 5)])
    reopened = ShardedIndex.open(tmp_path / "s")
    assert sorted(reopened.ids()) == sorted(sharded.ids()) and len(reopened) == 99
    assert reopened.count({"group": 1}) == sum(1 for d in docs[1:100] if d["metadata"]["group"] == 1)
    with pytest.raises(NotAnIndexError, match="shard"):
        ShardedIndex.open(tmp_path / "s" / sharded.layout["shards"][0])
    with pytest.raises(NotAnIndexError, match="ShardedIndex.open"):
        Index.open(tmp_path / "s")


@pytest.mark.parametrize("kind", ["exact", "compressed"])
def test_reshard_preserves_every_document(tmp_path, encoder, corpus, codec, kind):
    single, _ = build_pair(tmp_path, encoder, corpus, codec if kind == "compressed" else None, num_shards=2)
    reshard(single.path, tmp_path / "three", 3, show_progress=False)
    reshard(tmp_path / "three", tmp_path / "two", 2, show_progress=False)
    resharded = ShardedIndex.open(tmp_path / "two")
    assert sorted(resharded.ids()) == sorted(single.ids())
    for doc_id in single.ids():
        assert resharded.get(doc_id) == single.get(doc_id)
        torch.testing.assert_close(resharded.get_embeddings(doc_id), single.get_embeddings(doc_id), atol=0, rtol=0)
    queries = queries_for(corpus[2], 6, seed=9)
    for e, g in zip(single.search_batch(queries, k=10), resharded.search_batch(queries, k=10)):
        assert [h.id for h in g] == [h.id for h in e]
    with pytest.raises(InvalidInputError, match="not empty"):
        reshard(single.path, tmp_path / "two", 4, show_progress=False)


def test_reshard_search_and_info_from_the_command_line(tmp_path, sample_index_path, capsys):
    from lir_agent.cli import main

    assert main(["reshard", str(sample_index_path), str(tmp_path / "three"), "--shards", "3"]) == 0
    assert main(["info", str(tmp_path / "three"), "--verify"]) == 0
    info = json.loads(capsys.readouterr().out.split("\n", 1)[1])
    assert info["num_shards"] == 3 and info["documents"] == len(Index.open(sample_index_path))
    assert main(["search", str(tmp_path / "three"), "Which band released the album?", "-k", "3", "--json"]) == 0
    hits = json.loads(capsys.readouterr().out)
    assert [h["id"] for h in hits] == [h.id for h in Index.open(sample_index_path).search("Which band released the album?", k=3)]
    assert main(["reshard", str(tmp_path / "three"), str(tmp_path / "three"), "--shards", "2"]) == 2


@pytest.mark.parametrize("kind", ["exact", "compressed"])
def test_exclude_ids_returns_the_best_documents_not_excluded(tmp_path, encoder, corpus, codec, kind):
    """Exclusion applies before scoring, like a filter: the best k of the rest (k of them
    whenever k remain), the same as searching an index where those documents were deleted, on
    one index and sharded alike; exact search equals the exact ranking with the ids removed."""
    single, sharded = build_pair(tmp_path, encoder, corpus, codec if kind == "compressed" else None, num_shards=3)
    queries = queries_for(corpus[2], 6, seed=8)
    rankings = [single.search(q, k=len(single)) for q in queries]
    excluded = {h.id for ranking in rankings for h in ranking[:12]} | {"no-such-id"}
    without = build_pair(tmp_path / "without", encoder, corpus, codec if kind == "compressed" else None, num_shards=2)
    for index in without:
        index.delete(list(excluded & set(index.ids())))
    for q, ranking in zip(queries, rankings):
        for flt in (None, {"group": {"$in": [1, 2]}}):
            for k in (1, 10):
                reference = without[0].search(q, k=k, filter=flt)
                assert len(reference) == k
                for index in (single, sharded):
                    got = index.search(q, k=k, filter=flt, exclude_ids=excluded)
                    assert [h.id for h in got] == [h.id for h in reference]
                    np.testing.assert_allclose([h.score for h in got], [h.score for h in reference], atol=1e-5)
                if kind == "exact" and flt is None:
                    assert [h.id for h in reference] == [h.id for h in ranking if h.id not in excluded][:k]
    everything = list(single.ids())
    assert single.search(queries[0], k=5, exclude_ids=everything) == []
    assert {h.id for h in sharded.search(queries[0], k=5, exclude_ids=everything[:-2])} == set(everything[-2:])
    with pytest.raises(InvalidInputError, match="exclude_ids"):
        single.search(queries[0], exclude_ids="one-id")
    with pytest.raises(InvalidInputError, match="exclude_ids"):
        sharded.search(queries[0], exclude_ids=[3])
