"""A sharded index served by Ray actors: one actor per shard replica, on CPU or (fractional) GPUs.

Each :class:`ShardActor` opens its shard directory (memory-mapped) and answers the Index methods
the coordinator calls. :class:`RayShards` is the :class:`~lir_agent.sharded.ShardSet` that picks
replicas (round robin), retries a call on another replica when an actor dies (Ray restarts dead
actors from their on-disk shard), and sends writes to a shard's primary replica, refreshing the
others once the write is durable. :class:`RayIndex` is the coordinator: a plain object usable
from any driver, with the local index's API.

The shard directories must be reachable at the same path from every node (a shared file system).
"""

from __future__ import annotations

import itertools
import logging
import os
import time
from pathlib import Path
from typing import Any, Sequence

import ray
import torch
from ray.exceptions import ActorDiedError, ActorUnavailableError, GetTimeoutError, RayActorError
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from ..encoder import Encoder
from ..errors import LIRError
from ..index import Index
from ..sharded import ShardedIndex, checked_encoder, read_layout, shared_settings

ACTOR_FAILURES = (RayActorError, ActorDiedError, ActorUnavailableError, GetTimeoutError)
RETRY_PAUSE_S = 0.2
PLACEMENT_TIMEOUT_S = 60.0  # a cluster that cannot place the shard actors by then never will
INLINE_QUERY_BYTES = 256 * 1024  # query matrices up to this size travel inside the calls


class ShardUnavailableError(LIRError):
    """No replica of a shard could answer (after retries); the message names the shard."""


def ensure_ray(address: str | None = None, **init_kwargs: Any) -> None:
    """Joins ``address`` (or ``RAY_ADDRESS``) when given, else starts a new local Ray quietly
    (never a cluster found on this machine by other means); does nothing when Ray is already
    initialised in this process.

    A new local Ray turns token authentication on by default and announces it with a warning
    ("Token authentication is enabled ... Set RAY_AUTH_MODE=disabled to opt out"): it asks
    nothing of the user, so that one record is dropped while ``ray.init`` runs; Ray's other
    messages still show."""
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS") or "local"
    defaults = {"logging_level": logging.WARNING, "log_to_driver": False, "include_dashboard": False}
    auth_logger = logging.getLogger("ray._private.authentication.authentication_token_setup")

    def not_auth_enabled_notice(record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Token authentication is enabled")

    auth_logger.addFilter(not_auth_enabled_notice)
    try:
        ray.init(address=address, **(defaults | init_kwargs))
    finally:
        auth_logger.removeFilter(not_auth_enabled_notice)


@ray.remote(max_restarts=-1)
class ShardActor:
    """One replica of one shard: the shard's Index, opened from disk (again after a restart)."""

    def __init__(self, path: str, device: str):
        self.index = Index.open(path, device=device)

    def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return getattr(self.index, method)(*args, **kwargs)

    def where(self) -> dict[str, Any]:
        """Node, process and device of this replica (for placement checks and ``info``)."""
        return {"node_id": ray.get_runtime_context().get_node_id(), "pid": os.getpid(), "device": self.index.device,
                "torch_threads": torch.get_num_threads()}


class RayShards:
    """Replicated shard actors, placed by one placement group per shard (replicas spread over nodes)."""

    def __init__(self, paths: Sequence[Path], num_replicas: int, num_cpus: float, num_gpus: float,
                 spread: str, call_timeout_s: float | None):
        device = "cuda" if num_gpus > 0 else "cpu"
        self.num_shards, self.num_replicas, self.call_timeout_s = len(paths), num_replicas, call_timeout_s
        resources = {"CPU": num_cpus} | ({"GPU": num_gpus} if num_gpus > 0 else {})
        self.groups = [placement_group([resources] * num_replicas, strategy=spread) for _ in paths]
        try:
            ray.get([group.ready() for group in self.groups], timeout=PLACEMENT_TIMEOUT_S)
        except GetTimeoutError:
            for group in self.groups:
                remove_placement_group(group)
            raise ShardUnavailableError(
                f"the cluster cannot place {len(paths)} shard(s) x {num_replicas} replica(s) of {resources} "
                f"with strategy {spread} (it has {ray.available_resources()} free): ask for fewer "
                "resources per shard (num_cpus_per_shard, num_gpus_per_shard) or add nodes") from None
        self.replicas = [
            [ShardActor.options(num_cpus=num_cpus, num_gpus=num_gpus,
                                scheduling_strategy=PlacementGroupSchedulingStrategy(group, placement_group_bundle_index=r))
             .remote(str(path), device) for r in range(num_replicas)]
            for path, group in zip(paths, self.groups)
        ]
        self._turn = [itertools.count(s) for s in range(self.num_shards)]
        ray.get([replica.where.remote() for replicas in self.replicas for replica in replicas])  # all opened

    # ---------------------------------------------------------------- calls
    def call(self, shard: int, method: str, *args: Any, **kwargs: Any) -> Any:
        """Runs ``method`` on the shard's primary replica (writes), retrying while Ray restarts
        it; then brings the other replicas to the written state."""
        result = self._attempt(shard, method, args, kwargs, order=[0] * (self.num_replicas + 2))
        if method in WRITES and self.num_replicas > 1:
            self.refresh_secondaries(shard)
        return result

    def fan_out(self, method: str, per_shard_args: Sequence[tuple], shards: Sequence[int] | None = None,
                allow_partial: bool = False) -> list[Any]:
        """One call per shard (or per shard of ``shards``), all in flight together, each on the
        next replica in turn; a failed call is retried on the shard's other replicas."""
        shards = list(range(self.num_shards) if shards is None else shards)
        first = {s: next(self._turn[s]) % self.num_replicas for s in shards}
        pending = [self.replicas[s][first[s]].call.remote(method, *args) for s, args in zip(shards, per_shard_args)]
        try:
            return ray.get(pending, timeout=self.call_timeout_s)  # the usual case: one wait
        except ACTOR_FAILURES:
            pass  # find the failed shards one by one
        results = []
        for s, args, ref in zip(shards, per_shard_args, pending):
            try:
                results.append(ray.get(ref, timeout=self.call_timeout_s))
            except ACTOR_FAILURES:
                order = [(first[s] + i) % self.num_replicas for i in range(1, self.num_replicas + 2)]
                try:
                    results.append(self._attempt(s, method, args, {}, order))
                except ShardUnavailableError:
                    if not allow_partial:
                        raise
                    results.append(None)
        return results

    def _attempt(self, shard: int, method: str, args: Sequence[Any], kwargs: dict, order: list[int]) -> Any:
        error: Exception | None = None
        for replica in order:
            try:
                return ray.get(self.replicas[shard][replica].call.remote(method, *args, **kwargs),
                               timeout=self.call_timeout_s)
            except ACTOR_FAILURES as exc:
                error = exc
                time.sleep(RETRY_PAUSE_S)  # a dead actor is being restarted from its shard
        raise ShardUnavailableError(f"shard {shard}: no replica answered {method!r} ({error})")

    def refresh_secondaries(self, shard: int) -> None:
        refs = [replica.call.remote("refresh") for replica in self.replicas[shard][1:]]
        for ref in refs:
            try:
                ray.get(ref, timeout=self.call_timeout_s)
            except ACTOR_FAILURES:
                pass  # a restarted replica reopens the shard from disk, at the written state

    def placement(self) -> list[list[dict[str, Any]]]:
        """Where every replica runs: per shard, per replica, node id, pid and device."""
        return [ray.get([replica.where.remote() for replica in replicas]) for replicas in self.replicas]

    def shutdown(self) -> None:
        for replicas in self.replicas:
            for replica in replicas:
                ray.kill(replica)
        for group in self.groups:
            remove_placement_group(group)
        self.replicas = []


WRITES = {"add", "upsert", "delete", "compact", "copy_from", "index_fields", "upgrade"}


class RayIndex(ShardedIndex):
    """A sharded index whose shards are Ray actors; the API of the local index, plus
    ``allow_partial`` on searches and :meth:`placement`. Use :meth:`open`."""

    shards: RayShards

    @classmethod
    def open(cls, path: str | Path, encoder: Encoder | str | None = None, *, num_replicas: int = 1,
             num_cpus_per_shard: float = 0.5, num_gpus_per_shard: float = 0.0, spread: str = "SPREAD",
             address: str | None = None, call_timeout_s: float | None = 120.0) -> "RayIndex":
        """Starts one actor per shard replica and returns the coordinator.

        ``num_gpus_per_shard`` (fractional allowed) puts replicas on GPUs; ``spread``: the
        placement strategy of a shard's replicas ("SPREAD": over nodes where possible,
        "STRICT_SPREAD": on distinct nodes or fail). Ray starts locally unless ``address`` or
        ``RAY_ADDRESS`` names a cluster.
        """
        path = Path(path).resolve()
        layout = read_layout(path)
        settings, engine = shared_settings(path, layout)
        ensure_ray(address)
        shards = RayShards([path / name for name in layout["shards"]], num_replicas, num_cpus_per_shard,
                           num_gpus_per_shard, spread, call_timeout_s)
        return cls(path, layout, shards, settings, engine, checked_encoder(encoder, settings, path))

    def _share(self, matrices: list[torch.Tensor]) -> Any:
        """The query matrices as the shards receive them (each shard prepares them itself:
        scoring against the centroids costs less than shipping the scores). A batch goes into
        the object store once and every shard reads that copy; a small one (a few queries)
        travels inside the calls, which saves each shard a fetch from the driver."""
        arrays = [m.float().numpy() for m in matrices]
        return ray.put(arrays) if sum(a.nbytes for a in arrays) > INLINE_QUERY_BYTES else arrays

    def save(self) -> None:
        """Writes are durable when acknowledged; this waits until every replica serves the last of them."""
        for shard in range(self.num_shards):
            self.shards.refresh_secondaries(shard)

    def placement(self) -> list[list[dict[str, Any]]]:
        return self.shards.placement()

    def close(self) -> None:
        """Stops the shard actors (the shards stay on disk)."""
        self.shards.shutdown()

    def __enter__(self) -> "RayIndex":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
