"""The exact multi-vector index: stable string ids, text, metadata, filters, persistence."""

from __future__ import annotations

import copy
import fcntl
import logging
import os
import random
import shutil
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Literal, Mapping, Sequence

import numpy as np
import torch

from . import storage
from .codec import NBITS, ResidualCodec
from .docstore import Document, DocumentStore, metadata_json
from .encoder import Encoder, EncoderSettings
from .engines import CompressedEngine, ExactEngine
from .engines.compressed import MAX_SEGMENT_DOCS
from .kmeans import num_centroids_for
from .errors import (
    DocumentNotFoundError,
    DuplicateIdError,
    EncoderMismatchError,
    IndexCorruptedError,
    InvalidInputError,
    LIRError,
    NotAnIndexError,
)
from .engines.pipeline import Ranked, Round, StaleSearchError, run_search
from .filters import Filter, compile_filter, field_expressions
from .passages import HitPassage, check_passage_settings, passage_settings_of, search_depth, with_passages
from .text import check_json, check_text
MAX_K = 100_000
MAX_SEGMENTS = 32  # above this many segments a write also compacts
AUTO_COMPRESS_TOKENS = 250_000  # index_type="auto" switches from exact to compressed here
CODEC_SAMPLE_TOKENS = 400_000  # token vectors drawn (whole documents) to train a codec
ENCODE_CHUNK_DOCS = 1024  # documents encoded per batch when an index is rewritten
DRIFT_THRESHOLD = 1.15  # drift ratio above which writes warn, info() flags it, optimize() re-trains
DRIFT_HOLDOUT_SHARE = 0.05  # share of the training sample's documents held out to measure the drift reference
AUTO_OPTIMIZE_MIN_SHARE = 0.05  # auto_optimize re-trains once this share of the index was added since training
logger = logging.getLogger(__name__)
FIND_PREFILTER_IDS = 64  # id lookups of more ids than this ask each segment only for ids whose hash it holds
CATCH_UP_ATTEMPTS = 3  # a reader catching up retries when a newer commit removed the files it was reading
IndexType = Literal["auto", "exact", "compressed"]


@dataclass
class SearchHit:
    """One search result, ranked from 1."""

    id: str
    score: float
    rank: int
    text: str
    metadata: dict[str, Any]
    truncated_tokens: int = 0  # tokens the encoder cut off the end of the text (not searchable)
    # the document's passages (lir_agent.passages), best first, each with its span and MaxSim;
    # by="passage": the one passage this hit is
    passages: list[HitPassage] = field(default_factory=list)


@dataclass
class _Segment:
    entry: dict[str, Any]
    store: Any  # the engine's view of the segment's token arrays (search, payload, vectors)
    lengths: np.ndarray  # tokens per row
    docs: DocumentStore  # ids, texts, metadata (read on demand)
    id_hashes: np.ndarray  # (num_docs,) uint32 CRC-32 of each row's id, memory-mapped
    deleted: np.ndarray  # bool per row


def _as_document(item: Document | Mapping[str, Any], position: int) -> Document:
    """Accepts a Document or a mapping with "id"/"_id", "text", optional "title" and "metadata".
    Every string in it must be text (no lone surrogates: :mod:`lir_agent.text`)."""
    title = None
    if isinstance(item, Document):  # its passage layout goes with it (a sharded index encodes for its shards)
        doc = Document(item.id, item.text, item.metadata, passages=item.passages)
    elif isinstance(item, Mapping):
        title = item.get("title")
        doc = Document(item.get("id", item.get("_id")), item.get("text"), item.get("metadata") or {})
    else:
        raise InvalidInputError(f"document #{position} is a {type(item).__name__}, expected a dict or Document")
    if not isinstance(doc.id, str) or not doc.id:
        raise InvalidInputError(f"document #{position} needs a non-empty string id, got {doc.id!r}")
    check_text(doc.id, f"document #{position} id")
    if not isinstance(doc.text, str):
        raise InvalidInputError(f"document {doc.id!r}: text must be a string, got {type(doc.text).__name__}")
    if not doc.text.strip():
        raise InvalidInputError(f"document {doc.id!r} has an empty text")
    check_text(doc.text, f"document {doc.id!r} text")
    if not isinstance(doc.metadata, Mapping):
        raise InvalidInputError(f"document {doc.id!r}: metadata must be a dict (a JSON object), "
                                f"got {type(doc.metadata).__name__}")
    doc.metadata = dict(doc.metadata)
    check_json(doc.metadata, f"document {doc.id!r} metadata")
    if isinstance(title, str) and title.strip():
        doc.metadata.setdefault("title", check_text(title, f"document {doc.id!r} title"))
        doc.text = f"{title}. {doc.text}"
    metadata_json(doc.metadata, f"document {doc.id!r}: metadata")
    return doc


def as_documents(documents: Sequence[Document | Mapping[str, Any]]) -> list[Document]:
    """Checked Documents of an ``add`` call (an id may appear once), or a clear error."""
    if isinstance(documents, (str, Mapping, Document)):
        raise InvalidInputError("add takes a list of documents")
    docs = [_as_document(item, i) for i, item in enumerate(documents)]
    seen: set[str] = set()
    for doc in docs:
        if doc.id in seen:
            raise DuplicateIdError(f"id {doc.id!r} appears twice in this call")
        seen.add(doc.id)
    return docs


def query_matrices(queries: Sequence[Any], dim: int, encoder: Callable[[], Encoder]) -> list[torch.Tensor]:
    """The checked token matrices of ``queries``: texts encoded (together), matrices checked."""
    texts = [(i, q) for i, q in enumerate(queries) if isinstance(q, str)]
    for i, text in texts:
        if not text.strip():
            raise InvalidInputError(f"query #{i} is empty or whitespace")
        check_text(text, f"query #{i}")
    matrices: list[torch.Tensor | None] = [None] * len(queries)
    for i, q in enumerate(queries):
        if not isinstance(q, (str, torch.Tensor, np.ndarray)):
            raise InvalidInputError(f"query #{i} must be a text or an (n_tokens, {dim}) matrix, got {type(q).__name__}")
        if not isinstance(q, str):
            matrices[i] = check_matrix(q, dim, f"query #{i} embeddings")
    if texts:
        encoded = encoder().encode_queries([t for _, t in texts])
        for (i, _), matrix in zip(texts, encoded):
            matrices[i] = matrix
    return matrices


def document_matrices(docs: Sequence[Document], embeddings: Sequence[Any] | None, dim: int,
                      encoder: Callable[[], Encoder], batch_size: int, show_progress: bool | None,
                      passages: tuple[int, int] | None = None) -> tuple[list[torch.Tensor], list[int], list[Any]]:
    """The checked token matrices of ``docs`` (the given ``embeddings``, or their texts
    encoded), per document how many tokens the encoder cut off its end (0 for given
    embeddings), and its passage layout (see :class:`Document`). With ``passages`` (passage
    tokens, overlap) a text longer than one passage is encoded as passages (nothing is cut);
    without, a write that cuts documents logs one warning saying how many and how much. Given
    embeddings keep the layout their Document names (its token counts must add up)."""
    if embeddings is not None:
        if len(embeddings) != len(docs):
            raise InvalidInputError(f"{len(embeddings)} embedding matrices for {len(docs)} documents")
        matrices = [check_matrix(m, dim, f"embeddings of {d.id!r}") for m, d in zip(embeddings, docs)]
        for doc, matrix in zip(docs, matrices):
            if doc.passages is not None and not all(
                    len(p) == 3 and all(isinstance(v, int) and not isinstance(v, bool) for v in p)
                    and 0 <= p[0] < p[1] <= len(doc.text) and p[2] > 0 for p in doc.passages):
                raise InvalidInputError(f"document {doc.id!r}: passages must be (start, end, tokens) with "
                                        f"0 <= start < end <= {len(doc.text)} and tokens > 0")
            if doc.passages is not None and sum(p[2] for p in doc.passages) != matrix.shape[0]:
                raise InvalidInputError(f"document {doc.id!r}: its passages hold {sum(p[2] for p in doc.passages)} "
                                        f"tokens, its embeddings {matrix.shape[0]}")
        return matrices, [0] * len(docs), [doc.passages for doc in docs]
    model = encoder()
    matrices, truncated, layouts = encode_texts(model, [d.text for d in docs], passages, batch_size, show_progress)
    for doc, matrix in zip(docs, matrices):
        if matrix.shape[0] == 0:
            raise InvalidInputError(f"document {doc.id!r} has no tokens left after encoding")
    warn_truncated(truncated, model.settings.document_length)
    return matrices, truncated, layouts


def encode_texts(model: Encoder, texts: Sequence[str], passages: tuple[int, int] | None, batch_size: int = 32,
                 show_progress: bool | None = None) -> tuple[list[torch.Tensor], list[int], list[Any]]:
    """Token matrices of ``texts``, the tokens the encoder cut off each, and their passage
    layouts (None for a text of one passage); with ``passages`` (tokens, overlap) long texts are
    encoded passage by passage (all passages of all texts in the encoder's batches), nothing is
    cut, and each text's matrix is its passages' rows in order."""
    if not passages:
        matrices = model.encode_documents(texts, batch_size=batch_size, show_progress=show_progress)
        return matrices, model.truncated_tokens(texts), [None] * len(texts)
    spans = model.passage_spans(texts, *passages)
    encoded = model.encode_documents([text[a:b] for text, parts in zip(texts, spans) for a, b in parts],
                                     batch_size=batch_size, show_progress=show_progress)
    matrices, layouts, position = [], [], 0
    for parts in spans:
        chunk = encoded[position : position + len(parts)]
        position += len(parts)
        matrices.append(chunk[0] if len(chunk) == 1 else torch.cat(chunk))
        layouts.append(None if len(parts) == 1 else [(a, b, int(m.shape[0])) for (a, b), m in zip(parts, chunk)])
    return matrices, [0] * len(texts), layouts


def warn_truncated(truncated: Sequence[int], document_length: int) -> None:
    """Logs one warning for a write whose documents the encoder cut (``truncated``: tokens cut per document)."""
    cut = [n for n in truncated if n]
    if cut:
        logger.warning("%d of %d documents are longer than the encoder's %d tokens: %d tokens cut from their ends "
                       "cannot be found by search (Index.info() counts them)", len(cut), len(truncated),
                       document_length, sum(cut))


def check_matrix(matrix: Any, dim: int, what: str) -> torch.Tensor:
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


@dataclass(frozen=True)
class _Snapshot:
    """One committed generation of an index, never changed once built. A search or read takes
    the current snapshot once and uses it throughout; a write builds a new one and swaps it in,
    so no answer ever mixes two generations (a row number always means the same document)."""

    manifest: dict[str, Any]
    engine: ExactEngine | CompressedEngine
    segments: tuple[_Segment, ...]
    stamp: tuple[int, int, int] | None  # identity of the manifest file it was read from (see _manifest_stamp)

    @property
    def generation(self) -> int:
        return self.manifest["generation"]

    def __len__(self) -> int:
        return self.manifest["num_documents"]

    def live(self) -> Iterator[tuple[_Segment, int, Document]]:
        for segment in self.segments:
            for row, doc in segment.docs.scan():
                if not segment.deleted[row]:
                    yield segment, row, doc

    def live_ids(self) -> Iterator[str]:
        for segment in self.segments:
            for row, doc_id in segment.docs.ids():
                if not segment.deleted[row]:
                    yield doc_id

    def live_tokens(self) -> int:
        return sum(int(s.lengths[~s.deleted].sum()) for s in self.segments)

    def find(self, ids: Sequence[str]) -> dict[str, tuple[int, int]]:
        """(segment, row) of each of ``ids`` (strings) that is live: an indexed query per segment
        for the ids it may hold. Past FIND_PREFILTER_IDS ids, a segment is asked only for those
        whose hash is among its rows' id hashes (a bulk add to a large index then asks about
        the few colliding ids, not every id in every segment)."""
        found: dict[str, tuple[int, int]] = {}
        ids = [i for i in dict.fromkeys(ids) if isinstance(i, str)]
        prefilter = _HashPrefilter(ids) if len(ids) > FIND_PREFILTER_IDS else None
        for s, segment in enumerate(self.segments if ids else ()):
            asked = ids if prefilter is None else prefilter.candidates(segment.id_hashes)
            for doc_id, row in segment.docs.rows_of(asked).items() if asked else ():
                if not segment.deleted[row]:
                    found[doc_id] = (s, row)
        return found

    def locate(self, doc_id: str) -> tuple[_Segment, int]:
        where = self.find([doc_id])
        if doc_id not in where:
            raise DocumentNotFoundError(f"no document with id {doc_id!r}")
        s, row = where[doc_id]
        return self.segments[s], row

    def documents(self, located: Sequence[tuple[int, int]]) -> list[Document]:
        """The documents at (segment, row) positions, in that order (one query per segment)."""
        by_segment: dict[int, list[int]] = {}
        for i, (s, _) in enumerate(located):
            by_segment.setdefault(s, []).append(i)
        out: list[Document | None] = [None] * len(located)
        for s, positions in by_segment.items():
            for i, doc in zip(positions, self.segments[s].docs.documents([located[i][1] for i in positions])):
                out[i] = doc
        return out


class _HashPrefilter:
    """The ids of a lookup, sorted by id hash, to find which of them a segment may hold."""

    def __init__(self, ids: Sequence[str]):
        hashes = np.fromiter(map(storage.id_hash, ids), np.uint32, len(ids))
        self.order = np.argsort(hashes, kind="stable")
        self.sorted = hashes[self.order]
        self.ids = ids

    def candidates(self, segment_hashes: np.ndarray) -> list[str]:
        """Those ids whose hash is among ``segment_hashes``: one binary search per segment row."""
        positions = np.searchsorted(self.sorted, segment_hashes).clip(max=len(self.sorted) - 1)
        shared = np.unique(segment_hashes[self.sorted[positions] == segment_hashes])
        starts = np.searchsorted(self.sorted, shared, "left")
        ends = np.searchsorted(self.sorted, shared, "right")
        return [self.ids[self.order[j]] for a, b in zip(starts, ends) for j in range(a, b)]


def _manifest_stamp(path: Path) -> tuple[int, int, int] | None:
    """(inode, mtime in ns, size) of an index's manifest file, None if it is missing: a commit
    replaces the file by a rename, so a new stamp means a new generation may be there."""
    try:
        st = os.stat(path / storage.MANIFEST)
    except (FileNotFoundError, NotADirectoryError):
        return None
    return st.st_ino, st.st_mtime_ns, st.st_size


class Index:
    """A directory-backed late-interaction index.

    Use :meth:`create` or :meth:`open`. ``index_type``: "exact" scores every stored token;
    "compressed" stores centroid codes + ``nbits`` residuals and searches in three stages (see
    :mod:`lir_agent.engines.compressed`); "auto" (the default) is exact until the corpus reaches
    ``AUTO_COMPRESS_TOKENS`` tokens and compressed from then on. Every ``add``/``upsert``/
    ``delete`` is durable when it returns.

    Concurrency: one object may be shared by threads. Every search and read runs on one
    immutable snapshot of the index; writes are serialised (a lock per object, a lock file
    across processes) and publish a new snapshot atomically. Any number of processes may read
    while one writes: every read first checks the manifest file's identity (one ``stat``) and
    catches up with a generation another process committed.
    """

    def __init__(self, path: Path, manifest: dict[str, Any], settings: EncoderSettings,
                 encoder: Encoder | None, device: str, stamp: tuple[int, int, int] | None = None):
        self.path = path
        self.settings = settings
        self._encoder = encoder
        self.device = device
        self._lock = threading.RLock()  # writers and catch-ups of this object, one at a time
        self._state = self._build(manifest, self._make_engine(manifest), stamp)

    # ---------------------------------------------------------------- opening
    @classmethod
    def create(cls, path: str | Path, encoder: Encoder | str | None = None, *, index_type: IndexType = "auto",
               nbits: int = 2, projection_dim: int | None = None, num_centroids: int | None = None,
               codec: ResidualCodec | None = None, exist_ok: bool = False, device: str = "cpu",
               auto_optimize: bool = False, indexed_fields: Sequence[str] = (), passage_tokens: int | None = None,
               passage_overlap: int | None = None) -> "Index":
        """Creates an empty index at ``path`` (resolved to an absolute path here, once).
        ``encoder``: an Encoder, a model name/path, or the default.

        ``nbits`` (1, 2, 4, or 16 for float16), ``projection_dim`` (PCA of the token space,
        fitted on the corpus) and ``num_centroids`` (default: grows with the square root of the
        corpus's token count) configure the compressed engine. ``codec``: a trained codec (of
        another index, or shared by the shards of one), which makes the index compressed from
        the start; then the other compression settings are its own. ``auto_optimize``: a write
        that takes codec drift past DRIFT_THRESHOLD re-trains the codec in the same write (once
        AUTO_OPTIMIZE_MIN_SHARE of the index is new since the last training), which costs
        re-encoding every document's text (see :meth:`optimize`); otherwise such writes warn.
        ``indexed_fields``: metadata fields (dotted paths) the document store indexes, so that
        filters on them read the index instead of scanning (more: :meth:`index_fields`).
        ``passage_tokens`` / ``passage_overlap``: a text longer than the encoder reads is stored
        as passages of at most that many tokens, neighbours sharing ``passage_overlap`` (see
        :mod:`lir_agent.passages`); default: the encoder's document length and an eighth of it;
        ``passage_tokens=0`` cuts long texts at the encoder's length instead.
        """
        path = Path(path).resolve()
        indexed_fields = check_fields(indexed_fields)  # before anything: a bad list fails the same way with exist_ok
        if (path / storage.MANIFEST).exists():
            if exist_ok:
                index = cls.open(path, encoder=encoder, device=device)
                if indexed_fields:
                    index.index_fields(indexed_fields)
                return index
            raise InvalidInputError(f"{path} already holds an index (use Index.open, or exist_ok=True)")
        if path.exists() and any(path.iterdir()):
            raise InvalidInputError(f"{path} exists and is not empty; refusing to create an index there")
        if index_type not in ("auto", "exact", "compressed"):
            raise InvalidInputError(f"index_type must be 'auto', 'exact' or 'compressed', got {index_type!r}")
        if nbits not in NBITS:
            raise InvalidInputError(f"nbits must be one of {NBITS}, got {nbits!r}")
        encoder = encoder if isinstance(encoder, Encoder) else Encoder.from_pretrained(encoder or "default")
        length = encoder.settings.document_length
        passage_tokens = length if passage_tokens is None else passage_tokens
        passage_overlap = passage_tokens // 8 if passage_overlap is None else passage_overlap
        check_passage_settings(passage_tokens, passage_overlap, length)
        if projection_dim is not None and not 0 < projection_dim <= encoder.dim:
            raise InvalidInputError(f"projection_dim must be in 1..{encoder.dim}, got {projection_dim!r}")
        if codec is not None:
            if codec.input_dim != encoder.dim:
                raise InvalidInputError(f"the codec takes {codec.input_dim}-d vectors, the encoder gives {encoder.dim}-d")
            index_type, nbits, num_centroids = "compressed", codec.nbits, codec.num_centroids
            projection_dim = codec.dim if codec.projection is not None else None
        path.mkdir(parents=True, exist_ok=True)
        (path / storage.SEGMENTS).mkdir(exist_ok=True)
        compress = None
        if index_type != "exact":
            compress = {"nbits": nbits, "projection_dim": projection_dim, "num_centroids": num_centroids,
                        "min_tokens": AUTO_COMPRESS_TOKENS if index_type == "auto" else 0,
                        "auto_optimize": bool(auto_optimize)}
        manifest = {
            "format": storage.FORMAT_NAME,
            "format_version": storage.FORMAT_VERSION,
            "index_type": "exact",
            "compress": compress,
            "codec": None,
            "encoder": encoder.settings.to_dict(),
            "dim": encoder.dim,
            "num_documents": 0,
            "generation": 0,
            "next_segment": 1,
            "segments": [],
            "marks_embedded": True,  # records say which came as given embeddings (older indexes: unknown)
            "indexed_fields": indexed_fields,
            "passages": {"tokens": passage_tokens, "overlap": passage_overlap if passage_tokens else 0},
        }
        if codec is not None:
            manifest["index_type"], manifest["codec"] = "compressed", _save_codec(path, codec, generation=0)
        storage.write_json_atomic(path / storage.MANIFEST, manifest)
        return cls(path, manifest, encoder.settings, encoder, device, _manifest_stamp(path))

    @classmethod
    def open(cls, path: str | Path, encoder: Encoder | str | None = None, *, device: str = "cpu") -> "Index":
        """Opens an index (``path`` is resolved to an absolute path here, once: a later change of
        working directory does not change which index this object reads and writes). Without
        ``encoder`` the one it was built with is loaded when first needed; with one, its
        settings must match the index's or EncoderMismatchError is raised."""
        path = Path(path).resolve()
        if (path / "shards.json").exists():
            raise NotAnIndexError(f"{path} is a sharded index: open it with lir_agent.sharded.ShardedIndex.open "
                                  "or lir_agent.distributed.RayIndex.open")
        attempt = 0
        while True:
            stamp = _manifest_stamp(path)
            manifest = storage.read_manifest(path)
            try:
                settings = EncoderSettings.from_dict(manifest["encoder"])
            except (KeyError, TypeError, ValueError) as exc:
                raise IndexCorruptedError(f"{path / storage.MANIFEST}: bad encoder settings ({exc})") from exc
            if encoder is not None and not isinstance(encoder, Encoder):
                encoder = Encoder.from_pretrained(encoder)
            if encoder is not None:
                check_encoder(encoder.settings, settings, path)
            try:
                return cls(path, manifest, settings, encoder, device, stamp)
            except (IndexCorruptedError, OSError):  # a commit meanwhile may have removed files it named
                attempt += 1
                if attempt == CATCH_UP_ATTEMPTS or _manifest_stamp(path) == stamp:
                    raise  # really damaged, not just superseded

    def _make_engine(self, manifest: dict[str, Any]) -> ExactEngine | CompressedEngine:
        if manifest["index_type"] == "exact":
            return ExactEngine(manifest["dim"])
        codec_dir = self.path / manifest["codec"]["dir"]
        try:
            return CompressedEngine(ResidualCodec.load(codec_dir))
        except (OSError, ValueError, KeyError) as exc:
            raise IndexCorruptedError(f"{codec_dir}: the codec cannot be read ({exc})") from exc

    def _build(self, manifest: dict[str, Any], engine: ExactEngine | CompressedEngine,
               stamp: tuple[int, int, int] | None) -> _Snapshot:
        """A snapshot of ``manifest``, reusing the segments of the current snapshot that it names
        (when ``engine`` is the current one); the current snapshot is left untouched."""
        current = getattr(self, "_state", None)
        loaded = {seg.entry["name"]: seg for seg in current.segments} if current and current.engine is engine else {}
        segments = []
        for entry in manifest["segments"]:
            deleted = np.zeros(entry["num_docs"], dtype=bool)
            deleted[np.asarray(entry["deleted"], dtype=np.int64)] = True
            segment = loaded.get(entry["name"])
            if segment is None or segment.entry["files"] != entry["files"]:  # new, or its documents rewritten
                data = storage.read_segment(self.path, entry)
                segments.append(_Segment(entry, engine.open(data, self.device), np.diff(data.offsets), data.docs,
                                         data.arrays["id_hash"], deleted))
            else:
                segments.append(replace(segment, entry=entry, deleted=deleted))
        return _Snapshot(manifest, engine, tuple(segments), stamp)

    def _snapshot(self) -> _Snapshot:
        """The current snapshot, after catching up with a generation another process committed
        (one ``stat`` of the manifest when nothing changed)."""
        state = self._state
        if _manifest_stamp(self.path) != state.stamp:
            with self._lock:
                self._catch_up()
                state = self._state
        return state

    def _catch_up(self) -> bool:
        """Installs the generation on disk if it is not this object's (call under ``self._lock``);
        returns whether it did. A generation whose files a newer commit already removed is
        skipped for the newer one."""
        for attempt in range(CATCH_UP_ATTEMPTS):
            stamp = _manifest_stamp(self.path)
            current = self._state
            if stamp == current.stamp:
                return False
            manifest = storage.read_manifest(self.path)
            if manifest["generation"] == current.generation:
                self._state = replace(current, stamp=stamp)
                return False
            same_codec = (manifest["index_type"], (manifest["codec"] or {}).get("dir")) == \
                (current.manifest["index_type"], (current.manifest["codec"] or {}).get("dir"))
            try:
                engine = current.engine if same_codec else self._make_engine(manifest)
                self._state = self._build(manifest, engine, stamp)
                return True
            except (IndexCorruptedError, OSError):
                if attempt == CATCH_UP_ATTEMPTS - 1 or _manifest_stamp(self.path) == stamp:
                    raise  # really damaged, not just superseded
        return False

    @property
    def encoder(self) -> Encoder:
        """The encoder, loaded from the index's settings on first use."""
        if self._encoder is None:
            encoder = Encoder.from_settings(self.settings, device=None if self.device == "cpu" else self.device)
            check_encoder(encoder.settings, self.settings, self.path)
            self._encoder = encoder
        return self._encoder

    @property
    def dim(self) -> int:
        """Dimension of the encoder's token vectors (queries and documents are given in it)."""
        return self._state.manifest["dim"]

    @property
    def index_type(self) -> str:
        """"exact" or "compressed": the engine the stored segments use now."""
        return self._snapshot().manifest["index_type"]

    @property
    def passage_settings(self) -> tuple[int, int] | None:
        """(passage tokens, overlap) of long texts, or None when they are cut (see
        :func:`~lir_agent.passages.passage_settings_of`)."""
        return passage_settings_of(self._state.manifest)

    @property
    def indexed_fields(self) -> list[str]:
        """Metadata fields the document store indexes (see :meth:`index_fields`)."""
        return list(self._snapshot().manifest.get("indexed_fields", []))

    @property
    def codec(self) -> ResidualCodec | None:
        """The codec of a compressed index (None for an exact one)."""
        engine = self._snapshot().engine
        return engine.codec if isinstance(engine, CompressedEngine) else None

    # ---------------------------------------------------------------- reading
    def __len__(self) -> int:
        return len(self._snapshot())

    def count(self, filter: Filter | None = None) -> int:
        """Number of live documents, optionally only those matching ``filter`` (counted in the
        document store: see :mod:`lir_agent.filters`)."""
        compiled = compile_filter(filter)
        state = self._snapshot()
        if compiled is None:
            return len(state)
        return sum(int((segment.docs.matching(compiled) & ~segment.deleted).sum()) for segment in state.segments)

    def __contains__(self, doc_id: object) -> bool:
        return isinstance(doc_id, str) and bool(self._snapshot().find([doc_id]))

    def ids(self) -> Iterator[str]:
        """The live ids (segment order), listed from the snapshot of the call."""
        return iter(self.id_list())

    def get(self, doc_id: str) -> Document:
        """The stored document; DocumentNotFoundError if the id is unknown."""
        segment, row = self._snapshot().locate(doc_id)
        return segment.docs.documents([row])[0]

    def get_embeddings(self, doc_id: str) -> torch.Tensor:
        """The (n_tokens, d) float16 token matrix of a document (decompressed in a compressed index,
        in the codec's projected space when it has a projection)."""
        segment, row = self._snapshot().locate(doc_id)
        return segment.store.vectors(row)

    def existing(self, ids: Iterable[str]) -> list[str]:
        """Those of ``ids`` the index holds."""
        ids = list(ids)
        where = self._snapshot().find(ids)
        return [i for i in ids if isinstance(i, str) and i in where]

    def id_list(self) -> list[str]:
        return list(self._snapshot().live_ids())

    @property
    def generation(self) -> int:
        """Number of committed writes; changes with every add, delete, compaction or rewrite."""
        return self._snapshot().generation

    def refresh(self) -> bool:
        """Catches up with writes another process (or replica) committed; returns whether any.
        (Searches and reads do this by themselves; this forces the check.)"""
        with self._lock:
            return self._catch_up()

    # ---------------------------------------------------------------- search
    def search(self, query: str | torch.Tensor | np.ndarray, k: int = 10, filter: Filter | None = None,
               exclude_ids: Iterable[str] | None = None, by: str = "document", **search_params: int) -> list[SearchHit]:
        """Top-k documents for one query: a text, or a precomputed (n_tokens, dim) matrix.

        ``filter``: metadata filter; ``exclude_ids``: ids never to return. Both apply before
        scoring, so k documents come back whenever k match and are not excluded.
        ``by``: "document" ranks documents by MaxSim over all their token vectors (of every
        passage of a long one: :mod:`lir_agent.passages`), each hit with its passages best first;
        "passage" ranks passages (one hit each: its document, and the passage's span and MaxSim),
        those of the best PASSAGE_CANDIDATES (or k) documents.
        ``search_params`` (compressed indexes): ``nprobe``, ``candidates``, ``rerank``; the
        defaults depend on k.
        """
        return self.search_batch([query], k=k, filter=filter, exclude_ids=exclude_ids, by=by, **search_params)[0]

    def search_batch(self, queries: Sequence[str | torch.Tensor | np.ndarray], k: int = 10,
                     filter: Filter | None = None, exclude_ids: Iterable[str] | None = None, by: str = "document",
                     **search_params: int) -> list[list[SearchHit]]:
        """Top-k documents (or passages, ``by``) for each query (``filter``, ``exclude_ids`` and
        ``by`` as in :meth:`search`, the same for every query); centroid scoring / the exact scan
        is shared by the batch. The ranking runs on one snapshot of the index (writes committed
        meanwhile, by this or another thread or process, are seen by the next search)."""
        k = check_k(k)
        if isinstance(queries, (str, torch.Tensor, np.ndarray)):
            raise InvalidInputError("search_batch takes a list of queries")
        depth = search_depth(k, by)
        state = self._snapshot()
        params = state.engine.search_params(depth, search_params)
        compile_filter(filter)  # a bad filter fails before any work
        exclude_ids = check_exclude_ids(exclude_ids)
        if len(queries) == 0:
            return []
        matrices = query_matrices(queries, self.dim, lambda: self.encoder)
        prepared = state.engine.prepare_queries(matrices, self.device)

        def fan_out(stage: str, round_params: Any, selections: list[list[Ranked] | None] | None,
                    flags: list[bool] | None) -> list[Round | None]:
            if selections is not None and selections[0] is None:
                return [None]
            selection = None if selections is None else selections[0]
            return [self._round(state, stage, prepared, depth, round_params, filter, selection, flags, exclude_ids)]

        ranked = run_search(state.engine.kind, fan_out, len(queries), 1, depth, params)
        return with_passages(self, matrices, [[(score, doc) for score, _, doc in hits] for hits in ranked], k, by, hit_of)

    def prepare_queries(self, matrices: list[torch.Tensor]) -> Any:
        """Query matrices made ready for :meth:`search_round` (for a compressed index: projected,
        and scored against every centroid)."""
        return self._snapshot().engine.prepare_queries(matrices, self.device)

    def search_round(self, stage: str, prepared: Any, k: int, params: Any, filter: Filter | None = None,
                     selection: list[Ranked] | None = None, flags: list[bool] | None = None,
                     exclude_ids: Sequence[str] = ()) -> Round:
        """One round of a search on this index alone: the part a shard plays in a sharded
        search (see :mod:`lir_agent.engines.pipeline`), on the current snapshot (its generation
        goes with the answer, so that the coordinator notices a write between rounds).
        ``prepared``: the engine's prepared queries (:meth:`prepare_queries`), or the query
        matrices as numpy arrays (a remote shard prepares them itself: cheaper than receiving
        centroid scores); ``selection``: per query, the documents of this index the round scores;
        ``filter`` and ``exclude_ids`` decide which documents the first round considers."""
        state = self._snapshot()
        if isinstance(prepared, list) and prepared and isinstance(prepared[0], np.ndarray):
            prepared = state.engine.prepare_queries([torch.from_numpy(m) for m in prepared], self.device)
        return self._round(state, stage, prepared, k, params, filter, selection, flags, exclude_ids)

    def _round(self, state: _Snapshot, stage: str, prepared: Any, k: int, params: Any, filter: Filter | None,
               selection: list[Ranked] | None, flags: list[bool] | None, exclude_ids: Sequence[str]) -> Round:
        stores = [segment.store for segment in state.segments]
        engine = state.engine
        if stage in ("exact", "probe"):
            compiled = compile_filter(filter)
            masks = []
            for segment in state.segments:
                eligible = ~segment.deleted
                if compiled is not None:
                    eligible &= segment.docs.matching(compiled)
                masks.append(eligible)
            for s, row in state.find(exclude_ids).values():
                masks[s][row] = False
            masks = [None if eligible.all() else eligible for eligible in masks]
            if stage == "exact":
                return _with_documents(state, Round(state.generation, engine.exact_round(stores, masks, prepared, k)))
            ranked, probed = engine.probe_round(stores, masks, prepared, params, flags)
            for part in ranked:  # the documents of the shard's best k by exact score go with them
                known = part.known("exact")
                _attach_documents(state, part, known[np.argsort(-part.exact[known], kind="stable")[:k]])
            return Round(state.generation, ranked, probed)
        for part in selection:
            if len(part) and (part.segments.max() >= len(stores) or
                              (part.rows >= np.asarray([s.entry["num_docs"] for s in state.segments])[part.segments]).any()):
                raise StaleSearchError(f"{self.path} changed during the search")
        if stage == "documents":
            return _with_documents(state, Round(state.generation, selection))
        if stage == "interaction":
            return Round(state.generation, engine.interaction_round(stores, prepared, selection))
        if stage != "rerank":
            raise InvalidInputError(f"unknown search round {stage!r}")
        return _with_documents(state, Round(state.generation, engine.rerank_round(stores, prepared, selection, k)))

    # ---------------------------------------------------------------- writing
    def add(self, documents: Sequence[Document | Mapping[str, Any]], *,
            embeddings: Sequence[Any] | None = None, upsert: bool = False,
            batch_size: int = 32, show_progress: bool | None = None,
            truncated_tokens: Sequence[int] | None = None, embeddings_from_text: bool = False) -> list[str]:
        """Adds documents; with ``upsert=True`` existing ids are replaced. Returns the ids.

        ``embeddings``: optional precomputed (n_tokens, dim) matrices, one per document, instead of
        encoding the texts; ``truncated_tokens``: with them, how many tokens their encoder cut
        off each document (counted in :meth:`info`); ``embeddings_from_text``: they are this
        index's encoder's encoding of the texts (a sharded index encodes for its shards), so a
        re-train may encode the texts again. Other given embeddings are marked (``Document.embedded``):
        a re-train can only take their decoded vectors. Texts longer than one passage are
        stored as passages (:mod:`lir_agent.passages`; with ``passage_tokens=0`` they are cut at
        the encoder's ``document_length``, one warning per write). A write that takes codec drift past
        DRIFT_THRESHOLD logs a warning (with ``auto_optimize``, re-trains instead). Nothing is
        written unless every document is valid.
        """
        docs = as_documents(documents)
        if not docs:
            return []
        if not upsert and embeddings is None:
            _check_new(self._snapshot(), docs)  # before the encoding work
        matrices, truncated, layouts = document_matrices(docs, embeddings, self.dim, lambda: self.encoder, batch_size,
                                                         show_progress, self.passage_settings)
        if truncated_tokens is not None:
            if embeddings is None or len(truncated_tokens) != len(docs):
                raise InvalidInputError("truncated_tokens goes with embeddings, one count per document")
            truncated = [int(n) for n in truncated_tokens]
        embedded = embeddings is not None and not embeddings_from_text
        docs = [replace(doc, truncated_tokens=n, embedded=embedded, passages=layout)
                for doc, n, layout in zip(docs, truncated, layouts)]
        with self._writing() as manifest:
            state = self._state
            where = state.find([d.id for d in docs])
            if not upsert:
                _check_new(state, docs, where)  # again: another writer may have added them meanwhile
            _delete_rows(manifest, where.values())
            compress = manifest["compress"]
            new_tokens = sum(int(m.shape[0]) for m in matrices)
            if manifest["index_type"] == "exact" and compress and state.live_tokens() + new_tokens >= compress["min_tokens"]:
                self._rewrite_locked(manifest, extra=(docs, matrices))  # the corpus is now big enough to compress
                return [d.id for d in docs]
            payloads, stats = state.engine.encode(matrices)
            if compress and compress.get("auto_optimize") and isinstance(state.engine, CompressedEngine) and \
                    _auto_optimize_due(manifest, stats, state.engine.codec, state.live_tokens() + new_tokens):
                # re-train now, while this write's original vectors are at hand (see _rewrite_locked)
                self._rewrite_locked(manifest, extra=(docs, matrices))
                return [d.id for d in docs]
            entries = self._write_rows(manifest, docs, [int(m.shape[0]) for m in matrices], iter(payloads), state.engine)
            _add_drift(manifest, stats)
            self._commit(manifest, entries, state.engine)
            warning = _drift_warning(_drift(self._state))
        if warning:
            logger.warning("%s: %s", self.path, warning)
        return [d.id for d in docs]

    def upsert(self, documents: Sequence[Document | Mapping[str, Any]], **kwargs: Any) -> list[str]:
        """``add`` that replaces documents whose ids exist."""
        return self.add(documents, upsert=True, **kwargs)

    def delete(self, ids: Iterable[str], *, missing_ok: bool = False) -> int:
        """Deletes documents by id; unknown ids raise DocumentNotFoundError unless ``missing_ok``."""
        if isinstance(ids, str):
            ids = [ids]
        ids = list(dict.fromkeys(ids))
        with self._writing() as manifest:
            where = self._state.find(ids)
            missing = [i for i in ids if i not in where]
            if missing and not missing_ok:
                raise DocumentNotFoundError(f"{len(missing)} unknown id(s), e.g. {missing[0]!r}; nothing was deleted")
            present = list(where.values())
            if present:
                _delete_rows(manifest, present)
                self._commit(manifest, [], self._state.engine)
        return len(present)

    def copy_from(self, source: "Index", ids: Sequence[str]) -> int:
        """Copies documents with their stored encoding from ``source``, which must have the same
        encoder and engine (and codec), replacing documents with the same ids; no re-encoding."""
        check_encoder(source.settings, self.settings, self.path)
        origin = source._snapshot()
        with self._writing() as manifest:
            state = self._state
            if origin.manifest["index_type"] != manifest["index_type"] or (
                    manifest["index_type"] == "compressed" and not origin.engine.codec.same_as(state.engine.codec)):
                raise InvalidInputError(f"{source.path} and {self.path} do not store vectors the same way "
                                        "(index type or codec differ)")
            ids = list(dict.fromkeys(ids))
            where = origin.find(ids)
            missing = [i for i in ids if i not in where]
            if missing:
                raise DocumentNotFoundError(f"no document with id {missing[0]!r} in {source.path}")
            located = [where[i] for i in ids]
            docs = origin.documents(located)
            if not origin.manifest.get("marks_embedded"):  # an older source cannot say which came as embeddings
                docs = [replace(doc, embedded=True) for doc in docs]
            _delete_rows(manifest, state.find(ids).values())
            payloads = (origin.segments[s].store.payload(row) for s, row in located)
            lengths = [int(origin.segments[s].lengths[row]) for s, row in located]
            self._commit(manifest, self._write_rows(manifest, docs, lengths, payloads, state.engine), state.engine)
        return len(docs)

    def compact(self) -> None:
        """Rewrites all live documents into as few segments as possible, dropping deleted rows (atomic)."""
        with self._writing() as manifest:
            self._compact_locked(manifest, self._state.engine)

    def drift(self) -> dict[str, float] | None:
        """Codec drift of a compressed index: mean residual norm of tokens added since the codec
        was trained, against the same figure for documents held out of its training (ratio > 1:
        new text fits the centroids worse; past DRIFT_THRESHOLD writes warn and info() says so)."""
        return _drift(self._snapshot())

    def optimize(self, force: bool = False, drift_threshold: float = DRIFT_THRESHOLD, *,
                 reencode: bool | None = None) -> bool:
        """Re-trains the codec and rewrites the index (atomically) when drift passes
        ``drift_threshold`` or ``force`` is set; on an exact index, compacts. Returns whether it rewrote.

        The codec is re-trained on the documents' original vectors, as a fresh build would be:
        documents the index encoded from their text are encoded again (the encoder's cost: for
        the default encoder about 25-55 s per 100k tokens on one CPU core, far less on a GPU).
        ``reencode``: None (default) does so for every document not added as embeddings, or, in
        an index written before documents were marked, for none (pass True when all its
        documents were added as text); False re-trains on the decoded vectors (no encoder run,
        but the old codec's errors stay and every document is quantised a second time)."""
        with self._writing() as manifest:
            if manifest["index_type"] == "exact":
                self._compact_locked(manifest, self._state.engine)
                return True
            if not force and _drift(self._state)["ratio"] <= drift_threshold:
                return False
            self._rewrite_locked(manifest, reencode=reencode)
            return True

    # ---------------------------------------------------------------- writing, under the locks
    @contextmanager
    def _writing(self) -> Iterator[dict[str, Any]]:
        """Serialises writers (threads by this object's lock, processes by the lock file), brings
        this object to the committed generation and yields a copy of its manifest to change and
        commit. Readers keep their snapshots: nothing they see changes until :meth:`_commit`."""
        with self._lock, open(self.path / storage.LOCK, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                self._catch_up()
                storage.remove_unreferenced(self.path, self._state.manifest)  # debris of a killed writer
                if self._state.manifest["format_version"] < storage.FORMAT_VERSION:
                    self._upgrade_locked()
                yield copy.deepcopy(self._state.manifest)
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def upgrade(self) -> bool:
        """Rewrites an index of an older format (documents in JSON lines) into the current one,
        atomically; returns whether there was anything to do. The first write to an older index
        does the same (``lir-agent upgrade PATH`` calls this)."""
        with self._lock:
            self._catch_up()
            if self._state.manifest["format_version"] >= storage.FORMAT_VERSION:
                return False
        with self._writing():
            return True

    def _upgrade_locked(self) -> None:
        manifest = copy.deepcopy(self._state.manifest)
        self._rewrite_documents(manifest, [s for s, entry in enumerate(manifest["segments"]) if "docs" not in entry])
        manifest["format_version"] = storage.FORMAT_VERSION
        manifest.setdefault("indexed_fields", [])
        self._commit(manifest, [], self._state.engine)

    def index_fields(self, fields: Sequence[str]) -> list[str]:
        """Adds indexes on metadata ``fields`` (dotted paths) to the document store, so that
        filters on them read an index instead of scanning; returns every indexed field. Rewrites
        each segment's document store (not its vectors), atomically."""
        fields = check_fields(fields)
        with self._writing() as manifest:
            new = [f for f in fields if f not in manifest["indexed_fields"]]
            if new:
                manifest["indexed_fields"] = sorted(manifest["indexed_fields"] + new)
                self._rewrite_documents(manifest, range(len(manifest["segments"])))
                self._commit(manifest, [], self._state.engine)
            return list(manifest["indexed_fields"])

    def _rewrite_documents(self, manifest: dict[str, Any], segments: Iterable[int]) -> None:
        """Writes the document stores of ``segments`` (positions in ``manifest``) anew, with the
        manifest's indexed fields; their entries in ``manifest`` name the new files."""
        state = self._state
        for s in segments:
            segment = state.segments[s]
            manifest["segments"][s] = {**storage.rewrite_documents(
                self.path, segment.entry, segment.docs, segment.id_hashes, manifest.get("indexed_fields", []),
                manifest["generation"] + 1), "deleted": manifest["segments"][s]["deleted"]}

    def _write_rows(self, manifest: dict[str, Any], docs: Iterable[Document], lengths: Sequence[int],
                    payloads: Iterator[dict[str, np.ndarray]], engine: ExactEngine | CompressedEngine) -> list[dict[str, Any]]:
        """Writes documents (with their token counts and engine payloads, consumed in order) as
        new segments of at most MAX_SEGMENT_DOCS documents each; returns their manifest entries."""
        entries = []
        docs = iter(docs)
        for start in range(0, len(lengths), MAX_SEGMENT_DOCS):
            batch = range(start, min(start + MAX_SEGMENT_DOCS, len(lengths)))
            name = f"seg-{manifest['next_segment']:06d}"
            manifest["next_segment"] += 1
            writer = storage.SegmentWriter(self.path, name, sum(lengths[i] for i in batch), engine.schema(),
                                           manifest.get("indexed_fields", []))
            for _ in batch:
                writer.append(next(docs), next(payloads))
            entries.append(writer.finish(engine.derived))
        return entries

    def _commit(self, manifest: dict[str, Any], new_entries: list[dict[str, Any]],
                engine: ExactEngine | CompressedEngine) -> None:
        """Publishes the new manifest, then swaps in its snapshot. Past MAX_SEGMENTS segments,
        the small ones (under half of MAX_SEGMENT_DOCS live documents) are merged first."""
        manifest["segments"].extend(new_entries)
        small = [s for s, e in enumerate(manifest["segments"]) if e["num_docs"] - len(e["deleted"]) < MAX_SEGMENT_DOCS // 2]
        if len(manifest["segments"]) > MAX_SEGMENTS and len(small) > 1:
            self._compact_locked(manifest, engine, small)
            return
        manifest["num_documents"] = sum(e["num_docs"] - len(e["deleted"]) for e in manifest["segments"])
        manifest["generation"] += 1
        storage.write_json_atomic(self.path / storage.MANIFEST, manifest)
        state = self._build(manifest, engine, _manifest_stamp(self.path))
        self._state = state
        storage.remove_unreferenced(self.path, manifest)  # replaced segments and codecs

    def _compact_locked(self, manifest: dict[str, Any], engine: ExactEngine | CompressedEngine,
                        segments: Sequence[int] | None = None) -> None:
        """Rewrites the live documents of ``segments`` (positions in ``manifest``; default all)
        into as few new segments as possible, streaming documents from their stores."""
        pending = self._build(manifest, engine, None)  # not installed: it shows pending deletions
        chosen = range(len(pending.segments)) if segments is None else segments
        rows = [(pending.segments[s], np.flatnonzero(~pending.segments[s].deleted)) for s in chosen]
        lengths = [int(n) for segment, live in rows for n in segment.lengths[live]]
        docs = (doc for segment, live in rows for row, doc in segment.docs.scan() if not segment.deleted[row])
        payloads = (segment.store.payload(int(row)) for segment, live in rows for row in live)
        chosen = set(chosen)
        manifest["segments"] = [e for s, e in enumerate(manifest["segments"]) if s not in chosen]
        self._commit(manifest, self._write_rows(manifest, docs, lengths, payloads, engine), engine)

    def _rewrite_locked(self, manifest: dict[str, Any],
                        extra: tuple[list[Document], list[torch.Tensor]] | None = None,
                        reencode: bool | None = None) -> None:
        """Trains a new codec on the live documents (plus ``extra`` new ones with their token
        matrices) and rewrites every document with it, publishing codec and segments in one
        manifest swap.

        Training and rewrite read each document's original vectors wherever they can be had: an
        exact index stores them, ``extra`` brings them, and in a compressed index the documents
        encoded from their text are encoded again (``reencode``: see :meth:`optimize`). Only
        documents stored from given embeddings (or all, with ``reencode=False``) are taken
        decoded. Re-training on decoded vectors kept every error of the old codec: documents on
        topics it was not trained on stayed ~4x worse than in a full build (issue 14)."""
        current = self._state
        pending = self._build(manifest, current.engine, None)  # not installed: it shows pending deletions
        live = list(pending.live())
        extra_docs, extra_vectors = extra or ([], [])
        lengths = [int(seg.lengths[row]) for seg, row, _ in live] + [int(m.shape[0]) for m in extra_vectors]
        docs = [doc for _, _, doc in live] + list(extra_docs)
        compress = manifest["compress"]
        old_codec = current.engine.codec if manifest["index_type"] == "compressed" else None
        if reencode is None:
            reencode = bool(manifest.get("marks_embedded"))
        from_text = [old_codec is not None and reencode and not doc.embedded for _, _, doc in live]
        decoded = sum(old_codec is not None and not t for t in from_text)
        if decoded:
            logger.warning("%s: re-training on the decoded vectors of %d of %d documents (%s): their compression "
                           "error stays and grows a little with each re-train", self.path, decoded, len(live),
                           "added as embeddings" if reencode else "reencode=False, or an index from before "
                           "documents were marked: optimize(reencode=True) encodes their texts again")
        # Decoded vectors of a projected index exist only in its projected space: then the
        # projection is kept and centroids and buckets are re-trained there; with every original
        # at hand, the projection is fitted again too (new topics may need other directions).
        keep_projection = old_codec if decoded and old_codec.projection is not None else None
        vectors = _Originals(live, extra_vectors, from_text, keep_projection, lambda: self.encoder)
        codec = _fit_codec(vectors, lengths, compress, keep_projection)
        codec_entry = _save_codec(self.path, codec, manifest["generation"] + 1)
        engine = CompressedEngine(codec)

        def payloads() -> Iterator[dict[str, np.ndarray]]:
            for start in range(0, len(docs), ENCODE_CHUNK_DOCS):
                chunk = vectors.get(range(start, min(start + ENCODE_CHUNK_DOCS, len(docs))))
                yield from engine.encode(chunk, projected=keep_projection is not None)[0]

        manifest["segments"] = []
        manifest["segments"] = self._write_rows(manifest, docs, lengths, payloads(), engine)
        manifest["index_type"], manifest["codec"] = "compressed", codec_entry
        self._commit(manifest, [], engine)
        if vectors.encoded:
            logger.info("%s: re-trained on original vectors (%d documents encoded again from their text)",
                        self.path, vectors.encoded)

    # ---------------------------------------------------------------- info
    def info(self) -> dict[str, Any]:
        """A summary: counts, dims, engine, segments and bytes on disk."""
        state = self._snapshot()
        live_tokens = state.live_tokens()
        disk = sum(f["size"] for s in state.segments for f in s.entry["files"].values())
        info = {
            "path": str(self.path),
            "index_type": state.manifest["index_type"],
            "documents": len(state),
            "tokens": live_tokens,
            "dim": self.dim,
            "segments": len(state.segments),
            "deleted_pending_compaction": int(sum(s.deleted.sum() for s in state.segments)),
            "bytes_on_disk": disk,
            "bytes_per_token": round(disk / live_tokens, 2) if live_tokens else None,
            "encoder": self.settings.to_dict(),
            "truncated": _truncation(state, self.settings.document_length),
            "indexed_fields": state.manifest.get("indexed_fields", []),
            "format_version": state.manifest["format_version"],
        }
        if isinstance(state.engine, CompressedEngine):
            codec = state.engine.codec
            info["codec"] = {"nbits": codec.nbits, "num_centroids": codec.num_centroids, "dim": codec.dim,
                             "projected": codec.projection is not None,
                             "token_bytes_per_token": codec.bytes_per_token, "drift": _drift(state),
                             "drift_warning": _drift_warning(_drift(state)),
                             "embedded_documents": len(_flagged(state, "embedded"))
                             if state.manifest.get("marks_embedded") else None}
        elif state.manifest["compress"]:
            info["compresses_at_tokens"] = state.manifest["compress"]["min_tokens"]
        return info

    def verify(self) -> None:
        """Hashes every file against the manifest and runs SQLite's integrity check on each
        document store; raises IndexCorruptedError naming a bad file."""
        for segment in self._snapshot().segments:
            storage.verify_segment_files(self.path, segment.entry)
            segment.docs.check()


def hit_of(doc: Document, score: float, rank: int, passages: Sequence[HitPassage] = ()) -> SearchHit:
    """The search hit of a stored document (its metadata copied)."""
    return SearchHit(doc.id, score, rank, doc.text, dict(doc.metadata), doc.truncated_tokens, list(passages))


def _with_documents(state: _Snapshot, round_: Round) -> Round:
    for ranked in round_.ranked:
        _attach_documents(state, ranked, range(len(ranked)))
    return round_


def _attach_documents(state: _Snapshot, ranked: Ranked, positions: Iterable[int]) -> None:
    """Sets ``ranked.documents``: the documents of the entries at ``positions`` (read from the
    document store), None elsewhere."""
    positions = list(positions)
    ranked.documents = [None] * len(ranked)
    found = state.documents([(int(ranked.segments[i]), int(ranked.rows[i])) for i in positions])
    for i, doc in zip(positions, found):
        ranked.documents[i] = doc


def _check_new(state: _Snapshot, docs: Sequence[Document], where: dict[str, tuple[int, int]] | None = None) -> None:
    """DuplicateIdError if any of ``docs`` is live (``where``: their locations, if looked up already)."""
    where = state.find([d.id for d in docs]) if where is None else where
    existing = [d.id for d in docs if d.id in where]
    if existing:
        raise DuplicateIdError(f"{len(existing)} id(s) already in the index, e.g. {existing[0]!r} (use upsert to replace)")


def _flagged(state: _Snapshot, column: str) -> list[int]:
    """The values of ``column`` (truncated_tokens, embedded) of the live documents where it is not 0."""
    return [value for segment in state.segments for row, value in segment.docs.flagged(column)
            if not segment.deleted[row]]


def _truncation(state: _Snapshot, document_length: int) -> dict[str, int]:
    """Live documents the encoder cut at ``document_length`` tokens, and the tokens cut."""
    cut = _flagged(state, "truncated_tokens")
    return {"documents": len(cut), "tokens": sum(cut), "document_length": document_length}


def _drift(state: _Snapshot) -> dict[str, float] | None:
    if not isinstance(state.engine, CompressedEngine):
        return None
    stats = state.manifest["codec"]
    reference = state.engine.codec.mean_residual_norm
    added = stats["added_tokens"]
    mean = stats["added_residual_norm_sum"] / added if added else reference
    return {"added_tokens": added, "mean_residual_norm": mean, "reference": reference, "ratio": mean / reference}


def _drift_warning(drift: dict[str, float] | None) -> str | None:
    """What a write logs and info() shows once drift passes DRIFT_THRESHOLD, else None."""
    if drift is None or drift["ratio"] <= DRIFT_THRESHOLD:
        return None
    return (f"codec drift {drift['ratio']:.2f} > {DRIFT_THRESHOLD}: the {drift['added_tokens']} tokens added since the "
            "codec was trained fit its centroids worse than the text it was trained on, so those documents are "
            "compressed with a larger error (scored too low on their own topics, too high on the trained ones); "
            "Index.optimize() re-trains the codec")


def _auto_optimize_due(manifest: dict[str, Any], stats: dict[str, float], codec: ResidualCodec, live_tokens: int) -> bool:
    """Whether a write with residual ``stats`` takes drift past DRIFT_THRESHOLD once enough of the
    index is new since training (the re-train rewrites all of it: this bounds how often)."""
    added = manifest["codec"]["added_tokens"] + stats["tokens"]
    ratio = (manifest["codec"]["added_residual_norm_sum"] + stats["residual_norm_sum"]) / max(added, 1)
    return ratio / codec.mean_residual_norm > DRIFT_THRESHOLD and added >= AUTO_OPTIMIZE_MIN_SHARE * live_tokens


def _save_codec(root: Path, codec: ResidualCodec, generation: int) -> dict[str, Any]:
    """Publishes a codec directory atomically; returns its manifest entry (with drift counters)."""
    name = f"codec-{generation:06d}"
    tmp = root / f"{name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    codec.save(tmp)
    storage.publish_directory(tmp, root / name)
    return {"dir": name, "nbits": codec.nbits, "num_centroids": codec.num_centroids, "dim": codec.dim,
            "added_tokens": 0, "added_residual_norm_sum": 0.0}


def _delete_rows(manifest: dict[str, Any], rows: Iterable[tuple[int, int]]) -> None:
    for s, row in rows:
        entry = manifest["segments"][s]
        entry["deleted"] = sorted(set(entry["deleted"]) | {row})


def _add_drift(manifest: dict[str, Any], stats: dict[str, float]) -> None:
    if stats and manifest["codec"]:
        manifest["codec"]["added_tokens"] += int(stats["tokens"])
        manifest["codec"]["added_residual_norm_sum"] += stats["residual_norm_sum"]


class _Originals:
    """The vectors a re-train reads for each document (live rows, then ``extra``), in batches:
    given matrices, stored rows (an exact index's originals, a compressed index's decoded
    vectors) or, where ``from_text``, the stored text encoded again, a chunk of texts per
    encoder call. Vectors fetched with ``keep`` (the training sample) are kept for the rewrite
    pass, so no text is encoded twice. With ``projection`` (a kept projection, the decoded
    vectors being in its space) the other vectors are projected into it."""

    def __init__(self, live: list[tuple[_Segment, int, Document]], extra: Sequence[torch.Tensor],
                 from_text: Sequence[bool], projection: ResidualCodec | None, encoder: Callable[[], Encoder]):
        self.live, self.extra, self.from_text = live, list(extra), list(from_text)
        self.projection, self.encoder = projection, encoder
        self.kept: dict[int, torch.Tensor] = {}
        self.encoded = 0

    def get(self, indices: Iterable[int], keep: bool = False) -> list[torch.Tensor]:
        indices = list(indices)
        out: dict[int, torch.Tensor] = {}
        texts = []
        for i in indices:
            if i in self.kept:
                out[i] = self.kept.pop(i)
            elif i >= len(self.live):
                out[i] = self._in_space(self.extra[i - len(self.live)])
            elif self.from_text[i]:
                texts.append(i)
            else:
                segment, row, _ = self.live[i]
                out[i] = segment.store.vectors(row)  # decoded rows are in the (kept) codec's space already
        if texts:
            docs = [self.live[i][2] for i in texts]  # encoded the way they were stored: whole, or passage by passage
            spans = [[(a, b) for a, b, _ in doc.passages] if doc.passages else [(0, len(doc.text))] for doc in docs]
            encoded = iter(self.encoder().encode_documents([d.text[a:b] for d, parts in zip(docs, spans) for a, b in parts]))
            matrices = [torch.cat([next(encoded) for _ in parts]) for parts in spans]
            for i, matrix in zip(texts, matrices):
                segment, row, doc = self.live[i]
                if matrix.shape[0] != segment.lengths[row]:
                    raise LIRError(f"{doc.id!r}: its text encodes to {matrix.shape[0]} tokens, {segment.lengths[row]} "
                                   "are stored (has the encoder changed?); optimize(reencode=False) re-trains without "
                                   "encoding texts")
                out[i] = self._in_space(matrix)
            self.encoded += len(texts)
        if keep:
            self.kept.update(out)
        return [out[i] for i in indices]

    def _in_space(self, matrix: torch.Tensor) -> torch.Tensor:
        return matrix if self.projection is None else self.projection.project(matrix.float())


def _fit_codec(vectors: _Originals, lengths: Sequence[int], compress: dict[str, Any],
               keep_projection: ResidualCodec | None) -> ResidualCodec:
    """A codec trained on whole documents drawn at random (seeded) until CODEC_SAMPLE_TOKENS
    tokens. Its drift reference is measured out of sample: a second codec, fitted without
    DRIFT_HOLDOUT_SHARE of the drawn documents, encodes them (one more k-means). On its own
    training tokens a codec fits better than on any other text: against an in-sample reference,
    same-topic SciFact abstracts read 1.16-1.30 (400 in the index), so the threshold fired on
    them; against a held-out one, 1.03-1.16, and new topics 1.37."""
    order = list(range(len(lengths)))
    random.Random(0).shuffle(order)
    picked, total = [], 0
    for i in order:
        if total >= CODEC_SAMPLE_TOKENS:
            break
        picked.append(i)
        total += lengths[i]
    matrices = vectors.get(picked, keep=True)
    sample = torch.cat([m.float() for m in matrices])
    settings = {"nbits": compress["nbits"], "num_centroids": compress["num_centroids"] or num_centroids_for(sum(lengths)),
                "projection_dim": None if keep_projection else compress["projection_dim"], "projection_of": keep_projection}
    codec = ResidualCodec.fit(sample, **settings)
    held = int(len(picked) * DRIFT_HOLDOUT_SHARE)
    if held >= 2:  # else (tiny corpora) the reference stays in-sample
        split = sum(int(m.shape[0]) for m in matrices[:held])
        trial = ResidualCodec.fit(sample[split:], **settings)
        codec.mean_residual_norm = float(trial.encode(sample[:split], projected=keep_projection is not None)[1].mean())
    return codec


def check_exclude_ids(exclude_ids: Iterable[str] | None) -> tuple[str, ...]:
    """The ids of ``exclude_ids`` (any iterable of strings, None for none) as a tuple, or a clear error."""
    if exclude_ids is None:
        return ()
    if isinstance(exclude_ids, (str, bytes)):
        raise InvalidInputError("exclude_ids takes a collection of ids, not one string")
    ids = tuple(dict.fromkeys(exclude_ids))
    bad = next((i for i in ids if not isinstance(i, str)), None)
    if bad is not None:
        raise InvalidInputError(f"exclude_ids holds {bad!r}, not a string id")
    return ids


def check_fields(fields: Sequence[str]) -> list[str]:
    """Metadata fields to index (dotted paths), sorted and unique, or a clear error."""
    if isinstance(fields, str) or not isinstance(fields, (list, tuple, set, frozenset)):
        raise InvalidInputError(f"indexed_fields takes a list of field names, got {fields!r}")
    for name in fields:
        if not isinstance(name, str) or not name or name.startswith("$"):
            raise InvalidInputError(f"indexed_fields: {name!r} is not a field name")
        check_text(name, "indexed field")
        if field_expressions(name) is None:
            raise InvalidInputError(f"indexed_fields: {name!r} holds a character SQLite's JSON paths cannot name "
                                    "(a double quote, a backslash or a control character); filters on it still work")
    return sorted(set(fields))


def check_k(k: Any) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise InvalidInputError(f"k must be an integer, got {k!r}")
    if k <= 0:
        raise InvalidInputError(f"k must be positive, got {k}")
    if k > MAX_K:
        raise InvalidInputError(f"k={k} is larger than the maximum of {MAX_K}")
    return int(k)


def check_encoder(actual: EncoderSettings, expected: EncoderSettings, path: Path) -> None:
    differences = actual.differences(expected)
    if differences:
        raise EncoderMismatchError(
            f"the encoder {actual.model!r} does not match the one {path} was built with "
            f"({expected.model!r}): " + "; ".join(differences)
        )
