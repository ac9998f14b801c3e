"""Shard the bundled sample index over Ray actors, search it, and compare with the local index.

    python examples/distributed_quickstart.py  # builds the quickstart index if needed, reshards it
                                               # into 3 shards and serves them from Ray actors

Ray starts locally (or joins RAY_ADDRESS). Every shard replica is an actor; killing one mid-way
does not lose a query (see tests/test_distributed.py).
"""

import shutil
from pathlib import Path

from lir_agent.distributed import RayIndex, ensure_ray
from lir_agent.sharded import reshard
from quickstart import DEFAULT_INDEX, open_or_build

SHARDED = Path(__file__).resolve().parent / "quickstart-index-sharded"
QUERY = "Which band released the album Nevermind?"


def main() -> None:
    local = open_or_build()
    shutil.rmtree(SHARDED, ignore_errors=True)
    print(reshard(DEFAULT_INDEX, SHARDED, num_shards=3))
    ensure_ray(num_cpus=2)
    with RayIndex.open(SHARDED, num_replicas=2, num_cpus_per_shard=0.25) as index:
        print("replicas per shard on nodes:", [[r["node_id"][:8] for r in shard] for shard in index.placement()])
        hits = index.search(QUERY, k=5)
        for hit in hits:
            print(f"{hit.rank}  {hit.score:7.3f}  {hit.id}  {hit.text[:70]}")
        assert [h.id for h in hits] == [h.id for h in local.search(QUERY, k=5)], "sharded and local results differ"
        print("same top 5 as the local index")


if __name__ == "__main__":
    main()
