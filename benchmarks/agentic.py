"""Multi-hop strategies measured offline: every LLM-free strategy against single-shot search on
each multi-hop set of ``../shared/data/multihop``, on the pool of both sets' corpora (every
question searched against all 2,884 paragraphs), and on SciFact (single-hop: a strategy must not
cost quality there), on the exact and the 2-bit compressed index; then the LLM-driven strategies
and the oracle planner against a real local model (Qwen2.5-Coder-0.5B-Instruct through
llama.cpp's OpenAI-compatible server, reached with LangChain's ChatOpenAI and LlamaIndex's
OpenAILike: ``benchmarks/local_llm.py``) on a seeded sample of questions.

    python benchmarks/agentic.py                          # both sections (about 1 hour on 2 cores)
    python benchmarks/agentic.py --sections llm-free      # no model
    python benchmarks/agentic.py --sections llm --llm-questions 30

Writes ``results/agentic.json`` and ``results/agentic.png``; prints the CLI's lines
(``lir-agent eval-multihop``), which compute the same figures.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # the model server shares the cores

import torch

from engine import CACHE, DATA, RESULTS, build, encoded, stored
from lir_agent import Index
from lir_agent.agentic import SearchSession
from lir_agent.agentic.evaluation import EVAL_DEPTH, StrategyReport, evaluate_strategy, strategy_label
from lir_agent.agentic.strategies import DEFAULT_STRATEGY, make_strategy, oracle_plans
from lir_agent.eval import BeirDataset, load_beir

MULTIHOP = sorted(p.name for p in (DATA / "multihop").iterdir() if (p / "corpus.jsonl").exists())
LLM_FREE = ["single", "default", "flipr", "prf", "beam"]
COMPRESSED_STRATEGIES = ["single", "default"]  # the floors ask for these on the compressed index
SCIFACT_STRATEGIES = ["single", "default"]
LLM_STRATEGIES = ["single", "default", "ircot", "decompose", "expand", "expand-tokens", "oracle"]


def dataset(name: str) -> BeirDataset:
    return load_beir(DATA / "multihop" / name)


def pooled() -> BeirDataset:
    """Every multi-hop set's corpus in one, with all their questions."""
    parts = [dataset(name) for name in MULTIHOP]
    return BeirDataset("pooled", [d for p in parts for d in p.corpus], {q: t for p in parts for q, t in p.queries.items()},
                       {q: j for p in parts for q, j in p.qrels.items()})


def indexes(name: str, corpus_path: Path | None) -> dict[str, Index]:
    """The exact index (encoded once, cached) and a 2-bit compressed one built from its vectors."""
    if corpus_path is None:  # the pool: the sets' cached vectors, not a second encoding
        path = CACHE / "pooled-exact"
        try:
            exact = Index.open(path)
        except Exception:
            exact = Index.create(path, index_type="exact")
            for part in MULTIHOP:
                docs, vectors = stored(encoded(part, DATA / "multihop" / part / "corpus.jsonl"))
                exact.add(docs, embeddings=vectors)
    else:
        exact = encoded(name, corpus_path)
    compressed_path = CACHE / f"{name}-2-bit"
    try:
        compressed = Index.open(compressed_path)
    except Exception:
        docs, vectors = stored(exact)
        build(compressed_path, docs, vectors, nbits=2)
        compressed = Index.open(compressed_path)
    return {"exact": exact, "2-bit": compressed}


def strategy(name: str, plans: dict, llm=None, llamaindex_llm=None):
    if name == "oracle":
        return make_strategy("oracle", k=EVAL_DEPTH, plans=plans)
    if name == "expand-tokens":
        return make_strategy("expand", k=EVAL_DEPTH, llm=llm, fusion="tokens")
    if name == "decompose":  # driven through LlamaIndex's OpenAI-like LLM, the others through LangChain
        return make_strategy(name, k=EVAL_DEPTH, llm=llamaindex_llm)
    return make_strategy(name, k=EVAL_DEPTH, llm=llm)


def report(rows: list[dict], set_name: str, index_name: str, name: str, result: StrategyReport) -> None:
    label = result.strategy = strategy_label(name)
    print(f"{set_name:<20}{index_name:<7}{result.line(22)}", flush=True)
    rows.append({"set": set_name, "index": index_name, "strategy": label, "questions": result.questions,
                 **result.metrics, "hops": result.hops, "tokens": result.tokens, "ms": result.ms,
                 "stopped": result.stopped, "runs_with_notes": result.notes, "description": result.description})


def llm_free(rows: list[dict]) -> None:
    plans = {}
    for name in MULTIHOP:
        plans |= oracle_plans(DATA / "multihop" / name / "queries.jsonl")
    sets = [(name, dataset(name), DATA / "multihop" / name / "corpus.jsonl") for name in MULTIHOP]
    sets += [("pooled", pooled(), None), ("scifact", load_beir(DATA / "scifact"), DATA / "scifact" / "corpus.jsonl")]
    for set_name, data, corpus_path in sets:
        for index_name, index in indexes(set_name, corpus_path).items():
            names = (SCIFACT_STRATEGIES if set_name == "scifact" else
                     LLM_FREE if index_name == "exact" else COMPRESSED_STRATEGIES)
            with_plans = [q for q, text in data.queries.items() if text in plans]
            for name in names + (["oracle"] if with_plans and index_name == "exact" else []):
                question_ids = with_plans if name == "oracle" else None
                report(rows, set_name, index_name, name, evaluate_strategy(index, data, strategy(name, plans), None,
                                                                           question_ids))
                if name == "oracle":  # single on the same questions, for comparison
                    report(rows, set_name, index_name, "single (oracle's questions)",
                           evaluate_strategy(index, data, strategy("single", plans), None, question_ids))


def llm_driven(rows: list[dict], questions: int, size: str, seed: int) -> None:
    from local_llm import chat_model, fetch_model, llamaindex_llm, serve

    model_path = fetch_model(size)
    with serve(model_path, threads=2) as base_url:
        llm, li_llm = chat_model(base_url, max_tokens=160), llamaindex_llm(base_url, max_tokens=160)
        for set_name in MULTIHOP:
            data = dataset(set_name)
            plans = oracle_plans(DATA / "multihop" / set_name / "queries.jsonl")
            sample = sorted(random.Random(seed).sample(list(data.queries), min(questions, len(data.queries))))
            index = encoded(set_name, DATA / "multihop" / set_name / "corpus.jsonl")
            for name in LLM_STRATEGIES:
                if name == "oracle" and not plans:
                    continue
                started = time.perf_counter()
                result = evaluate_strategy(index, data, strategy(name, plans, llm, li_llm), None, sample)
                report(rows, set_name, f"{size}", name, result)
                rows[-1]["seconds_per_question"] = (time.perf_counter() - started) / len(sample)
                rows[-1]["model"] = (f"Qwen2.5-Coder-{size.upper()}-Instruct Q4_K_M"
                                     if name not in ("single", "default", "oracle") else None)


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(s, i) for s, i in dict.fromkeys((r["set"], r["index"]) for r in rows) if s != "scifact"]
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.6), sharey=True, squeeze=False)
    for ax, (set_name, index_name) in zip(axes[0], panels):
        chosen = [r for r in rows if r["set"] == set_name and r["index"] == index_name]
        labels = [r["strategy"].replace(" (oracle's questions)", "*").replace(f" [{DEFAULT_STRATEGY}]", "") for r in chosen]
        x = range(len(chosen))
        ax.bar([i - 0.2 for i in x], [r["all-gold@10"] for r in chosen], 0.4, label="all-gold@10")
        ax.bar([i + 0.2 for i in x], [r["all-gold@20"] for r in chosen], 0.4, label="all-gold@20")
        ax.set_xticks(list(x), labels, rotation=60, fontsize=7)
        ax.set_title(f"{set_name} ({index_name})", fontsize=8)
    axes[0][0].set_ylabel("share of questions, all gold found")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sections", nargs="+", choices=["llm-free", "llm"], default=["llm-free", "llm"])
    parser.add_argument("--llm-questions", type=int, default=30)
    parser.add_argument("--llm-size", choices=["0.5b", "1.5b"], default="0.5b")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)  # the strategies' searches are single queries; the server takes the other core
    out = RESULTS / "agentic.json"
    results = json.loads(out.read_text()) if out.exists() else {}
    for section in args.sections:
        rows: list[dict] = []
        if section == "llm-free":
            llm_free(rows)
        else:
            llm_driven(rows, args.llm_questions, args.llm_size, args.seed)
        results[section] = {"rows": rows, "torch_threads": 1, "eval_depth": EVAL_DEPTH,
                            "session": "SearchSession defaults (k=5, passage_tokens=200, citations on)"}
        if section == "llm":
            results[section] |= {"questions_per_set": args.llm_questions, "seed": args.seed}
        out.write_text(json.dumps(results, indent=1))
    if "llm-free" in results:
        plot(results["llm-free"]["rows"], RESULTS / "agentic.png")


if __name__ == "__main__":
    main()
