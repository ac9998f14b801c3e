"""Reading document collections: JSONL records or a folder of text files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

from .errors import InvalidInputError

TEXT_SUFFIXES = (".txt", ".md")


def read_jsonl(path: str | Path) -> Iterator[dict[str, Any]]:
    """Yields one dict per non-empty line; a bad line raises an error naming file and line."""
    path = Path(path)
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise InvalidInputError(f"{path}:{number}: not valid JSON ({exc.msg})") from exc
            if not isinstance(record, dict):
                raise InvalidInputError(f"{path}:{number}: expected a JSON object")
            yield record


def read_documents(path: str | Path) -> Iterator[dict[str, Any]]:
    """Documents from a JSONL file (``{"_id" or "id", "text", "title"?, "metadata"?}``, BEIR's
    corpus.jsonl as is) or from a folder of .txt/.md files (id = path relative to the folder)."""
    path = Path(path)
    if path.is_dir():
        for file in sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in TEXT_SUFFIXES):
            relative = file.relative_to(path).as_posix()
            yield {"id": relative, "text": file.read_text(encoding="utf-8", errors="replace"),
                   "metadata": {"path": relative}}
    elif path.is_file():
        for record in read_jsonl(path):
            doc_id = record.get("_id", record.get("id"))
            yield {"id": None if doc_id is None else str(doc_id), "text": record.get("text"),
                   "title": record.get("title"), "metadata": record.get("metadata") or {}}
    else:
        raise InvalidInputError(f"{path} is neither a JSONL file nor a folder")
