"""On-disk layout of an index, and crash-safe writes.

An index is a directory::

    manifest.json            the commit point: format, encoder settings, segments, tombstones
    segments/seg-000001/     one immutable segment per write
        tokens.npy           (n_tokens, dim) float16, memory-mapped on open
        offsets.npy          (n_docs + 1,) int64
        docs.jsonl           one {"id", "text", "metadata"} per document, in row order

Every write puts new files aside (a ``.tmp`` directory or file), fsyncs them, renames them into
place and fsyncs the directory; the manifest is replaced last, the same way. A process killed at
any point therefore leaves either the old manifest (which names only complete, older segments)
or the new one. Files no manifest names are removed by the next writer.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from .errors import IndexCorruptedError, NotAnIndexError

FORMAT_NAME = "lir-agent-index"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
SEGMENTS = "segments"
LOCK = ".lock"
TOKENS, OFFSETS, DOCS = "tokens.npy", "offsets.npy", "docs.jsonl"
# Files checked by hash on every open; the (large) token matrix is checked by size and header,
# and by hash in verify().
_HASHED_ON_OPEN = (OFFSETS, DOCS)


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
    """A segment as read from disk."""

    tokens: np.ndarray  # memory-mapped, read-only
    offsets: np.ndarray
    records: list[dict[str, Any]]


class SegmentWriter:
    """Streams documents into a new segment directory, then publishes it atomically."""

    def __init__(self, root: Path, name: str, dim: int, num_tokens: int):
        self.root, self.name = root, name
        self.tmp_dir = root / SEGMENTS / f"{name}.tmp"
        if self.tmp_dir.exists():
            shutil.rmtree(self.tmp_dir)
        self.tmp_dir.mkdir(parents=True)
        self._tokens = np.lib.format.open_memmap(
            self.tmp_dir / TOKENS, mode="w+", dtype=np.float16, shape=(num_tokens, dim)
        )
        self._offsets = [0]
        self._docs = open(self.tmp_dir / DOCS, "w", encoding="utf-8")

    def append(self, record: dict[str, Any], tokens: np.ndarray) -> None:
        start = self._offsets[-1]
        self._tokens[start : start + len(tokens)] = tokens
        self._offsets.append(start + len(tokens))
        self._docs.write(json.dumps(record, ensure_ascii=False) + "\n")

    def finish(self) -> dict[str, Any]:
        """Flushes, fsyncs and renames the segment into place; returns its manifest entry."""
        if self._offsets[-1] != len(self._tokens):
            raise RuntimeError(f"segment {self.name}: wrote {self._offsets[-1]} of {len(self._tokens)} tokens")
        self._tokens.flush()
        del self._tokens
        self._docs.flush()
        os.fsync(self._docs.fileno())
        self._docs.close()
        np.save(self.tmp_dir / OFFSETS, np.asarray(self._offsets, dtype=np.int64))
        for name in (TOKENS, OFFSETS):
            _fsync_file(self.tmp_dir / name)
        _fsync_dir(self.tmp_dir)
        final = self.root / SEGMENTS / self.name
        os.replace(self.tmp_dir, final)
        _fsync_dir(final.parent)
        files = {name: {"size": (final / name).stat().st_size, "sha256": sha256_file(final / name)}
                 for name in (TOKENS, OFFSETS, DOCS)}
        return {"name": self.name, "num_docs": len(self._offsets) - 1, "num_tokens": self._offsets[-1],
                "files": files, "deleted": []}


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


def read_segment(root: Path, entry: dict[str, Any], dim: int) -> SegmentData:
    """Opens one segment, checking each file against the manifest; errors name the file."""
    directory = root / SEGMENTS / entry["name"]
    for name, expected in entry["files"].items():
        path = directory / name
        if not path.exists():
            raise IndexCorruptedError(f"{path} is missing")
        size = path.stat().st_size
        if size != expected["size"]:
            raise IndexCorruptedError(f"{path} is truncated or altered: {size} bytes, manifest says {expected['size']}")
        if name in _HASHED_ON_OPEN and sha256_file(path) != expected["sha256"]:
            raise IndexCorruptedError(f"{path} is corrupted: its checksum does not match the manifest")
    try:
        tokens = np.load(directory / TOKENS, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise IndexCorruptedError(f"{directory / TOKENS} is unreadable: {exc}") from exc
    if tokens.dtype != np.float16 or tokens.shape != (entry["num_tokens"], dim):
        raise IndexCorruptedError(
            f"{directory / TOKENS} holds {tokens.dtype}{tokens.shape}, expected float16({entry['num_tokens']}, {dim})"
        )
    offsets = np.load(directory / OFFSETS, allow_pickle=False)
    with open(directory / DOCS, encoding="utf-8") as f:
        records = [json.loads(line) for line in f]
    if len(records) != entry["num_docs"] or offsets.shape != (entry["num_docs"] + 1,):
        raise IndexCorruptedError(f"{directory}: document count does not match the manifest")
    return SegmentData(tokens, offsets, records)


def verify_segment_files(root: Path, entry: dict[str, Any]) -> None:
    """Hashes every file of a segment (slow for big indexes) and raises on the first mismatch."""
    directory = root / SEGMENTS / entry["name"]
    for name, expected in entry["files"].items():
        if sha256_file(directory / name) != expected["sha256"]:
            raise IndexCorruptedError(f"{directory / name} is corrupted: its checksum does not match the manifest")


def remove_unreferenced(root: Path, referenced: Iterable[str]) -> None:
    """Deletes segment directories (and half-written ones) that the manifest does not name."""
    keep = set(referenced)
    segments = root / SEGMENTS
    if not segments.exists():
        return
    for child in segments.iterdir():
        if child.name not in keep:
            shutil.rmtree(child, ignore_errors=True)
