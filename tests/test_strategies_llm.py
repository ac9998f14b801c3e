"""LLM-driven strategies (IRCoT, self-ask, the gold-decomposition oracle, HyDE) driven by scripted
fake models through the real loop on a small real index: the queries actually issued, the fused
and deduplicated evidence, the stop conditions, malformed model output turned into notes; and
the model adapter's structured-output paths and fallbacks."""

import json
import subprocess
import sys
from typing import Any

import pytest
import torch
from pydantic import Field, ValidationError

from lir_agent import Index, InvalidInputError
from lir_agent.agentic import SearchSession
from lir_agent.agentic.strategies import (STRATEGIES, ChatModel, Decomposition, IRCoT, OracleDecomposition, Prompts,
                                          ReasoningExpansion, make_strategy, oracle_plans)
from lir_agent.agentic.strategies.base import (STOP_BAD_OUTPUT, STOP_BUDGET, STOP_DONE, STOP_MAX_HOPS, STOP_MODEL,
                                               STOP_NOVELTY, interleave)
from lir_agent.agentic.strategies.llm_driven import Thought, fill_placeholders
from lir_agent.agentic.strategies.models import first_json_object, nothing_to_none, parse_reply

pytest.importorskip("langchain_core")
pytest.importorskip("llama_index.core")

from langchain_core.language_models.fake_chat_models import GenericFakeChatModel  # noqa: E402
from langchain_core.messages import AIMessage  # noqa: E402
from langchain_core.runnables import RunnableLambda  # noqa: E402
from llama_index.core.llms import CompletionResponse, CustomLLM, LLMMetadata, MockLLM  # noqa: E402
from llama_index.core.llms.callbacks import llm_completion_callback  # noqa: E402

# A two-hop chain (journal -> society -> its first president) and a parallel chain as distractors.
DOCS = [
    ("journal", "Journal of Tidal Studies",
     "The Journal of Tidal Studies is a quarterly journal published by the Marsh Harbour Society."),
    ("society", "Marsh Harbour Society",
     "The Marsh Harbour Society is a learned society founded in 1871. Its first president was Eleanor Quill."),
    ("review", "Alpine Botany Review", "The Alpine Botany Review is published by the Mountain Flora Club."),
    ("club", "Mountain Flora Club", "The Mountain Flora Club was founded in 1902. Its first president was Tomas Reed."),
    ("quill", "Eleanor Quill", "Eleanor Quill was a marine biologist who studied tides and estuaries."),
    ("harbour", "Marsh Harbour", "Marsh Harbour is a town on an island with a busy ferry port."),
    ("rome", "Rome", "Rome is the capital of Italy."),
    ("bulletin", "Desert Geology Bulletin", "The Desert Geology Bulletin is edited in Cairo by volunteers."),
]
GOLD = {"journal", "society"}
QUESTION = "Who was the first president of the society that publishes the Journal of Tidal Studies?"
SUB_1 = "Who publishes the Journal of Tidal Studies?"
SUB_2 = "Who was the first president of the Marsh Harbour Society?"
THOUGHT = "The Journal of Tidal Studies is published by the Marsh Harbour Society."


@pytest.fixture(scope="module")
def index(tmp_path_factory, encoder):
    path = tmp_path_factory.mktemp("chain") / "index"
    index = Index.create(path, encoder, index_type="exact")
    index.add([{"id": i, "text": text, "metadata": {"title": title}} for i, title, text in DOCS])
    return index


# ---------------------------------------------------------------- scripted models
class ScriptedChat(GenericFakeChatModel):
    """LangChain's GenericFakeChatModel (no structured output: its with_structured_output raises
    NotImplementedError), recording the prompts it was sent."""

    prompts: list[str] = Field(default_factory=list)

    def _generate(self, messages, stop=None, run_manager=None, **kwargs):
        self.prompts.append(messages[-1].content)
        return super()._generate(messages, stop=stop, run_manager=run_manager, **kwargs)


class StructuredChat(ScriptedChat):
    """A scripted chat model with structured output, as ChatOpenAI's json_schema method behaves
    with include_raw=True; ``failures``: exceptions its next structured calls raise (before any
    reply), one per call."""

    methods: list[str] = Field(default_factory=list)
    failures: list[Any] = Field(default_factory=list)

    def with_structured_output(self, schema, *, include_raw=False, method="function_calling", **kwargs):
        self.methods.append(method)

        def call(prompt):
            if self.failures:
                raise self.failures.pop(0)
            raw = self.invoke(prompt)
            try:
                return {"raw": raw, "parsed": schema.model_validate_json(raw.content), "parsing_error": None}
            except ValidationError as exc:
                return {"raw": raw, "parsed": None, "parsing_error": exc}

        return RunnableLambda(call)


def chat(*replies: str, structured: bool = False, **options: Any) -> ScriptedChat:
    cls = StructuredChat if structured else ScriptedChat
    return cls(messages=iter([AIMessage(content=r) for r in replies]), **options)


class ScriptedLLM(CustomLLM):
    """A LlamaIndex LLM answering from a script, recording its prompts; ``function_calling``:
    what its metadata says (the adapter then tries structured_predict)."""

    replies: list[str]
    prompts: list[str] = Field(default_factory=list)
    function_calling: bool = False

    @property
    def metadata(self) -> LLMMetadata:
        return LLMMetadata(is_function_calling_model=self.function_calling)

    @llm_completion_callback()
    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        self.prompts.append(prompt)
        return CompletionResponse(text=self.replies.pop(0))

    @llm_completion_callback()
    def stream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any):
        raise NotImplementedError


class StructuredLLM(ScriptedLLM):
    """A function-calling LlamaIndex LLM whose structured_predict validates the scripted reply."""

    function_calling: bool = True

    def structured_predict(self, output_cls, prompt, llm_kwargs=None, **prompt_args):
        self.prompts.append(prompt.format(**prompt_args))
        return output_cls.model_validate_json(self.replies.pop(0))


class Scripted:
    """A plain callable str -> str answering from a script, recording its prompts."""

    def __init__(self, *replies: str):
        self.replies, self.prompts = list(replies), []

    def __call__(self, prompt: str) -> str:
        self.prompts.append(prompt)
        return self.replies.pop(0)


def step(**fields: Any) -> str:
    return json.dumps(fields)


def api_error(name: str, status: int | None = None) -> Exception:
    """An exception like an HTTP client's (openai's, httpx's): a class called ``name`` with
    ``status_code`` when ``status`` is given."""
    error = type(name, (Exception,), {})(f"{status or ''} {name}")
    if status is not None:
        error.status_code = status
    return error


def queries(session):
    return [(e.query, e.include_seen) for e in session.trace]


def hand_fused(session, keep):
    """The placement fusion of the strategies, from the session's trace."""
    ranked = []
    for event in session.trace:
        top = set(ranked[:keep])
        ranked = interleave(ranked, [i for i in event.ids if i not in top], keep)
    return ranked


# ---------------------------------------------------------------- the adapter
@pytest.mark.parametrize("text, expected", [
    ('```json\n{"thought": "a {b}", "answer": null}\n```\nThat is my step.', {"thought": "a {b}", "answer": None}),
    ("Sure! {'thought': 'x', 'answer': None,} Hope it helps.", {"thought": "x", "answer": None}),
    ("{'thought': 'a true story', 'answer': null}", {"thought": "a true story", "answer": None}),
    ('prose {not json} then {"answer": "Y\'s president"}', {"answer": "Y's president"}),
    ('{"thought": "two\nlines"}', {"thought": "two\nlines"}),
    ('{"thought": "cut off', None),
    ("no object at all", None),
])
def test_first_json_object_reads_what_small_models_write(text, expected):
    assert first_json_object(text) == expected


@pytest.mark.parametrize("text, expected", [
    ('{"a": {"b": 1}} then {"thought": "x"}', {"thought": "x"}),  # the first object lacks the fields
    ('{"result": {"answer": "A"}}', {"answer": "A"}),  # nested in an envelope
    ('{"a": 1} {"b": 2}', {"a": 1}),  # none has them: the first object
])
def test_first_json_object_prefers_an_object_with_the_schemas_fields(text, expected):
    assert first_json_object(text, {"thought", "answer"}) == expected
    reply, note = parse_reply('{"a":{"b":1}} then {"thought": "x"}', Thought)
    assert reply == Thought(thought="x") and note is None


NON_ANSWERS = ["Unknown.", "Not enough information", "None yet", "not found", "cannot be determined from the evidence",
               "<the short answer, or null>", "It cannot be determined from the evidence yet.", "N/A", " ? ",
               "Not in the evidence.", "insufficient information to answer the question", "I don't know", "**null**"]


@pytest.mark.parametrize("answer", NON_ANSWERS + [False, 0, [], {}])
def test_non_answers_read_as_none_and_keep_the_thought(answer):
    reply, note = parse_reply(json.dumps({"thought": THOUGHT, "answer": answer}), Thought)
    assert reply == Thought(thought=THOUGHT) and note is None


@pytest.mark.parametrize("answer", ["Eleanor Quill", "Unknown Pleasures", "No", "None of the above", "<i>Hamlet</i>",
                                    "Nothing Else Matters"])
def test_answers_that_look_like_non_answers_are_kept(answer):
    assert nothing_to_none(f" {answer} ") == answer
    assert parse_reply(step(answer=answer), Thought)[0].answer == answer


def test_parse_reply_validates_and_says_why_not():
    reply, note = parse_reply('{"thought": 1871, "answer": " N/A ", "other": 1}', Thought)
    assert reply == Thought(thought="1871", answer=None) and note is None
    reply, note = parse_reply('{"thought": ["a", "list"]}', Thought)
    assert reply is None and "does not fit Thought" in note and "thought" in note
    reply, note = parse_reply("I cannot help with that.", Thought)
    assert reply is None and note.startswith("no JSON object in the model's reply 'I cannot help")


def test_langchain_model_without_structured_output_falls_back_to_text_once():
    model = ChatModel.wrap(chat("Here: " + step(thought="t1"), "garbage"))
    reply, raw, note = model.structured("p1", Thought)
    assert reply == Thought(thought="t1") and raw.startswith("Here:")
    assert note.startswith("structured output failed (NotImplementedError")
    reply, raw, note = model.structured("p2", Thought)  # not tried again: only the parse's note
    assert reply is None and raw == "garbage" and note.startswith("no JSON object")
    assert model.llm.prompts == ["p1", "p2"]


def test_langchain_structured_output_uses_json_schema_and_its_raw_text():
    llm = chat(step(thought="t1", answer="A"), "```json\n{'thought': 't2'}\n```", structured=True)
    model = ChatModel.wrap(llm)
    assert model.structured("p1", Thought) == (Thought(thought="t1", answer="A"), step(thought="t1", answer="A"), None)
    reply, raw, note = model.structured("p2", Thought)  # the model's parser fails; ours reads the raw text
    assert reply == Thought(thought="t2") and note is None
    assert llm.methods == ["json_schema", "json_schema"] and llm.prompts == ["p1", "p2"]


@pytest.mark.parametrize("error", [
    api_error("BadRequestError", 400), api_error("UnprocessableEntityError", 422), NotImplementedError("no"),
    ValueError("bad schema"), TypeError("unexpected keyword 'method'"), AttributeError("no with_structured_output"),
    json.JSONDecodeError("Expecting value", "x", 0),
], ids=lambda e: type(e).__name__)
def test_unsupported_structured_output_falls_back_to_text_for_good(error):
    llm = chat(step(thought="t1"), step(thought="t2"), structured=True, failures=[error])
    model = ChatModel.wrap(llm)
    reply, _, note = model.structured("p1", Thought)
    assert reply == Thought(thought="t1") and f"structured output failed ({type(error).__name__}" in note
    assert model.structured("p2", Thought) == (Thought(thought="t2"), step(thought="t2"), None)
    assert llm.methods == ["json_schema"] and llm.prompts == ["p1", "p2"]


def test_output_parser_exceptions_count_as_unparsable():
    from langchain_core.exceptions import OutputParserException

    llm = chat(step(thought="t1"), structured=True, failures=[OutputParserException("cannot parse")])
    reply, _, note = ChatModel.wrap(llm).structured("p", Thought)
    assert reply == Thought(thought="t1") and "OutputParserException" in note


@pytest.mark.parametrize("error", [
    ConnectionError("refused"), TimeoutError("timed out"), OSError("network unreachable"),
    api_error("APIConnectionError"), api_error("APITimeoutError"), api_error("ReadTimeout"), api_error("ConnectError"),
    api_error("InternalServerError", 500), api_error("RateLimitError", 429), api_error("APIStatusError", 503),
], ids=lambda e: type(e).__name__)
def test_errors_of_the_call_itself_propagate_and_keep_structured_output(error):
    llm = chat(step(thought="t1"), structured=True, failures=[error])
    model = ChatModel.wrap(llm)
    with pytest.raises(type(error)):
        model.structured("p1", Thought)
    assert llm.prompts == []  # no text call after the failure
    assert model.structured("p2", Thought) == (Thought(thought="t1"), step(thought="t1"), None)
    assert llm.methods == ["json_schema", "json_schema"]  # structured output tried again


def test_httpx_errors_propagate():
    httpx = pytest.importorskip("httpx")
    request = httpx.Request("POST", "http://localhost/v1/chat/completions")
    for error in (httpx.ConnectTimeout("slow", request=request), httpx.RemoteProtocolError("cut", request=request),
                  httpx.HTTPStatusError("502", request=request, response=httpx.Response(502, request=request))):
        model = ChatModel.wrap(chat(structured=True, failures=[error]))
        with pytest.raises(type(error)):
            model.structured("p", Thought)


def test_llamaindex_models_text_and_structured_predict():
    plain = ScriptedLLM(replies=["plain answer", step(thought="t1")])
    model = ChatModel.wrap(plain)
    assert model.text("hello {not a field}") == "plain answer" and "hello {not a field}" in plain.prompts[0]
    assert model.structured("p", Thought) == (Thought(thought="t1"), step(thought="t1"), None)
    structured = StructuredLLM(replies=[step(answer="A"), "not json", step(thought="t3")])
    model = ChatModel.wrap(structured)
    reply, raw, note = model.structured("braces {like} these", Thought)
    assert reply == Thought(answer="A") and note is None and structured.prompts == ["braces {like} these"]
    reply, _, note = model.structured("p", Thought)  # structured_predict raises: one text call follows
    assert reply == Thought(thought="t3") and note.startswith("structured output failed (ValidationError")


def test_wrap_takes_callables_and_refuses_what_is_not_a_model():
    model = ChatModel.wrap(Scripted("reply"))
    assert ChatModel.wrap(model) is model and model.text("p") == "reply"
    with pytest.raises(InvalidInputError, match="llm: expected a LangChain chat model"):
        ChatModel.wrap(42)


def test_the_strategies_do_not_import_langchain_or_llama_index():
    code = ("import sys, lir_agent.agentic.strategies; "
            "print([m for m in sys.modules if m.startswith(('langchain', 'llama_index'))])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_prompts_are_replaceable_and_checked(index):
    assert Prompts.of({"expand": "Q: {question}"}).expand == "Q: {question}" and Prompts.of(None) == Prompts()
    for bad, message in [({"nope": "x"}, "unknown prompt"), ({"ircot": "{question} {answer}"}, "unknown fields"),
                         ({"expand": "{question"}, "double literal braces"), ({"expand": 3}, "str.format template"),
                         ("text", "expected a Prompts or a dict")]:
        with pytest.raises(InvalidInputError, match=message):
            Prompts.of(bad)
    model = Scripted("a passage")
    ReasoningExpansion(model, k=2, prompts={"expand": "Q: {question}"}).run(QUESTION, SearchSession(index))
    assert model.prompts == [f"Q: {QUESTION}"]


# ---------------------------------------------------------------- IRCoT
def test_ircot_searches_each_thought_until_the_model_answers(index):
    llm = chat(step(thought=THOUGHT), step(thought="Its first president was Eleanor Quill.", answer="Eleanor Quill"))
    session = SearchSession(index)
    result = IRCoT(llm, k=2, keep=1).run(QUESTION, session)
    assert queries(session) == [(QUESTION, False), (f"{QUESTION} {THOUGHT}", True)]
    assert result.answer == "Eleanor Quill" and result.stopped.startswith(STOP_MODEL)
    assert result.ids == hand_fused(session, keep=1)[:2] and GOLD <= set(result.ids)
    assert len(result.ids) == len(set(result.ids))
    assert "Journal of Tidal Studies" in llm.prompts[0] and "published by the Marsh Harbour Society" in llm.prompts[0]
    assert "Your reasoning so far:\n(none yet)" in llm.prompts[0] and THOUGHT in llm.prompts[1]
    assert "[3] Eleanor Quill was a marine biologist" in llm.prompts[1]  # evidence accumulates over the hops
    assert "Eleanor Quill was a marine" not in llm.prompts[0]
    # GenericFakeChatModel has no structured output: said once, in the notes and the hop it led to
    assert len(result.notes) == 1 and "structured output failed" in result.notes[0]
    assert result.hops[1].note.startswith("question + thought 1; structured output failed")


def test_ircot_reads_prose_and_so_the_answer_is(index):
    model = Scripted(f"{THOUGHT} Then I need its president.", step(thought="So the answer is Eleanor Quill."))
    session = SearchSession(index)
    result = IRCoT(model, k=2, keep=1, with_question=False).run(QUESTION, session)
    assert queries(session) == [(QUESTION, False), (THOUGHT, True)]
    assert result.answer == "Eleanor Quill" and result.stopped.startswith(STOP_MODEL)
    assert "read the reply as the next sentence" in result.hops[1].note and len(result.notes) == 1


def test_ircot_stops_on_its_hop_limit_the_session_budget_and_novelty(index):
    session = SearchSession(index)
    result = IRCoT(Scripted(step(thought=THOUGHT)), k=2, keep=1, max_hops=2).run(QUESTION, session)
    assert result.stopped == f"{STOP_MAX_HOPS}: 2 hops" and len(session.trace) == 2 and result.answer is None

    session = SearchSession(index, max_hops=1)
    model = Scripted(step(thought=THOUGHT))
    result = IRCoT(model, k=2, keep=1).run(QUESTION, session)
    assert result.stopped.startswith(STOP_BUDGET) and len(session.trace) == 1
    assert [h.number for h in result.hops] == [1] and result.ids == session.trace[0].ids
    assert model.prompts == []  # the budget is checked before the model is asked for a search

    session = SearchSession(index)  # the first hop returns every document: the second finds nothing new
    result = IRCoT(Scripted(step(thought=THOUGHT)), k=len(DOCS), keep=1).run(QUESTION, session)
    assert result.stopped.startswith(STOP_NOVELTY) and len(session.trace) == 2
    assert sorted(result.ids) == sorted(i for i, _, _ in DOCS)


@pytest.mark.parametrize("reply, note", [
    ('{"thought": "cut off', "no JSON object"),
    ("", "no JSON object"),
    ('{"foo": 1}', "neither a thought nor an answer"),
    ('{"thought": ["a list"]}', "does not fit Thought"),
])
def test_ircot_turns_malformed_output_into_a_note(index, reply, note):
    session = SearchSession(index)
    result = IRCoT(Scripted(reply), k=2, keep=1).run(QUESTION, session)
    assert result.stopped.startswith(STOP_BAD_OUTPUT) and note in result.stopped
    assert len(result.notes) == 1 and note in result.notes[0]
    assert len(session.trace) == 1 and result.ids == session.trace[0].ids


NOT_YET = "The answer is not in the evidence yet; I need the society that publishes the journal."
BRACED = "I think {maybe} the Marsh Harbour Society publishes it."


@pytest.mark.parametrize("first, searched", [
    (step(thought=NOT_YET), NOT_YET),
    (step(thought="So the answer is: unknown for now."), "So the answer is: unknown for now."),
    *[(step(thought=THOUGHT, answer=answer), THOUGHT) for answer in NON_ANSWERS],
    (json.dumps({"thought": THOUGHT, "answer": False}), THOUGHT),
    (f"{BRACED} Its president is next.", BRACED),  # prose with a brace: its first sentence
])
def test_ircot_does_not_take_a_non_answer_for_an_answer(index, first, searched):
    model = Scripted(first, step(thought="Its first president was Eleanor Quill.", answer="Eleanor Quill"))
    session = SearchSession(index)
    result = IRCoT(model, k=2, keep=1).run(QUESTION, session)
    assert queries(session) == [(QUESTION, False), (f"{QUESTION} {searched}", True)] and len(model.prompts) == 2
    assert result.answer == "Eleanor Quill" and result.stopped == f"{STOP_MODEL}: the model answered after 2 hops"


def test_ircot_says_1_hop_and_stops_on_an_echoed_template(index):
    result = IRCoT(Scripted(step(answer="Eleanor Quill")), k=2, max_hops=1).run(QUESTION, SearchSession(index))
    assert result.stopped == f"{STOP_MAX_HOPS}: 1 hop"
    result = IRCoT(Scripted(step(answer="Eleanor Quill")), k=2).run(QUESTION, SearchSession(index))
    assert result.stopped == f"{STOP_MODEL}: the model answered after 1 hop"
    session = SearchSession(index)
    result = IRCoT(MockLLM(), k=2).run(QUESTION, session)  # replies with the prompt: its template's placeholders
    assert result.answer is None and len(session.trace) == 1
    assert result.stopped == f"{STOP_BAD_OUTPUT}: the model gave neither a thought nor an answer"


def test_ircot_searches_a_mock_llms_prose_with_a_note_until_nothing_is_new(index):
    session = SearchSession(index)
    result = IRCoT(MockLLM(max_tokens=3), k=2, keep=1).run(QUESTION, session)
    assert queries(session)[1:] == [(f"{QUESTION} text text text", True)] * 2  # the same thought twice
    assert result.stopped == f"{STOP_NOVELTY}: hop 3 found no document the earlier hops had not"
    assert len(result.notes) == 2 and result.ids == hand_fused(session, keep=1)[:2]
    assert all("no JSON object" in h.note and "read the reply" in h.note for h in result.hops[1:])


# ---------------------------------------------------------------- self-ask
def test_decomposition_asks_answers_and_writes_answers_in(index):
    llm = ScriptedLLM(replies=[
        "```json\n" + step(next_question=SUB_1) + "\n```",
        step(answer_to_last="Marsh Harbour Society", next_question=SUB_2, final_answer=None),
        "Sure. " + step(answer_to_last="Eleanor Quill", final_answer="Eleanor Quill"),
    ])
    session = SearchSession(index)
    result = Decomposition(llm, k=2, keep=1).run(QUESTION, session)
    assert queries(session) == [(SUB_1, False), (SUB_2, True)]
    assert result.answer == "Eleanor Quill" and result.stopped.startswith(STOP_MODEL) and result.notes == []
    assert result.ids == hand_fused(session, keep=1)[:2] and GOLD <= set(result.ids)
    assert "Sub-questions so far, with their answers:\n(none yet)" in llm.prompts[0]
    assert f"1. {SUB_1} -> Marsh Harbour Society\n2. {SUB_2} -> ?" in llm.prompts[2]
    assert "Its first president was Eleanor Quill." in llm.prompts[2]  # the evidence of the last sub-question


def test_decomposition_with_structured_output(index):
    llm = chat(step(next_question=SUB_1), step(answer_to_last="Marsh Harbour Society", final_answer="Eleanor Quill"),
               structured=True)
    session = SearchSession(index)
    result = Decomposition(llm, k=2).run(QUESTION, session)
    assert queries(session) == [(SUB_1, False)] and llm.methods == ["json_schema", "json_schema"]
    assert result.answer == "Eleanor Quill" and result.notes == []


def test_decomposition_handles_garbage_and_budgets(index):
    session = SearchSession(index)
    result = Decomposition(MockLLM(max_tokens=2), k=2).run(QUESTION, session)
    assert queries(session) == [(QUESTION, False)]  # no first sub-question: the question itself
    assert "searched the question itself" in result.hops[0].note
    assert result.stopped.startswith(STOP_BAD_OUTPUT) and "no JSON object" in result.stopped
    assert len(result.notes) == 2 and result.ids == session.trace[0].ids

    session = SearchSession(index)
    model = Scripted(step(final_answer="Eleanor Quill"), step(answer_to_last="x"))
    result = Decomposition(model, k=2).run(QUESTION, session)
    assert queries(session) == [(QUESTION, False)] and "no first sub-question" in result.notes[0]
    assert result.stopped == f"{STOP_BAD_OUTPUT}: the model gave neither a next sub-question nor a final answer"

    session = SearchSession(index, max_hops=1)
    model = Scripted(step(next_question=SUB_1), step(answer_to_last="Marsh Harbour Society", next_question=SUB_2))
    result = Decomposition(model, k=2).run(QUESTION, session)
    assert result.stopped.startswith(STOP_BUDGET) and queries(session) == [(SUB_1, False)]
    assert len(model.prompts) == 1 and [h.number for h in result.hops] == [1]  # not asked for a search refused

    session = SearchSession(index, max_tokens=5)  # the tokens are spent before the first search
    model = Scripted(step(next_question=SUB_1))
    result = Decomposition(model, k=2).run(QUESTION, session)
    assert result.stopped.startswith(STOP_BUDGET) and model.prompts == [] and session.trace == []

    model = Scripted(step(next_question=SUB_1), step(final_answer="Eleanor Quill"))
    result = Decomposition(model, k=2).run(QUESTION, SearchSession(index))
    assert result.stopped == f"{STOP_MODEL}: the model gave its final answer after 1 sub-question"


# ---------------------------------------------------------------- the oracle
def test_oracle_replays_gold_sub_questions_with_answers_filled_in(index, tmp_path):
    path = tmp_path / "queries.jsonl"
    records = [
        {"_id": "2hop__1_2", "text": QUESTION, "metadata": {"answer": "Eleanor Quill", "question_decomposition": [
            {"id": 1, "question": SUB_1, "answer": "Marsh Harbour Society", "paragraph_support_idx": 0},
            {"id": 2, "question": "Who was the first president of #1 ?", "answer": "Eleanor Quill"}]}},
        {"_id": "plain", "text": "Where is Rome?", "metadata": {}},
    ]
    path.write_text("\n".join(json.dumps(r) for r in records))
    plans = oracle_plans(path)
    assert plans == {QUESTION: [(SUB_1, "Marsh Harbour Society"), ("Who was the first president of #1 ?",
                                                                   "Eleanor Quill")]}
    strategy = make_strategy("oracle", k=2, plans=plans, keep=1)
    assert isinstance(strategy, OracleDecomposition) and not strategy.needs_llm
    session = SearchSession(index)
    result = strategy.run(QUESTION, session)
    assert queries(session) == [(SUB_1, False), ("Who was the first president of Marsh Harbour Society ?", True)]
    assert result.stopped == f"{STOP_DONE}: the whole gold plan searched (2 sub-questions)"
    assert result.answer == "Eleanor Quill" and strategy.describe() == "oracle(k=2, max_hops=4, keep=1)"
    assert result.ids == hand_fused(session, keep=1)[:2] and GOLD <= set(result.ids) and result.notes == []

    session = SearchSession(index)
    result = strategy.run("Where is Rome?", session)
    assert queries(session) == [("Where is Rome?", False)] and result.stopped.startswith(STOP_DONE)
    assert "no gold decomposition" in result.notes[0] and result.ids[0] == "rome"

    assert fill_placeholders("#1 and #2, not #3 or #10", ["a", "b"]) == "a and b, not #3 or #10"
    with pytest.raises(InvalidInputError, match="strategy 'oracle'.*plans"):
        make_strategy("oracle")
    path.write_text(json.dumps({"_id": "x", "text": "q", "metadata": {"question_decomposition": [{"q": 1}]}}))
    with pytest.raises(InvalidInputError, match="question_decomposition is not a list"):
        oracle_plans(path)


# ---------------------------------------------------------------- HyDE
PASSAGE = "Eleanor Quill, a marine biologist, was the first president of the Marsh Harbour Society."


def test_expansion_fuses_question_and_passage_by_rrf(index):
    session = SearchSession(index)
    result = ReasoningExpansion(Scripted(f"  {PASSAGE}\n"), k=5).run(QUESTION, session)
    assert queries(session) == [(QUESTION, False), (PASSAGE, True)]
    scores: dict[str, float] = {}
    for event in session.trace:
        for rank, doc_id in enumerate(event.ids, start=1):
            scores[doc_id] = scores.get(doc_id, 0) + 1 / (60 + rank)
    assert result.ids == sorted(scores, key=lambda d: -scores[d])[:5]  # ties: the question's ranking first
    assert result.ids[:2] == ["society", "journal"] != session.trace[0].ids[:2]  # the passage lifted the 2nd hop
    assert result.ids not in (session.trace[0].ids, session.trace[1].ids)
    assert result.stopped.startswith(STOP_DONE) and result.hops[1].note == "hypothetical passage (HyDE)"


def test_expansion_fuses_at_the_token_level(index, encoder):
    session = SearchSession(index)
    result = ReasoningExpansion(Scripted(PASSAGE), k=3, fusion="tokens").run(QUESTION, session)
    question_rows, passage_rows = (m.shape[0] for m in encoder.encode_queries([QUESTION, PASSAGE]))
    [event] = session.trace
    assert event.query == f"{QUESTION} {PASSAGE}" and event.query_tokens == question_rows + passage_rows
    stacked = torch.cat(encoder.encode_queries([QUESTION, PASSAGE]))
    direct = index.search(stacked, k=3)
    assert result.ids == [h.id for h in direct] and event.scores == pytest.approx([h.score for h in direct])
    assert f"question ({question_rows} rows) + passage ({passage_rows} rows)" in result.hops[0].note


def test_expansion_without_a_passage_searches_the_question(index):
    session = SearchSession(index)
    result = ReasoningExpansion(chat("   "), k=2).run(QUESTION, session)
    assert queries(session) == [(QUESTION, False)] and result.stopped.startswith(STOP_BAD_OUTPUT)
    assert result.notes == ["the model wrote no passage: searched the question alone"]
    with pytest.raises(InvalidInputError, match="fusion must be"):
        ReasoningExpansion(Scripted(), fusion="mean")


def test_expansion_does_not_call_the_model_on_a_spent_budget(index):
    session = SearchSession(index, max_hops=1)
    session.search("Rome")
    model = Scripted(PASSAGE)
    result = ReasoningExpansion(model, k=2).run(QUESTION, session)
    assert result.stopped.startswith(STOP_BUDGET) and model.prompts == [] and result.ids == []


# ---------------------------------------------------------------- the registry
def test_make_strategy_builds_the_llm_strategies():
    for name, cls in [("ircot", IRCoT), ("decompose", Decomposition), ("expand", ReasoningExpansion)]:
        assert STRATEGIES[name] is cls and cls.needs_llm
        strategy = make_strategy(name, k=3, llm=Scripted(), prompts={"expand": "{question}"})
        assert isinstance(strategy, cls) and strategy.k == 3
        with pytest.raises(InvalidInputError, match=f"strategy {name!r} needs a model"):
            make_strategy(name)
    with pytest.raises(InvalidInputError, match="strategy 'ircot'.*nope"):
        make_strategy("ircot", llm=Scripted(), nope=1)


@pytest.mark.parametrize("name, options, message", [
    ("ircot", {"keep": -1}, "ircot: keep must be an integer >= 1, got -1"),
    ("ircot", {"max_hops": 0}, "ircot: max_hops must be an integer >= 1, got 0"),
    ("ircot", {"max_hops": True}, "ircot: max_hops must be an integer >= 1, got True"),
    ("ircot", {"context_docs": 0}, "ircot: context_docs must be an integer >= 1, got 0"),
    ("ircot", {"sentences": -2}, "ircot: sentences must be an integer >= 1, got -2"),
    ("decompose", {"keep": 1.5}, "decompose: keep must be an integer >= 1, got 1.5"),
    ("decompose", {"context_docs": -3}, "decompose: context_docs must be an integer >= 1, got -3"),
    ("oracle", {"plans": {}, "max_hops": -1}, "oracle: max_hops must be an integer >= 1, got -1"),
    ("oracle", {"plans": {}, "keep": 0}, "oracle: keep must be an integer >= 1, got 0"),
    ("expand", {"rrf_k": -1}, "expand: rrf_k must be a number > 0, got -1"),
    ("expand", {"rrf_k": -60}, "expand: rrf_k must be a number > 0, got -60"),
    ("expand", {"rrf_k": 0}, "expand: rrf_k must be a number > 0, got 0"),
    ("expand", {"rrf_k": "60"}, "expand: rrf_k must be a number > 0, got '60'"),
])
def test_numeric_options_are_checked(name, options, message):
    with pytest.raises(InvalidInputError, match=f"^{message}$"):
        make_strategy(name, llm=Scripted(), **options)


def test_a_reply_cut_at_the_token_limit_is_a_note_not_an_error():
    # openai's LengthFinishReasonError: the model ran out of max_tokens inside its JSON
    llm = chat(step(thought="t2"), structured=True, failures=[api_error("LengthFinishReasonError")])
    model = ChatModel.wrap(llm)
    reply, raw, note = model.structured("p1", Thought)
    assert reply is None and raw == "" and note.startswith("the model's reply was not finished (LengthFinishReasonError")
    assert llm.prompts == []  # no second call for this reply
    assert model.structured("p2", Thought) == (Thought(thought="t2"), step(thought="t2"), None)
    assert llm.methods == ["json_schema", "json_schema"]  # structured output still used
