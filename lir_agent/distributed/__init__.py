"""The sharded index on a Ray cluster: shard actors, a coordinator, and an HTTP service.

Importing this package imports Ray; the rest of lir_agent works without it.
"""

from .ray_index import RayIndex, ShardActor, ShardUnavailableError, ensure_ray

__all__ = ["RayIndex", "ShardActor", "ShardUnavailableError", "ensure_ray"]
