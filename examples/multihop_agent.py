"""A bridge question answered hop by hop on the shipped sample.

The second paragraph of a bridge question only matches once the first is known.

    python examples/multihop_agent.py [--index DIR] [--limit N]
    python examples/multihop_agent.py --llm openai:MODEL [--llm-base-url http://127.0.0.1:8080/v1]

Without a model the default LLM-free strategy runs: the first hop searches the question; the
second searches the question followed by the sentences of the first hop's best paragraphs that
the MaxSim alignment matched (Baleen's condensed context), and may re-rank what the first hop
found. With ``--llm`` (any LangChain ``init_chat_model`` provider; an OpenAI-compatible local
server through ``--llm-base-url``) IRCoT runs instead: the model writes the next reasoning
sentence, which becomes the next query, until it can answer.
"""

from __future__ import annotations

import argparse

from quickstart import DEFAULT_INDEX, open_or_build

from lir_agent.agentic import SearchSession
from lir_agent.agentic.strategies import make_strategy
from lir_agent.cli import chat_model_from_spec

QUESTION = "Who directed the film that was shot in or around Leland, North Carolina in 1986?"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--index", default=str(DEFAULT_INDEX), help="index directory (built on first use)")
    parser.add_argument("--limit", type=int, default=None, help="index only the first N paragraphs")
    parser.add_argument("--llm", metavar="PROVIDER:MODEL", help="run IRCoT with this chat model")
    parser.add_argument("--llm-base-url", help="base URL of an OpenAI-compatible server")
    args = parser.parse_args()
    index = open_or_build(args.index, args.limit)
    strategy = (make_strategy("ircot", k=5, llm=chat_model_from_spec(args.llm, args.llm_base_url)) if args.llm
                else make_strategy("default", k=5))
    session = SearchSession(index, k=5, max_hops=4, max_tokens=3000, passage_tokens=80)
    result = strategy.run(QUESTION, session)
    print(f"question: {QUESTION}\nstrategy: {strategy.describe()}\n")
    for hop in result.hops:
        print(f"--- hop {hop.number}: {hop.query!r}")
        if hop.note:
            print(f"    ({hop.note})")
        print(f"    {len(hop.ids)} returned, {hop.new} new: {', '.join(hop.ids)}")
    print(f"\nstopped: {result.stopped}")
    if result.answer:
        print(f"answer (the model's): {result.answer}")
    print(f"\nevidence ({len(result.documents)} documents, {result.tokens} tokens of passages):")
    for rank, hit in enumerate(result.documents, start=1):
        shown = [h for h in hit.highlights if hit.start <= h.start and h.end <= hit.end][:4]  # inside the passage
        words = "; ".join(f"{hit.passage[h.start - hit.start:h.end - hit.start]!r} <- {', '.join(h.query_words)}"
                          for h in shown)
        print(f"[{rank}] {hit.id} (hop {hit.hop}) {hit.metadata.get('title', '')!r} chars {hit.start}-{hit.end}")
        print(f"    matched: {words or '-'}")
        print(f"    {' '.join(hit.passage.split())[:200]}")
    for note in result.notes:
        print(f"note: {note}")


if __name__ == "__main__":
    main()
