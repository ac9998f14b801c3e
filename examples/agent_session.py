"""A scripted agent answering a two-hop question through a search session on the shipped sample.

    python examples/agent_session.py [--index DIR] [--limit N]

The script stands in for a language model: its queries are written out below (a model would
write the second one after reading the first result). What the session adds is on show: each
hop returns only documents not seen before, passages are the windows where the query's words
matched (the MaxSim alignment, with character offsets), the novelty line tells the agent when a
hop stops adding evidence, the budget is never exceeded, and the trace is saved as JSON.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from quickstart import DEFAULT_INDEX, open_or_build

from lir_agent.agentic import SearchSession

QUESTION = "Who directed the film that was shot in or around Leland, North Carolina in 1986?"
PLAN = [
    QUESTION,
    "Maximum Overdrive film director",  # the film named in the first hop's best passage
    "Maximum Overdrive",  # a third look: does it still bring anything new?
]
STOP_BELOW = 0.8  # stop when a hop's best score per query token falls under 80% of the first hop's


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--index", default=str(DEFAULT_INDEX), help="index directory (built on first use)")
    parser.add_argument("--limit", type=int, default=None, help="index only the first N paragraphs")
    args = parser.parse_args()
    index = open_or_build(args.index, args.limit)
    session = SearchSession(index, k=3, max_hops=4, max_tokens=900, passage_tokens=60)
    print(f"question: {QUESTION}\n")
    for query in PLAN:
        result = session.search(query)
        print(f"--- hop {result.hop}: search({query!r})")
        for hit in result.hits:
            words = ", ".join(f"{'/'.join(h.query_words)}@{h.start}" for h in hit.highlights[:5])
            print(f"  [{hit.rank}] {hit.id} score {hit.score:.2f} chars {hit.start}-{hit.end}"
                  + (f"  matched: {words}" if words else ""))
            print(f"      {' '.join(hit.passage.split())[:160]}")
        print(f"  {result.novelty()} {result.budget.describe()}")
        if result.relative_best is not None and result.relative_best < STOP_BELOW:
            print("  -> the evidence is getting weaker: stop searching")
            break
    best = session.evidence()[0]
    page = session.read(best.id, start=0)
    print(f"\n--- read_document({best.id!r}): characters {page.start}-{page.end} of {page.text_chars}")
    print(f"  {' '.join(page.text.split())}")
    print("\nevidence, in the order the hops found it:")
    for item in session.evidence():
        print(f"  hop {item.hop}  rank {item.rank}  {item.id}  score {item.score:.2f}")
    with tempfile.TemporaryDirectory() as folder:
        saved = Path(folder) / "trace.json"
        saved.write_text(session.to_json(), encoding="utf-8")
        restored = SearchSession.from_json(index, json.loads(saved.read_text(encoding="utf-8")))
    calls = ", ".join(f"{e.kind}:{len(e.ids)} ids/{e.tokens} tok/{e.ms:.0f} ms" for e in restored.trace)
    print(f"\ntrace ({len(restored.trace)} calls, reloaded from JSON): {calls}")
    print(restored.budget.describe())


if __name__ == "__main__":
    main()
