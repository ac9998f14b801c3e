"""The exact multi-vector index: stable string ids, text, metadata, filters, persistence."""

from __future__ import annotations

import fcntl
import json
import math
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

import numpy as np
import torch

from . import storage
from .encoder import Encoder, EncoderSettings
from .errors import (
    DocumentNotFoundError,
    DuplicateIdError,
    EncoderMismatchError,
    IndexCorruptedError,
    InvalidInputError,
    LIRError,
)
from .filters import Filter, compile_filter
from .maxsim import maxsim_topk

MAX_K = 100_000
MAX_SEGMENTS = 32  # above this many segments a write also compacts


@dataclass
class Document:
    """A stored document: its id, the text that was indexed, and JSON metadata."""

    id: str
    text: str
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass
class SearchHit:
    """One search result, ranked from 1."""

    id: str
    score: float
    rank: int
    text: str
    metadata: dict[str, Any]


@dataclass
class _Segment:
    entry: dict[str, Any]
    tokens: torch.Tensor
    offsets: np.ndarray
    documents: list[Document]
    deleted: np.ndarray  # bool per row


def _as_document(item: Document | Mapping[str, Any], position: int) -> Document:
    """Accepts a Document or a mapping with "id"/"_id", "text", optional "title" and "metadata"."""
    if isinstance(item, Document):
        doc = Document(item.id, item.text, dict(item.metadata))
    elif isinstance(item, Mapping):
        doc_id = item.get("id", item.get("_id"))
        text = item.get("text")
        title = item.get("title")
        metadata = dict(item.get("metadata") or {})
        if isinstance(title, str) and title.strip():
            metadata.setdefault("title", title)
            text = f"{title}. {text}" if isinstance(text, str) and text.strip() else text
        doc = Document(doc_id, text, metadata)
    else:
        raise InvalidInputError(f"document #{position} is a {type(item).__name__}, expected a dict or Document")
    if not isinstance(doc.id, str) or not doc.id:
        raise InvalidInputError(f"document #{position} needs a non-empty string id, got {doc.id!r}")
    if not isinstance(doc.text, str) or not doc.text.strip():
        raise InvalidInputError(f"document {doc.id!r} has an empty text")
    if not isinstance(doc.metadata, dict):
        raise InvalidInputError(f"document {doc.id!r}: metadata must be a dict")
    try:
        json.dumps(doc.metadata)
    except (TypeError, ValueError) as exc:
        raise InvalidInputError(f"document {doc.id!r}: metadata is not JSON-serialisable ({exc})") from exc
    return doc


def _check_matrix(matrix: Any, dim: int, what: str) -> torch.Tensor:
    """A (n_tokens, dim) finite float matrix with at least one row, or a clear error."""
    tensor = torch.as_tensor(np.asarray(matrix) if not isinstance(matrix, torch.Tensor) else matrix)
    if tensor.ndim != 2 or tensor.shape[1] != dim:
        raise InvalidInputError(f"{what}: expected shape (n_tokens, {dim}), got {tuple(tensor.shape)}")
    if tensor.shape[0] == 0:
        raise InvalidInputError(f"{what}: has no token vectors")
    if not tensor.is_floating_point():
        raise InvalidInputError(f"{what}: must be floating point, got {tensor.dtype}")
    if not bool(torch.isfinite(tensor).all()):
        raise InvalidInputError(f"{what}: contains NaN or infinite values")
    if tensor.dtype != torch.float16 and bool((tensor.abs() > 65504).any()):
        raise InvalidInputError(f"{what}: values exceed the float16 range the index stores")
    return tensor.detach().cpu()


class Index:
    """A directory-backed late-interaction index with exact MaxSim search.

    Use :meth:`create` or :meth:`open`. Every ``add``/``upsert``/``delete`` is durable when it
    returns. One process writes at a time (a lock file enforces it); any number may read.
    """

    def __init__(self, path: Path, manifest: dict[str, Any], segments: list[_Segment],
                 settings: EncoderSettings, encoder: Encoder | None, device: str):
        self.path = path
        self._manifest = manifest
        self._segments = segments
        self.settings = settings
        self._encoder = encoder
        self.device = device
        self._where: dict[str, tuple[int, int]] = {}
        self._reindex()

    # ---------------------------------------------------------------- opening
    @classmethod
    def create(cls, path: str | Path, encoder: Encoder | str | None = None, *,
               exist_ok: bool = False, device: str = "cpu") -> "Index":
        """Creates an empty index at ``path``. ``encoder``: an Encoder, a model name/path, or the default."""
        path = Path(path)
        if (path / storage.MANIFEST).exists():
            if exist_ok:
                return cls.open(path, encoder=encoder, device=device)
            raise InvalidInputError(f"{path} already holds an index (use Index.open, or exist_ok=True)")
        if path.exists() and any(path.iterdir()):
            raise InvalidInputError(f"{path} exists and is not empty; refusing to create an index there")
        encoder = encoder if isinstance(encoder, Encoder) else Encoder.from_pretrained(encoder or "default")
        path.mkdir(parents=True, exist_ok=True)
        (path / storage.SEGMENTS).mkdir(exist_ok=True)
        manifest = {
            "format": storage.FORMAT_NAME,
            "format_version": storage.FORMAT_VERSION,
            "index_type": "exact",
            "encoder": encoder.settings.to_dict(),
            "dim": encoder.dim,
            "num_documents": 0,
            "num_tokens": 0,
            "generation": 0,
            "next_segment": 1,
            "segments": [],
        }
        storage.write_json_atomic(path / storage.MANIFEST, manifest)
        return cls(path, manifest, [], encoder.settings, encoder, device)

    @classmethod
    def open(cls, path: str | Path, encoder: Encoder | str | None = None, *, device: str = "cpu") -> "Index":
        """Opens an index. Without ``encoder`` the one it was built with is loaded when first needed;
        with one, its settings must match the index's or EncoderMismatchError is raised."""
        path = Path(path)
        manifest = storage.read_manifest(path)
        try:
            settings = EncoderSettings.from_dict(manifest["encoder"])
        except (KeyError, TypeError, ValueError) as exc:
            raise IndexCorruptedError(f"{path / storage.MANIFEST}: bad encoder settings ({exc})") from exc
        if encoder is not None:
            encoder = encoder if isinstance(encoder, Encoder) else Encoder.from_pretrained(encoder)
            _check_encoder(encoder.settings, settings, path)
        segments = [cls._load_segment(path, entry, manifest["dim"], device) for entry in manifest["segments"]]
        return cls(path, manifest, segments, settings, encoder, device)

    @staticmethod
    def _load_segment(path: Path, entry: dict[str, Any], dim: int, device: str) -> _Segment:
        data = storage.read_segment(path, entry, dim)
        with warnings.catch_warnings():  # the memory map is read-only and never written through
            warnings.simplefilter("ignore", UserWarning)
            tokens = torch.from_numpy(data.tokens)
        if device != "cpu":
            tokens = tokens.to(device)
        deleted = np.zeros(entry["num_docs"], dtype=bool)
        deleted[np.asarray(entry["deleted"], dtype=np.int64)] = True
        documents = [Document(r["id"], r["text"], r.get("metadata") or {}) for r in data.records]
        return _Segment(entry, tokens, data.offsets, documents, deleted)

    def _reindex(self) -> None:
        self._where = {}
        for s, segment in enumerate(self._segments):
            for row, doc in enumerate(segment.documents):
                if not segment.deleted[row]:
                    self._where[doc.id] = (s, row)

    @property
    def encoder(self) -> Encoder:
        """The encoder, loaded from the index's settings on first use."""
        if self._encoder is None:
            encoder = Encoder.from_settings(self.settings, device=None if self.device == "cpu" else self.device)
            _check_encoder(encoder.settings, self.settings, self.path)
            self._encoder = encoder
        return self._encoder

    @property
    def dim(self) -> int:
        return self._manifest["dim"]

    # ---------------------------------------------------------------- reading
    def __len__(self) -> int:
        return len(self._where)

    def count(self, filter: Filter | None = None) -> int:
        """Number of live documents, optionally only those matching ``filter``."""
        predicate = compile_filter(filter)
        if predicate is None:
            return len(self._where)
        return sum(1 for doc in self._iter_live() if predicate(doc.metadata))

    def __contains__(self, doc_id: object) -> bool:
        return doc_id in self._where

    def ids(self) -> Iterator[str]:
        return iter(list(self._where))

    def _iter_live(self) -> Iterator[Document]:
        for segment in self._segments:
            for row, doc in enumerate(segment.documents):
                if not segment.deleted[row]:
                    yield doc

    def get(self, doc_id: str) -> Document:
        """The stored document; DocumentNotFoundError if the id is unknown."""
        if doc_id not in self._where:
            raise DocumentNotFoundError(f"no document with id {doc_id!r}")
        s, row = self._where[doc_id]
        doc = self._segments[s].documents[row]
        return Document(doc.id, doc.text, dict(doc.metadata))

    def get_embeddings(self, doc_id: str) -> torch.Tensor:
        """The stored (n_tokens, dim) float16 token matrix of a document."""
        if doc_id not in self._where:
            raise DocumentNotFoundError(f"no document with id {doc_id!r}")
        s, row = self._where[doc_id]
        segment = self._segments[s]
        return segment.tokens[int(segment.offsets[row]) : int(segment.offsets[row + 1])].cpu().clone()

    # ---------------------------------------------------------------- search
    def search(self, query: str | torch.Tensor | np.ndarray, k: int = 10,
               filter: Filter | None = None) -> list[SearchHit]:
        """Top-k documents for one query: a text, or a precomputed (n_tokens, dim) matrix."""
        return self.search_batch([query], k=k, filter=filter)[0]

    def search_batch(self, queries: Sequence[str | torch.Tensor | np.ndarray], k: int = 10,
                     filter: Filter | None = None) -> list[list[SearchHit]]:
        """Top-k documents for each query; one scan of the index serves the whole batch."""
        k = _check_k(k)
        if isinstance(queries, (str, torch.Tensor, np.ndarray)):
            raise InvalidInputError("search_batch takes a list of queries")
        if len(queries) == 0:
            return []
        matrices = self._query_matrices(queries)
        predicate = compile_filter(filter)
        all_scores, all_refs = [], []
        for s, segment in enumerate(self._segments):
            eligible = ~segment.deleted
            if predicate is not None:
                eligible &= np.fromiter((predicate(d.metadata) for d in segment.documents), bool, len(segment.documents))
            if not eligible.any():
                continue
            scores, rows = maxsim_topk(matrices, segment.tokens, segment.offsets, k,
                                       doc_mask=None if eligible.all() else eligible, device=self.device)
            all_scores.append(scores.cpu())
            all_refs.append(rows.cpu() + (s << 40))  # segment number in the high bits
        if not all_scores:
            return [[] for _ in queries]
        scores = torch.cat(all_scores, dim=1)
        refs = torch.cat(all_refs, dim=1)
        top_scores, top = scores.topk(min(k, scores.shape[1]), dim=1)
        top_refs = refs.gather(1, top)
        results = []
        for q in range(len(queries)):
            hits = []
            for rank, (score, ref) in enumerate(zip(top_scores[q].tolist(), top_refs[q].tolist()), start=1):
                doc = self._segments[ref >> 40].documents[ref & ((1 << 40) - 1)]
                hits.append(SearchHit(doc.id, score, rank, doc.text, dict(doc.metadata)))
            results.append(hits)
        return results

    def _query_matrices(self, queries: Sequence[Any]) -> list[torch.Tensor]:
        texts = [(i, q) for i, q in enumerate(queries) if isinstance(q, str)]
        for i, text in texts:
            if not text.strip():
                raise InvalidInputError(f"query #{i} is empty or whitespace")
        matrices: list[torch.Tensor | None] = [None] * len(queries)
        for i, q in enumerate(queries):
            if not isinstance(q, str):
                matrices[i] = _check_matrix(q, self.dim, f"query #{i} embeddings")
        if texts:
            encoded = self.encoder.encode_queries([t for _, t in texts])
            for (i, _), matrix in zip(texts, encoded):
                matrices[i] = matrix
        return matrices

    # ---------------------------------------------------------------- writing
    def add(self, documents: Sequence[Document | Mapping[str, Any]], *,
            embeddings: Sequence[Any] | None = None, upsert: bool = False,
            batch_size: int = 32, show_progress: bool | None = None) -> list[str]:
        """Adds documents; with ``upsert=True`` existing ids are replaced. Returns the ids.

        ``embeddings``: optional precomputed (n_tokens, dim) matrices, one per document, instead of
        encoding the texts. Nothing is written unless every document is valid.
        """
        if isinstance(documents, (str, Mapping, Document)):
            raise InvalidInputError("add takes a list of documents")
        docs = [_as_document(item, i) for i, item in enumerate(documents)]
        if not docs:
            return []
        seen: set[str] = set()
        for doc in docs:
            if doc.id in seen:
                raise DuplicateIdError(f"id {doc.id!r} appears twice in this call")
            seen.add(doc.id)
        if not upsert:
            existing = [d.id for d in docs if d.id in self._where]
            if existing:
                raise DuplicateIdError(
                    f"{len(existing)} id(s) already in the index, e.g. {existing[0]!r} (use upsert to replace)"
                )
        if embeddings is not None:
            if len(embeddings) != len(docs):
                raise InvalidInputError(f"{len(embeddings)} embedding matrices for {len(docs)} documents")
            matrices = [_check_matrix(m, self.dim, f"embeddings of {d.id!r}") for m, d in zip(embeddings, docs)]
        else:
            matrices = self.encoder.encode_documents([d.text for d in docs], batch_size=batch_size,
                                                     show_progress=show_progress)
            for doc, matrix in zip(docs, matrices):
                if matrix.shape[0] == 0:
                    raise InvalidInputError(f"document {doc.id!r} has no tokens left after encoding")
        with self._writing() as manifest:
            entry = self._write_segment(manifest, ((d, m.to(torch.float16).numpy()) for d, m in zip(docs, matrices)),
                                        sum(int(m.shape[0]) for m in matrices))
            replaced = [self._where[d.id] for d in docs if d.id in self._where]
            self._commit(manifest, new_entries=[entry], deletions=replaced)
        return [d.id for d in docs]

    def upsert(self, documents: Sequence[Document | Mapping[str, Any]], **kwargs: Any) -> list[str]:
        """``add`` that replaces documents whose ids exist."""
        return self.add(documents, upsert=True, **kwargs)

    def delete(self, ids: Iterable[str], *, missing_ok: bool = False) -> int:
        """Deletes documents by id; unknown ids raise DocumentNotFoundError unless ``missing_ok``."""
        if isinstance(ids, str):
            ids = [ids]
        ids = list(dict.fromkeys(ids))
        missing = [i for i in ids if i not in self._where]
        if missing and not missing_ok:
            raise DocumentNotFoundError(f"{len(missing)} unknown id(s), e.g. {missing[0]!r}; nothing was deleted")
        present = [self._where[i] for i in ids if i in self._where]
        if not present:
            return 0
        with self._writing() as manifest:
            self._commit(manifest, new_entries=[], deletions=present)
        return len(present)

    def compact(self) -> None:
        """Rewrites all live documents into one segment, dropping deleted rows (atomic)."""
        with self._writing() as manifest:
            self._compact_locked(manifest)

    def _compact_locked(self, manifest: dict[str, Any]) -> None:
        live = [(segment, row) for segment in self._segments for row in range(len(segment.documents))
                if not segment.deleted[row]]
        total = sum(int(s.offsets[r + 1] - s.offsets[r]) for s, r in live)
        rows = ((s.documents[r], s.tokens[int(s.offsets[r]) : int(s.offsets[r + 1])].cpu().numpy()) for s, r in live)
        entries = [self._write_segment(manifest, rows, total)] if live else []
        self._commit(manifest, new_entries=entries, deletions=[], replace_all=True)

    @contextmanager
    def _writing(self) -> Iterator[dict[str, Any]]:
        """Holds the write lock; yields a copy of the manifest to change and commit."""
        with open(self.path / storage.LOCK, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                on_disk = storage.read_manifest(self.path)
                if on_disk.get("generation") != self._manifest["generation"]:
                    raise LIRError(f"{self.path} was changed by another process; open it again")
                storage.remove_unreferenced(self.path, [e["name"] for e in on_disk["segments"]])
                yield json.loads(json.dumps(on_disk))
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _write_segment(self, manifest: dict[str, Any], rows: Iterable[tuple[Document, np.ndarray]],
                       num_tokens: int) -> dict[str, Any]:
        name = f"seg-{manifest['next_segment']:06d}"
        manifest["next_segment"] += 1
        writer = storage.SegmentWriter(self.path, name, self.dim, num_tokens)
        for doc, tokens in rows:
            writer.append({"id": doc.id, "text": doc.text, "metadata": doc.metadata}, tokens)
        return writer.finish()

    def _commit(self, manifest: dict[str, Any], new_entries: list[dict[str, Any]],
                deletions: list[tuple[int, int]], replace_all: bool = False) -> None:
        """Publishes the new manifest, then brings the in-memory state to it."""
        if replace_all:
            manifest["segments"] = []
        for s, row in deletions:
            entry = manifest["segments"][s]
            entry["deleted"] = sorted(set(entry["deleted"]) | {row})
        manifest["segments"].extend(new_entries)
        if not replace_all and len(manifest["segments"]) > MAX_SEGMENTS:
            self._apply(manifest)  # in memory only, so the compaction sees this write
            self._compact_locked(manifest)
            return
        manifest["num_documents"] = sum(e["num_docs"] - len(e["deleted"]) for e in manifest["segments"])
        manifest["generation"] += 1
        storage.write_json_atomic(self.path / storage.MANIFEST, manifest)
        self._apply(manifest)

    def _apply(self, manifest: dict[str, Any]) -> None:
        loaded = {seg.entry["name"]: seg for seg in self._segments}
        segments = []
        for entry in manifest["segments"]:
            segment = loaded.get(entry["name"]) or self._load_segment(self.path, entry, self.dim, self.device)
            segment.entry = entry
            segment.deleted = np.zeros(entry["num_docs"], dtype=bool)
            segment.deleted[np.asarray(entry["deleted"], dtype=np.int64)] = True
            segments.append(segment)
        self._segments = segments
        self._manifest = manifest
        self._reindex()

    # ---------------------------------------------------------------- info
    def info(self) -> dict[str, Any]:
        """A summary: counts, dims, encoder, segments and bytes on disk."""
        live_tokens = sum(int(np.diff(s.offsets)[~s.deleted].sum()) for s in self._segments)
        disk = sum(f["size"] for s in self._segments for f in s.entry["files"].values())
        return {
            "path": str(self.path),
            "index_type": self._manifest["index_type"],
            "documents": len(self),
            "tokens": live_tokens,
            "dim": self.dim,
            "segments": len(self._segments),
            "deleted_pending_compaction": int(sum(s.deleted.sum() for s in self._segments)),
            "bytes_on_disk": disk,
            "bytes_per_token": round(disk / live_tokens, 2) if live_tokens else None,
            "encoder": self.settings.to_dict(),
        }

    def verify(self) -> None:
        """Hashes every file against the manifest; raises IndexCorruptedError naming a bad file."""
        for segment in self._segments:
            storage.verify_segment_files(self.path, segment.entry)


def _check_k(k: Any) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise InvalidInputError(f"k must be an integer, got {k!r}")
    if k <= 0:
        raise InvalidInputError(f"k must be positive, got {k}")
    if k > MAX_K:
        raise InvalidInputError(f"k={k} is larger than the maximum of {MAX_K}")
    return int(k)


def _check_encoder(actual: EncoderSettings, expected: EncoderSettings, path: Path) -> None:
    differences = actual.differences(expected)
    if differences:
        raise EncoderMismatchError(
            f"the encoder {actual.model!r} does not match the one {path} was built with "
            f"({expected.model!r}): " + "; ".join(differences)
        )
