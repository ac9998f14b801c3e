"""LLM-driven multi-hop strategies: a model reads what the searches found and writes what to
search next. The model is any LangChain chat model, LlamaIndex LLM or ``str -> str`` callable
(:mod:`.models`); the prompts are in :mod:`.prompts` and replaceable with ``prompts=``.

* :class:`IRCoT`: Trivedi, Balasubramanian, Khot & Sabharwal, "Interleaving Retrieval with
  Chain-of-Thought Reasoning for Knowledge-Intensive Multi-Step Questions", ACL 2023: the
  question is searched, then each chain-of-thought sentence the model writes from the evidence
  so far is searched (with the question), until the model answers.
* :class:`Decomposition`: self-ask (Press, Zhang, Min, Schmidt, Smith & Lewis, "Measuring and
  Narrowing the Compositionality Gap in Language Models", Findings of EMNLP 2023): the model asks
  a sub-question, answers it from its evidence, and asks the next with that answer written in,
  until it gives the final answer. Its loop takes any :class:`Planner`.
* :class:`OracleDecomposition`: the same loop replaying gold decompositions (MuSiQue's
  ``question_decomposition``, :func:`oracle_plans`) through the real searches: the ceiling of
  the decomposition strategies, with no model.
* :class:`ReasoningExpansion`: HyDE (Gao, Ma, Lin & Callan, "Precise Zero-Shot Dense Retrieval
  without Relevance Labels", ACL 2023): the model writes a hypothetical answer passage; the
  question and the passage are searched and fused by reciprocal rank fusion, or searched as one
  query matrix stacked from both encodings (late interaction's own way to fuse).

The hop-by-hop strategies fuse like the LLM-free chained ones
(:meth:`~lir_agent.agentic.strategies.base.Run.hop`): later hops may return earlier documents,
the first hop's ``keep`` best stay on top. They stop on the session's budget (checked before the
model is asked for the next search), on a hop with nothing new, on the model's answer, or after
``max_hops`` searches. A model's malformed output never raises: a note goes into
``MultiHopResult.notes`` and the next hop's note, and where nothing usable is left the run stops
with ``STOP_BAD_OUTPUT``. A reply that says there is no answer yet ("unknown", "not enough
information", the prompt's ``<placeholder>`` echoed, false: :func:`~.models.nothing_to_none`)
is no answer.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Mapping, Protocol, Sequence

import torch

from ...corpus import read_jsonl
from ...errors import InvalidInputError
from ..session import SearchSession, SessionHit, _spent
from .base import (STOP_BAD_OUTPUT, STOP_BUDGET, STOP_DONE, STOP_MAX_HOPS, STOP_MODEL, MultiHopResult, Run,
                   Strategy, check_count, reciprocal_rank_fusion, stop_reason,
                   sentences as sentence_spans)
from .llm_free import condensed_context
from .models import ChatModel, Reply, nothing_to_none
from .prompts import NOTHING_YET, Prompts

# "... the answer is X" in a sentence, unless negated ("the answer is not in the evidence yet")
_THE_ANSWER_IS = re.compile(r"\bthe answer is\b:?\s*(?![:\s]*(?:not|unknown|unclear|uncertain|undetermined|missing|"
                            r"absent|still|yet)\b)(?P<answer>.+?)[\s.]*$", re.IGNORECASE | re.DOTALL)
_JSON_START = re.compile(r"\{\s*[\"']")  # a reply that tried to be JSON, unlike prose with a {brace}
_PLACEHOLDER = re.compile(r"#(\d+)")

SubQuestions = Sequence[tuple[str, "str | None"]]  # (sub-question, its answer when known), in order


class Thought(Reply):
    """IRCoT's step (:data:`~.prompts.IRCOT`)."""

    thought: str | None = None
    answer: str | None = None


class SelfAskStep(Reply):
    """Self-ask's step (:data:`~.prompts.DECOMPOSE`)."""

    answer_to_last: str | None = None
    next_question: str | None = None
    final_answer: str | None = None


def evidence_text(hits: Sequence[SessionHit], sentences: int) -> str:
    """One numbered line per hit, its title and its ``sentences`` best-matched sentences
    (:func:`~lir_agent.agentic.strategies.llm_free.condensed_context`); NOTHING_YET for none."""
    return "\n".join(f"[{n}] {condensed_context([hit], sentences)}" for n, hit in enumerate(hits, 1)) or NOTHING_YET


def _joined(*notes: str | None) -> str | None:
    return "; ".join(n for n in notes if n) or None


def _count(n: int, noun: str) -> str:
    """``n`` and ``noun``, plural unless n is 1: "1 hop", "2 hops"."""
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _budget_spent(session: SearchSession) -> str | None:
    """STOP_BUDGET with the session's reason to refuse a search (hops or tokens spent), or None:
    asked before a model is, so that no model call is spent on a search that cannot be made."""
    refusal = _spent(session.budget)
    return f"{STOP_BUDGET}: {refusal}" if refusal else None


class _Hops(Strategy):
    """Searches hop by hop: the first hop ``k`` documents, later ones ``k + keep`` with earlier
    documents allowed, fused by :meth:`~.base.Run.hop`; a model reads each hop's
    ``context_docs`` best documents, ``sentences`` sentences each (None: no model reads them).
    Raises InvalidInputError for a count below 1."""

    context_docs: int | None = None
    sentences: int | None = None

    def __init__(self, k: int, max_hops: int, keep: int, context_docs: int | None = None,
                 sentences: int | None = None):
        super().__init__(k)
        self.max_hops = check_count(self.name, "max_hops", max_hops)
        self.keep = check_count(self.name, "keep", keep)
        if context_docs is not None or sentences is not None:
            self.context_docs = check_count(self.name, "context_docs", context_docs)
            self.sentences = check_count(self.name, "sentences", sentences)

    def _limit(self, run: Run) -> str | None:
        """Why no further hop may be taken (``max_hops`` taken, the session's budget spent), or
        None; asked before the model is."""
        if len(run.hops) >= self.max_hops:
            return f"{STOP_MAX_HOPS}: {_count(self.max_hops, 'hop')}"
        return _budget_spent(run.session)

    def _hop(self, run: Run, ranked: list[str], query: str,
             note: str | None = None) -> tuple[list[str], list[SessionHit], str | None]:
        """Searches ``query``: (the fused ranking, the hop's ``context_docs`` best documents, a
        reason to stop or None)."""
        ranked, result, stopped = run.hop(ranked, query, self.keep, note)
        return ranked, result.hits[: self.context_docs], stopped


class IRCoT(_Hops):
    """IRCoT (see the module docstring). The first hop searches the question; then the model,
    given the question, the documents found so far (each hop's ``context_docs`` best) and its
    sentences so far, writes the next sentence (:data:`~.prompts.IRCOT`: ``{"thought",
    "answer"}``; a reply in prose, IRCoT's own format, counts with its first sentence), which the
    next hop searches: after the question (``with_question``) or alone (the paper). Stops when the
    model answers (also "... the answer is X" in a sentence), after ``max_hops`` searches, or as
    the module docstring says."""

    name = "ircot"
    needs_llm = True

    def __init__(self, llm: Any, k: int = 10, max_hops: int = 4, keep: int = 5, context_docs: int = 3,
                 sentences: int = 2, with_question: bool = True, prompts: Prompts | Mapping[str, str] | None = None):
        super().__init__(k, max_hops, keep, context_docs, sentences)
        self.model, self.prompts, self.with_question = ChatModel.wrap(llm), Prompts.of(prompts), with_question

    def run(self, question: str, session: SearchSession) -> MultiHopResult:
        run = Run(self, question, session)
        ranked, evidence, stopped = self._hop(run, [], question)
        thoughts: list[str] = []
        answer = None
        while stopped is None:
            if stopped := self._limit(run):
                break
            thought, answer, note = self._next(question, evidence, thoughts)
            if note:
                run.notes.append(note)
            if answer is not None:
                stopped = f"{STOP_MODEL}: the model answered after {_count(len(run.hops), 'hop')}"
                break
            if thought is None:
                stopped = f"{STOP_BAD_OUTPUT}: {note}"
                break
            thoughts.append(thought)
            query = f"{question} {thought}" if self.with_question else thought
            ranked, hits, stopped = self._hop(run, ranked, query, _joined(
                f"{'question + ' if self.with_question else ''}thought {len(thoughts)}", note))
            evidence += [h for h in hits if h.id not in {e.id for e in evidence}]
        return run.result(ranked, stopped, answer)

    def _next(self, question: str, evidence: Sequence[SessionHit],
              thoughts: Sequence[str]) -> tuple[str | None, str | None, str | None]:
        """The model's next step: (sentence, answer, note), each None when absent. A reply that
        is not JSON, nor cut-off JSON, is prose: its first sentence is the thought."""
        prompt = self.prompts.ircot.format(question=question, evidence=evidence_text(evidence, self.sentences),
                                           reasoning=" ".join(thoughts) or NOTHING_YET)
        reply, raw, note = self.model.structured(prompt, Thought)
        said = reply.thought if reply else None
        if reply is None and raw.strip() and not _JSON_START.search(raw):  # prose: IRCoT's own format
            said, (start, end) = raw, sentence_spans(raw)[0]
            reply = Thought(thought=raw[start:end])
            note = f"{note}; read the reply as the next sentence"
        if reply is None:
            return None, None, note
        stated = _THE_ANSWER_IS.search(said or "")
        answer = reply.answer or (nothing_to_none(stated["answer"]) if stated else None)
        if reply.thought is None and answer is None:
            note = _joined(note, "the model gave neither a thought nor an answer")
        return reply.thought, answer, note


@dataclass
class PlanStep:
    """What a :class:`Planner` says to do next: search ``question``, or stop (``stop``: a STOP_*
    reason and details) with ``answer``; ``answer_to_last``: the answer of the last sub-question;
    ``note``: what went wrong producing the step."""

    question: str | None = None
    answer_to_last: str | None = None
    stop: str | None = None
    answer: str | None = None
    note: str | None = None


class Planner(Protocol):
    """What drives :class:`Decomposition`'s loop."""

    def step(self, question: str, asked: SubQuestions, evidence: Sequence[SessionHit]) -> PlanStep:
        """The next step for ``question`` after the sub-questions ``asked`` (with their answers),
        given the last sub-question's best documents ([] before the first)."""
        ...


class ModelPlanner:
    """Self-ask by a model: :data:`~.prompts.DECOMPOSE` (``prompt``) asks it for the last
    sub-question's answer and the next sub-question or the final answer. Without a usable first
    sub-question (a final answer before any search included) the question itself is searched;
    an unusable later reply stops the run (STOP_BAD_OUTPUT)."""

    def __init__(self, model: ChatModel, prompt: str, sentences: int):
        self.model, self.prompt, self.sentences = model, prompt, sentences

    def step(self, question: str, asked: SubQuestions, evidence: Sequence[SessionHit]) -> PlanStep:
        steps = "\n".join(f"{n}. {q} -> {a or '?'}" for n, (q, a) in enumerate(asked, 1)) or NOTHING_YET
        prompt = self.prompt.format(question=question, steps=steps, evidence=evidence_text(evidence, self.sentences))
        reply, _, note = self.model.structured(prompt, SelfAskStep)
        last = reply.answer_to_last if reply else None
        if reply and reply.final_answer and asked:
            return PlanStep(answer_to_last=last, stop=f"{STOP_MODEL}: the model gave its final answer after "
                            f"{_count(len(asked), 'sub-question')}", answer=reply.final_answer, note=note)
        if reply and reply.next_question:
            return PlanStep(reply.next_question, last, note=note)
        if not asked:
            return PlanStep(question, note=_joined(note, "no first sub-question: searched the question itself"))
        note = note or "the model gave neither a next sub-question nor a final answer"
        return PlanStep(answer_to_last=last, stop=f"{STOP_BAD_OUTPUT}: {note}", note=note)


class OraclePlanner:
    """Replays gold decompositions: ``plans`` maps a question's text to its (sub-question,
    answer) steps (:func:`oracle_plans`); ``#n`` in a sub-question is replaced by step n's gold
    answer. A question without a plan is searched once, with a note."""

    def __init__(self, plans: Mapping[str, Sequence[tuple[str, str]]]):
        if not isinstance(plans, Mapping):
            raise InvalidInputError(f"plans: expected a dict question -> [(sub-question, answer)], "
                                    f"got {type(plans).__name__}")
        self.plans = plans

    def step(self, question: str, asked: SubQuestions, evidence: Sequence[SessionHit]) -> PlanStep:
        plan = self.plans.get(question.strip())
        if not plan:
            return (PlanStep(stop=f"{STOP_DONE}: no gold decomposition, one search") if asked else
                    PlanStep(question, note="no gold decomposition for this question: searched the question itself"))
        done = len(asked)
        last = plan[done - 1][1] if done else None
        if done == len(plan):
            return PlanStep(answer_to_last=last, stop=f"{STOP_DONE}: the whole gold plan searched "
                            f"({_count(done, 'sub-question')})", answer=last)
        return PlanStep(fill_placeholders(plan[done][0], [answer for _, answer in plan[:done]]), last)


def fill_placeholders(sub_question: str, answers: Sequence[str]) -> str:
    """``sub_question`` with each ``#n`` (MuSiQue's reference to step n) replaced by ``answers[n - 1]``;
    a reference to a step not in ``answers`` is left as it is."""
    return _PLACEHOLDER.sub(lambda m: answers[int(m[1]) - 1] if 1 <= int(m[1]) <= len(answers) else m[0],
                            sub_question)


def oracle_plans(queries_jsonl: str | Path) -> dict[str, list[tuple[str, str]]]:
    """The gold decompositions of a BEIR ``queries.jsonl`` whose records carry MuSiQue's
    ``metadata.question_decomposition`` (a list of ``{"question", "answer", ...}``), keyed by the
    query's text (what ``Strategy.run`` receives); queries without one are left out. Raises
    InvalidInputError for a decomposition that is not such a list."""
    plans = {}
    for record in read_jsonl(queries_jsonl):
        metadata = record.get("metadata")
        steps = metadata.get("question_decomposition") if isinstance(metadata, dict) else None
        if not steps:
            continue
        try:
            plans[str(record["text"]).strip()] = [(str(s["question"]), str(s["answer"])) for s in steps]
        except (TypeError, KeyError) as exc:
            raise InvalidInputError(f"{queries_jsonl}: query {record.get('_id')!r}: question_decomposition is not "
                                    f"a list of {{question, answer}} ({type(exc).__name__}: {exc})") from exc
    return plans


class _Planned(_Hops):
    """Decomposition's loop: each step of ``self.planner`` answers the last sub-question and
    names the next one, which a hop searches, or stops the run."""

    planner: Planner

    def run(self, question: str, session: SearchSession) -> MultiHopResult:
        run = Run(self, question, session)
        asked: list[tuple[str, str | None]] = []
        ranked: list[str] = []
        evidence: list[SessionHit] = []
        stopped = answer = None
        while stopped is None:
            if stopped := self._limit(run):
                break
            step = self.planner.step(question, asked, evidence)
            if step.note:
                run.notes.append(step.note)
            if asked and step.answer_to_last:
                asked[-1] = (asked[-1][0], step.answer_to_last)
            if step.stop:
                stopped, answer = step.stop, step.answer
                break
            asked.append((step.question, None))
            ranked, evidence, stopped = self._hop(run, ranked, step.question,
                                                  _joined(f"sub-question {len(asked)}", step.note))
        return run.result(ranked, stopped, answer)


class Decomposition(_Planned):
    """Self-ask (see the module docstring), driven by the model through :class:`ModelPlanner`;
    the model reads each sub-question's ``context_docs`` best documents. Stops on the model's
    final answer, after ``max_hops`` searches, or as the module docstring says."""

    name = "decompose"
    needs_llm = True

    def __init__(self, llm: Any, k: int = 10, max_hops: int = 4, keep: int = 5, context_docs: int = 3,
                 sentences: int = 2, prompts: Prompts | Mapping[str, str] | None = None):
        super().__init__(k, max_hops, keep, context_docs, sentences)
        self.planner = ModelPlanner(ChatModel.wrap(llm), Prompts.of(prompts).decompose, sentences)


class OracleDecomposition(_Planned):
    """Gold decompositions replayed through the real searches (:class:`OraclePlanner`): ``plans``
    from :func:`oracle_plans`. The answer is the last step's gold answer; stops with STOP_DONE
    when the plan is searched, or as the module docstring says."""

    name = "oracle"

    def __init__(self, plans: Mapping[str, Sequence[tuple[str, str]]], k: int = 10, max_hops: int = 4, keep: int = 5):
        super().__init__(k, max_hops, keep)
        self.planner = OraclePlanner(plans)


class ReasoningExpansion(Strategy):
    """HyDE with late interaction (see the module docstring): the model writes a passage that
    would answer the question (:data:`~.prompts.EXPAND`). ``fusion="rrf"``: the question and the
    passage are searched (the passage's search may return the question's documents) and their
    rankings fused by reciprocal rank fusion (constant ``rrf_k``); ``fusion="tokens"``: one search
    with the question's and the passage's query matrices stacked, so every token of both counts
    in one MaxSim score. An empty passage: the question alone is searched, with a note. A spent
    session budget stops the run before the model is called. Raises InvalidInputError for an
    unknown ``fusion`` or an ``rrf_k`` that is not a number > 0."""

    name = "expand"
    needs_llm = True

    def __init__(self, llm: Any, k: int = 10, fusion: Literal["rrf", "tokens"] = "rrf", rrf_k: int = 60,
                 prompts: Prompts | Mapping[str, str] | None = None):
        super().__init__(k)
        if fusion not in ("rrf", "tokens"):
            raise InvalidInputError(f"{self.name}: fusion must be 'rrf' or 'tokens', got {fusion!r}")
        if isinstance(rrf_k, bool) or not isinstance(rrf_k, (int, float)) or not 0 < rrf_k < float("inf"):
            raise InvalidInputError(f"{self.name}: rrf_k must be a number > 0, got {rrf_k!r}")
        self.model, self.prompts, self.fusion, self.rrf_k = ChatModel.wrap(llm), Prompts.of(prompts), fusion, rrf_k

    def run(self, question: str, session: SearchSession) -> MultiHopResult:
        run = Run(self, question, session)
        if stopped := _budget_spent(session):
            return run.result([], stopped)
        passage = " ".join(self.model.text(self.prompts.expand.format(question=question)).split())
        if not passage:
            run.notes.append(note := "the model wrote no passage: searched the question alone")
            first = run.search(question, self.k, note=note)
            return run.result([h.id for h in first.hits], stop_reason(first) or f"{STOP_BAD_OUTPUT}: {note}")
        if self.fusion == "tokens":
            matrices = session.index.encoder.encode_queries([question, passage])
            result = run.search(f"{question} {passage}", self.k, query_matrix=torch.cat(matrices),
                                note=f"one query matrix: question ({len(matrices[0])} rows) + passage "
                                     f"({len(matrices[1])} rows)")
            return run.result([h.id for h in result.hits],
                              stop_reason(result) or f"{STOP_DONE}: question and passage as one query matrix")
        first = run.search(question, self.k)
        stopped = stop_reason(first)
        if stopped:
            return run.result([h.id for h in first.hits], stopped)
        second = run.search(passage, self.k, include_seen=True, note="hypothetical passage (HyDE)")
        fused = reciprocal_rank_fusion([[h.id for h in first.hits], [h.id for h in second.hits]], self.rrf_k)
        return run.result(fused, stop_reason(second) or f"{STOP_DONE}: question and passage fused by RRF")
