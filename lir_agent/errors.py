"""Exceptions raised by lir_agent. Every one names what was wrong."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pydantic import ValidationError


class LIRError(Exception):
    """Base class of every error lir_agent raises on purpose."""


class InvalidInputError(LIRError, ValueError):
    """An argument (query, document, embedding, k, filter...) is not acceptable."""


class DuplicateIdError(InvalidInputError):
    """An id appears twice in one call, or already exists and upsert was not asked for."""


class DocumentNotFoundError(LIRError, KeyError):
    """An id that the index does not hold was named."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class NotAnIndexError(LIRError):
    """A path that holds no lir_agent index was opened."""


class IndexCorruptedError(LIRError):
    """A file of an index is missing, truncated or unreadable; the message names it."""


class EncoderMismatchError(LIRError):
    """An index was opened with an encoder whose settings differ from the ones it was built with."""


def describe_validation_error(error: "ValidationError") -> str:
    """Each problem of a pydantic validation error as ``argument.path: message``, joined by "; "."""
    return "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'arguments'}: {e['msg']}" for e in error.errors())
