"""The agent layer: citations against a naive alignment, sessions that never repeat a document,
budgets that are never exceeded, traces that round-trip, bad arguments that change nothing."""

import json

import numpy as np
import pytest
import torch

from lir_agent import DocumentNotFoundError, Index, InvalidInputError
from lir_agent.agentic import SearchSession, cite
from lir_agent.agentic.citations import MIN_SIMILARITY, best_window
from lir_agent.sharded import ShardedIndex, reshard

QUERIES = ["Which game was originally published as Chaos Progenitus?", "a band formed in the 1990s",
           "film directed by a French director"]


def naive_alignment(query_matrix, doc_matrix):
    """Per query row, (best document row, similarity), by explicit loops."""
    result = []
    for q in query_matrix.double():
        scores = [float(q @ d) for d in doc_matrix.double()]
        j = max(range(len(scores)), key=scores.__getitem__)
        result.append((j, scores[j]))
    return result


def window_score(highlights, start, end):
    return sum(h.score for h in highlights if h.start >= start and h.end <= end)


@pytest.fixture(scope="module")
def index(sample_index_path):
    return Index.open(sample_index_path)


def test_citations_are_the_maxsim_alignment_in_character_spans(index, encoder):
    for query in QUERIES:
        hits = index.search(query, k=5)
        layouts = [index.get(h.id).passages for h in hits]  # a long paragraph is stored as passages
        citations = cite(encoder, query, [(h.id, h.text) for h in hits], passage_chars=300, layouts=layouts)
        q_matrix = encoder.encode_queries([query])[0].float()
        for hit, citation, layout in zip(hits, citations, layouts):
            pieces = [(a, b) for a, b, _ in layout] if layout else [(0, len(hit.text))]
            d_matrix = torch.cat(encoder.encode_documents([hit.text[a:b] for a, b in pieces])).float()
            spans = np.concatenate([np.where(s >= 0, s + a, s) for (a, _), (_, s) in
                                    zip(pieces, encoder.token_spans([hit.text[a:b] for a, b in pieces]))])
            reference = naive_alignment(q_matrix, d_matrix)
            assert [(m.start, m.end) for m in citation.matches] == [tuple(spans[j]) for j, _ in reference]
            assert [m.similarity for m in citation.matches] == pytest.approx([s for _, s in reference], abs=1e-4)
            assert citation.maxsim == pytest.approx(hit.score, abs=2e-2)  # the index stores float16 vectors
            for match in citation.matches:  # every strong match of a query word lies in a highlight
                if match.start >= 0 and match.similarity >= MIN_SIMILARITY and match.query_word.isalnum():
                    assert any(h.start <= match.start and match.end <= h.end and match.query_word in h.query_words
                               for h in citation.highlights)
            for h in citation.highlights:  # whole words
                assert (h.start == 0 or not hit.text[h.start - 1].isalnum()) and \
                       (h.end == len(hit.text) or not hit.text[h.end].isalnum())
            start, end = citation.passage_start, citation.passage_end
            assert 0 <= start < end <= len(hit.text) and end - start <= 300
            if len(hit.text) > 300:  # no window of that size holds more highlight score
                best = max(window_score(citation.highlights, s, s + 300) for s in range(len(hit.text) - 299))
                assert window_score(citation.highlights, start, end) == pytest.approx(best)


def test_a_document_longer_than_the_encoder_is_cited_in_its_encoded_part(encoder):
    text = " ".join(f"filler{i} words" for i in range(700)) + " The treasure is buried under the old oak tree."
    [citation] = cite(encoder, "where is the treasure buried", [("long", text)], passage_chars=200)
    assert citation.truncated and citation.encoded_chars < len(text) and citation.text_chars == len(text)
    assert all(h.end <= citation.encoded_chars for h in citation.highlights)
    assert all(m.end <= citation.encoded_chars for m in citation.matches)
    [short] = cite(encoder, "where is the treasure buried", [("short", text[-60:])], passage_chars=200)
    assert not short.truncated and any("treasure" in h.query_words for h in short.highlights)


def test_best_window_takes_the_whole_text_when_it_fits_and_the_start_without_highlights():
    assert best_window("short text", [], 100) == (0, 10)
    text = "word " * 100
    start, end = best_window(text, [], 52)
    assert start == 0 and 40 < end <= 52 and not (text[end - 1].isalnum() and text[end].isalnum())


@pytest.fixture(scope="module")
def sharded(sample_index_path, tmp_path_factory):
    path = tmp_path_factory.mktemp("agentic") / "sharded"
    reshard(sample_index_path, path, 3, show_progress=False)
    return ShardedIndex.open(path)


@pytest.mark.parametrize("which", ["local", "sharded"])
def test_five_searches_return_five_disjoint_pages_that_make_the_top_5k(index, sharded, which):
    target = index if which == "local" else sharded
    session = SearchSession(target, k=3)
    pages = [session.search(QUERIES[1]) for _ in range(5)]
    ids = [[h.id for h in page.hits] for page in pages]
    assert all(len(page) == 3 for page in ids)
    assert len({i for page in ids for i in page}) == 15
    assert [i for page in ids for i in page] == [h.id for h in target.search(QUERIES[1], k=15)]
    assert [page.new for page in pages] == [3] * 5 and pages[-1].seen == 15
    assert [page.hop for page in pages] == [1, 2, 3, 4, 5]
    assert pages[1].relative_best == pytest.approx(pages[1].best_score / pages[0].best_score)
    more = session.search_more()
    assert [h.id for h in more.hits] == [h.id for h in target.search(QUERIES[1], k=18)][15:]
    again = session.search(QUERIES[1], include_seen=True)
    assert [h.id for h in again.hits] == ids[0] and again.new == 0
    evidence = session.evidence()
    assert [e.id for e in evidence] == [i for page in ids for i in page] + [h.id for h in more.hits]
    assert [e.hop for e in evidence[:6]] == [1, 1, 1, 2, 2, 2]


def test_budgets_are_never_exceeded_and_are_reported(index):
    session = SearchSession(index, k=4, max_hops=3, max_tokens=300, passage_tokens=60)
    first = session.search(QUERIES[0])
    assert first.tokens <= 240 and sum(session.count_tokens(h.passage) for h in first.hits) == first.tokens
    assert all(session.count_tokens(h.passage) <= 60 for h in first.hits)
    assert "2 of 3 searches left" in first.to_text() and f"{300 - first.tokens} of 300 tokens left" in first.to_text()
    read = session.read(first.hits[0].id, start=0, max_tokens=1000)
    assert read.tokens <= 300 - first.tokens
    results = [session.search(q) for q in QUERIES[1:]] + [session.search("anything"), session.search_more()]
    assert session.budget.tokens_used <= 300 and session.budget.hops_used <= 3
    spent = results[-1]
    assert spent.hits == [] and "budget is spent" in spent.message and "answer from the evidence" in spent.to_text()
    assert sum(e.tokens for e in session.trace) == session.budget.tokens_used
    nothing = session.read(first.hits[0].id, start=0)
    assert nothing.text == "" and "token budget is spent" in nothing.to_text() and "continues" not in nothing.to_text()
    hops = SearchSession(index, k=1, max_hops=1)
    hops.search(QUERIES[0])
    refused = hops.search(QUERIES[1])
    assert refused.hits == [] and "search budget is spent (1 of 1 searches)" in refused.message
    assert len(hops.trace) == 1


def test_the_trace_round_trips_through_json_and_the_session_goes_on(index):
    session = SearchSession(index, k=2, max_hops=10, max_tokens=5000)
    session.search(QUERIES[0], filter={"title": {"$ne": "nothing"}})
    session.search_more()
    session.read(session.trace[0].ids[0], start=5, max_tokens=20)
    saved = session.to_json()
    restored = SearchSession.from_json(index, json.loads(saved))
    assert restored.to_json() == saved and restored.budget == session.budget
    assert [e.id for e in restored.evidence()] == [e.id for e in session.evidence()]
    assert [h.id for h in restored.search(QUERIES[0]).hits] == [h.id for h in session.search(QUERIES[0]).hits]
    event = json.loads(saved)["trace"][0]
    assert event["kind"] == "search" and event["query"] == QUERIES[0] and event["ms"] > 0 and event["tokens"] > 0
    with pytest.raises(InvalidInputError, match="not a saved search session"):
        SearchSession.from_json(index, '{"format": "something else"}')


def test_bad_arguments_raise_naming_the_argument_and_change_nothing(index):
    session = SearchSession(index, k=2)
    session.search(QUERIES[0])
    before = session.to_json()
    doc_id = session.trace[0].ids[0]
    length = len(index.get(doc_id).text)
    cases = [
        (lambda: session.search(QUERIES[1], k=0), InvalidInputError, "k"),
        (lambda: session.search(QUERIES[1], filter={"title": {"$regex": "x"}}), InvalidInputError, r"filter.*\$regex"),
        (lambda: session.search("   "), InvalidInputError, "query"),
        (lambda: session.read("no-such-document"), DocumentNotFoundError, "no-such-document"),
        (lambda: session.read(doc_id, start=length), InvalidInputError, f"start={length} is past the end"),
        (lambda: session.read(doc_id, start=-1), InvalidInputError, "start"),
    ]
    for call, error, message in cases:
        with pytest.raises(error, match=message):
            call()
        assert session.to_json() == before
    with pytest.raises(InvalidInputError, match="no earlier search"):
        SearchSession(index).search_more()


def test_read_pages_through_a_document(index):
    session = SearchSession(index, passage_tokens=20)
    doc = index.get("hotpotqa_train100-p0")
    pages, start = [], 0
    while start is not None:
        page = session.read(doc.id, start=start)
        assert page.text == doc.text[page.start:page.end] and page.tokens <= 20
        pages.append(page.text)
        start = page.next_start
    assert "".join(pages) == doc.text and "(end of document)" in page.to_text()


def test_a_session_without_citations_hands_out_the_beginnings(index):
    plain, cited = SearchSession(index, k=3, cite=False, passage_tokens=30), SearchSession(index, k=3, passage_tokens=30)
    a, b = plain.search(QUERIES[0]), cited.search(QUERIES[0])
    assert [h.id for h in a.hits] == [h.id for h in b.hits]
    assert all(h.start == 0 and h.highlights == [] and h.encoded_chars is None for h in a.hits)
    assert any(h.start > 0 for h in b.hits) and all(h.highlights for h in b.hits[:1])
    assert SearchSession.from_json(index, plain.to_json()).cite is False


def test_citations_from_stored_matrices_equal_re_encoded_ones_and_skip_punctuation(index, encoder):
    query = "Who directed the film that was shot in or around Leland, North Carolina in 1986?"
    hits = index.search(query, k=5)
    documents = [(h.id, h.text) for h in hits]
    layouts = [index.get(h.id).passages for h in hits]
    fresh = cite(encoder, query, documents, 300, layouts=layouts)
    stored = cite(encoder, query, documents, 300, doc_matrices=[index.get_embeddings(h.id) for h in hits],
                  layouts=layouts)
    wrong = cite(encoder, query, documents, 300, doc_matrices=[index.get_embeddings(h.id)[:3] for h in hits],
                 layouts=layouts)
    for a, b, c in zip(fresh, stored, wrong):
        assert [(m.start, m.end) for m in a.matches] == [(m.start, m.end) for m in b.matches] == \
               [(m.start, m.end) for m in c.matches]  # a matrix that is not the text's is re-encoded
        assert [(h.start, h.end, h.query_words) for h in a.highlights] == \
               [(h.start, h.end, h.query_words) for h in b.highlights]
        assert [h.score for h in a.highlights] == pytest.approx([h.score for h in b.highlights], abs=1e-3)  # batch numerics
        for h in a.highlights:  # no highlight stands on punctuation alone; each holds its matched tokens
            assert any(ch.isalnum() for ch in dict(documents)[a.doc_id][h.start:h.end])


def test_novelty_compares_scores_per_query_token(index):
    session = SearchSession(index, k=2, cite=False)
    long = session.search(QUERIES[0])
    short = session.search("Chaos Progenitus")
    assert short.query_tokens < long.query_tokens and short.first_hop_query_tokens == long.query_tokens
    assert short.relative_best == pytest.approx((short.best_score / short.query_tokens)
                                                / (long.best_score / long.query_tokens))
    assert "per query token" in short.novelty()


def test_a_malformed_trace_is_refused(index):
    session = SearchSession(index, k=2)
    session.search(QUERIES[0])
    state = session.to_state()
    for change in ({"tokens": -500}, {"ids": "abc"}, {"kind": "delete"}, {"scores": [1.0]}):
        bad = json.loads(json.dumps(state))
        bad["trace"][0].update(change)
        with pytest.raises(InvalidInputError, match="not a saved search session"):
            SearchSession.from_json(index, bad)
