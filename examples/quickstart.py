"""The main job on the offline defaults: index the bundled sample corpus, search it, print hits.

    python examples/quickstart.py [--index DIR] [--limit N]

The first run encodes the 994 HotpotQA paragraphs with the bundled all-MiniLM-L6-v2 (about a
minute on two CPU cores); later runs reopen the index from disk.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from lir_agent import Index, NotAnIndexError
from lir_agent.corpus import read_documents

HERE = Path(__file__).resolve().parent
CORPUS = HERE / "data" / "hotpotqa_paragraphs.jsonl"
QUERIES = [
    "Which game was originally published as Chaos Progenitus?",
    "Who designed Dragon Dice?",  # answered by the Demon Dice paragraph: same designer
    "Who directed The Dark Knight Rises?",
]
# The sample's records carry no metadata of their own; Index.add stores each record's title in it,
# so a filter on "title" restricts a search to chosen articles: here the five flute sonatas.
FLUTE_SONATAS = [
    "Flute sonata",
    "Flute Sonata (Prokofiev)",
    "Flute sonata in G major (HWV 363b)",
    "Flute Sonata in C major, BWV 1033",
    "Flute sonata in B minor (HWV 367b)",
]


DEFAULT_INDEX = HERE / "quickstart-index"


def open_or_build(directory: str | Path = DEFAULT_INDEX, limit: int | None = None) -> Index:
    """Opens the sample index, building it from the shipped corpus on first use."""
    try:
        index = Index.open(directory)
        print(f"opened {directory}: {len(index)} documents")
    except NotAnIndexError:
        documents = list(read_documents(CORPUS))[:limit]
        start = time.perf_counter()
        index = Index.create(directory)
        index.add(documents, show_progress=True)
        print(f"indexed {len(index)} paragraphs in {time.perf_counter() - start:.1f}s into {directory}")
    return index


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--index", default=str(DEFAULT_INDEX))
    parser.add_argument("--limit", type=int, help="index only the first N paragraphs")
    args = parser.parse_args()
    if args.limit is not None and args.limit <= 0:
        parser.error(f"--limit must be a positive number of paragraphs, got {args.limit}")

    index = open_or_build(args.index, args.limit)

    for query in QUERIES:
        print(f"\n> {query}")
        for hit in index.search(query, k=3):
            title = hit.metadata.get("title", "")
            print(f"  {hit.rank}. [{hit.score:6.3f}] {hit.id} ({title}): {hit.text[:90]}...")
    query, k, only_flute_sonatas = "a sonata attributed to Bach", 3, {"title": {"$in": FLUTE_SONATAS}}
    print(f"\n> {query}  (only the flute sonata articles)")
    hits = index.search(query, k=k, filter=only_flute_sonatas)
    for hit in hits:
        print(f"  {hit.rank}. [{hit.score:6.3f}] {hit.id} ({hit.metadata['title']})")
    if len(hits) < k:
        print(f"  only {len(hits)} for k={k}: the filter matches {index.count(only_flute_sonatas)} of the "
              f"{len(index)} indexed documents")


if __name__ == "__main__":
    main()
