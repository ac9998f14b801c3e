"""Checks on the strings that enter lir_agent: each one must be text that UTF-8 can encode.

A Python ``str`` may hold a lone UTF-16 surrogate (U+D800..U+DFFF), as left by cutting an emoji
in half or by a JSON ``"\\ud83d"`` escape without its pair. That is not text: the tokenizer
refuses it and the index's UTF-8 files cannot store it. Such input is rejected with an
:class:`InvalidInputError` naming where it is, before anything is encoded or written.
"""

from __future__ import annotations

import os
from typing import Any, Mapping

from .errors import InvalidInputError


def _surrogate_error(what: str, value: str, position: int) -> InvalidInputError:
    return InvalidInputError(
        f"{what} holds a lone UTF-16 surrogate (U+{ord(value[position]):04X} at character {position}), which is "
        "not text; fix the input's encoding (an emoji cut in half, an unpaired \\ud83d-style escape, or bytes "
        "that are not UTF-8?)"
    )


def check_text(value: str, what: str) -> str:
    """``value`` if it is a string UTF-8 can encode, else an InvalidInputError naming ``what``
    (e.g. ``"document 'a' text"``, ``"query #2"``) and the first lone surrogate's position.

    An ASCII string passes in constant time; any other is encoded once (about 1 ms per MB, a
    fraction of a percent of what tokenizing it costs).
    """
    if not isinstance(value, str):
        raise InvalidInputError(f"{what} must be a string, got {type(value).__name__}")
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise _surrogate_error(what, value, exc.start) from None
    return value


def check_json(value: Any, what: str) -> Any:
    """``value``, a JSON-like value (metadata, a filter), if every string in it, dict keys
    included, passes :func:`check_text`; the error names the path to the bad string
    (``document 'a' metadata.author.name``, ``filter.$or[1].lang``, ``... metadata key 'x\\ud83d'``).
    Values other than strings, dicts, lists and tuples are left alone."""
    if isinstance(value, str):
        check_text(value, what)
    elif value is None or value.__class__ in (bool, int, float):
        pass
    elif isinstance(value, (dict, Mapping)):  # dict first: the abstract check costs ten times more
        for key, item in value.items():
            if isinstance(key, str):
                check_text(key, f"{what} key {key!r}")  # repr() escapes a surrogate: the message stays text
            check_json(item, f"{what}.{key}")
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            check_json(item, f"{what}[{i}]")
    return value


def check_path(path: str | os.PathLike, what: str) -> str | os.PathLike:
    """``path`` if the file system can encode it, else an InvalidInputError naming ``what``.
    Unlike :func:`check_text` this accepts U+DC80..U+DCFF, which stand for the undecodable bytes
    of a POSIX file name (``surrogateescape``); any other lone surrogate is refused."""
    try:
        os.fsencode(path)
    except UnicodeEncodeError as exc:
        raise _surrogate_error(what, os.fspath(path), exc.start) from None
    return path
