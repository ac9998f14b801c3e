"""The LLM-free multi-hop strategies, the fusion and sentence helpers, the evaluation metrics and
``lir-agent eval-multihop``, on real small indexes with the bundled encoder."""

import json
import re

import pytest
import torch

from conftest import CHAIN_DOCUMENTS, CHAIN_QUESTION
from lir_agent import Index, InvalidInputError, ShardedIndex
from lir_agent.agentic import SearchSession
from lir_agent.agentic.evaluation import all_gold_at, recall_at, score_run
from lir_agent.agentic.strategies import (STRATEGIES, Beam, Condensed, Flipr, MultiHopResult,
                                          PseudoRelevanceFeedback, Single, interleave, make_strategy,
                                          reciprocal_rank_fusion)
from lir_agent.agentic.strategies.base import sentences
from lir_agent.agentic.strategies.llm_free import FliprReranker
from lir_agent.cli import main

# The chain corpus, with more distractors so that k and keep matter
DISTRACTORS = [{"id": f"d{i}", "text": text} for i, text in enumerate([
    "The Society of Bakers publishes a monthly bread journal.",
    "The first president of the United States was George Washington.",
    "Widgets are small mechanical devices used in factories.",
    "The Royal Society was founded in London in 1660.",
    "Journals are periodicals that publish academic research.",
    "Ada Lovelace wrote the first computer program.",
])]


@pytest.fixture(scope="module")
def chain(tmp_path_factory, encoder) -> Index:
    index = Index.create(tmp_path_factory.mktemp("chain") / "index", encoder, index_type="exact")
    index.add(CHAIN_DOCUMENTS + DISTRACTORS)
    return index


def searches(session: SearchSession) -> list[str]:
    return [event.query for event in session.trace if event.kind == "search"]


def test_sentences_split_after_end_marks_before_capitals():
    text = "Rome. It is old! Is it? yes it is. 3 cats (and more)."
    assert [text[a:b] for a, b in sentences(text)] == ["Rome.", "It is old!", "Is it? yes it is.", "3 cats (and more)."]
    assert sentences("") == [] and sentences("no end mark") == [(0, 11)]


def test_interleave_and_reciprocal_rank_fusion_by_hand():
    assert interleave(["a", "b", "c", "d"], ["x", "c", "y"], keep=2) == ["a", "b", "x", "c", "d", "y"]
    assert interleave(["a"], [], keep=5) == ["a"]
    # 1/61 + 1/62 for b, 1/61 for a, 1/62 for c... computed: b first, then a, then c, then d
    fused = reciprocal_rank_fusion([["a", "b", "c"], ["b", "d"]])
    assert fused == ["b", "a", "d", "c"]
    assert 1 / 61 + 1 / 62 > 1 / 61 > 1 / 62 > 1 / 63  # why: b both lists; a rank 1; d rank 2; c rank 3


def test_metrics_against_a_hand_computed_example():
    ranked = ["a", "x", "b", "y", "z", "c"]
    assert recall_at(ranked, {"a", "b"}, 2) == 0.5 and recall_at(ranked, {"a", "b"}, 5) == 1.0
    assert all_gold_at(ranked, {"a", "c"}, 5) == 0.0 and all_gold_at(ranked, {"a", "c"}, 6) == 1.0
    assert all_gold_at(ranked, set(), 5) == 0.0 and recall_at(ranked, set(), 5) == 0.0
    result = lambda ids: MultiHopResult("q", "s", [type("H", (), {"id": i})() for i in ids], [], "done", 0, 0.0)
    qrels = {"q1": {"a": 1, "b": 1}, "q2": {"c": 1, "z": 0}}
    metrics = score_run({"q1": result(["a", "x", "b"]), "q2": result(["x", "y", "z", "w", "v", "c"])}, qrels)
    assert metrics["R@2"] == pytest.approx((0.5 + 0.0) / 2)
    assert metrics["R@5"] == pytest.approx((1.0 + 0.0) / 2)
    assert metrics["all-gold@10"] == pytest.approx(1.0) and metrics["all-gold@20"] == pytest.approx(1.0)
    # nDCG@10: q1 (1 + 1/log2(4)) / (1 + 1/log2(3)); q2 1/log2(7) / 1
    import math
    expected = ((1 + 1 / math.log2(4)) / (1 + 1 / math.log2(3)) + 1 / math.log2(7)) / 2
    assert metrics["nDCG@10"] == pytest.approx(expected)


def test_condensed_second_hop_searches_the_question_with_the_matched_sentence(chain):
    session = SearchSession(chain, k=5)
    result = Condensed(k=4, keep=1, context_docs=1).run(CHAIN_QUESTION, session)
    issued = searches(session)
    assert issued[0] == CHAIN_QUESTION
    # hop 2 = the question + the sentence of hop 1's best document (the journal's) that matched
    assert issued[1] == f"{CHAIN_QUESTION} The Journal of Widgetry is published by the Gearwright Society."
    assert result.ids[0] == "journal" and "society" in result.ids[:3]
    assert len(result.ids) == len(set(result.ids)) <= 4
    assert result.stopped.startswith("max hops") and [h.number for h in result.hops] == [1, 2]
    assert result.hops[1].note and result.tokens == session.budget.tokens_used > 0


def test_a_strategy_never_returns_what_the_agent_was_given_before(chain):
    for strategy in (Condensed(k=4), Flipr(k=4), PseudoRelevanceFeedback(k=4, idf_sample=20), Beam(k=4)):
        session = SearchSession(chain, k=2)
        earlier = {h.id for h in session.search(CHAIN_QUESTION).hits}
        result = strategy.run(CHAIN_QUESTION, session)
        assert result.ids and not earlier & set(result.ids), (strategy.name, result.ids)


def test_stop_conditions(chain, tmp_path, encoder):
    # the session's hop budget
    result = Condensed(k=4).run(CHAIN_QUESTION, SearchSession(chain, max_hops=1))
    assert result.stopped.startswith("budget") and [h.number for h in result.hops] == [1, 0]
    # nothing new: a two-document index has nothing left for the second hop
    small = Index.create(tmp_path / "small", encoder, index_type="exact")
    small.add(CHAIN_DOCUMENTS[:2])
    result = Condensed(k=4).run(CHAIN_QUESTION, SearchSession(small))
    assert result.stopped.startswith("novelty") and sorted(result.ids) == ["journal", "society"]
    # the novelty threshold: a hop scoring under min_relative of the first stops the run
    result = Condensed(k=4, hops=4, min_relative=5.0).run(CHAIN_QUESTION, SearchSession(chain))
    assert result.stopped.startswith("novelty") and len(result.hops) == 2
    # the token budget: nothing handed out beyond it
    session = SearchSession(chain, max_tokens=40)
    result = Condensed(k=4).run(CHAIN_QUESTION, session)
    assert session.budget.tokens_used <= 40 and result.stopped.startswith("budget")


def test_flipr_scores_question_and_context_tokens_separately():
    torch.manual_seed(0)
    query, docs = torch.randn(7, 4), [torch.randn(5, 4), torch.randn(3, 4)]
    reranker = FliprReranker(question_rows=3, context_top=2)
    for score, doc in zip(reranker.score(query, docs), docs):
        best = [max(float(q @ d) for d in doc) for q in query]  # naive MaxSim per query token
        assert score == pytest.approx(sum(best[:3]) + sum(sorted(best[3:], reverse=True)[:2]), rel=1e-5)


def test_flipr_and_prf_hops_search_their_own_query_matrices(chain):
    session = SearchSession(chain, k=5)
    result = Flipr(k=4, context_docs=1).run(CHAIN_QUESTION, session)
    assert "society" in result.ids and result.hops[1].note.startswith("FLIPR")
    # the FLIPR hop's scores are the re-scoring's, not the engine's MaxSim of the stacked matrix
    encoder = chain.encoder
    question = encoder.encode_queries([CHAIN_QUESTION])[0]
    context = encoder.encode_queries([CHAIN_DOCUMENTS[0]["text"]])[0]
    expected = FliprReranker(len(question), 8).score(torch.cat([question, context]),
                                                     [chain.get_embeddings(result.hops[1].ids[0])])[0]
    assert result.hops[1].scores[0] == pytest.approx(expected, rel=1e-3)
    prf = PseudoRelevanceFeedback(k=4, expansion_tokens=3, idf_sample=50)
    query = prf.next_query(CHAIN_QUESTION, [session.search(CHAIN_QUESTION, include_seen=True).hits[0]], SearchSession(chain))
    assert query["query_matrix"].shape == (len(question) + 3, encoder.dim)


def test_beam_chains_from_each_seed(chain):
    session = SearchSession(chain, k=5)
    result = Beam(k=6, beam=2, keep=1).run(CHAIN_QUESTION, session)
    assert [h.note for h in result.hops[1:]] == [f"chain from {i}" for i in result.hops[0].ids[:2]]
    assert "society" in result.ids and len(result.ids) == len(set(result.ids))


def test_strategies_work_the_same_on_a_sharded_index(chain, tmp_path, encoder):
    sharded = ShardedIndex.create(tmp_path / "sharded", 3, encoder, index_type="exact")
    sharded.add(CHAIN_DOCUMENTS + DISTRACTORS)
    for name in ("single", "condensed", "beam"):
        one = make_strategy(name, k=6).run(CHAIN_QUESTION, SearchSession(chain))
        many = make_strategy(name, k=6).run(CHAIN_QUESTION, SearchSession(sharded))
        assert one.ids == many.ids and [h.query for h in one.hops] == [h.query for h in many.hops], name


def test_make_strategy_names():
    assert isinstance(make_strategy("default"), Condensed) and isinstance(make_strategy("single", k=3), Single)
    with pytest.raises(InvalidInputError, match="unknown strategy 'nope'; known: default"):
        make_strategy("nope")
    with pytest.raises(InvalidInputError, match="question: is empty"):
        Single().run("  ", SearchSession.__new__(SearchSession))
    assert {"single", "condensed", "flipr", "prf", "beam"} <= set(STRATEGIES)


def test_eval_multihop_cli_prints_a_line_per_strategy(tmp_path, capsys):
    data = tmp_path / "set"
    (data / "qrels").mkdir(parents=True)
    with open(data / "corpus.jsonl", "w") as f:
        for doc in CHAIN_DOCUMENTS + DISTRACTORS:
            f.write(json.dumps({"_id": doc["id"], "title": "", "text": doc["text"]}) + "\n")
    decomposition = [{"question": "Which society publishes the Journal of Widgetry?", "answer": "the Gearwright Society"},
                     {"question": "Who was the first president of #1?", "answer": "Ada Quill"}]
    with open(data / "queries.jsonl", "w") as f:
        f.write(json.dumps({"_id": "q1", "text": CHAIN_QUESTION,
                            "metadata": {"question_decomposition": decomposition}}) + "\n")
        f.write(json.dumps({"_id": "q2", "text": "What causes tides?"}) + "\n")
    (data / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\tjournal\t1\nq1\tsociety\t1\nq2\ttides\t1\n")
    assert main(["eval-multihop", str(data), "--cache-dir", str(tmp_path / "cache")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == ["single", "default", "flipr", "prf", "beam", "oracle"]
    assert lines[1].startswith("default [condensed]")
    for line in lines:
        fields = line.split()
        for metric in ("R@2", "R@5", "all-gold@10", "all-gold@20", "hops", "tokens", "ms"):
            value = float(fields[fields.index(metric) + 1])
            assert value >= 0
    single = lines[0].split()
    assert float(single[single.index("all-gold@10") + 1]) == 1.0  # 12 documents: everything is in the top 10
    assert float(single[single.index("hops") + 1]) == 1.0
    # LLM-driven strategies without --llm are skipped with a note; an unknown name is an error
    assert main(["eval-multihop", str(data), "--strategy", "ircot", "--cache-dir", str(tmp_path / "cache")]) == 0
    assert "skipped: needs a model" in capsys.readouterr().out
    assert main(["eval-multihop", str(data), "--strategy", "nope", "--cache-dir", str(tmp_path / "cache")]) == 2
    assert "unknown strategy 'nope'" in capsys.readouterr().err


def test_strategy_options_are_checked():
    for name, options, message in [("condensed", {"hops": 0}, "condensed: hops must be an integer >= 1, got 0"),
                                   ("beam", {"beam": 0}, "beam: beam must be an integer >= 1, got 0"),
                                   ("prf", {"clusters": 0}, "prf: clusters must be an integer >= 1"),
                                   ("prf", {"context_docs": 0}, "prf: context_docs must be an integer >= 1"),
                                   ("flipr", {"keep": -1}, "flipr: keep must be an integer >= 1"),
                                   ("condensed", {"hops": "2"}, "hops must be an integer >= 1, got '2'"),
                                   ("condensed", {"min_relative": -1}, "min_relative must be a number >= 0"),
                                   ("condensed", {"nope": 1}, "strategy 'condensed' takes no option nope; its options: hops")]:
        with pytest.raises(InvalidInputError, match=re.escape(message)):
            make_strategy(name, **options)


def test_flipr_and_prf_on_a_projected_compressed_index_search_without_rescoring(tmp_path, encoder):
    index = Index.create(tmp_path / "projected", encoder, index_type="compressed", nbits=2, num_centroids=8,
                         projection_dim=16)
    index.add(CHAIN_DOCUMENTS + DISTRACTORS)
    assert index.get_embeddings("journal").shape[1] == 16
    for strategy in (Flipr(k=4), PseudoRelevanceFeedback(k=4)):
        result = strategy.run(CHAIN_QUESTION, SearchSession(index))
        assert len(result.hops) == 2 and "skipped: stored vectors are not in the query's space" in result.hops[1].note


def test_a_tool_call_whose_strategy_fails_takes_its_searches_back(chain):
    from lir_agent.agentic.tools import call_tool

    class Failing(Condensed):
        def next_query(self, question, previous, session):
            raise TimeoutError("the model's server did not answer")

    session = SearchSession(chain, k=3)
    session.search("bakery")
    before = session.to_json()
    with pytest.raises(TimeoutError):
        call_tool(session, "multi_hop_search", {"question": CHAIN_QUESTION}, strategy=Failing(k=3))
    assert session.to_json() == before  # hop 1's documents were not handed out: the agent can still get them
    assert "journal" in [h.id for h in session.search(CHAIN_QUESTION).hits]


def test_a_session_refuses_a_query_matrix_the_index_cannot_search(chain):
    session = SearchSession(chain)
    dim = chain.encoder.dim
    for matrix, message in [(torch.zeros(3, dim + 1), f"query_matrix: expected shape (n_tokens, {dim})"),
                            (torch.zeros(0, dim), "query_matrix: has no token vectors"),
                            (torch.zeros(2, dim, dtype=torch.int64), "query_matrix: must be floating point"),
                            (torch.full((2, dim), float("nan")), "query_matrix: contains NaN")]:
        with pytest.raises(InvalidInputError, match=re.escape(message)):
            session.search("q", query_matrix=matrix)
    assert session.trace == []
