"""Reading document collections: JSONL records or a folder of text files.

Encoding policy: input is UTF-8, strictly; one leading byte-order mark (U+FEFF) is dropped.
Bytes that do not decode as UTF-8, or that contain a NUL byte, are "not UTF-8 text": such a
file in a folder is skipped (and reported through ``on_skip``), or is an error with
``strict=True``; such a line of a JSONL file is an error naming the file and line. Files of a
folder whose suffix is not .txt/.md are skipped as "not .txt/.md", and files holding only
whitespace as "empty", strict or not. Hidden files and folders (names starting with ".", such
as .git or .venv) are not read.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from .errors import InvalidInputError

TEXT_SUFFIXES = (".txt", ".md")
NOT_TEXT = "not UTF-8 text"
NOT_TEXT_SUFFIX = "not .txt/.md"
EMPTY = "empty"


class NotTextError(InvalidInputError):
    """Bytes that are not UTF-8 text under the encoding policy; the message says where and why."""


@dataclass(frozen=True)
class SkippedFile:
    """A file of a folder that was not read: its path relative to the folder, the reason
    (``NOT_TEXT``, ``NOT_TEXT_SUFFIX`` or ``EMPTY``) and the reason with its details."""

    path: str
    reason: str
    detail: str


def decode_text(data: bytes) -> str:
    """Decodes bytes by the encoding policy; NotTextError (naming the offending byte) if they are
    not UTF-8 text."""
    if b"\x00" in data:
        raise NotTextError(f"{NOT_TEXT} (a NUL byte at offset {data.index(0)})")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise NotTextError(f"{NOT_TEXT} ({exc.reason}: byte 0x{data[exc.start]:02x} at offset {exc.start})") from None
    return text.removeprefix("\ufeff")


def read_jsonl(path: str | Path) -> Iterator[dict[str, Any]]:
    """Yields one dict per non-empty line; a bad line (not UTF-8 text, not JSON, not an object)
    raises an error naming file and line."""
    path = Path(path)
    with open(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            try:
                line = decode_text(raw)
            except NotTextError as exc:
                raise NotTextError(f"{path}:{number}: {exc}") from None
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise InvalidInputError(f"{path}:{number}: not valid JSON ({exc.msg})") from exc
            if not isinstance(record, dict):
                raise InvalidInputError(f"{path}:{number}: expected a JSON object")
            yield record


def _read_folder(folder: Path, strict: bool, on_skip: Callable[[SkippedFile], None]) -> Iterator[dict[str, Any]]:
    for file in sorted(p for p in folder.rglob("*") if p.is_file()):
        relative = file.relative_to(folder).as_posix()
        if any(part.startswith(".") for part in file.relative_to(folder).parts):
            continue
        if file.suffix.lower() not in TEXT_SUFFIXES:
            on_skip(SkippedFile(relative, NOT_TEXT_SUFFIX, NOT_TEXT_SUFFIX))
            continue
        try:
            text = decode_text(file.read_bytes())
        except NotTextError as exc:
            if strict:
                raise NotTextError(f"{file}: {exc}") from None
            on_skip(SkippedFile(relative, NOT_TEXT, str(exc)))
            continue
        if not text.strip():
            on_skip(SkippedFile(relative, EMPTY, EMPTY))
            continue
        yield {"id": relative, "text": text, "metadata": {"path": relative}}


def _read_records(path: Path) -> Iterator[dict[str, Any]]:
    for record in read_jsonl(path):
        doc_id = record.get("_id", record.get("id"))
        yield {"id": None if doc_id is None else str(doc_id), "text": record.get("text"),
               "title": record.get("title"), "metadata": record.get("metadata") or {}}


def read_documents(path: str | Path, *, strict: bool = False,
                   on_skip: Callable[[SkippedFile], None] | None = None) -> Iterator[dict[str, Any]]:
    """Documents from a JSONL file (``{"_id" or "id", "text", "title"?, "metadata"?}``, BEIR's
    corpus.jsonl as is) or from a folder of .txt/.md files (id = path relative to the folder).

    The path is checked at once; the documents are read as they are iterated. Files of a folder
    that are skipped (see the module's encoding policy) are passed to ``on_skip``; with
    ``strict=True`` a .txt/.md file that is not UTF-8 text raises NotTextError instead.
    """
    path = Path(path)
    if path.is_dir():
        return _read_folder(path, strict, on_skip or (lambda skipped: None))
    if path.is_file():
        return _read_records(path)
    if not path.exists():
        raise InvalidInputError(f"{path} does not exist")
    raise InvalidInputError(f"{path} is neither a JSONL file nor a folder")
