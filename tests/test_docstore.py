"""The SQLite document store: filters compiled to SQL (against the Python semantics), field
indexes, migration of format-1 indexes, segment merging, and what an open index holds."""

import json
import random
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import DIM, random_matrices
from lir_agent import Index, storage
from lir_agent import index as index_module
from lir_agent.docstore import Document, DocumentStore
from lir_agent.errors import DuplicateIdError, IndexCorruptedError, InvalidInputError
from lir_agent.storage import sha256_file
from lir_agent.filters import compile_filter, python_predicate
from lir_agent.sharded import ShardedIndex

FIXTURES = Path(__file__).parent / "fixtures"
KEYS = ["year", "lang", "score", "flag", "tags", "a b", "é", 'q"r', "x'y", "", "b\\c"]


def random_value(rng: random.Random, depth: int = 0):
    kind = rng.choice(["int", "int", "float", "bool", "null", "str", "str", "list", "dict"] if depth < 2
                      else ["int", "float", "bool", "null", "str"])
    if kind == "int":
        return rng.choice([rng.randint(-3, 3), rng.randint(1990, 2030), 2**70])
    if kind == "float":
        return rng.choice([rng.uniform(-3, 3), 1.0, 0.1, 2.5, -0.0])
    if kind == "bool":
        return rng.random() < 0.5
    if kind == "null":
        return None
    if kind == "str":
        return rng.choice(["en", "fr", "de", "", "1", "true", "Ünïcode", "a'b", 'q"', "zz"])
    if kind == "list":
        return [random_value(rng, depth + 1) for _ in range(rng.randint(0, 2))]
    return {rng.choice(KEYS): random_value(rng, depth + 1) for _ in range(rng.randint(0, 3))}


def random_metadata(rng: random.Random) -> dict:
    return {key: random_value(rng) for key in rng.sample(KEYS, rng.randint(0, 6))}


def random_operand(rng: random.Random):
    return rng.choice([random_value(rng, 2), random_value(rng, 2), rng.randint(1990, 2030), "en", 1, True, None,
                       [1, 2], {"year": 1}, 2**70])


def random_filter(rng: random.Random, depth: int = 0) -> dict:
    if depth < 2 and rng.random() < 0.3:
        return {rng.choice(["$and", "$or"]): [random_filter(rng, depth + 1) for _ in range(rng.randint(1, 3))]}
    field = rng.choice(KEYS + ["tags.year", "score.lang", "year.x", "missing"])
    op = rng.choice(["plain", "$eq", "$ne", "$in", "$nin", "$gt", "$gte", "$lt", "$lte", "two"])
    if op == "plain":  # a dict here would be read as operators: dicts are compared through $eq
        operand = random_operand(rng)
        return {field: {"$eq": operand} if isinstance(operand, dict) else operand}
    if op in ("$in", "$nin"):
        return {field: {op: [random_operand(rng) for _ in range(rng.randint(0, 4))]}}
    if op.startswith("$g") or op.startswith("$l"):
        return {field: {op: rng.choice([rng.randint(1990, 2030), rng.uniform(-3, 3), "en", "f", 0, 2**70])}}
    if op == "two":
        return {field: {"$gte": rng.randint(-3, 2000), "$lt": rng.randint(0, 2030)}}
    return {field: {op: random_operand(rng)}}


def test_sql_filters_match_the_python_semantics_on_random_filters():
    """Differential: every random filter selects, in SQLite (with and without field indexes),
    exactly the documents the Python definition of the semantics accepts."""
    rng = random.Random(7)
    docs = [Document(f"d{i}", "text", random_metadata(rng)) for i in range(400)]
    plain = DocumentStore.in_memory(docs)
    indexed = DocumentStore.in_memory(docs, indexed_fields=["year", "lang", "score", "tags.year", "a b", "é"])
    assert indexed.indexed_fields() == {"year", "lang", "score", "tags.year", "a b", "é"}
    stored = [json.loads(json.dumps(d.metadata)) for d in docs]
    matched = 0
    for trial in range(600):
        spec = random_filter(rng) if trial > 1 else [{}, {"$or": [{}, {"year": 1}]}][trial]
        expected = np.array([python_predicate(spec)(m) for m in stored])
        compiled = compile_filter(spec)
        assert compiled.sql is not None
        for store in (plain, indexed):
            got = store.matching(compiled)
            bad = np.flatnonzero(got != expected)
            assert not len(bad), (f"filter {spec!r} on {stored[bad[0]]!r}: SQL says {got[bad[0]]}, "
                                  f"Python says {expected[bad[0]]}")
        matched += bool(expected.any()) and not expected.all()
    assert matched > 200  # most filters split the documents: the comparison means something


def test_filters_use_the_field_index(tmp_path, encoder):
    index = Index.create(tmp_path / "idx", encoder=encoder, index_type="exact", indexed_fields=["year", "source.lang"])
    docs = [{"id": f"d{i}", "text": "t", "metadata": {"year": 1990 + i % 30, "source": {"lang": ["en", "fr"][i % 2]}}}
            for i in range(300)]
    index.add(docs, embeddings=random_matrices(300, DIM, seed=1, max_len=3))
    store = index._snapshot().segments[0].docs
    for spec, expected in (({"year": 2000}, 10), ({"year": {"$gte": 2015}}, 50), ({"source.lang": "fr"}, 150),
                           ({"year": {"$in": [1990, 1991]}}, 20)):
        compiled = compile_filter(spec)
        plan = " ".join(str(r) for r in store.connection.execute(f"EXPLAIN QUERY PLAN SELECT row FROM docs WHERE "
                                                                 f"{compiled.sql}", compiled.params))
        assert "field:" in plan, plan
        assert index.count(spec) == expected
    plan = store.connection.execute("EXPLAIN QUERY PLAN SELECT row FROM docs WHERE "
                                    + compile_filter({"other": 1}).sql, (1,)).fetchall()
    assert "SCAN" in str(plan)  # an undeclared field: a scan in the database


def test_fields_indexed_later_and_after_reopening(tmp_path, encoder):
    index = Index.create(tmp_path / "idx", encoder=encoder, index_type="exact")
    docs = [{"id": f"d{i}", "text": "t", "metadata": {"year": i % 5}} for i in range(40)]
    index.add(docs[:20], embeddings=random_matrices(20, DIM, seed=1, max_len=3))
    index.add(docs[20:], embeddings=random_matrices(20, DIM, seed=2, max_len=3))
    index.delete(["d3"])
    query = random_matrices(1, DIM, seed=3)[0]
    before = [(h.id, h.score) for h in index.search(query, k=10, filter={"year": {"$gte": 3}})]
    old_files = {p.name for p in (tmp_path / "idx" / "segments").rglob("*")}
    assert index.index_fields(["year"]) == ["year"] and index.indexed_fields == ["year"]
    assert index.index_fields(["year"]) == ["year"]  # nothing to do twice
    reopened = Index.open(tmp_path / "idx")
    for handle in (index, reopened):
        assert [(h.id, h.score) for h in handle.search(query, k=10, filter={"year": {"$gte": 3}})] == before
        assert all(s.docs.indexed_fields() == {"year"} for s in handle._snapshot().segments)
        assert "d3" not in handle and len(handle) == 39
    new_files = {p.name for p in (tmp_path / "idx" / "segments").rglob("*")}
    assert "docs.sqlite" in old_files and "docs.sqlite" not in new_files  # replaced, the old ones removed
    reopened.verify()
    with pytest.raises(InvalidInputError, match="cannot name"):
        index.index_fields(['say "hi"'])
    with pytest.raises(InvalidInputError, match="list of field names"):
        index.index_fields("year")


def test_metadata_that_is_not_strict_json_is_refused(tmp_path, encoder):
    index = Index.create(tmp_path / "idx", encoder=encoder, index_type="exact")
    with pytest.raises(InvalidInputError, match="not JSON-serialisable"):
        index.add([{"id": "a", "text": "t", "metadata": {"x": float("nan")}}], embeddings=random_matrices(1, DIM, 1))
    assert len(index) == 0


@pytest.mark.parametrize("kind", ["exact", "compressed"])
def test_format_1_index_opens_searches_and_upgrades(tmp_path, kind):
    expected = json.loads((FIXTURES / "legacy-v1-expected.json").read_text())[kind]
    query = random_matrices(1, DIM, seed=9, min_len=4, max_len=4)[0]
    for how in ("upgrade", "first write", "cli"):
        path = tmp_path / how
        shutil.copytree(FIXTURES / f"legacy-v1-{kind}", path)
        index = Index.open(path)  # read as it is: documents into an in-memory store
        assert sorted(index.ids()) == expected["ids"]
        assert [[h.id, pytest.approx(h.score, abs=1e-6)] for h in index.search(query, k=5)] == expected["search"]
        assert [h.id for h in index.search(query, k=5, filter={"tag": "a"})] == expected["filtered"]
        if how == "upgrade":
            assert index.upgrade() is True and index.upgrade() is False
        elif how == "first write":
            index.add([{"id": "new", "text": "t"}], embeddings=random_matrices(1, DIM, seed=4))
            index.delete(["new"])
        else:
            result = subprocess.run([sys.executable, "-m", "lir_agent.cli", "upgrade", str(path)],
                                    capture_output=True, text=True)
            assert result.returncode == 0, result.stderr
            assert "upgraded" in result.stdout
        manifest = json.loads((path / "manifest.json").read_text())
        assert manifest["format_version"] == 2
        assert not list(path.rglob("docs.jsonl")) and len(list(path.rglob("docs-*.sqlite"))) == 2
        for handle in (index, Index.open(path)):
            handle.verify()
            assert sorted(handle.ids()) == expected["ids"]
            assert [[h.id, pytest.approx(h.score, abs=1e-6)] for h in handle.search(query, k=5)] == expected["search"]
            assert [h.id for h in handle.search(query, k=5, filter={"tag": "a"})] == expected["filtered"]
            assert handle.get("doc-5").metadata == {"n": 5, "tag": "c", "nested": {"x": 1}}


def test_small_segments_merge_and_full_ones_stay(tmp_path, encoder, monkeypatch):
    """Past MAX_SEGMENTS segments a write merges the small ones only: an index of more full
    segments than MAX_SEGMENTS keeps them (it used to compact forever)."""
    monkeypatch.setattr(index_module, "MAX_SEGMENTS", 4)
    monkeypatch.setattr(index_module, "MAX_SEGMENT_DOCS", 8)
    index = Index.create(tmp_path / "idx", encoder=encoder, index_type="exact")
    matrices = random_matrices(80, DIM, seed=5, max_len=3)
    index.add([{"id": f"d{i}", "text": "t"} for i in range(48)], embeddings=matrices[:48])  # 6 full segments
    assert index.info()["segments"] == 6
    for i in range(48, 80, 4):  # small writes
        index.add([{"id": f"d{j}", "text": "t"} for j in range(i, i + 4)], embeddings=matrices[i:i + 4])
    sizes = [e["num_docs"] for e in index._snapshot().manifest["segments"]]
    assert sum(1 for n in sizes if n < 4) <= 1 and sum(sizes) == 80 and len(index) == 80
    assert sizes[:6] == [8] * 6  # the full segments were not rewritten
    for i in (0, 47, 60, 79):
        torch.testing.assert_close(index.get_embeddings(f"d{i}"), matrices[i].half())


def test_sharded_index_declares_and_adds_field_indexes(tmp_path, encoder):
    sharded = ShardedIndex.create(tmp_path / "s", 2, encoder, indexed_fields=["year"])
    docs = [{"id": f"d{i}", "text": "t", "metadata": {"year": i % 4, "lang": "en" if i % 3 else "fr"}}
            for i in range(60)]
    sharded.add(docs, embeddings=random_matrices(60, DIM, seed=6, max_len=3))
    assert sharded.count({"year": 1}) == 15 and sharded.count({"lang": "fr"}) == 20
    assert sharded.index_fields(["lang"]) == ["lang", "year"]
    reopened = ShardedIndex.open(tmp_path / "s")
    assert reopened.count({"lang": "fr", "year": {"$lt": 2}}) == sum(
        1 for i in range(60) if i % 3 == 0 and i % 4 < 2)
    for shard in reopened.shards.indexes:
        assert shard.indexed_fields == ["lang", "year"]
        assert all(s.docs.indexed_fields() == {"lang", "year"} for s in shard._snapshot().segments)


def test_an_open_index_reads_no_document_until_asked(tmp_path, encoder, monkeypatch):
    """Opening reads no text or metadata (the store answers queries), and a search reads only
    the hits' documents."""
    index = Index.create(tmp_path / "idx", encoder=encoder, index_type="exact")
    index.add([{"id": f"d{i}", "text": f"text {i}", "metadata": {"i": i}} for i in range(200)],
              embeddings=random_matrices(200, DIM, seed=8, max_len=3))
    read: list[int] = []
    original = DocumentStore.documents
    monkeypatch.setattr(DocumentStore, "documents", lambda self, rows: read.extend(rows) or original(self, rows))
    monkeypatch.setattr(DocumentStore, "scan", lambda *a: pytest.fail("a whole segment was read"))
    reopened = Index.open(tmp_path / "idx")
    assert read == [] and len(reopened) == 200
    hits = reopened.search(random_matrices(1, DIM, seed=2)[0], k=5, filter={"i": {"$lt": 100}})
    assert len(read) == 5 and all(h.metadata["i"] < 100 for h in hits)
    assert "d7" in reopened and reopened.get("d7").text == "text 7"


def test_a_store_is_refused_when_damaged(tmp_path):
    path = tmp_path / "docs.sqlite"
    connection = sqlite3.connect(path)
    connection.execute("CREATE TABLE other (x)")
    connection.commit()
    connection.close()
    with pytest.raises(Exception, match="docs.sqlite"):
        DocumentStore.open(path, 3)


def test_ids_and_values_are_compared_whole(tmp_path, encoder):
    """Ids are bound as parameters (a JSON array would cut one at a NUL and find another
    document); metadata SQLite cannot compare as Python does is refused on add."""
    index = Index.create(tmp_path / "idx", encoder=encoder, index_type="exact")
    index.add([{"id": "a\x00zzz", "text": "t"}, {"id": "a", "text": "keep me"}], embeddings=random_matrices(2, DIM, 1))
    assert "a\x00zzz" in index and "a\x00" not in index and index.get("a\x00zzz").text == "t"
    with pytest.raises(DuplicateIdError):
        index.add([{"id": "a\x00zzz", "text": "again"}], embeddings=random_matrices(1, DIM, 2))
    assert index.delete(["a\x00zzz"]) == 1 and index.get("a").text == "keep me" and len(index) == 1
    for metadata, message in (({"k": "a\x00b"}, "NUL"), ({"k\x00": 1}, "NUL"), ({"n": [2**64]}, "beyond 64 bits"),
                              ({"x": float("inf")}, "not JSON"), ({"d": b"x"}, "not JSON")):
        with pytest.raises(InvalidInputError, match=message):
            index.add([{"id": "b", "text": "t", "metadata": metadata}], embeddings=random_matrices(1, DIM, 3))
    assert sorted(index.ids()) == ["a"]


def test_filter_operands_are_json_values(tmp_path, encoder):
    index = Index.create(tmp_path / "idx", encoder=encoder, index_type="exact", indexed_fields=["year"])
    index.add([{"id": f"d{i}", "text": "t", "metadata": {"year": 2000 + i % 4}} for i in range(20)],
              embeddings=random_matrices(20, DIM, 4, max_len=3))
    assert index.count({"year": np.int64(2001)}) == 5
    assert index.count({"year": {"$in": np.array([2000, 2001])}}) == 10
    assert index.count({"year": {"$nin": range(2000, 2003)}}) == 5
    assert index.count({"year": {"$in": {2003: "x"}.keys()}}) == 5
    assert index.count({"year": {"$gte": np.float32(2002)}}) == 10
    for bad in ({"year": b"2001"}, {"year": {"$in": [object()]}}, {"year": {"$eq": {1: 2}}}):
        with pytest.raises(InvalidInputError, match="not a JSON value"):
            index.count(bad)


def test_format_1_metadata_that_json_cannot_hold_is_read_as_null(tmp_path, caplog):
    """The previous format wrote NaN into docs.jsonl; such values are read as null (logged),
    so that filters and the upgrade work."""
    path = tmp_path / "idx"
    shutil.copytree(FIXTURES / "legacy-v1-exact", path)
    manifest = json.loads((path / "manifest.json").read_text())
    entry = manifest["segments"][0]
    docs_file = path / "segments" / entry["name"] / "docs.jsonl"
    lines = docs_file.read_text().splitlines()
    record = json.loads(lines[0])
    record["metadata"]["n"] = float("nan")
    lines[0] = json.dumps(record)
    docs_file.write_text("\n".join(lines) + "\n")
    entry["files"]["docs.jsonl"] = {"size": docs_file.stat().st_size, "sha256": sha256_file(docs_file)}
    (path / "manifest.json").write_text(json.dumps(manifest))
    with caplog.at_level("WARNING"):
        index = Index.open(path)
    assert any("NaN or infinite" in r.getMessage() for r in caplog.records)
    assert index.get(record["id"]).metadata["n"] is None
    assert index.count({"n": None}) == 1 and index.count({"n": {"$gte": 0}}) == len(index) - 1
    assert index.upgrade() and Index.open(path).count({"n": None}) == 1
    Index.open(path).verify()


def test_open_retries_when_a_commit_removes_files_meanwhile(tmp_path, encoder, monkeypatch):
    index = Index.create(tmp_path / "idx", encoder=encoder, index_type="exact")
    index.add([{"id": "a", "text": "t"}], embeddings=random_matrices(1, DIM, 5))
    calls = []
    original = storage.read_segment

    def superseded(root, entry):  # the first read finds a file gone: another writer committed meanwhile
        calls.append(entry["name"])
        if len(calls) == 1:
            index.add([{"id": "b", "text": "t"}], embeddings=random_matrices(1, DIM, 6))
            raise IndexCorruptedError(f"{entry['name']} is missing")
        return original(root, entry)

    monkeypatch.setattr(storage, "read_segment", superseded)
    reopened = Index.open(tmp_path / "idx")
    assert sorted(reopened.ids()) == ["a", "b"] and len(calls) >= 2
    monkeypatch.setattr(storage, "read_segment", lambda root, entry: (_ for _ in ()).throw(
        IndexCorruptedError("really damaged")))
    with pytest.raises(IndexCorruptedError, match="really damaged"):  # nothing changed: not retried
        Index.open(tmp_path / "idx")


def test_info_names_the_indexed_fields_and_the_format(tmp_path, encoder):
    index = Index.create(tmp_path / "idx", encoder=encoder, index_type="exact", indexed_fields=["b", "a"])
    assert index.info()["indexed_fields"] == ["a", "b"] and index.info()["format_version"] == 2
    again = Index.create(tmp_path / "idx", encoder=encoder, exist_ok=True, indexed_fields=["c"])
    assert again.indexed_fields == ["a", "b", "c"]
    sharded = ShardedIndex.create(tmp_path / "s", 2, encoder, indexed_fields=["x"])
    assert sharded.indexed_fields == ["x"]


@pytest.mark.parametrize("weak_hash", [False, True])
def test_bulk_id_lookups_match_one_by_one_lookups(tmp_path, encoder, monkeypatch, weak_hash):
    """find() of many ids asks each segment only for the ids whose hash it holds; with a hash
    that collides all the time (weak_hash) the answers must be the same."""
    if weak_hash:
        monkeypatch.setattr(storage, "id_hash", lambda doc_id: len(doc_id) % 3)
    index = Index.create(tmp_path / "idx", encoder=encoder, index_type="exact")
    for batch in range(4):
        index.add([{"id": f"d{batch}-{i}", "text": "t"} for i in range(50)],
                  embeddings=random_matrices(50, DIM, seed=batch, max_len=2))
    index.delete([f"d1-{i}" for i in range(0, 50, 2)])
    index.upsert([{"id": f"d2-{i}", "text": "new"} for i in range(10)], embeddings=random_matrices(10, DIM, 9, max_len=2))
    asked = [f"d{b}-{i}" for b in range(5) for i in range(0, 50, 3)] + ["nope", "d0-1"]
    state = index._snapshot()
    bulk = state.find(asked)
    assert len(asked) > index_module.FIND_PREFILTER_IDS
    assert bulk == {i: loc for i in asked for loc in state.find([i]).values()}
    assert set(bulk) == {i for i in asked if i in set(index.ids())}
    assert all(state.documents([bulk[f"d2-{i}"]])[0].text == "new" for i in range(0, 10, 3))
