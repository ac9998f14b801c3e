"""The shared session tools' dispatcher (:func:`lir_agent.agentic.tools.call_tool`) running
``multi_hop_search`` on a small two-hop chain corpus: the evidence with its hop trace, no document
an earlier call of the run returned, tool errors for a missing question, strategies by name."""

import json

import pytest

from conftest import CHAIN_QUESTION, check_multi_hop_answer
from lir_agent import Index, InvalidInputError
from lir_agent.agentic import SearchSession
from lir_agent.agentic.strategies import STRATEGIES, Condensed, make_strategy
from lir_agent.agentic.tools import TOOLS, call_tool, resolve_strategy

PUBLISHER = "Who publishes the Journal of Widgetry?"


@pytest.fixture(scope="module")
def index(chain_index_path, encoder):
    return Index.open(chain_index_path, encoder=encoder)


def test_multi_hop_search_returns_the_evidence_and_the_hop_trace(index):
    session = SearchSession(index, k=2)
    answer = call_tool(session, "multi_hop_search", {"question": CHAIN_QUESTION})
    data = json.loads(json.dumps(answer.data))
    assert set(check_multi_hop_answer(answer.text, data)) == {"journal", "society"}  # both links of the chain
    assert data["strategy"] == make_strategy("default").name and data["question"] == CHAIN_QUESTION
    assert answer.text.endswith(session.budget.describe())
    assert [event.ids for event in session.trace] == [hop["ids"] for hop in data["hops"]]  # the session's hops
    assert TOOLS["multi_hop_search"].args.model_json_schema()["required"] == ["question"]


def test_documents_an_earlier_call_returned_are_not_repeated(index):
    session = SearchSession(index, k=3)
    assert [hit["id"] for hit in call_tool(session, "search", {"query": PUBLISHER, "k": 1}).data["hits"]] == ["journal"]
    # keep=1: a later hop's documents rank from the second place on, so "journal" would come back
    answer = call_tool(session, "multi_hop_search", {"question": CHAIN_QUESTION}, Condensed(k=3, keep=1))
    ids = check_multi_hop_answer(answer.text, answer.data)
    assert any("journal" in hop["ids"] for hop in answer.data["hops"])  # a later hop found it again ...
    assert "journal" not in ids and "id=journal " not in answer.text  # ... and it is not handed out twice
    assert "society" in ids


@pytest.mark.parametrize("arguments, problem", [
    ({}, "question: Field required"), ({"question": ""}, "question: String should have at least 1 character"),
    ({"question": "  "}, "question: is empty"), ({"question": 3}, "question: Input should be a valid string"),
    ({"question": CHAIN_QUESTION, "k": 2}, "k: Extra inputs are not permitted")])
def test_a_missing_or_empty_question_is_refused_and_changes_nothing(index, arguments, problem):
    session = SearchSession(index)
    with pytest.raises(InvalidInputError, match=problem):
        call_tool(session, "multi_hop_search", arguments)
    assert session.trace == []


def test_a_strategy_by_name_and_an_unknown_one(index):
    answer = call_tool(SearchSession(index, k=2), "multi_hop_search", {"question": CHAIN_QUESTION}, "flipr")
    assert answer.data["strategy"] == "flipr" and check_multi_hop_answer(answer.text, answer.data)
    assert resolve_strategy("beam", k=4).k == 4 and resolve_strategy(None, k=3).name == make_strategy("default").name
    known = ", ".join(["default"] + sorted(STRATEGIES))
    with pytest.raises(InvalidInputError, match=f"unknown strategy 'nope'; known: {known}"):
        resolve_strategy("nope", k=5)
    with pytest.raises(InvalidInputError, match="strategy: expected a Strategy or the name of one, got int"):
        resolve_strategy(3, k=5)
