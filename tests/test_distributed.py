"""The sharded index on Ray: equality with one local index, placement over a three-node
cluster, replicas surviving killed actors, partial results, and writes through the coordinator."""

import threading
import time

import numpy as np
import pytest
import torch

ray = pytest.importorskip("ray")

from lir_agent import Index, ResidualCodec  # noqa: E402
from lir_agent.distributed import RayIndex, ShardUnavailableError  # noqa: E402
from lir_agent.sharded import ShardedIndex, shard_of  # noqa: E402

from helpers import clustered, queries_for  # noqa: E402

ACTOR_CPUS = 0.2  # three nodes of one CPU hold every replica of these tests


@pytest.fixture(scope="module")
def corpus():
    return clustered(400, seed=11)


@pytest.fixture(scope="module", params=["exact", "compressed"])
def built(request, tmp_path_factory, encoder, corpus):
    """(single index, sharded directory) over the same documents."""
    docs, matrices, _ = corpus
    codec = ResidualCodec.fit(torch.cat(matrices), nbits=2, num_centroids=64) if request.param == "compressed" else None
    root = tmp_path_factory.mktemp(request.param)
    single = Index.create(root / "single", encoder, index_type=request.param, codec=codec)
    sharded = ShardedIndex.create(root / "sharded", 3, encoder, index_type=request.param, codec=codec)
    for target in (single, sharded):
        target.add(docs, embeddings=matrices)
        target.delete([d["id"] for d in docs[::40]])
    return single, root / "sharded"


def same_results(expected, got):
    assert [h.id for h in got] == [h.id for h in expected]
    np.testing.assert_allclose([h.score for h in got], [h.score for h in expected], rtol=0, atol=1e-5)


def test_ray_index_equals_the_local_index_and_spreads_over_nodes(ray_cluster, built, corpus, encoder):
    single, path = built
    with RayIndex.open(path, encoder, num_replicas=2, num_cpus_per_shard=ACTOR_CPUS, spread="STRICT_SPREAD") as index:
        placement = index.placement()
        assert all(len({r["node_id"] for r in replicas}) == 2 for replicas in placement)  # replicas on two nodes
        assert len({r["node_id"] for replicas in placement for r in replicas}) == 3  # shards over all three
        queries = queries_for(corpus[2], 10, seed=3)
        for flt in (None, {"group": {"$in": [2, 5]}}, {"group": 99}):
            for k in (1, 10, 30):
                expected = single.search_batch(queries, k=k, filter=flt)
                for _ in range(2):  # both replicas of every shard answer in turn
                    for e, g in zip(expected, index.search_batch(queries, k=k, filter=flt)):
                        same_results(e, g)
                        assert not g.partial
        same_results(single.search(queries[0], k=5), index.search(queries[0], k=5))
        assert len(index) == len(single) and sorted(index.ids()) == sorted(single.ids())
        doc_id = next(single.ids())
        assert index.get(doc_id) == single.get(doc_id)
        assert index.info()["documents"] == len(single)


def test_a_killed_replica_loses_no_query(ray_cluster, built, corpus, encoder):
    single, path = built
    queries = queries_for(corpus[2], 8, seed=4)
    expected = single.search_batch(queries, k=10)
    with RayIndex.open(path, encoder, num_replicas=2, num_cpus_per_shard=ACTOR_CPUS) as index:
        answers, errors = [], []

        def stream():
            try:
                for i in range(60):
                    answers.append((i % len(queries), index.search(queries[i % len(queries)], k=10)))
            except Exception as exc:  # the assertion below reports it
                errors.append(exc)

        worker = threading.Thread(target=stream)
        worker.start()
        time.sleep(0.5)
        for shard in range(3):  # one replica of every shard dies; Ray restarts it from disk
            ray.kill(index.shards.replicas[shard][shard % 2], no_restart=False)
            time.sleep(0.2)
        worker.join()
        assert not errors and len(answers) == 60
        for q, hits in answers:
            same_results(expected[q], hits)
            assert not hits.partial


def test_a_shard_without_replicas_fails_clearly_or_partially(ray_cluster, built, corpus, encoder):
    single, path = built
    queries = queries_for(corpus[2], 4, seed=5)
    with RayIndex.open(path, encoder, num_replicas=1, num_cpus_per_shard=ACTOR_CPUS, call_timeout_s=30) as index:
        ray.kill(index.shards.replicas[1][0], no_restart=True)
        with pytest.raises(ShardUnavailableError, match="shard 1"):
            index.search(queries[0], k=10)
        partial = index.search_batch(queries, k=10, allow_partial=True)
        exact = single.index_type == "exact"
        for q, hits in zip(queries, partial):
            assert hits.partial and hits.missing_shards == (1,) and len(hits) == 10
            # what the two live shards hold, ranked by the single index over every document
            expected = [h.id for h in single.search(q, k=len(single)) if shard_of(h.id, 3) != 1][:10]
            if exact:
                assert [h.id for h in hits] == expected
            else:  # the compressed pipeline's cuts then see other competitors: nearly the same
                assert len({h.id for h in hits} & set(expected)) >= 8
                assert all(shard_of(h.id, 3) != 1 for h in hits)


def test_writes_through_the_coordinator(ray_cluster, tmp_path, encoder, corpus):
    docs, matrices, topics = corpus
    ShardedIndex.create(tmp_path / "w", 3, encoder)
    with RayIndex.open(tmp_path / "w", encoder, num_replicas=2, num_cpus_per_shard=ACTOR_CPUS) as index:
        index.add(docs[:120], embeddings=matrices[:120])
        assert index.delete([d["id"] for d in docs[:10]]) == 10
        index.upsert([{**docs[10], "text": "new text"}], embeddings=[matrices[11]])
        reference = Index.create(tmp_path / "ref", encoder, index_type="exact")
        reference.add(docs[11:120], embeddings=matrices[11:120])
        reference.add([{**docs[10], "text": "new text"}], embeddings=[matrices[11]])
        queries = queries_for(topics, 6, seed=6)
        for _ in range(2):  # the secondaries were refreshed after every write
            for e, g in zip(reference.search_batch(queries, k=10), index.search_batch(queries, k=10)):
                same_results(e, g)
        assert index.get(docs[10]["id"]).text == "new text" and len(index) == 110
        index.save()
    reopened = ShardedIndex.open(tmp_path / "w")
    assert sorted(reopened.ids()) == sorted(reference.ids())


def test_distributed_build_matches_a_local_build(ray_cluster, tmp_path, encoder):
    from lir_agent.corpus import read_documents
    from lir_agent.distributed.build import build_sharded

    from conftest import SAMPLE_CORPUS

    docs = list(read_documents(SAMPLE_CORPUS))[:90]
    counts = build_sharded(iter(docs), tmp_path / "built", 2, num_encoders=2, encoder_cpus=0.2, batch_docs=16,
                           max_in_flight=2, flush_docs=30, num_cpus_per_shard=ACTOR_CPUS, indexed_fields=["title"])
    assert counts == {"documents": 90, "written": 90, "num_shards": 2}
    local = Index.create(tmp_path / "local", encoder, index_type="exact")
    local.add(docs)
    built = ShardedIndex.open(tmp_path / "built")
    title = docs[7]["title"]
    for query in ["Which band released the album?", "a river in Europe", "film directed by"]:
        for spec in (None, {"title": title}, {"title": {"$ne": title}}):  # the filters run in the shards' stores
            expected, got = local.search(query, k=8, filter=spec), built.search(query, k=8, filter=spec)
            assert [h.id for h in got] == [h.id for h in expected]
            np.testing.assert_allclose([h.score for h in got], [h.score for h in expected], atol=2e-3)
    assert all(shard.indexed_fields == ["title"] for shard in built.shards.indexes)


def test_ray_index_threads_search_while_another_writes_and_replicas_see_other_writers(ray_cluster, tmp_path, encoder):
    from test_concurrency import add, doc, embed, hammer

    ShardedIndex.create(tmp_path / "r", 2, encoder)
    with RayIndex.open(tmp_path / "r", encoder, num_replicas=2, num_cpus_per_shard=ACTOR_CPUS) as index:
        add(index, [doc(f"d{i}", 0) for i in range(80)])
        errors = hammer(index)
        assert not errors, errors[0]
        assert len(index) == 80
        # another process writes a shard directly (here: this driver, outside the actors):
        # every replica catches up on its next call, without refresh() or save()
        target = next(i for i in range(200) if shard_of(f"fresh{i}", 2) == 0)
        outside = Index.open(tmp_path / "r" / "shard-00000")
        add(outside, [doc(f"fresh{target}", 0)])
        outside.delete([d for d in outside.ids() if d.startswith("d")][:1])
        q = embed(f"fresh{target} version 0").float()
        for _ in range(4):  # both replicas answer in turn
            assert index.search(q, k=1)[0].id == f"fresh{target}"
            assert len(index) == 80


def test_ray_index_excludes_ids_like_the_local_index(ray_cluster, built, corpus, encoder):
    single, path = built
    queries = queries_for(corpus[2], 4, seed=9)
    excluded = {h.id for q in queries for h in single.search(q, k=8)}
    with RayIndex.open(path, encoder, num_cpus_per_shard=ACTOR_CPUS) as index:
        for e, g in zip(single.search_batch(queries, k=10, exclude_ids=excluded),
                        index.search_batch(queries, k=10, exclude_ids=excluded)):
            same_results(e, g)
            assert len(g) == 10 and not {h.id for h in g} & excluded


def test_asking_for_resources_the_cluster_lacks_fails_clearly(ray_cluster, built, monkeypatch, encoder):
    from lir_agent.distributed import ray_index

    _, path = built
    monkeypatch.setattr(ray_index, "PLACEMENT_TIMEOUT_S", 2.0)
    with pytest.raises(ShardUnavailableError, match="cannot place 3 shard.*num_gpus_per_shard"):
        RayIndex.open(path, encoder, num_gpus_per_shard=1)


def test_a_session_on_a_ray_index_pages_without_repeats(ray_cluster, built, encoder):
    from lir_agent.agentic import SearchSession

    _, path = built
    with RayIndex.open(path, encoder, num_cpus_per_shard=ACTOR_CPUS) as index:
        session = SearchSession(index, k=3, cite=False)
        pages = [[h.id for h in session.search("a document of the first batch").hits] for _ in range(5)]
        flat = [doc_id for page in pages for doc_id in page]
        assert len(set(flat)) == 15
        assert flat == [h.id for h in index.search("a document of the first batch", k=15)]
