"""The exact index: ids, metadata, filters, persistence, and search equal to a naive reference."""

import json

import numpy as np
import pytest
import torch

from lir_agent import (
    Document,
    DocumentNotFoundError,
    DuplicateIdError,
    EncoderMismatchError,
    Index,
    IndexCorruptedError,
    InvalidInputError,
    NotAnIndexError,
)

from helpers import naive_maxsim, random_matrices

DIM = 384


def make_docs(n, seed=0, prefix="doc"):
    matrices = random_matrices(n, DIM, seed=seed, max_len=30)
    docs = [
        {"id": f"{prefix}-{i}", "text": f"text of {prefix} {i}",
         "metadata": {"year": 2000 + i % 10, "topic": ["bio", "cs", "math"][i % 3], "n": {"i": i}}}
        for i in range(n)
    ]
    return docs, matrices


@pytest.fixture
def index(tmp_path, encoder):
    return Index.create(tmp_path / "idx", encoder=encoder)


def reference_search(stored: dict, query: torch.Tensor, k: int, keep=lambda doc: True):
    """Brute force over a dict id -> (doc, matrix)."""
    items = [(doc_id, m) for doc_id, (doc, m) in stored.items() if keep(doc)]
    scores = naive_maxsim(query, [m.half() for _, m in items])
    order = scores.argsort(descending=True)[:k]
    return [items[i][0] for i in order], scores[order]


def test_search_matches_naive_reference_across_writes(index):
    docs, matrices = make_docs(120, seed=1)
    stored = {d["id"]: (d, m) for d, m in zip(docs, matrices)}
    index.add(docs[:70], embeddings=matrices[:70])
    index.add(docs[70:], embeddings=matrices[70:])
    replaced, new_matrices = make_docs(10, seed=7)
    for i, (doc, matrix) in enumerate(zip(replaced, new_matrices)):
        doc["id"] = f"doc-{i * 11}"
        stored[doc["id"]] = (doc, matrix)
    index.upsert(replaced, embeddings=new_matrices)
    gone = [f"doc-{i}" for i in range(5, 120, 9)]
    assert index.delete(gone) == len(gone)
    for doc_id in gone:
        del stored[doc_id]
    assert len(index) == len(stored) == index.count()

    queries = random_matrices(6, DIM, seed=3, max_len=16)
    for reopen in (False, True):
        current = Index.open(index.path) if reopen else index
        results = current.search_batch(queries, k=12)
        for query, hits in zip(queries, results):
            ids, scores = reference_search(stored, query, 12)
            assert [h.id for h in hits] == ids
            np.testing.assert_allclose([h.score for h in hits], scores.numpy(), atol=1e-3)
            assert [h.rank for h in hits] == list(range(1, 13))
            assert hits[0].text == stored[hits[0].id][0]["text"]
            assert hits[0].metadata == stored[hits[0].id][0]["metadata"]
    index.compact()
    assert Index.open(index.path).info()["segments"] == 1
    compacted = Index.open(index.path).search(queries[0], k=12)
    assert [h.id for h in compacted] == reference_search(stored, queries[0], 12)[0]


@pytest.mark.parametrize(
    "spec, keep",
    [
        ({"topic": "bio"}, lambda d: d["metadata"]["topic"] == "bio"),
        ({"topic": {"$in": ["cs", "math"]}}, lambda d: d["metadata"]["topic"] in ("cs", "math")),
        ({"year": {"$gte": 2003, "$lt": 2006}}, lambda d: 2003 <= d["metadata"]["year"] < 2006),
        ({"n.i": {"$gt": 50}}, lambda d: d["metadata"]["n"]["i"] > 50),
        ({"$or": [{"topic": "bio"}, {"year": 2001}]}, lambda d: d["metadata"]["topic"] == "bio" or d["metadata"]["year"] == 2001),
        ({"topic": {"$ne": "bio"}, "year": {"$nin": [2000, 2001]}},
         lambda d: d["metadata"]["topic"] != "bio" and d["metadata"]["year"] not in (2000, 2001)),
        (lambda m: m["year"] % 2 == 0 and m["topic"] == "cs", lambda d: d["metadata"]["year"] % 2 == 0 and d["metadata"]["topic"] == "cs"),
    ],
)
def test_filters_return_k_matching_results(index, spec, keep):
    docs, matrices = make_docs(90, seed=2)
    index.add(docs, embeddings=matrices)
    stored = {d["id"]: (d, m) for d, m in zip(docs, matrices)}
    query = random_matrices(1, DIM, seed=4)[0]
    hits = index.search(query, k=8, filter=spec)
    expected, _ = reference_search(stored, query, 8, keep)
    assert [h.id for h in hits] == expected
    assert len(hits) == min(8, sum(keep(d) for d in docs))
    assert index.count(spec) == sum(keep(d) for d in docs)


def test_filter_on_absent_field_is_empty_not_an_error(index):
    docs, matrices = make_docs(10)
    index.add(docs, embeddings=matrices)
    assert index.search(matrices[0], k=5, filter={"nonexistent": 1}) == []
    assert index.search(matrices[0], k=5, filter={"nonexistent": {"$gt": 1}}) == []
    with pytest.raises(InvalidInputError, match=r"unknown operator '\$regex'"):
        index.search(matrices[0], k=5, filter={"topic": {"$regex": "b.*"}})
    with pytest.raises(InvalidInputError, match=r"\$in needs a list"):
        index.search(matrices[0], k=5, filter={"topic": {"$in": "bio"}})


def test_text_search_get_and_document_round_trip(index):
    index.add([
        {"id": "cat", "text": "The cat sat on the mat and purred.", "metadata": {"kind": "animal"}},
        {"_id": "qcd", "title": "Physics", "text": "Quantum chromodynamics describes the strong force between quarks."},
        Document("rome", "Rome is the capital city of Italy.", {"kind": "place"}),
    ])
    assert index.search("where do quarks interact?", k=1)[0].id == "qcd"
    assert index.search("capital of Italy", k=1)[0].id == "rome"
    assert index.get("qcd").metadata == {"title": "Physics"}
    assert index.get("qcd").text.startswith("Physics. Quantum")
    assert "cat" in index and "dog" not in index
    assert sorted(index.ids()) == ["cat", "qcd", "rome"]
    assert index.get_embeddings("cat").shape[1] == DIM
    batch = index.search_batch(["a purring cat", "strong force"], k=2)
    assert [hits[0].id for hits in batch] == ["cat", "qcd"]


# ------------------------------------------------------------------ bad input leaves the index unchanged
def snapshot(index):
    return sorted((doc_id, index.get(doc_id).text) for doc_id in index.ids()), \
        (index.path / "manifest.json").read_bytes()


@pytest.mark.parametrize(
    "call, error, message",
    [
        (lambda ix, m: ix.search("   ", k=3), InvalidInputError, "empty or whitespace"),
        (lambda ix, m: ix.search("", k=3), InvalidInputError, "empty or whitespace"),
        (lambda ix, m: ix.add([{"id": "x", "text": "  "}], embeddings=[m]), InvalidInputError, "empty text"),
        (lambda ix, m: ix.add([{"id": "x", "text": "a"}, {"id": "x", "text": "b"}], embeddings=[m, m]),
         DuplicateIdError, "appears twice"),
        (lambda ix, m: ix.add([{"id": "doc-1", "text": "again"}], embeddings=[m]), DuplicateIdError, "already in the index"),
        (lambda ix, m: ix.add([{"text": "no id"}], embeddings=[m]), InvalidInputError, "non-empty string id"),
        (lambda ix, m: ix.add([{"id": "x", "text": "t", "metadata": {"f": object()}}], embeddings=[m]),
         InvalidInputError, "JSON"),
        (lambda ix, m: ix.delete(["doc-1", "nope"]), DocumentNotFoundError, "unknown id"),
        (lambda ix, m: ix.search(torch.randn(4, 100), k=3), InvalidInputError, r"\(n_tokens, 384\)"),
        (lambda ix, m: ix.search(torch.full((4, DIM), float("nan")), k=3), InvalidInputError, "NaN"),
        (lambda ix, m: ix.add([{"id": "x", "text": "t"}], embeddings=[torch.full((3, DIM), float("inf"))]),
         InvalidInputError, "NaN or infinite"),
        (lambda ix, m: ix.add([{"id": "x", "text": "t"}], embeddings=[torch.randn(3, 7)]), InvalidInputError, "shape"),
        (lambda ix, m: ix.add([{"id": "x", "text": "t"}], embeddings=[torch.zeros(0, DIM)]), InvalidInputError, "no token"),
        (lambda ix, m: ix.search(m, k=0), InvalidInputError, "k must be positive"),
        (lambda ix, m: ix.search(m, k=-3), InvalidInputError, "k must be positive"),
        (lambda ix, m: ix.search(m, k=10**9), InvalidInputError, "larger than the maximum"),
        (lambda ix, m: ix.search(m, k=2.5), InvalidInputError, "integer"),
        (lambda ix, m: ix.search(m, filter=42), InvalidInputError, "dict or a callable"),
    ],
)
def test_bad_input_is_refused_and_nothing_changes(index, call, error, message):
    docs, matrices = make_docs(5)
    index.add(docs, embeddings=matrices)
    before = snapshot(index)
    with pytest.raises(error, match=message):
        call(index, matrices[0])
    assert snapshot(index) == before
    assert snapshot(Index.open(index.path)) == before


def test_delete_missing_ok(index):
    docs, matrices = make_docs(3)
    index.add(docs, embeddings=matrices)
    assert index.delete(["nope", "doc-0"], missing_ok=True) == 1
    assert index.delete("nope", missing_ok=True) == 0
    assert len(index) == 2


def test_paths_that_are_not_indexes(tmp_path, encoder):
    with pytest.raises(NotAnIndexError, match="no manifest.json"):
        Index.open(tmp_path / "missing")
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "notes.txt").write_text("hello")
    with pytest.raises(NotAnIndexError):
        Index.open(tmp_path / "plain")
    with pytest.raises(InvalidInputError, match="not empty"):
        Index.create(tmp_path / "plain", encoder=encoder)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "manifest.json").write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(NotAnIndexError, match="not a lir_agent manifest"):
        Index.open(tmp_path / "other")


@pytest.mark.parametrize("damage", ["truncate_tokens", "flip_docs", "flip_docs_page", "truncate_offsets",
                                    "garble_manifest", "delete_docs", "bad_tokens_header"])
def test_damaged_files_are_named(tmp_path, encoder, damage):
    index = Index.create(tmp_path / "idx", encoder=encoder)
    docs, matrices = make_docs(20)
    index.add(docs, embeddings=matrices)
    segment = next((tmp_path / "idx" / "segments").iterdir())
    if damage == "truncate_tokens":
        target = segment / "tokens.npy"
        target.write_bytes(target.read_bytes()[:-100])
    elif damage in ("flip_docs", "flip_docs_page"):  # the SQLite header, or a byte of a page (found by verify)
        target = segment / "docs.sqlite"
        data = bytearray(target.read_bytes())
        data[10 if damage == "flip_docs" else len(data) - 200] ^= 0x20
        target.write_bytes(bytes(data))
    elif damage == "truncate_offsets":
        target = segment / "offsets.npy"
        target.write_bytes(target.read_bytes()[:20])
    elif damage == "garble_manifest":
        target = tmp_path / "idx" / "manifest.json"
        target.write_text(target.read_text()[:-40])
    elif damage == "delete_docs":
        target = segment / "docs.sqlite"
        target.unlink()
    else:
        target = segment / "tokens.npy"
        data = bytearray(target.read_bytes())
        data[:6] = b"XXXXXX"
        target.write_bytes(bytes(data))
    with pytest.raises(IndexCorruptedError, match=target.name):
        Index.open(tmp_path / "idx").verify()


def test_encoder_mismatch_is_refused(tmp_path, encoder):
    index = Index.create(tmp_path / "idx", encoder=encoder)
    index.add(*[[{"id": "a", "text": "alpha"}]])
    from lir_agent import Encoder

    shorter = Encoder.from_pretrained("default", device="cpu", document_length=128)
    with pytest.raises(EncoderMismatchError, match="document_length: 128 != 256"):
        Index.open(tmp_path / "idx", encoder=shorter)
    assert Index.open(tmp_path / "idx", encoder=encoder).search("alpha", k=1)[0].id == "a"


def test_many_small_writes_are_compacted(tmp_path, encoder, monkeypatch):
    import lir_agent.index as index_module

    monkeypatch.setattr(index_module, "MAX_SEGMENTS", 4)
    index = Index.create(tmp_path / "idx", encoder=encoder)
    docs, matrices = make_docs(12)
    for doc, matrix in zip(docs, matrices):
        index.add([doc], embeddings=[matrix])
    index.delete(["doc-3"])
    reopened = Index.open(tmp_path / "idx")
    assert reopened.info()["segments"] <= 4
    assert sorted(reopened.ids()) == sorted(d["id"] for d in docs if d["id"] != "doc-3")
    assert len(list((tmp_path / "idx" / "segments").iterdir())) == reopened.info()["segments"]
    for doc, matrix in zip(docs, matrices):
        if doc["id"] != "doc-3":
            torch.testing.assert_close(reopened.get_embeddings(doc["id"]), matrix.half())


def test_long_documents_cut_by_the_encoder_are_warned_about_and_counted(tmp_path, encoder, caplog):
    """A document past the encoder's document_length loses its tail: one warning per write
    names how many documents and tokens, info() counts them, through compaction and deletes."""
    from lir_agent.sharded import ShardedIndex

    limit = encoder.settings.document_length
    long_text = " ".join(f"word{i}" for i in range(1400)) + ". The answer is in the last sentence."
    full = len(encoder.tokenizer(long_text, add_special_tokens=True, verbose=False)["input_ids"])
    expected_cut = full - limit + (encoder.settings.document_prefix is not None)
    assert encoder.truncated_tokens(["short text", long_text]) == [0, expected_cut]
    for index in (Index.create(tmp_path / "one", encoder, index_type="exact", passage_tokens=0),  # cut, not passages
                  ShardedIndex.create(tmp_path / "sharded", 2, encoder, passage_tokens=0)):
        caplog.clear()
        with caplog.at_level("WARNING", logger="lir_agent.index"):
            index.add([{"id": "long", "text": long_text}, {"id": "long2", "text": long_text},
                       {"id": "short", "text": "a short one"}])
        warnings = [r for r in caplog.records if "longer than the encoder" in r.getMessage()]
        assert len(warnings) == 1 and f"2 of 3 documents" in warnings[0].getMessage()
        assert f"{2 * expected_cut} tokens cut" in warnings[0].getMessage()
        assert index.info()["truncated"] == {"documents": 2, "tokens": 2 * expected_cut, "document_length": limit}
        index.delete(["long2"])
        index.compact()
        assert index.info()["truncated"]["documents"] == 1
        caplog.clear()
        with caplog.at_level("WARNING", logger="lir_agent.index"):
            index.add([{"id": "fits", "text": "nothing cut here"}])
        assert not [r for r in caplog.records if "longer than the encoder" in r.getMessage()]
