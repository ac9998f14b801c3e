"""On-disk layout of an index, and crash-safe writes.

An index is a directory::

    manifest.json            the commit point: format, encoder settings, segments, tombstones
    codec-000001/            the compressed index's codec (centroids, buckets), if any
    segments/seg-000001/     one immutable segment per write
        offsets.npy          (n_docs + 1,) int64
        docs.sqlite          ids, texts, metadata, one row per document (see lir_agent.docstore)
        id_hash.npy          (n_docs,) uint32 CRC-32 of each id (ties between equal scores break on it)
        tokens.npy           exact index: (n_tokens, dim) float16, memory-mapped on open
        codes.npy, residuals.npy, scales.npy, ivf.npy, ivf_offsets.npy   compressed index (see engines)

Every write puts new files aside (a ``.tmp`` directory or file), fsyncs them, renames them into
place and fsyncs the directory; the manifest is replaced last, the same way. A process killed at
any point therefore leaves either the old manifest (which names only complete, older segments)
or the new one. Files no manifest names are removed by the next writer.

Format 1 kept each segment's documents in ``docs.jsonl`` (read whole on open); such segments
are read into an in-memory store and rewritten as ``docs.sqlite`` by the first write (or
``Index.upgrade``), see :func:`rewrite_documents`.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .docstore import DOCS_FILE, Document, DocumentStore, DocumentWriter
from .errors import IndexCorruptedError, NotAnIndexError

FORMAT_NAME = "lir-agent-index"
FORMAT_VERSION = 2  # 1: documents in docs.jsonl (read, and rewritten on the first write)
MANIFEST = "manifest.json"
SEGMENTS = "segments"
LOCK = ".lock"
OFFSETS, LEGACY_DOCS, ID_HASH = "offsets.npy", "docs.jsonl", "id_hash.npy"
PER_TOKEN_ARRAYS = ("tokens", "codes", "residuals", "scales")
# Files up to this size (offsets and id hashes of a full segment: 512 and 256 KiB) are checked by
# hash on every open; larger ones (token arrays) by size and header, and by hash in verify(). The
# document store is checked by size (and by SQLite as it is read). Hashing more would make opening
# cost as much as the corpus is large (a 16 MiB limit hashed the token arrays of short documents).
HASH_ON_OPEN_BYTES = 2**20


def id_hash(doc_id: str) -> int:
    """CRC-32 of a document id (uint32), stored per row in ``id_hash.npy``."""
    return zlib.crc32(doc_id.encode())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_json_atomic(path: Path, data: Any) -> None:
    """Replaces ``path`` with ``data`` so that readers see the old or the new file, never half."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=1, ensure_ascii=False)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


@dataclass
class SegmentData:
    """A segment as read from disk: its arrays (large ones memory-mapped, ``id_hash`` among
    them), offsets and documents."""

    arrays: dict[str, np.ndarray]
    offsets: np.ndarray
    docs: DocumentStore


ArraySchema = dict[str, tuple[tuple[int, ...], np.dtype]]  # name -> (per-token shape, dtype)


class SegmentWriter:
    """Streams documents and their per-token arrays into a new segment, then publishes it atomically.

    ``schema`` names the per-token arrays (e.g. float16 token vectors, or centroid codes and
    packed residuals); each is a memory-mapped .npy of ``num_tokens`` rows.
    """

    def __init__(self, root: Path, name: str, num_tokens: int, schema: ArraySchema, indexed_fields: Sequence[str]):
        self.root, self.name = root, name
        self.tmp_dir = root / SEGMENTS / f"{name}.tmp"
        if self.tmp_dir.exists():
            shutil.rmtree(self.tmp_dir)
        self.tmp_dir.mkdir(parents=True)
        self._arrays = {
            array: np.lib.format.open_memmap(self.tmp_dir / f"{array}.npy", mode="w+", dtype=dtype,
                                             shape=(num_tokens, *shape))
            for array, (shape, dtype) in schema.items()
        }
        self._num_tokens = num_tokens
        self._offsets = [0]
        self._id_hashes: list[int] = []
        self._docs = DocumentWriter(self.tmp_dir / DOCS_FILE, indexed_fields)

    def append(self, doc: Document, arrays: dict[str, np.ndarray]) -> None:
        start = self._offsets[-1]
        length = len(next(iter(arrays.values())))
        for array, values in arrays.items():
            self._arrays[array][start : start + length] = values
        self._offsets.append(start + length)
        self._id_hashes.append(id_hash(doc.id))
        self._docs.append(doc)

    def finish(self, derived: dict[str, np.ndarray] | None = None) -> dict[str, Any]:
        """Writes offsets and ``derived`` arrays, fsyncs, renames into place; returns the manifest entry.

        ``derived`` may be a callable taking (arrays, offsets), for indexes built from the
        written arrays (the compressed index's inverted lists).
        """
        if self._offsets[-1] != self._num_tokens:
            raise RuntimeError(f"segment {self.name}: wrote {self._offsets[-1]} of {self._num_tokens} tokens")
        offsets = np.asarray(self._offsets, dtype=np.int64)
        extra = derived(self._arrays, offsets) if callable(derived) else (derived or {})
        for array in self._arrays.values():
            array.flush()
        self._arrays.clear()
        self._docs.finish()
        np.save(self.tmp_dir / OFFSETS, offsets)
        np.save(self.tmp_dir / ID_HASH, np.asarray(self._id_hashes, dtype=np.uint32))
        for array, values in extra.items():
            np.save(self.tmp_dir / f"{array}.npy", values)
        names = sorted(p.name for p in self.tmp_dir.iterdir())
        for name in names:
            _fsync_file(self.tmp_dir / name)
        _fsync_dir(self.tmp_dir)
        final = self.root / SEGMENTS / self.name
        os.replace(self.tmp_dir, final)
        _fsync_dir(final.parent)
        files = {name: {"size": (final / name).stat().st_size, "sha256": sha256_file(final / name)} for name in names}
        return {"name": self.name, "num_docs": len(offsets) - 1, "num_tokens": int(offsets[-1]),
                "files": files, "docs": DOCS_FILE, "deleted": []}


def read_manifest(root: Path) -> dict[str, Any]:
    """Reads and checks the manifest; NotAnIndexError if there is none."""
    path = root / MANIFEST
    if not root.is_dir() or not path.exists():
        raise NotAnIndexError(f"{root} is not a lir_agent index (no {MANIFEST} there)")
    try:
        with open(path, encoding="utf-8") as f:
            manifest = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise IndexCorruptedError(f"{path} is corrupted: {exc}") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME:
        raise NotAnIndexError(f"{path} is not a lir_agent manifest")
    if manifest.get("format_version", 0) > FORMAT_VERSION:
        raise NotAnIndexError(
            f"{path}: format version {manifest['format_version']} is newer than this lir_agent reads ({FORMAT_VERSION})"
        )
    return manifest


def read_segment(root: Path, entry: dict[str, Any]) -> SegmentData:
    """Opens one segment, checking each file against the manifest; errors name the file."""
    directory = root / SEGMENTS / entry["name"]
    for name, expected in entry["files"].items():
        path = directory / name
        if not path.exists():
            raise IndexCorruptedError(f"{path} is missing")
        size = path.stat().st_size
        if size != expected["size"]:
            raise IndexCorruptedError(f"{path} is truncated or altered: {size} bytes, manifest says {expected['size']}")
        if size <= HASH_ON_OPEN_BYTES and name != entry.get("docs") and sha256_file(path) != expected["sha256"]:
            raise IndexCorruptedError(f"{path} is corrupted: its checksum does not match the manifest")
    arrays = {}
    for name in entry["files"]:
        if name.endswith(".npy") and name != OFFSETS:
            try:
                arrays[name[:-4]] = np.load(directory / name, mmap_mode="r", allow_pickle=False)
            except (ValueError, OSError) as exc:
                raise IndexCorruptedError(f"{directory / name} is unreadable: {exc}") from exc
    try:
        offsets = np.load(directory / OFFSETS, allow_pickle=False)
        if "docs" in entry:
            docs = DocumentStore.open(directory / entry["docs"], entry["num_docs"])
        else:  # format 1
            with open(directory / LEGACY_DOCS, encoding="utf-8") as f:
                records = [json.loads(line) for line in f]
            docs = DocumentStore.in_memory(
                (Document(r["id"], r["text"], r.get("metadata") or {}, r.get("truncated_tokens", 0), bool(r.get("embedded")))
                 for r in records), where=str(directory / LEGACY_DOCS))
            arrays["id_hash"] = np.asarray([id_hash(r["id"]) for r in records], dtype=np.uint32)
    except (ValueError, OSError, KeyError) as exc:
        raise IndexCorruptedError(f"{directory}: unreadable offsets or documents ({exc})") from exc
    if docs.num_docs != entry["num_docs"] or offsets.shape != (entry["num_docs"] + 1,) \
            or int(offsets[-1]) != entry["num_tokens"] or arrays["id_hash"].shape != (entry["num_docs"],):
        raise IndexCorruptedError(f"{directory}: document or token count does not match the manifest")
    for name, array in arrays.items():
        if name in PER_TOKEN_ARRAYS and array.shape[0] != entry["num_tokens"]:
            raise IndexCorruptedError(f"{directory / (name + '.npy')} has {array.shape[0]} rows, "
                                      f"the manifest says {entry['num_tokens']} tokens")
    return SegmentData(arrays, offsets, docs)


def _npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def rewrite_documents(root: Path, entry: dict[str, Any], docs: DocumentStore, id_hashes: np.ndarray,
                      indexed_fields: Sequence[str], generation: int) -> dict[str, Any]:
    """Writes a segment's documents anew as ``docs-<generation>.sqlite`` (with indexes on
    ``indexed_fields``), and ``id_hash.npy`` if the segment lacks it (format 1), next to its
    other files; returns the segment's new manifest entry. The files the old entry names are
    left as they are (readers of the old generation keep them) until no manifest names them."""
    directory = root / SEGMENTS / entry["name"]
    new = {f"docs-{generation:06d}.sqlite": lambda path: docs.copy_to(path, indexed_fields)}
    if ID_HASH not in entry["files"]:
        new[ID_HASH] = lambda path: path.write_bytes(_npy_bytes(id_hashes))
    files = {name: info for name, info in entry["files"].items() if name not in (LEGACY_DOCS, entry.get("docs"))}
    for name, write in new.items():
        tmp = directory / f"{name}.tmp"
        tmp.unlink(missing_ok=True)
        write(tmp)
        _fsync_file(tmp)
        os.replace(tmp, directory / name)
        files[name] = {"size": (directory / name).stat().st_size, "sha256": sha256_file(directory / name)}
    _fsync_dir(directory)
    docs_name = next(iter(new))
    return {**entry, "files": dict(sorted(files.items())), "docs": docs_name}


def verify_segment_files(root: Path, entry: dict[str, Any]) -> None:
    """Hashes every file of a segment (slow for big indexes) and raises on the first mismatch."""
    directory = root / SEGMENTS / entry["name"]
    for name, expected in entry["files"].items():
        if sha256_file(directory / name) != expected["sha256"]:
            raise IndexCorruptedError(f"{directory / name} is corrupted: its checksum does not match the manifest")


def remove_unreferenced(root: Path, manifest: dict[str, Any]) -> None:
    """Deletes segment and codec directories (and half-written ones) that the manifest does not
    name, and files of named segments it does not list (replaced document stores)."""
    keep = {entry["name"]: entry for entry in manifest["segments"]}
    segments = root / SEGMENTS
    if segments.exists():
        for child in segments.iterdir():
            if child.name not in keep:
                shutil.rmtree(child, ignore_errors=True)
            else:
                for path in child.iterdir():
                    if path.name not in keep[child.name]["files"]:
                        path.unlink(missing_ok=True)
    codec = (manifest.get("codec") or {}).get("dir")
    for child in root.glob("codec-*"):
        if child.name != codec:
            shutil.rmtree(child, ignore_errors=True)


def publish_directory(tmp_dir: Path, final: Path) -> None:
    """fsyncs every file of ``tmp_dir`` and renames it to ``final`` atomically."""
    for path in tmp_dir.iterdir():
        _fsync_file(path)
    _fsync_dir(tmp_dir)
    os.replace(tmp_dir, final)
    _fsync_dir(final.parent)
