"""The document side of a segment: ids, texts and metadata in one SQLite database per segment.

Each segment of an index (see :mod:`lir_agent.storage`) holds its documents in ``docs.sqlite``,
one row per document in the segment's row order::

    docs(row INTEGER PRIMARY KEY, id TEXT UNIQUE, metadata TEXT (JSON), truncated_tokens, embedded,
         passages TEXT (JSON [[start, end, tokens], ...] of a document stored as passages, else NULL), text)

plus one expression index per field the index declares (``indexed_fields``) on
``(json_type(metadata, <path>), json_extract(metadata, <path>))``, the expressions the filter
compiler writes (:func:`lir_agent.filters.field_expressions`), so that a filter on the field is
answered from the index without reading the rows. The text is the last column:
a scan that reads metadata does not read long texts.

Like the segment's arrays, the database is written once (in the segment's temporary directory,
before the manifest names it) and never changed in place; readers open it read-only and
``immutable``, without locks. Opening one costs the same whatever the number of documents:
nothing is read until a query asks (texts only for the hits returned). Memory grows only by
SQLite's page cache (:data:`CACHE_KIB` per open database).

Why SQLite: it is in Python's standard library, its JSON functions and expression indexes
evaluate filters inside the database, and a file per immutable segment keeps the index's
crash safety (one manifest swap commits segment arrays and documents together).
"""

from __future__ import annotations

import json
import logging
import math
import sqlite3
import urllib.parse
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

import numpy as np

from .errors import IndexCorruptedError, InvalidInputError, LIRError
from .filters import CONDITION_FUNCTION, CompiledFilter, field_expressions, python_condition

DOCS_FILE = "docs.sqlite"
INSERT_BATCH = 4096  # rows per executemany while writing
QUERY_IDS = 4096  # rows per lookup query (bound as one JSON array)
QUERY_PARAMS = 500  # ids per lookup query (bound one by one: a JSON array would cut an id at a NUL)
INT64 = (-(2**63), 2**63 - 1)
logger = logging.getLogger(__name__)
CACHE_KIB = 256  # page cache of each open database (the OS caches the file too)


@dataclass
class Document:
    """A stored document: its id, the text that was indexed, and JSON metadata."""

    id: str
    text: str
    metadata: dict[str, Any] = field(default_factory=dict)
    truncated_tokens: int = 0  # tokens the encoder cut off the end of the text when it was indexed
    embedded: bool = False  # stored from caller-given embeddings: a re-train cannot encode its text again
    # a document stored as passages (see lir_agent.passages): per passage, in order, its character
    # span in ``text`` and how many rows of the document's token matrix are its; None: one passage
    passages: list[tuple[int, int, int]] | None = None


_SCHEMA = ("CREATE TABLE docs (row INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE, metadata TEXT NOT NULL, "
           "truncated_tokens INTEGER NOT NULL, embedded INTEGER NOT NULL, passages TEXT, text TEXT NOT NULL)")
_COLUMNS = "row, id, metadata, truncated_tokens, embedded, passages, text"


def _connect(target: str, uri: bool = False) -> sqlite3.Connection:
    connection = sqlite3.connect(target, uri=uri, check_same_thread=False, isolation_level=None)
    connection.create_function(CONDITION_FUNCTION, 3, python_condition, deterministic=True)
    connection.execute(f"PRAGMA cache_size = -{CACHE_KIB}")
    return connection


def index_name(field_name: str) -> str:
    """The SQL name of the index on a metadata field."""
    return '"field:' + field_name.replace('"', '""') + '"'


def create_field_indexes(connection: sqlite3.Connection, fields: Iterable[str]) -> None:
    for name in fields:
        expressions = field_expressions(name)
        if expressions is not None:
            connection.execute(f"CREATE INDEX IF NOT EXISTS {index_name(name)} ON docs({', '.join(expressions)})")


class DocumentWriter:
    """Writes the documents of a new segment, in row order, into a fresh database at ``path``
    (``":memory:"``: one in memory)."""

    def __init__(self, path: Path | str, indexed_fields: Sequence[str]):
        self.path, self.indexed_fields = path, list(indexed_fields)
        self.connection = _connect(str(path))
        self.connection.execute("PRAGMA journal_mode = OFF")  # a new file no manifest names yet:
        self.connection.execute("PRAGMA synchronous = OFF")  # the segment is fsynced as a whole
        self.connection.execute(_SCHEMA)
        self.connection.execute("BEGIN")
        self.pending: list[tuple[Any, ...]] = []
        self.rows = 0

    def append(self, doc: Document) -> None:
        self.pending.append((self.rows, doc.id, json.dumps(doc.metadata, ensure_ascii=False, allow_nan=False),
                             int(doc.truncated_tokens), int(bool(doc.embedded)), _passages_json(doc), doc.text))
        self.rows += 1
        if len(self.pending) >= INSERT_BATCH:
            self._flush()

    def _flush(self) -> None:
        self.connection.executemany(f"INSERT INTO docs ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)", self.pending)
        self.pending = []

    def finish(self, close: bool = True) -> sqlite3.Connection:
        """Commits (and closes, unless ``close`` is False); returns the connection."""
        self._flush()
        create_field_indexes(self.connection, self.indexed_fields)
        self.connection.execute("COMMIT")
        if close:
            self.connection.close()
        return self.connection


class DocumentStore:
    """Read side of one segment's documents. Thread-safe (SQLite serialises the connection)."""

    def __init__(self, connection: sqlite3.Connection, num_docs: int, where: str):
        self.connection, self.num_docs, self.where = connection, num_docs, where

    @classmethod
    def open(cls, path: Path, num_docs: int) -> "DocumentStore":
        uri = "file:" + urllib.parse.quote(str(path)) + "?mode=ro&immutable=1"
        try:
            connection = _connect(uri, uri=True)
        except sqlite3.DatabaseError as exc:
            raise IndexCorruptedError(f"{path}: the document store cannot be read ({exc})") from exc
        store = cls(connection, num_docs, str(path))
        rows = store._query("SELECT max(row) + 1 FROM docs")[0][0] or 0
        if rows != num_docs:
            raise IndexCorruptedError(f"{path} holds {rows} documents, the manifest says {num_docs}")
        return store

    @classmethod
    def in_memory(cls, documents: Iterable[Document], indexed_fields: Sequence[str] = (),
                  where: str = "an in-memory document store") -> "DocumentStore":
        """A store in memory (for a segment of the older format, whose documents are in JSON
        lines). NaN and infinite numbers in their metadata, which that format accepted and JSON
        cannot hold, become null (logged)."""
        writer = DocumentWriter(":memory:", indexed_fields)
        replaced = [0]
        for doc in documents:
            writer.append(replace(doc, metadata=_finite(doc.metadata, replaced)))
        if replaced[0]:
            logger.warning("%s: %d NaN or infinite metadata values read as null (JSON cannot hold them)", where,
                           replaced[0])
        return cls(writer.finish(close=False), writer.rows, where)

    def _query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        return list(self._rows(sql, params))

    def _rows(self, sql: str, params: Sequence[Any] = ()) -> Iterator[tuple[Any, ...]]:
        try:
            yield from self.connection.execute(sql, params)
        except sqlite3.OperationalError as exc:  # not damage: a failed query (a bug, a full disk...)
            raise LIRError(f"{self.where}: a query of the document store failed ({exc})") from exc
        except sqlite3.DatabaseError as exc:
            raise IndexCorruptedError(f"{self.where}: the document store cannot be read ({exc})") from exc

    # ------------------------------------------------------------- documents
    def documents(self, rows: Sequence[int]) -> list[Document]:
        """The documents at ``rows`` (in that order)."""
        found: dict[int, Document] = {}
        unique = sorted(set(int(r) for r in rows))
        for start in range(0, len(unique), QUERY_IDS):
            chunk = json.dumps(unique[start : start + QUERY_IDS])
            for row, *values in self._query(f"SELECT {_COLUMNS} FROM docs WHERE row IN (SELECT value FROM json_each(?))",
                                            (chunk,)):
                found[row] = _document(values)
        missing = [r for r in unique if r not in found]
        if missing:
            raise IndexCorruptedError(f"{self.where}: no document at row {missing[0]}")
        return [found[int(r)] for r in rows]

    def scan(self, start: int = 0) -> Iterator[tuple[int, Document]]:
        """(row, document) for every row from ``start``, in row order."""
        for row, *values in self._rows(f"SELECT {_COLUMNS} FROM docs WHERE row >= ? ORDER BY row", (start,)):
            yield row, _document(values)

    def rows_of(self, ids: Sequence[str]) -> dict[str, int]:
        """The row of each of ``ids`` this segment holds (deleted rows included)."""
        found: dict[str, int] = {}
        for start in range(0, len(ids), QUERY_PARAMS):
            chunk = ids[start : start + QUERY_PARAMS]
            found.update(self._query(f"SELECT id, row FROM docs WHERE id IN ({','.join('?' * len(chunk))})", chunk))
        return found

    def ids(self) -> Iterator[tuple[int, str]]:
        """(row, id) of every row, in row order."""
        return self._rows("SELECT row, id FROM docs ORDER BY row")

    # ------------------------------------------------------------- filters and counts
    def matching(self, compiled: CompiledFilter) -> np.ndarray:
        """(num_docs,) bool: the rows whose metadata ``compiled`` accepts."""
        mask = np.zeros(self.num_docs, dtype=bool)
        if compiled.sql is not None:
            rows = self._rows(f"SELECT row FROM docs WHERE {compiled.sql}", compiled.params)
            mask[np.fromiter((r for (r,) in rows), np.int64)] = True
        else:
            for row, metadata in self._rows("SELECT row, metadata FROM docs"):
                mask[row] = compiled.predicate(json.loads(metadata))
        return mask

    def flagged(self, column: str) -> list[tuple[int, int]]:
        """(row, value) of the rows where ``column`` (truncated_tokens or embedded) is not 0."""
        if column not in ("truncated_tokens", "embedded"):
            raise ValueError(column)
        return self._query(f"SELECT row, {column} FROM docs WHERE {column} != 0")

    def indexed_fields(self) -> set[str]:
        names = (n for (n,) in self._query("SELECT name FROM sqlite_master WHERE type = 'index'"))
        return {n[len("field:"):] for n in names if n.startswith("field:")}

    def check(self) -> None:
        """SQLite's own integrity check; IndexCorruptedError naming the database if it fails."""
        result = self._query("PRAGMA integrity_check")
        if result != [("ok",)]:
            raise IndexCorruptedError(f"{self.where}: integrity check failed: {result[:3]}")

    def copy_to(self, path: Path, indexed_fields: Sequence[str]) -> None:
        """Writes a copy of this store at ``path`` with indexes on ``indexed_fields``."""
        target = _connect(str(path))
        try:
            self.connection.backup(target)
            target.execute("PRAGMA journal_mode = OFF")
            create_field_indexes(target, indexed_fields)
        finally:
            target.close()


def _document(values: Sequence[Any]) -> Document:
    doc_id, metadata, truncated, embedded, passages, text = values
    return Document(doc_id, text, json.loads(metadata), truncated, bool(embedded),
                    None if passages is None else [tuple(p) for p in json.loads(passages)])


def _passages_json(doc: Document) -> str | None:
    return None if doc.passages is None else json.dumps([list(p) for p in doc.passages])


def metadata_json(metadata: Mapping[str, Any], what: str = "metadata") -> str:
    """The JSON text a document's metadata is stored as, or an InvalidInputError naming what in
    it the store cannot hold as Python compares it: a value that is not JSON (NaN and infinity
    included), a string or key with a NUL character, an integer beyond 64 bits (SQLite's JSON
    functions cut the one and read the other as a float)."""
    _check_storable(metadata, what)
    try:
        return json.dumps(metadata, ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise InvalidInputError(f"{what} is not JSON-serialisable ({exc})") from exc


def _check_storable(value: Any, what: str) -> None:
    if value is None or value.__class__ in (bool, float):
        return
    if isinstance(value, str):
        if "\x00" in value:
            raise InvalidInputError(f"{what} holds a NUL character, which the document store cannot compare")
    elif isinstance(value, int) and not isinstance(value, bool):
        if not INT64[0] <= value <= INT64[1]:
            raise InvalidInputError(f"{what} is an integer beyond 64 bits ({value}): store it as a string")
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _check_storable(item, f"{what}[{i}]")
    elif isinstance(value, (dict, Mapping)):  # dict first: the abstract check costs ten times more
        for key, item in value.items():
            _check_storable(key, f"{what} key {key!r}")
            _check_storable(item, f"{what}.{key}")


def _finite(value: Any, replaced: list[int]) -> Any:
    """``value`` with NaN and infinite floats as None (counted in ``replaced[0]``)."""
    if isinstance(value, float) and not math.isfinite(value):
        replaced[0] += 1
        return None
    if isinstance(value, Mapping):
        return {k: _finite(v, replaced) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v, replaced) for v in value]
    return value
