"""Strings that are not text (a lone UTF-16 surrogate, "\ud83d" alone) are refused with an
InvalidInputError naming where they are, at every boundary where text enters: documents (id,
text, title, metadata keys and values), queries, filters, the encoder, the HTTP request check
and the command line. Real emoji and JSON surrogate pairs are ordinary text."""

import json

import pytest

from lir_agent import Document, Index, InvalidInputError
from lir_agent.cli import main

LONE = "\ud83d"  # the first half of U+1F600, as left by cutting "😀" in UTF-16 or by a JSON escape


@pytest.fixture
def index(tmp_path, encoder):
    index = Index.create(tmp_path / "idx", encoder, index_type="exact")
    index.add([{"id": "rome", "text": "Rome is the capital of Italy.", "metadata": {"lang": "en"}}])
    return index


@pytest.mark.parametrize("bad, where", [
    ({"id": f"b{LONE}", "text": "fine"}, r"document #1 id"),
    ({"id": "b", "text": f"x {LONE} y"}, r"document 'b' text holds a lone UTF-16 surrogate \(U\+D83D at character 2\)"),
    ({"id": "b", "title": f"T{LONE}", "text": "fine"}, r"document 'b' title"),
    ({"id": "b", "text": "fine", "metadata": {"author": {"name": f"Jo{LONE}"}}}, r"document 'b' metadata\.author\.name"),
    ({"id": "b", "text": "fine", "metadata": {"tags": ["ok", f"{LONE}x"]}}, r"document 'b' metadata\.tags\[1\]"),
    ({"id": "b", "text": "fine", "metadata": {"author": {f"na{LONE}": 1}}},
     r"document 'b' metadata\.author key 'na\\ud83d' holds a lone UTF-16 surrogate \(U\+D83D at character 2\)"),
    (Document("b", f"{LONE}", {}), r"document 'b' text"),
])
@pytest.mark.parametrize("method", ["add", "upsert"])
def test_documents_holding_a_lone_surrogate_are_refused_and_nothing_is_written(index, bad, where, method):
    good = {"id": "paris", "text": "Paris is the capital of France."}
    with pytest.raises(InvalidInputError, match=where) as error:
        getattr(index, method)([good, bad])
    message = str(error.value)
    assert "lone UTF-16 surrogate" in message and "encoding" in message
    message.encode("utf-8")  # the message itself is text
    assert sorted(index.ids()) == ["rome"]
    assert sorted(Index.open(index.path).ids()) == ["rome"]


def test_queries_and_filters_holding_a_lone_surrogate_are_refused(index):
    with pytest.raises(InvalidInputError, match=r"^query #0 holds a lone UTF-16 surrogate \(U\+D83D at character 5\)"):
        index.search(f"Rome {LONE}")
    with pytest.raises(InvalidInputError, match=r"^query #1 holds"):
        index.search_batch(["Rome", f"{LONE}Italy"])
    with pytest.raises(InvalidInputError, match=r"^filter\.\$or\[1\]\.lang\.\$in\[1\] holds a lone UTF-16 surrogate"):
        index.search("Rome", filter={"$or": [{"lang": "en"}, {"lang": {"$in": ["de", f"fr{LONE}"]}}]})
    with pytest.raises(InvalidInputError, match=r"^filter key 'la\\ud83d' holds"):
        index.count(filter={f"la{LONE}": "en"})
    assert index.count(filter=lambda m: True) == 1  # callables are not JSON: left alone


def test_the_encoder_refuses_them_when_called_directly(encoder):
    with pytest.raises(InvalidInputError, match=r"^query #1 holds a lone UTF-16 surrogate \(U\+D83D at character 0\)"):
        encoder.encode_queries(["fine", LONE])
    with pytest.raises(InvalidInputError, match=r"^document #0 holds"):
        encoder.encode_documents([f"abc {LONE}"], packed=True)
    with pytest.raises(InvalidInputError, match=r"^document #0 must be a string, got NoneType"):
        encoder.encode_documents([None])


def test_emoji_and_surrogate_pairs_are_text(index):
    # JSON's escaped surrogate pair decodes to one character beyond U+FFFF
    paired = json.loads('{"id": "launch \\ud83d\\ude80", "text": "The rocket \\ud83d\\ude80 lifted off the launch pad.",'
                        ' "title": "Space \\ud83c\\udf0c", "metadata": {"mood \\ud83d\\ude00": ["\\ud83d\\ude00"]}}')
    assert paired["id"] == "launch 🚀"
    index.add([paired, {"id": "smile", "text": "A grinning face 😀 means happiness.", "metadata": {"emoji": "😀"}}])
    reopened = Index.open(index.path)
    assert reopened.get("launch 🚀").text == "Space 🌌. The rocket 🚀 lifted off the launch pad."
    assert reopened.get("launch 🚀").metadata == {"mood 😀": ["😀"], "title": "Space 🌌"}
    assert reopened.search("rocket 🚀 launch", k=1)[0].id == "launch 🚀"
    assert reopened.search(json.loads('"grinning face \\ud83d\\ude00"'), k=1, filter={"emoji": "😀"})[0].id == "smile"


def test_http_requests_holding_a_lone_surrogate_get_a_422_naming_it():
    pytest.importorskip("ray.serve")
    from lir_agent.distributed.serve import Limits, RequestError, SearchRequest, check_request

    # what FastAPI hands the route for this body: Python's JSON parser keeps the lone escape
    request = SearchRequest.model_validate(json.loads('{"queries": ["fine", "x \\ud83d"], "k": 3}'))
    with pytest.raises(RequestError, match=r"^query #1 holds a lone UTF-16 surrogate \(U\+D83D at character 2\)") as error:
        check_request(request, Limits())
    assert error.value.status == 422


def test_http_error_answers_quoting_a_lone_surrogate_are_still_json():
    pytest.importorskip("ray.serve")
    from lir_agent.distributed.serve import AsciiJSONResponse

    # e.g. FastAPI's 422 for {"queries": "\\ud83d"} quotes the input; UTF-8 JSON could not carry it
    content = {"detail": [{"loc": ["body", "queries"], "msg": "Input should be a valid list", "input": LONE}]}
    assert json.loads(AsciiJSONResponse(content, status_code=422).body) == content


def test_cli_reports_one_line_and_leaves_the_index_unchanged(tmp_path, encoder, capsys):
    index_dir = tmp_path / "idx"
    Index.create(index_dir, encoder).add([{"id": "rome", "text": "Rome is the capital of Italy."}])
    corpus = tmp_path / "docs.jsonl"
    corpus.write_text('{"id": "ok", "text": "A fine line."}\n{"id": "a", "text": "x \\ud83d y"}\n')
    assert main(["index", str(corpus), "--index", str(index_dir)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: document 'a' text holds a lone UTF-16 surrogate (U+D83D")
    assert sorted(Index.open(index_dir).ids()) == ["rome"]
    assert main(["search", str(index_dir), f"Rome {LONE}"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: query #0 holds a lone UTF-16 surrogate (U+D83D at character 5)")


def test_a_sharded_index_answers_not_found_for_an_id_that_is_not_text(tmp_path, encoder):
    from lir_agent import DocumentNotFoundError
    from lir_agent.sharded import ShardedIndex

    index = ShardedIndex.create(tmp_path / "s", 2, encoder)
    assert "\ud83d" not in index
    with pytest.raises(DocumentNotFoundError):
        index.get("\ud83d")


def test_values_of_the_wrong_type_are_named(tmp_path, encoder):
    index = Index.create(tmp_path / "types", encoder, index_type="exact")
    for metadata in ([1], "abc", 5):
        with pytest.raises(InvalidInputError, match=f"metadata must be a dict .*got {type(metadata).__name__}"):
            index.add([{"id": "a", "text": "some text", "metadata": metadata}])
    for text in (5, b"bytes", ["a"]):
        with pytest.raises(InvalidInputError, match=f"text must be a string, got {type(text).__name__}"):
            index.add([{"id": "a", "text": text}])
    index.add([{"id": "a", "text": "some text"}])
    for query in (None, b"bytes", ["a list"], 5):
        with pytest.raises(InvalidInputError, match=f"query #0 must be a text or an .*got {type(query).__name__}"):
            index.search(query)
    assert len(index) == 1
