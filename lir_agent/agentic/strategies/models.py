"""One way for a strategy to call any model: :meth:`ChatModel.wrap` takes a LangChain chat model,
a LlamaIndex LLM or a plain ``str -> str`` callable.

* ``text(prompt) -> str``: one user message, the reply's text.
* ``structured(prompt, schema) -> (reply | None, raw text, note | None)``: the reply as the
  pydantic ``schema``. The model's own structured output is used where it has one: LangChain's
  ``with_structured_output(schema, method="json_schema")`` (the method llama.cpp's
  OpenAI-compatible server constrains by grammar; its ``function_calling`` does not work there),
  LlamaIndex's ``structured_predict`` for function-calling LLMs. Where the model has none, or it
  fails as unsupported or unparsable (:func:`structured_unsupported`; the adapter then asks for
  text only), the reply's text is parsed by :func:`first_json_object`. Malformed output never
  raises: the reply is None and the note says why. Errors of the model call itself (connection,
  timeout, server, rate limit) propagate, and leave structured output on.

A reply's value that says there is no answer reads as None (:func:`nothing_to_none`).

Neither LangChain nor LlamaIndex is imported here unless such a model is passed: models are
recognised by their methods (``invoke``; ``chat`` and ``complete``).
"""

from __future__ import annotations

import ast
import json
import re
from abc import ABC, abstractmethod
from typing import Any, Collection, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from ...errors import InvalidInputError, describe_validation_error

NOTE_CHARS = 160  # the most characters of a model's reply or an error a note quotes
_WHERE = r"(?:in|from|with|given|based on) the (?:evidence|context|documents|passages|information|text)"
_NON_ANSWER = re.compile(  # what models write for "no answer", matched whole (see nothing_to_none)
    r"(?:<[^<>]*>"  # the prompt's placeholder echoed: "<the short answer, or null>"
    r"|null|none|nil|n/?a|tbd|unknown|not known|unclear|uncertain|not yet|no answer|no idea|not sure"
    r"|i don'?t know|not (?:found|given|stated|mentioned|available|provided)|not " + _WHERE +
    r"|(?:there is )?(?:not enough|not sufficient|insufficient|no) (?:information|info|evidence|context|data)"
    r"|(?:it )?(?:cannot|can ?not|can'?t|could not|couldn'?t) be (?:determined|answered|found|known|inferred))"
    r"(?: (?:yet|so far|for now|to answer(?: the question)?|" + _WHERE + "))*", re.IGNORECASE)
_PUNCTUATION = " \t\n.,;:!?'\"`*_()[]"  # stripped around a value before it is matched
_JSON_NAMES = {"true": "True", "false": "False", "null": "None"}
_STRING_OR_NAME = re.compile(r"(\"(?:\\.|[^\"\\])*\"|'(?:\\.|[^'\\])*')|\b(true|false|null)\b")

R = TypeVar("R", bound="Reply")


def nothing_to_none(text: str) -> str | None:
    """``text`` stripped, or None when it says there is no answer: blank, a
    placeholder in angle brackets, or, whole and with the punctuation around it ignored, a
    phrase such as "null", "none (yet)", "n/a", "unknown", "not known", "unclear", "no answer",
    "not found", "not enough information", "cannot be determined", "not in the evidence", which
    may end in "yet", "so far", "for now", "to answer" or "in/from the evidence/context/..." (``_NON_ANSWER``)."""
    text = text.strip()
    bare = " ".join(text.split()).strip(_PUNCTUATION)
    return None if not bare or _NON_ANSWER.fullmatch(bare) else text


class Reply(BaseModel):
    """Base of the structured replies strategies ask for: fields are optional; a string that says
    there is no answer (:func:`nothing_to_none`) reads as None, and so do false, 0 and an empty
    list or object (what small models write for null); another number reads as text."""

    model_config = ConfigDict(coerce_numbers_to_str=True)

    @field_validator("*", mode="before")
    @classmethod
    def _nothing_is_none(cls, value: Any) -> Any:
        if isinstance(value, str):
            return nothing_to_none(value)
        return None if not value and isinstance(value, (bool, int, float, list, dict)) else value


def first_json_object(text: str, fields: Collection[str] = ()) -> dict[str, Any] | None:
    """The first ``{...}`` of ``text`` that reads as a JSON object, or as a Python dict literal
    (single quotes, True/False/None, trailing commas), and has one of ``fields`` as a key (when
    none does, or no ``fields`` are given: the first such object at all); objects nested in
    others count. Prose, code fences and braces that open no such object are skipped. None when
    there is none (a cut reply has none)."""
    first = None
    start = text.find("{")
    while start != -1:
        end = _closing_brace(text, start)
        value = None if end is None else _loads(text[start : end + 1])
        if isinstance(value, dict):
            if not fields or not value.keys().isdisjoint(fields):
                return value
            first = value if first is None else first
        start = text.find("{", start + 1)
    return first


def parse_reply(text: str, schema: type[R]) -> tuple[R | None, str | None]:
    """``text``'s first JSON object with a field of ``schema`` (:func:`first_json_object`) as
    ``schema``: (reply, None), or (None, a note saying why not)."""
    found = first_json_object(text, schema.model_fields)
    if found is None:
        return None, f"no JSON object in the model's reply {_quote(text)}"
    try:
        return schema.model_validate(found), None
    except ValidationError as exc:
        return None, f"the model's JSON does not fit {schema.__name__} ({describe_validation_error(exc)}): {_quote(text)}"


def structured_unsupported(exc: Exception) -> bool:
    """Whether ``exc``, raised by a model's structured output, says that it is unsupported or
    that its reply could not be parsed (NotImplementedError, AttributeError, TypeError,
    ValueError: pydantic's ValidationError, json's JSONDecodeError and LangChain's
    OutputParserException are ValueErrors; an HTTP 400 or 422 reply: the server refused the
    request's schema) rather than that the call itself failed: an OSError (connections,
    timeouts), another HTTP status (server errors, rate limits), or a class named for a
    connection, a timeout, a transport or the network (httpx's, openai's). Told by duck typing: ``status_code`` on the
    error or its ``response``, class names; no client library is imported."""
    status = getattr(exc, "status_code", None) or getattr(getattr(exc, "response", None), "status_code", None)
    if isinstance(status, int):
        return status in (400, 422)
    if isinstance(exc, OSError) or any(word in cls.__name__ for cls in type(exc).__mro__
                                       for word in ("Connect", "Timeout", "Transport", "Network")):
        return False
    return isinstance(exc, (NotImplementedError, AttributeError, TypeError, ValueError))


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
        The note says what went wrong: structured output unsupported or unparsable (after which
        text is asked for, now and from then on), a reply cut at the model's token limit (openai's
        ``LengthFinishReasonError``: no reply this time), no JSON in the text, JSON that does not
        fit ``schema``. Raises what the model call raises otherwise (:func:`structured_unsupported`)."""
        failed = None
        if self._structured:
            try:
                reply, raw = self._structured_reply(prompt, schema)
            except Exception as exc:
                if "FinishReason" in type(exc).__name__:  # openai's: the reply was cut (length) or withheld
                    return None, "", f"the model's reply was not finished ({type(exc).__name__}: {_quote(str(exc))})"
                if not structured_unsupported(exc):
                    raise
                self._structured = False  # unsupported: text from now on
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
