"""One way for a strategy to call any model: :meth:`ChatModel.wrap` takes a LangChain chat model,
a LlamaIndex LLM or a plain ``str -> str`` callable.

* ``text(prompt) -> str``: one user message, the reply's text.
* ``structured(prompt, schema) -> (reply | None, raw text, note | None)``: the reply as the
  pydantic ``schema``. The model's own structured output is used where it has one: LangChain's
  ``with_structured_output(schema, method="json_schema")`` (the method llama.cpp's
  OpenAI-compatible server constrains by grammar; its ``function_calling`` does not work there),
  LlamaIndex's ``structured_predict`` for function-calling LLMs. Where that fails (any exception,
  after which this adapter asks for text only) or the model has none, the reply's text is parsed
  by :func:`first_json_object`. Malformed output never raises: the reply is None and the note
  says why. Errors of the model call itself (network, server) propagate.

Neither LangChain nor LlamaIndex is imported here unless such a model is passed: models are
recognised by their methods (``invoke``; ``chat`` and ``complete``).
"""

from __future__ import annotations

import ast
import json
import re
from abc import ABC, abstractmethod
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from ...errors import InvalidInputError

NOTE_CHARS = 160  # the most characters of a model's reply or an error a note quotes
_NOTHING = {"", "null", "none", "n/a", "unknown"}
_JSON_NAMES = {"true": "True", "false": "False", "null": "None"}
_STRING_OR_NAME = re.compile(r"(\"(?:\\.|[^\"\\])*\"|'(?:\\.|[^'\\])*')|\b(true|false|null)\b")

R = TypeVar("R", bound="Reply")


class Reply(BaseModel):
    """Base of the structured replies strategies ask for: fields are optional; a blank string or
    a word for nothing ("null", "none", "n/a", "unknown") reads as None; a number reads as text."""

    model_config = ConfigDict(coerce_numbers_to_str=True)

    @field_validator("*", mode="before")
    @classmethod
    def _nothing_is_none(cls, value: Any) -> Any:
        if isinstance(value, str):
            return None if value.strip().lower() in _NOTHING else value.strip()
        return value


def first_json_object(text: str) -> dict[str, Any] | None:
    """The first ``{...}`` of ``text`` that reads as a JSON object, or as a Python dict literal
    (single quotes, True/False/None, trailing commas); prose, code fences and braces that open
    no such object are skipped. None when there is none (a cut reply has none)."""
    start = text.find("{")
    while start != -1:
        end = _closing_brace(text, start)
        value = None if end is None else _loads(text[start : end + 1])
        if isinstance(value, dict):
            return value
        start = text.find("{", start + 1)
    return None


def parse_reply(text: str, schema: type[R]) -> tuple[R | None, str | None]:
    """``text``'s first JSON object as ``schema``: (reply, None), or (None, a note saying why not)."""
    found = first_json_object(text)
    if found is None:
        return None, f"no JSON object in the model's reply {_quote(text)}"
    try:
        return schema.model_validate(found), None
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        return None, f"the model's JSON does not fit {schema.__name__} ({problems}): {_quote(text)}"


class ChatModel(ABC):
    """A model a strategy calls (see the module docstring); make one with :meth:`wrap`."""

    def __init__(self, llm: Any, structured: bool):
        self.llm = llm
        self._structured = structured  # whether to try the model's own structured output

    @classmethod
    def wrap(cls, llm: Any) -> "ChatModel":
        """``llm`` as a ChatModel: a LangChain chat model (or runnable: anything with ``invoke``),
        a LlamaIndex LLM (``chat`` and ``complete``), a callable ``str -> str``, or a ChatModel
        (returned as is). Raises InvalidInputError for anything else."""
        if isinstance(llm, ChatModel):
            return llm
        if hasattr(llm, "invoke"):
            return _LangChain(llm, structured=True)
        if hasattr(llm, "chat") and hasattr(llm, "complete"):
            metadata = getattr(llm, "metadata", None)
            return _LlamaIndex(llm, structured=bool(getattr(metadata, "is_function_calling_model", False)))
        if callable(llm):
            return _Callable(llm, structured=False)
        raise InvalidInputError(f"llm: expected a LangChain chat model, a LlamaIndex LLM or a callable str -> str, "
                                f"got {type(llm).__name__}")

    @abstractmethod
    def text(self, prompt: str) -> str:
        """The model's reply to the user message ``prompt``, as text."""

    def _structured_reply(self, prompt: str, schema: type[R]) -> tuple[R | None, str]:
        """The model's own structured output: (reply or None when it could not parse, raw text);
        only called when the model has one."""
        raise NotImplementedError

    def structured(self, prompt: str, schema: type[R]) -> tuple[R | None, str, str | None]:
        """The reply to ``prompt`` as ``schema``: (reply or None, the raw text, a note or None).
        The note says what went wrong: structured output failing (after which text is asked
        for), no JSON in the text, JSON that does not fit ``schema``."""
        failed = None
        if self._structured:
            try:
                reply, raw = self._structured_reply(prompt, schema)
            except Exception as exc:  # noqa: BLE001  (any failure: fall back to text, once and for all)
                self._structured = False
                failed = f"structured output failed ({type(exc).__name__}: {_quote(str(exc))}); parsed text instead"
            else:
                if reply is not None:
                    return reply, raw, None
                reply, note = parse_reply(raw, schema)  # the model's parser failed; ours is more lenient
                return reply, raw, note
        raw = self.text(prompt)
        reply, note = parse_reply(raw, schema)
        return reply, raw, "; ".join(n for n in (failed, note) if n) or None


class _LangChain(ChatModel):
    def text(self, prompt: str) -> str:
        return _text_of(self.llm.invoke(prompt))

    def _structured_reply(self, prompt: str, schema: type[R]) -> tuple[R | None, str]:
        out = self.llm.with_structured_output(schema, method="json_schema", include_raw=True).invoke(prompt)
        parsed = out.get("parsed")
        return (parsed if isinstance(parsed, schema) else None), _text_of(out.get("raw"))


class _LlamaIndex(ChatModel):
    def text(self, prompt: str) -> str:
        from llama_index.core.llms import ChatMessage

        return _text_of(self.llm.chat([ChatMessage(role="user", content=prompt)]).message)

    def _structured_reply(self, prompt: str, schema: type[R]) -> tuple[R | None, str]:
        from llama_index.core.prompts import PromptTemplate

        reply = self.llm.structured_predict(schema, PromptTemplate("{message}"), message=prompt)
        return (reply, reply.model_dump_json()) if isinstance(reply, schema) else (None, str(reply))


class _Callable(ChatModel):
    def text(self, prompt: str) -> str:
        return _text_of(self.llm(prompt))


def _text_of(message: Any) -> str:
    """The text of a reply: a string, or a message whose ``content`` is a string or a list of
    content blocks (LangChain); "" for None."""
    content = getattr(message, "content", message)
    if isinstance(content, list):
        content = "".join(b if isinstance(b, str) else str(b.get("text", "")) for b in content
                          if isinstance(b, (str, dict)))
    return "" if content is None else str(content)


def _quote(text: str) -> str:
    text = " ".join(text.split())
    return repr(text if len(text) <= NOTE_CHARS else text[:NOTE_CHARS] + "...")


def _closing_brace(text: str, start: int) -> int | None:
    """The index of the brace closing the one at ``start`` (braces in quoted strings skipped)."""
    depth, quote, escaped = 0, None, False
    for i in range(start, len(text)):
        char = text[i]
        if quote:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == quote:
                quote = None
        elif char in "\"'":
            quote = char
        elif char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
            if depth == 0:
                return i
    return None


def _loads(candidate: str) -> Any:
    """JSON (control characters allowed in strings), else a Python literal with JSON's names."""
    try:
        return json.loads(candidate, strict=False)
    except json.JSONDecodeError:
        pass
    python = _STRING_OR_NAME.sub(lambda m: m.group(1) or _JSON_NAMES[m.group(2)], candidate)
    try:
        return ast.literal_eval(python)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return None
