"""Long documents searched whole: passages, document-level MaxSim, windows with citations.

The shipped sample paragraphs are concatenated into a few long "volumes" (thousands of tokens
each, far beyond the encoder's 256). The index stores each volume as overlapping passages, one
row of token vectors per volume: a volume scores by MaxSim over all its passages, and each hit
carries its passages scored. For three questions, the best volumes' passages are assembled into
windows within a token budget and printed with their citations (volume id, character span).

    python examples/long_context.py [--index DIR] [--volumes 3] [--paragraphs-per-volume 21] [--budget 600]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from lir_agent import Index
from lir_agent.agentic import assemble_context

SAMPLE = Path(__file__).resolve().parent / "data" / "hotpotqa_paragraphs.jsonl"
QUESTIONS = ["Who directed the 1986 film Maximum Overdrive?",
             "What is the population of Leland, North Carolina?",
             "Who created the collectible dice game Demon Dice?"]


def volumes(count: int, per_volume: int) -> list[dict]:
    """The first count * per_volume sample paragraphs, as ``count`` long texts."""
    with open(SAMPLE, encoding="utf-8") as f:
        paragraphs = [json.loads(line) for _, line in zip(range(count * per_volume), f)]
    return [{"id": f"volume-{v + 1}",
             "text": "\n\n".join(f"{p['title']}. {p['text']}" for p in paragraphs[v * per_volume:(v + 1) * per_volume]),
             "metadata": {"paragraphs": per_volume}}
            for v in range(count)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--index", help="where to build the index (default: a temporary folder)")
    parser.add_argument("--volumes", type=int, default=3)
    parser.add_argument("--paragraphs-per-volume", type=int, default=21)
    parser.add_argument("--budget", type=int, default=600, help="tokens of context per question")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        index = Index.create(Path(args.index or scratch) / "long-index", index_type="exact")  # passages: on
        index.add(volumes(args.volumes, args.paragraphs_per_volume))
        for doc_id in index.ids():
            doc = index.get(doc_id)
            print(f"{doc_id}: {len(doc.text)} characters, {len(doc.passages or [0])} passages, "
                  f"{index.get_embeddings(doc_id).shape[0]} token vectors")
        for question in QUESTIONS:
            hits = index.search(question, k=2)
            print(f"\n> {question}")
            for hit in hits:
                best = hit.passages[0]
                print(f"  {hit.rank}. {hit.id} score {hit.score:.2f}; best passage #{best.number} "
                      f"[{best.start}-{best.end}] score {best.score:.2f}")
            context = assemble_context(hits, args.budget)
            print(f"  context ({context.tokens} tokens of {args.budget}):")
            for window in context.windows:
                print(f"  {window.citation} {' '.join(window.text.split())}")


if __name__ == "__main__":
    main()
