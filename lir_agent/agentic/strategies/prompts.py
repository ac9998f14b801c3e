"""Every prompt the LLM-driven strategies (:mod:`.llm_driven`) send, as ``str.format`` templates.

Each is one user message. The structured ones end by asking for one JSON object with the keys
the strategy reads; the model's reply is parsed by :mod:`.models` (the model's own structured
output where it has one, else the first JSON object of its text that has one of the keys). Keys
a reply leaves out, or fills with ``null``, false, nothing, or words for no answer ("none",
"unknown", "not enough information", the template's own ``<placeholder>``:
:func:`~.models.nothing_to_none`), read as absent.

Replace any of them with ``prompts=`` (a :class:`Prompts` or a dict keyed by its field names)
on a strategy; a replacement may use only its template's fields, and braces that are meant
literally (a JSON example) are doubled, as in ``{{"thought": ...}}``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from string import Formatter
from typing import ClassVar, Mapping

from ...errors import InvalidInputError

NOTHING_YET = "(none yet)"  # what a template's list field holds before there is anything in it

IRCOT = """You answer a question that needs several facts, one reasoning step at a time. \
After each step a search engine retrieves more evidence for you.

Question: {question}

Evidence retrieved so far:
{evidence}

Your reasoning so far:
{reasoning}

Write the next reasoning step: one short sentence that states a fact the evidence gives or names \
what has to be found next. If the evidence is enough to answer, also give the short answer.
Reply with one JSON object: {{"thought": "<the next sentence>", "answer": "<the short answer, or null>"}}"""
"""IRCoT's step (Trivedi et al., ACL 2023): the next chain-of-thought sentence, or the answer.
Fields: ``question``; ``evidence`` (one numbered line per document: title and the sentences the
search matched); ``reasoning`` (the sentences written so far). Reply keys: ``thought``,
``answer``."""

DECOMPOSE = """You answer a complex question by asking simpler sub-questions, one at a time; \
a search engine finds evidence for each.

Question: {question}

Sub-questions so far, with their answers:
{steps}

Evidence found for the last sub-question:
{evidence}

Reply with one JSON object with the keys
"answer_to_last": the short answer to the last sub-question, from its evidence (null if none was asked yet),
"next_question": the next sub-question, with the answers found so far written into it (null when you can answer),
"final_answer": the short answer to the question once you know it, else null."""
"""Self-ask's step (Press et al., "Measuring and Narrowing the Compositionality Gap in Language
Models", Findings of EMNLP 2023): answer the last sub-question, then ask the next one or give the
final answer. Fields: ``question``; ``steps`` (one numbered line per sub-question with its
answer, "?" when it has none); ``evidence`` (as in :data:`IRCOT`, for the last sub-question).
Reply keys: ``answer_to_last``, ``next_question``, ``final_answer``."""

EXPAND = """Write a short passage (two or three sentences) that answers the question below, the \
way an encyclopedia would, naming the people, places and works it involves. If you are not sure \
of the facts, write the most plausible ones: the passage is only used to search.

Question: {question}

Passage:"""
"""HyDE's hypothetical document (Gao et al., "Precise Zero-Shot Dense Retrieval without Relevance
Labels", ACL 2023), written with the reasoning that leads to it. Field: ``question``. Plain text
reply."""


@dataclass(frozen=True)
class Prompts:
    """The prompts one strategy uses; ``Prompts.of({"ircot": "..."})`` replaces some."""

    ircot: str = IRCOT
    decompose: str = DECOMPOSE
    expand: str = EXPAND

    FIELDS: ClassVar[dict[str, set[str]]] = {"ircot": {"question", "evidence", "reasoning"},
                                             "decompose": {"question", "steps", "evidence"}, "expand": {"question"}}

    @classmethod
    def of(cls, overrides: "Prompts | Mapping[str, str] | None") -> "Prompts":
        """The default prompts with ``overrides`` (None: none). Raises InvalidInputError for an
        unknown prompt name, a template that is not a string, or one that uses a field its
        prompt does not have (or a single brace that str.format cannot read)."""
        if overrides is None or isinstance(overrides, Prompts):
            prompts = overrides or cls()
        elif isinstance(overrides, Mapping):
            unknown = set(overrides) - set(cls.FIELDS)
            if unknown:
                raise InvalidInputError(f"prompts: unknown prompt {sorted(unknown)}; known: {sorted(cls.FIELDS)}")
            prompts = replace(cls(), **overrides)
        else:
            raise InvalidInputError(f"prompts: expected a Prompts or a dict, got {type(overrides).__name__}")
        for name, allowed in cls.FIELDS.items():
            template = getattr(prompts, name)
            if not isinstance(template, str):
                raise InvalidInputError(f"prompts.{name}: expected a str.format template, got {type(template).__name__}")
            try:
                used = {field for _, field, _, _ in Formatter().parse(template) if field is not None}
            except ValueError as exc:
                raise InvalidInputError(f"prompts.{name}: {exc} (double literal braces: {{{{ }}}})") from exc
            if not used <= allowed:
                raise InvalidInputError(f"prompts.{name}: unknown fields {sorted(used - allowed)}; "
                                        f"its fields are {sorted(allowed)}")
        return prompts
