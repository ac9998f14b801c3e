"""Long documents: splitting into passages, document-level MaxSim over all passages (against a
naive reference), passage ranking, deletes and upserts, filters, context assembly, sharding."""

import random
from dataclasses import dataclass

import pytest
import torch

from helpers import naive_maxsim
from lir_agent import Index
from lir_agent.agentic import SearchSession, assemble_context
from lir_agent.errors import InvalidInputError
from lir_agent.passages import HitPassage, split_passages
from lir_agent.sharded import ShardedIndex

TOPICS = ["volcanic eruptions in Iceland", "the history of the printing press", "migratory birds over the Alps",
          "quantum error correction", "medieval castle architecture", "coral reef bleaching"]


def long_text(seed: int, sentences: int = 80) -> str:
    rng = random.Random(seed)
    return " ".join(f"Section {i} is about {rng.choice(TOPICS)}, and it mentions {rng.choice(TOPICS)} too."
                    for i in range(sentences))


@pytest.fixture(scope="module")
def long_index(tmp_path_factory, encoder):
    index = Index.create(tmp_path_factory.mktemp("long") / "idx", encoder=encoder, index_type="exact",
                         passage_tokens=64, passage_overlap=8)
    docs = [{"id": f"long-{i}", "text": long_text(i), "metadata": {"group": i % 2}} for i in range(4)]
    docs += [{"id": "short", "text": "Coral reef bleaching follows warm water.", "metadata": {"group": 1}}]
    index.add(docs)
    return index


def passage_matrices(encoder, text, layout):
    return [m.float() for m in encoder.encode_documents([text[a:b] for a, b, _ in layout])]


def test_passages_cover_the_text_overlap_and_fit_the_encoder(long_index, encoder):
    for i in range(4):
        doc = long_index.get(f"long-{i}")
        assert doc.passages and len(doc.passages) > 5 and doc.truncated_tokens == 0
        spans = [(a, b) for a, b, _ in doc.passages]
        assert spans[0][0] == 0 and spans[-1][1] == len(doc.text)
        for (a1, b1), (a2, b2) in zip(spans, spans[1:]):
            assert a1 < a2 < b1 < b2  # each passage starts inside the previous one: they overlap, in order
            shared = doc.text[a2:b1]
            assert 1 <= len(encoder.tokenizer(shared, add_special_tokens=False)["input_ids"]) <= 8 + 2
            assert doc.text[b1 - 1] == "." or not doc.text[b1].isalnum()  # ends at a sentence or word edge
            assert a2 == 0 or not (doc.text[a2 - 1].isalnum() and doc.text[a2].isalnum())
        texts = [doc.text[a:b] for a, b in spans]
        assert encoder.truncated_tokens(texts) == [0] * len(texts)
        marker = encoder.settings.document_prefix is not None
        assert all(len(encoder.tokenizer(t)["input_ids"]) + marker <= 64 for t in texts)
        assert sum(n for _, _, n in doc.passages) == long_index.get_embeddings(doc.id).shape[0]


def test_split_passages_on_plain_offsets():
    text = "aa bb cc dd ee ff gg hh"
    offsets = [(i * 3, i * 3 + 2) for i in range(8)]
    assert split_passages(offsets, text, 8, 2) == [(0, len(text))]
    spans = split_passages(offsets, text, 4, 1)
    assert spans == [(0, 11), (9, 20), (18, 23)]  # 4 tokens, then back 1 token: "dd", "gg" shared


def test_document_score_is_maxsim_over_all_passages_and_passages_are_scored(long_index, encoder):
    query = "castle architecture and coral reefs"
    q = encoder.encode_queries([query])[0].float()
    hits = long_index.search(query, k=5)
    for hit in hits:
        doc = long_index.get(hit.id)
        layout = doc.passages or [(0, len(doc.text), None)]
        parts = passage_matrices(encoder, doc.text, layout)
        assert hit.score == pytest.approx(float(naive_maxsim(q, [torch.cat(parts)])[0]), abs=2e-2)
        per_passage = naive_maxsim(q, parts)
        assert {p.number: p.score for p in hit.passages} == pytest.approx(
            {n: float(s) for n, s in enumerate(per_passage)}, abs=2e-2)
        assert [p.score for p in hit.passages] == sorted((p.score for p in hit.passages), reverse=True)
        assert hit.score >= hit.passages[0].score - 1e-4  # the union's MaxSim bounds each passage's
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)


def test_ranking_by_passage(long_index, encoder):
    hits = long_index.search("migratory birds over the Alps", k=12, by="passage")
    assert len(hits) == 12 and [h.rank for h in hits] == list(range(1, 13))
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    every = {(h.id, p.number): p.score for h in long_index.search("migratory birds over the Alps", k=5)
             for p in h.passages}
    assert [h.score for h in hits] == sorted(every.values(), reverse=True)[:12]
    for hit in hits:
        (passage,) = hit.passages
        assert passage.score == hit.score and every[(hit.id, passage.number)] == pytest.approx(hit.score)
        assert hit.text[passage.start:passage.end] in hit.text and passage.end > passage.start
    with pytest.raises(InvalidInputError, match="by must be"):
        long_index.search("birds", by="sentence")


def test_filters_apply_to_a_long_documents_passages(long_index):
    hits = long_index.search("volcanic eruptions", k=20, by="passage", filter={"group": 0})
    assert hits and {h.id for h in hits} <= {"long-0", "long-2"}
    assert {h.id for h in long_index.search("volcanic eruptions", k=5, filter={"group": 1})} == \
        {"long-1", "long-3", "short"}


def test_delete_and_upsert_replace_every_passage(tmp_path, encoder):
    index = Index.create(tmp_path / "idx", encoder=encoder, index_type="exact", passage_tokens=64, passage_overlap=8)
    index.add([{"id": "doc", "text": long_text(1)}, {"id": "other", "text": long_text(2)}])
    query = "quantum error correction"
    index.upsert([{"id": "doc", "text": "A note on bread baking."}])
    reopened = Index.open(index.path)
    for handle in (index, reopened):
        assert handle.get("doc").passages is None and len(handle) == 2
        assert all(h.id != "doc" or h.passages[0].end == len("A note on bread baking.")
                   for h in handle.search(query, k=40, by="passage"))
    reopened.delete(["other"])
    assert [h.id for h in Index.open(index.path).search(query, k=40, by="passage")] == ["doc"]


def test_truncation_is_kept_with_passage_tokens_0(tmp_path, encoder, caplog):
    index = Index.create(tmp_path / "idx", encoder=encoder, index_type="exact", passage_tokens=0)
    with caplog.at_level("WARNING"):
        index.add([{"id": "doc", "text": long_text(3, sentences=200)}])
    assert index.get("doc").passages is None and index.get("doc").truncated_tokens > 0
    assert index.passage_settings is None and sum("longer than the encoder" in r.getMessage() for r in caplog.records) == 1
    with pytest.raises(InvalidInputError, match="passage_tokens"):
        Index.create(tmp_path / "bad", encoder=encoder, passage_tokens=10_000)
    with pytest.raises(InvalidInputError, match="passage_overlap"):
        Index.create(tmp_path / "bad2", encoder=encoder, passage_tokens=64, passage_overlap=40)


def test_sharded_equals_single_for_both_rankings(long_index, tmp_path, encoder):
    sharded = ShardedIndex.create(tmp_path / "s", 3, encoder, passage_tokens=64, passage_overlap=8)
    sharded.add([{"id": d, "text": long_index.get(d).text, "metadata": long_index.get(d).metadata}
                 for d in long_index.ids()])
    for by in ("document", "passage"):
        expected = long_index.search("printing press history", k=6, by=by)
        got = sharded.search("printing press history", k=6, by=by)
        assert [(h.id, [p.number for p in h.passages]) for h in got] == \
               [(h.id, [p.number for p in h.passages]) for h in expected]
        assert [h.score for h in got] == pytest.approx([h.score for h in expected], abs=1e-4)


@dataclass
class FakeHit:
    id: str
    text: str
    score: float
    passages: list


def test_context_assembly_merges_orders_and_keeps_to_the_budget():
    text = "".join(f"w{i:03d} " for i in range(400))  # 2,000 characters
    hits = [FakeHit("a", text, 9.0, [HitPassage(0, 0, 400, 5.0), HitPassage(1, 300, 700, 9.0),
                                     HitPassage(3, 1200, 1600, 1.0), HitPassage(2, 700, 1000, 6.0)]),
            FakeHit("b", "short text b", 7.0, []), FakeHit("c", text, 8.0, [HitPassage(0, 100, 300, 8.0)])]
    for budget in (5, 60, 120, 200, 400, 1000):
        context = assemble_context(hits, budget)
        assert context.tokens <= budget
        for doc_id in "abc":  # no character twice, windows in text order, apart (merged when touching)
            spans = [(w.start, w.end) for w in context.windows if w.doc_id == doc_id]
            assert spans == sorted(spans) and all(b1 < a2 for (_, b1), (a2, _) in zip(spans, spans[1:]))
        for window in context.windows:
            assert window.text == {h.id: h.text for h in hits}[window.doc_id][window.start:window.end]
            assert f"[{window.doc_id} {window.start}-{window.end}]\n{window.text}" in context.text
    context = assemble_context(hits, 1000)  # everything fits: a's touching passages merged into one window
    assert [(w.doc_id, w.start, w.end) for w in context.windows] == [
        ("a", 0, 1000), ("a", 1200, 1600), ("c", 100, 300), ("b", 0, 12)]  # documents by their best passage
    tight = assemble_context(hits, 120)  # a's best passage, then what still fits
    assert tight.windows[0].doc_id == "a" and (tight.windows[0].start, tight.windows[0].end) == (300, 700)
    assert assemble_context(hits, 5).windows == [] or assemble_context(hits, 5).tokens <= 5
    with pytest.raises(InvalidInputError):
        assemble_context(hits, 0)


def test_sessions_hand_out_a_long_documents_best_passages(long_index):
    session = SearchSession(long_index, k=2, passage_tokens=150)
    result = session.search("quantum error correction and castles")
    for hit in result.hits:
        doc = long_index.get(hit.id)
        if doc.passages:  # the window lies in the document's best passages, not at its start
            best = long_index.search("quantum error correction and castles", k=5)
            top = next(h for h in best if h.id == hit.id).passages[0]
            assert hit.start < top.end and top.start < hit.end
    read = session.read("long-0", start=0, max_tokens=120)
    ends = {b for _, b, _ in long_index.get("long-0").passages}
    assert read.end in ends or read.text.endswith((" ", ".")) or read.end == len(long_index.get("long-0").text)
    follow = session.read("long-0", start=read.next_start, max_tokens=120)
    assert follow.start == read.end  # pages follow each other: no text handed out twice


@pytest.mark.slow
def test_a_document_of_100k_tokens_indexes_and_its_needle_is_found(tmp_path, encoder, caplog):
    """About 100,000 tokens in one document: encoded passage by passage, no truncation warning,
    and the one sentence that answers the query is in the best passage."""
    rng = random.Random(5)
    sentences = [f"Entry {i} records {rng.choice(TOPICS)} near {rng.choice(TOPICS)}." for i in range(9000)]
    sentences[6123] = "The lighthouse keeper Ottoline Brask counted four hundred storm petrels."
    text = " ".join(sentences)
    index = Index.create(tmp_path / "idx", encoder=encoder, index_type="exact")
    with caplog.at_level("WARNING"):
        index.add([{"id": "ledger", "text": text}, {"id": "other", "text": long_text(9)}])
    assert not [r for r in caplog.records if "longer than the encoder" in r.getMessage()]
    doc = index.get("ledger")
    assert sum(n for _, _, n in doc.passages) > 100_000 and doc.truncated_tokens == 0
    hit = index.search("who counted the storm petrels at the lighthouse?", k=1)[0]
    best = hit.passages[0]
    assert hit.id == "ledger" and "Ottoline Brask counted" in text[best.start:best.end]
