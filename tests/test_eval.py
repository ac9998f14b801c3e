"""Metrics against ir-measures (pytrec_eval), the BEIR loader, and the SciFact quality floor."""

import random

import ir_measures
import pytest
from ir_measures import RR, R, nDCG

from lir_agent import Index
from lir_agent.eval import compute_metrics, evaluate, load_beir

from helpers import DATA, needs

SCIFACT = DATA / "scifact"


def random_run_and_qrels(seed):
    rng = random.Random(seed)
    qrels, run = {}, {}
    for q in range(40):
        qid = f"q{q}"
        docs = [f"d{i}" for i in rng.sample(range(200), 60)]
        qrels[qid] = {d: rng.choice([1, 1, 2, 3]) for d in rng.sample(docs, rng.randint(1, 6))}
        qrels[qid].update({d: 0 for d in rng.sample(docs, 3) if d not in qrels[qid]})
        scores = rng.sample(range(100000), len(docs))  # distinct scores: no tie-breaking differences
        run[qid] = {d: s / 1000 for d, s in zip(docs[: rng.randint(0, 60)], scores)}
    return run, qrels


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_metrics_match_ir_measures(seed):
    run, qrels = random_run_and_qrels(seed)
    ours = compute_metrics(run, qrels, ["nDCG@10", "nDCG@3", "Recall@10", "Recall@100", "MRR@10"])
    qrels_list = [ir_measures.Qrel(q, d, r) for q, judged in qrels.items() for d, r in judged.items()]
    run_list = [ir_measures.ScoredDoc(q, d, s) for q, scores in run.items() for d, s in scores.items()]
    theirs = ir_measures.calc_aggregate([nDCG @ 10, nDCG @ 3, R @ 10, R @ 100, RR @ 10], qrels_list, run_list)
    assert ours["nDCG@10"] == pytest.approx(theirs[nDCG @ 10], abs=1e-9)
    assert ours["nDCG@3"] == pytest.approx(theirs[nDCG @ 3], abs=1e-9)
    assert ours["Recall@10"] == pytest.approx(theirs[R @ 10], abs=1e-9)
    assert ours["Recall@100"] == pytest.approx(theirs[R @ 100], abs=1e-9)
    assert ours["MRR@10"] == pytest.approx(theirs[RR @ 10], abs=1e-9)


def test_unknown_metric_is_refused():
    with pytest.raises(ValueError, match="unknown metric"):
        compute_metrics({}, {"q": {"d": 1}}, ["MAP@10"])


@needs(SCIFACT)
def test_beir_loader_reads_scifact():
    data = load_beir(SCIFACT)
    assert len(data.corpus) == 5183 and len(data.queries) == 300
    assert all(q in data.queries for q in data.qrels)
    first = data.corpus[0]
    assert first["id"] and first["text"] and "title" in first


@pytest.mark.slow
@needs(SCIFACT)
def test_scifact_quality_floor(tmp_path, encoder):
    """Exact search with the default encoder: nDCG@10 >= 0.70 on SciFact test (reference 0.713)."""
    data = load_beir(SCIFACT)
    index = Index.create(tmp_path / "scifact", encoder=encoder, index_type="exact")
    index.add(data.corpus, batch_size=32)
    metrics = evaluate(index, data, metrics=["nDCG@10", "Recall@100"])
    print(metrics)
    assert metrics["nDCG@10"] >= 0.70
