"""Shard the bundled sample index over Ray actors, search it, and compare with the local index.

    python examples/distributed_quickstart.py [--index DIR] [--limit N]

Builds the quickstart index if needed (``--limit``: only its first N paragraphs), reshards it into
3 shards next to it (``DIR-sharded``) and serves them from Ray actors, two replicas per shard.
Ray starts locally (or joins RAY_ADDRESS). Every shard replica is an actor; killing one mid-way
does not lose a query (see tests/test_distributed.py).
"""

import argparse
import shutil
from pathlib import Path

from lir_agent.distributed import RayIndex, ensure_ray
from lir_agent.sharded import reshard
from quickstart import DEFAULT_INDEX, open_or_build

QUERY = "Which airport is the second busiest in Canada?"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--index", default=str(DEFAULT_INDEX))
    parser.add_argument("--limit", type=int, help="when building the index, only the first N paragraphs")
    args = parser.parse_args()
    if args.limit is not None and args.limit <= 0:
        parser.error(f"--limit must be a positive number of paragraphs, got {args.limit}")

    local = open_or_build(args.index, args.limit)
    sharded = Path(args.index).resolve().with_name(Path(args.index).name + "-sharded")
    shutil.rmtree(sharded, ignore_errors=True)
    print(reshard(args.index, sharded, num_shards=3))
    ensure_ray(num_cpus=2)
    with RayIndex.open(sharded, num_replicas=2, num_cpus_per_shard=0.25) as index:
        print("replicas per shard on nodes:", [[r["node_id"][:8] for r in shard] for shard in index.placement()])
        print(f"\n> {QUERY}")
        hits = index.search(QUERY, k=5)
        for hit in hits:
            print(f"{hit.rank}  {hit.score:7.3f}  {hit.id}  {hit.text[:70]}")
        assert [h.id for h in hits] == [h.id for h in local.search(QUERY, k=5)], "sharded and local results differ"
        print("same top 5 as the local index")


if __name__ == "__main__":
    main()
