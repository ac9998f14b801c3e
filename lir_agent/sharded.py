"""A sharded index: ordinary index directories behind one coordinator.

On disk::

    shards.json        {"format": "lir-agent-sharded", "num_shards": N, "shards": [...], ...}
    shard-00000/       an ordinary index directory (the same format as a single-machine index)
    shard-00001/ ...

A document lives in shard ``shard_of(id, N)``, a stable hash of its id, so adds, deletes and
gets go to one shard without a lookup table. The shards of a compressed index share one codec,
which makes a search over the shards (run in rounds with exact merging, see
:mod:`lir_agent.engines.pipeline`) return exactly what one index holding all the documents
returns. :class:`ShardedIndex` is the coordinator; where the shards live is a
:class:`ShardSet`: in this process (:class:`LocalShards`) or in Ray actors
(:mod:`lir_agent.distributed`).
"""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from dataclasses import replace
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Protocol, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from . import storage
from .codec import ResidualCodec
from .encoder import Encoder, EncoderSettings
from .engines import CompressedEngine, ExactEngine
from .engines.pipeline import Ranked, Round, StaleSearchError, run_search
from .errors import DocumentNotFoundError, DuplicateIdError, IndexCorruptedError, InvalidInputError, NotAnIndexError
from .filters import Filter, compile_filter
from .index import (Document, Index, as_documents, check_encoder, check_fields, check_exclude_ids, check_k,
                    document_matrices, hit_of, query_matrices)
from .passages import passage_settings_of, search_depth, with_passages

SHARDS_FILE = "shards.json"
FORMAT_NAME = "lir-agent-sharded"
FORMAT_VERSION = 1
SEARCH_ATTEMPTS = 3  # a search restarts when a shard is written to between its rounds


def shard_of(doc_id: str, num_shards: int) -> int:
    """The shard of a document id: a stable 64-bit hash (BLAKE2b) of its UTF-8 bytes modulo the
    shard count (an id that is not text, which no index stores, still gets a shard: where it is not found)."""
    digest = hashlib.blake2b(doc_id.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "little") % num_shards


def is_sharded(path: str | Path) -> bool:
    return (Path(path) / SHARDS_FILE).exists()


def open_index(path: str | Path, device: str = "cpu") -> "Index | ShardedIndex":
    """A single-machine index, or a sharded one with its shards opened in this process."""
    return ShardedIndex.open(path, device=device) if is_sharded(path) else Index.open(path, device=device)


def read_layout(path: Path) -> dict[str, Any]:
    """Reads and checks ``shards.json``."""
    file = path / SHARDS_FILE
    if not file.exists():
        raise NotAnIndexError(f"{path} is not a sharded lir_agent index (no {SHARDS_FILE} there)")
    try:
        layout = json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise IndexCorruptedError(f"{file} is corrupted: {exc}") from exc
    if layout.get("format") != FORMAT_NAME or layout.get("format_version", 0) > FORMAT_VERSION:
        raise NotAnIndexError(f"{file} is not a sharded lir_agent manifest this version reads")
    if len(layout.get("shards", [])) != layout.get("num_shards"):
        raise IndexCorruptedError(f"{file}: {layout.get('num_shards')} shards announced, {len(layout.get('shards', []))} named")
    for name in layout["shards"]:
        if not (path / name / storage.MANIFEST).exists():
            raise IndexCorruptedError(f"{path / name} (a shard named in {file}) is missing")
    return layout


def create_shards(path: str | Path, num_shards: int, encoder: Encoder | str | None = None, *,
                  index_type: str = "exact", codec: ResidualCodec | None = None,
                  indexed_fields: Sequence[str] = (), passage_tokens: int | None = None,
                  passage_overlap: int | None = None) -> list[Path]:
    """Creates an empty sharded index directory; returns the shard paths.

    ``index_type`` "exact", or "compressed" with ``codec``: the shards of a compressed index
    share one codec (train it on a sample of the corpus: ``ResidualCodec.fit(vectors, nbits=2)``).
    ``indexed_fields``: metadata fields every shard's document store indexes; ``passage_tokens``
    / ``passage_overlap``: long texts as passages (both: see :meth:`Index.create`).
    """
    indexed_fields = check_fields(indexed_fields)
    path = Path(path).resolve()
    if isinstance(num_shards, bool) or not isinstance(num_shards, int) or num_shards < 1:
        raise InvalidInputError(f"num_shards must be a positive integer, got {num_shards!r}")
    if index_type not in ("exact", "compressed"):
        raise InvalidInputError(f"a sharded index is 'exact' or 'compressed', got {index_type!r} "
                                "('auto' would give each shard its own codec)")
    if (index_type == "compressed") != (codec is not None):
        raise InvalidInputError("a compressed sharded index needs the codec its shards share (codec=...), "
                                "and an exact one takes none")
    if path.exists() and any(path.iterdir()):
        raise InvalidInputError(f"{path} exists and is not empty; refusing to create a sharded index there")
    encoder = encoder if isinstance(encoder, Encoder) else Encoder.from_pretrained(encoder or "default")
    names = [f"shard-{i:05d}" for i in range(num_shards)]
    for name in names:
        Index.create(path / name, encoder, index_type="exact" if codec is None else "compressed", codec=codec,
                     indexed_fields=indexed_fields, passage_tokens=passage_tokens, passage_overlap=passage_overlap)
    layout = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, "num_shards": num_shards,
              "shards": names, "router": "blake2b-64 modulo num_shards", "index_type": index_type}
    storage.write_json_atomic(path / SHARDS_FILE, layout)  # written last: the commit point
    return [path / name for name in names]


class ShardSet(Protocol):
    """Where the shards of a sharded index are, and how their methods are called."""

    num_shards: int

    def call(self, shard: int, method: str, *args: Any, **kwargs: Any) -> Any:
        """Calls an Index method on one shard (writes go to its primary copy)."""

    def fan_out(self, method: str, per_shard_args: Sequence[tuple], shards: Sequence[int] | None = None,
                allow_partial: bool = False) -> list[Any]:
        """Calls an Index method on every shard (or on ``shards``) at once, ``per_shard_args[i]``
        the arguments of the i-th; with ``allow_partial`` an unreachable shard's answer is None
        instead of an error."""


class LocalShards:
    """The shards opened in this process."""

    def __init__(self, indexes: list[Index]):
        self.indexes, self.num_shards = indexes, len(indexes)

    def call(self, shard: int, method: str, *args: Any, **kwargs: Any) -> Any:
        return getattr(self.indexes[shard], method)(*args, **kwargs)

    def fan_out(self, method: str, per_shard_args: Sequence[tuple], shards: Sequence[int] | None = None,
                allow_partial: bool = False) -> list[Any]:
        shards = range(self.num_shards) if shards is None else shards
        return [getattr(self.indexes[s], method)(*args) for s, args in zip(shards, per_shard_args)]


class HitList(list):
    """Search hits; ``missing_shards`` names shards that could not answer (``allow_partial``)."""

    missing_shards: tuple[int, ...] = ()

    @property
    def partial(self) -> bool:
        return bool(self.missing_shards)


class ShardedIndex:
    """The API of :class:`~lir_agent.Index` over shards: writes routed by id, searches run in
    rounds on every shard with exact top-k merging (results equal a single index's)."""

    def __init__(self, path: Path, layout: dict[str, Any], shards: ShardSet, settings: EncoderSettings,
                 engine: ExactEngine | CompressedEngine, encoder: Encoder | None = None):
        self.path, self.layout, self.shards, self.settings = path, layout, shards, settings
        self._engine, self._encoder = engine, encoder

    @classmethod
    def create(cls, path: str | Path, num_shards: int, encoder: Encoder | str | None = None, *,
               index_type: str = "exact", codec: ResidualCodec | None = None, indexed_fields: Sequence[str] = (),
               passage_tokens: int | None = None, passage_overlap: int | None = None) -> "ShardedIndex":
        """Creates an empty sharded index (see :func:`create_shards`) and opens it in this process."""
        encoder = encoder if isinstance(encoder, Encoder) else Encoder.from_pretrained(encoder or "default")
        create_shards(path, num_shards, encoder, index_type=index_type, codec=codec, indexed_fields=indexed_fields,
                      passage_tokens=passage_tokens, passage_overlap=passage_overlap)
        return cls.open(path, encoder)

    @classmethod
    def open(cls, path: str | Path, encoder: Encoder | str | None = None, device: str = "cpu") -> "ShardedIndex":
        """Opens every shard in this process (``path`` resolved to an absolute path, once)."""
        path = Path(path).resolve()
        layout = read_layout(path)
        settings, engine = shared_settings(path, layout)
        encoder = checked_encoder(encoder, settings, path)
        indexes = [Index.open(path / name, device=device) for name in layout["shards"]]
        return cls(path, layout, LocalShards(indexes), settings, engine, encoder)

    # ---------------------------------------------------------------- reading
    @property
    def num_shards(self) -> int:
        return self.shards.num_shards

    @property
    def encoder(self) -> Encoder:
        """The encoder (loaded from the shards' settings on first use)."""
        if self._encoder is None:
            self._encoder = Encoder.from_settings(self.settings)
        return self._encoder

    def __len__(self) -> int:
        return self.count()

    def count(self, filter: Filter | None = None) -> int:
        compile_filter(filter)  # a bad filter fails here, before any shard is asked
        return sum(self.shards.fan_out("count", [(filter,)] * self.num_shards))

    def __contains__(self, doc_id: object) -> bool:
        return isinstance(doc_id, str) and bool(self.shards.call(shard_of(doc_id, self.num_shards), "__contains__", doc_id))

    def ids(self) -> Iterator[str]:
        for shard_ids in self.shards.fan_out("id_list", [()] * self.num_shards):
            yield from shard_ids

    def get(self, doc_id: str) -> Document:
        return self.shards.call(self._shard_of(doc_id), "get", doc_id)

    def get_embeddings(self, doc_id: str) -> torch.Tensor:
        return self.shards.call(self._shard_of(doc_id), "get_embeddings", doc_id)

    def info(self) -> dict[str, Any]:
        shards = self.shards.fan_out("info", [()] * self.num_shards)
        tokens = sum(s["tokens"] for s in shards)
        disk = sum(s["bytes_on_disk"] for s in shards)
        return {"path": str(self.path), "num_shards": self.num_shards, "index_type": self.layout["index_type"],
                "documents": sum(s["documents"] for s in shards), "tokens": tokens, "bytes_on_disk": disk,
                "bytes_per_token": round(disk / tokens, 2) if tokens else None,
                "truncated": {"documents": sum(s["truncated"]["documents"] for s in shards),
                              "tokens": sum(s["truncated"]["tokens"] for s in shards),
                              "document_length": self.settings.document_length},
                "shards": shards}

    def _shard_of(self, doc_id: Any) -> int:
        if not isinstance(doc_id, str) or not doc_id:
            raise InvalidInputError(f"a document id is a non-empty string, got {doc_id!r}")
        return shard_of(doc_id, self.num_shards)

    # ---------------------------------------------------------------- search
    def search(self, query: str | torch.Tensor | np.ndarray, k: int = 10, filter: Filter | None = None,
               exclude_ids: Iterable[str] | None = None, allow_partial: bool = False, by: str = "document",
               **search_params: int) -> HitList:
        """Top-k documents (or passages, ``by``) for one query (see :meth:`search_batch` and :meth:`Index.search`)."""
        return self.search_batch([query], k=k, filter=filter, exclude_ids=exclude_ids, allow_partial=allow_partial,
                                 by=by, **search_params)[0]

    def search_batch(self, queries: Sequence[str | torch.Tensor | np.ndarray], k: int = 10,
                     filter: Filter | None = None, exclude_ids: Iterable[str] | None = None,
                     allow_partial: bool = False, by: str = "document", **search_params: int) -> list[HitList]:
        """Top-k documents for each query over all shards. Queries are encoded once, here; each
        round is one call per shard for the whole batch. ``filter`` and ``exclude_ids`` (ids never
        to return) apply before scoring, as in :meth:`Index.search`; each shard is sent only its
        own excluded ids. With ``allow_partial``, shards that cannot answer are left out and
        named in each result's ``missing_shards``."""
        k = check_k(k)
        if isinstance(queries, (str, torch.Tensor, np.ndarray)):
            raise InvalidInputError("search_batch takes a list of queries")
        depth = search_depth(k, by)
        params = self._engine.search_params(depth, search_params)
        compile_filter(filter)
        excluded: dict[int, list[str]] = defaultdict(list)
        for doc_id in check_exclude_ids(exclude_ids):
            excluded[shard_of(doc_id, self.num_shards)].append(doc_id)
        if len(queries) == 0:
            return []
        matrices = query_matrices(queries, self.dim, lambda: self.encoder)
        prepared = self._share(matrices)
        for attempt in range(SEARCH_ATTEMPTS):
            missing: set[int] = set()

            def fan_out(stage: str, round_params: Any, selections: list[list[Ranked] | None] | None,
                        flags: list[bool] | None) -> list[Round | None]:
                asked = [s for s in range(self.num_shards) if selections is None or selections[s] is not None]
                args = [(stage, prepared, depth, round_params, filter, None if selections is None else selections[s], flags,
                         tuple(excluded.get(s, ()))) for s in asked]
                answers = dict(zip(asked, self.shards.fan_out("search_round", args, shards=asked,
                                                              allow_partial=allow_partial)))
                missing.update(s for s, r in answers.items() if r is None)
                return [None if s not in answers else _empty_round(len(queries)) if s in missing else answers[s]
                        for s in range(self.num_shards)]

            try:
                ranked = run_search(self._engine.kind, fan_out, len(queries), self.num_shards, depth, params)
                break
            except StaleSearchError:
                if attempt == SEARCH_ATTEMPTS - 1:
                    raise
        results = []
        for hits in with_passages(self, matrices, [[(score, doc) for score, _, doc in hits] for hits in ranked], k, by,
                                  hit_of):
            result = HitList(hits)
            result.missing_shards = tuple(sorted(missing))
            results.append(result)
        return results

    def _share(self, matrices: list[torch.Tensor]) -> Any:
        """What the shards' search rounds receive for the query matrices: here, prepared once
        for all shards (they share the engine's settings and codec)."""
        return self._engine.prepare_queries(matrices, "cpu")

    @property
    def dim(self) -> int:
        """Dimension of the encoder's token vectors (queries and documents are given in it)."""
        engine = self._engine
        return engine.codec.input_dim if isinstance(engine, CompressedEngine) else engine.dim

    # ---------------------------------------------------------------- writing
    def add(self, documents: Sequence[Document | Mapping[str, Any]], *, embeddings: Sequence[Any] | None = None,
            upsert: bool = False, batch_size: int = 32, show_progress: bool | None = None) -> list[str]:
        """Adds (or with ``upsert`` replaces) documents, each in its shard. Texts are encoded here
        once; every id is checked before anything is written. Returns the ids.

        Each shard's part is durable when this returns; a crash in the middle can leave some
        shards written and others not (re-running the same upsert completes it)."""
        docs = as_documents(documents)
        if not docs:
            return []
        by_shard: dict[int, list[int]] = defaultdict(list)
        for i, doc in enumerate(docs):
            by_shard[shard_of(doc.id, self.num_shards)].append(i)
        if not upsert:
            found = self.shards.fan_out("existing", [([docs[i].id for i in by_shard.get(s, [])],)
                                                     for s in range(self.num_shards)])
            existing = [doc_id for ids in found for doc_id in ids]
            if existing:
                raise DuplicateIdError(f"{len(existing)} id(s) already in the index, e.g. {existing[0]!r} (use upsert to replace)")
        matrices, truncated, layouts = document_matrices(docs, embeddings, self.dim, lambda: self.encoder, batch_size,
                                                         show_progress, self.passage_settings)
        docs = [replace(doc, passages=layout) for doc, layout in zip(docs, layouts)]
        for shard, positions in sorted(by_shard.items()):
            self.shards.call(shard, "add", [docs[i] for i in positions], embeddings=[matrices[i] for i in positions],
                             truncated_tokens=[truncated[i] for i in positions], upsert=True,
                             embeddings_from_text=embeddings is None)  # encoded here: a re-train may re-encode
        return [d.id for d in docs]

    def upsert(self, documents: Sequence[Document | Mapping[str, Any]], **kwargs: Any) -> list[str]:
        return self.add(documents, upsert=True, **kwargs)

    def delete(self, ids: Iterable[str], *, missing_ok: bool = False) -> int:
        """Deletes documents by id; unknown ids raise DocumentNotFoundError (nothing deleted)
        unless ``missing_ok``."""
        ids = [ids] if isinstance(ids, str) else list(dict.fromkeys(ids))
        by_shard: dict[int, list[str]] = defaultdict(list)
        for doc_id in ids:
            by_shard[self._shard_of(doc_id)].append(doc_id)
        if not missing_ok:
            found = self.shards.fan_out("existing", [(by_shard.get(s, []),) for s in range(self.num_shards)])
            held = {doc_id for ids in found for doc_id in ids}
            missing = [doc_id for doc_id in ids if doc_id not in held]
            if missing:
                raise DocumentNotFoundError(f"{len(missing)} unknown id(s), e.g. {missing[0]!r}; nothing was deleted")
        return sum(self.shards.call(s, "delete", by_shard[s], missing_ok=True) for s in sorted(by_shard))

    def compact(self) -> None:
        """Compacts every shard (drops deleted rows, merges segments)."""
        for shard in range(self.num_shards):
            self.shards.call(shard, "compact")

    @property
    def codec(self) -> ResidualCodec | None:
        """The codec the shards share (None for an exact index)."""
        return getattr(self._engine, "codec", None)

    @property
    def passage_settings(self) -> tuple[int, int] | None:
        """(passage tokens, overlap) of long texts, the same in every shard (see :meth:`Index.passage_settings`)."""
        return passage_settings_of(storage.read_manifest(self.path / self.layout["shards"][0]))

    @property
    def indexed_fields(self) -> list[str]:
        """Metadata fields the shards' document stores index (the same in every shard)."""
        return storage.read_manifest(self.path / self.layout["shards"][0]).get("indexed_fields", [])

    def index_fields(self, fields: Sequence[str]) -> list[str]:
        """Adds metadata field indexes to every shard (see :meth:`Index.index_fields`)."""
        fields = check_fields(fields)
        return [self.shards.call(shard, "index_fields", fields) for shard in range(self.num_shards)][-1]

    def upgrade(self) -> bool:
        """Upgrades every shard written in an older format (see :meth:`Index.upgrade`)."""
        return any([self.shards.call(shard, "upgrade") for shard in range(self.num_shards)])


def shared_settings(path: Path, layout: dict[str, Any]) -> tuple[EncoderSettings, ExactEngine | CompressedEngine]:
    """The encoder settings and search engine every shard shares (checked: one encoder, and
    for a compressed index one codec, byte for byte)."""
    manifests = [storage.read_manifest(path / name) for name in layout["shards"]]
    settings = [EncoderSettings.from_dict(m["encoder"]) for m in manifests]
    for name, s in zip(layout["shards"], settings[1:]):
        check_encoder(s, settings[0], path / name)
    if manifests[0]["index_type"] == "exact":
        return settings[0], ExactEngine(manifests[0]["dim"])
    fingerprints = {codec_fingerprint(path / name / m["codec"]["dir"]) for name, m in zip(layout["shards"], manifests)}
    if len(fingerprints) != 1 or any(m["index_type"] != "compressed" for m in manifests):
        raise IndexCorruptedError(f"the shards of {path} do not share one codec")
    return settings[0], CompressedEngine(ResidualCodec.load(path / layout["shards"][0] / manifests[0]["codec"]["dir"]))


def codec_fingerprint(directory: Path) -> str:
    digest = hashlib.sha256()
    for file in sorted(directory.iterdir()):
        digest.update(file.name.encode() + storage.sha256_file(file).encode())
    return digest.hexdigest()


def reshard(source: str | Path, target: str | Path, num_shards: int, show_progress: bool | None = None) -> dict[str, int]:
    """Rewrites an index (single or sharded) into ``num_shards`` shards at ``target``, copying
    every document with its stored encoding (no re-encoding, no loss), each shard compacted at
    the end. Returns counts."""
    source, target = Path(source), Path(target)
    if source.resolve() == target.resolve():
        raise InvalidInputError("reshard writes a new index: the target must differ from the source")
    inputs = ([Index.open(source / name) for name in read_layout(source)["shards"]] if is_sharded(source)
              else [Index.open(source)])
    first = inputs[0]
    codec = first.codec
    if first.index_type != "exact" and codec is None:
        raise InvalidInputError(f"{source} is not exact or compressed")
    passages = first.passage_settings or (0, 0)
    outputs = [Index.open(p) for p in create_shards(target, num_shards, first.encoder, index_type=first.index_type,
                                                     codec=codec, indexed_fields=first.indexed_fields,
                                                     passage_tokens=passages[0], passage_overlap=passages[1])]
    total = sum(len(index) for index in inputs)
    with tqdm(total=total, desc="resharding", unit="doc", disable=show_progress is False) as bar:
        for index in inputs:
            pending: dict[int, list[str]] = defaultdict(list)
            for doc_id in index.ids():
                shard = shard_of(doc_id, num_shards)
                pending[shard].append(doc_id)
                if len(pending[shard]) >= 1024:
                    outputs[shard].copy_from(index, pending.pop(shard))
                    bar.update(1024)
            for shard, ids in pending.items():
                outputs[shard].copy_from(index, ids)
                bar.update(len(ids))
    for index in outputs:  # one segment per shard rather than one per copied chunk
        index.compact()
    written = sum(len(index) for index in outputs)
    if written != total:
        raise IndexCorruptedError(f"resharding wrote {written} documents of {total}")
    return {"documents": written, "num_shards": num_shards}


def _empty_round(num_queries: int) -> Round:
    return Round(-1, [Ranked.empty() for _ in range(num_queries)], [0] * num_queries)


def checked_encoder(encoder: Encoder | str | None, settings: EncoderSettings, path: Path) -> Encoder | None:
    """The encoder to encode queries and documents with (None: loaded from ``settings`` when needed)."""
    if encoder is None:
        return None
    encoder = encoder if isinstance(encoder, Encoder) else Encoder.from_pretrained(encoder)
    check_encoder(encoder.settings, settings, path)
    return encoder
