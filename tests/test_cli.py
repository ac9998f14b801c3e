"""The command line, end to end on small collections (JSONL and a folder of files)."""

import json
import subprocess
import sys

import pytest

import lir_agent
from lir_agent import cli
from lir_agent.cli import main

from helpers import DATA, needs


@pytest.fixture
def jsonl(tmp_path):
    path = tmp_path / "docs.jsonl"
    records = [
        {"_id": "p1", "title": "Paris", "text": "Paris is the capital and largest city of France.", "metadata": {"lang": "en"}},
        {"id": "p2", "text": "The mitochondrion is the powerhouse of the cell.", "metadata": {"lang": "en"}},
        {"id": "p3", "text": "Der Rhein ist ein Fluss in Europa.", "metadata": {"lang": "de"}},
    ]
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    return path


def test_index_search_info(tmp_path, jsonl, capsys):
    index_dir = tmp_path / "idx"
    assert main(["index", str(jsonl), "--index", str(index_dir)]) == 0
    assert "indexed 3 documents" in capsys.readouterr().out
    assert main(["search", str(index_dir), "what is the capital of France", "-k", "2", "--json"]) == 0
    hits = json.loads(capsys.readouterr().out)
    assert [h["id"] for h in hits][0] == "p1" and len(hits) == 2
    assert hits[0]["metadata"] == {"lang": "en", "title": "Paris"}
    assert main(["search", str(index_dir), "river", "--filter", '{"lang": "de"}']) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["rank", "score", "id", "text"] and len(table) == 2 and " p3 " in table[1]
    # nothing matches: say so, and how many documents match the filter, instead of a bare header
    assert main(["search", str(index_dir), "river", "--filter", '{"lang": "fr"}']) == 0
    assert capsys.readouterr().out == "no results: 0 of 3 documents match the filter\n"
    assert main(["search", str(index_dir), "river", "--filter", '{"lang": "fr"}', "--json"]) == 0
    assert capsys.readouterr() == ("[]\n", "no results: 0 of 3 documents match the filter\n")
    # search settings of compressed indexes on an exact index: a warning that says why, then the search
    assert main(["search", str(index_dir), "capital of France", "-k", "1", "--nprobe", "8"]) == 0
    out, err = capsys.readouterr()
    assert " p1 " in out.splitlines()[1]
    assert err.startswith("warning: --nprobe ignored") and "exact index" in err and "compressed indexes" in err
    assert main(["info", str(index_dir), "--verify"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["documents"] == 3 and info["verified"] and info["dim"] == 384
    # adding the same ids again is refused with a clear message; upsert replaces them
    assert main(["index", str(jsonl), "--index", str(index_dir)]) == 2
    assert "already in the index" in capsys.readouterr().err
    assert main(["index", str(jsonl), "--index", str(index_dir), "--upsert", "--compact"]) == 0
    capsys.readouterr()
    assert main(["info", str(index_dir)]) == 0
    assert json.loads(capsys.readouterr().out)["segments"] == 1


def test_index_a_folder_of_files(tmp_path, capsys):
    folder = tmp_path / "notes"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.md").write_text("# Cooking\nHow to bake sourdough bread at home.")
    (folder / "sub" / "b.txt").write_bytes(b"\xef\xbb\xbfNotes on the orbital mechanics of satellites.")  # BOM
    (folder / "ignored.bin").write_bytes(b"\x00\x01")
    (folder / "0-latin1.txt").write_bytes("Satellites en orbite, caf\xe9 noir".encode("latin-1"))
    (folder / "0-nul.txt").write_bytes(b"satellite orbits\x00\x01\x02")
    (folder / "1-blank.txt").write_text("  \n")
    (folder / ".git").mkdir()
    (folder / ".git" / "HEAD.txt").write_text("satellite orbits in a hidden folder")
    # --strict: a file that is not UTF-8 text is an error naming it, and nothing is created
    assert main(["index", str(folder), "--index", str(tmp_path / "strict"), "--strict"]) == 2
    assert "0-latin1.txt: not UTF-8 text (invalid continuation byte" in capsys.readouterr().err
    assert not (tmp_path / "strict").exists()
    assert main(["index", str(folder), "--index", str(tmp_path / "idx")]) == 0
    out, err = capsys.readouterr()
    assert err.splitlines() == ["skipped 0-latin1.txt: not UTF-8 text (invalid continuation byte: byte 0xe9 at offset 25)",
                                "skipped 0-nul.txt: not UTF-8 text (a NUL byte at offset 16)",
                                "skipped 1-blank.txt: empty"]
    assert out.startswith("indexed 2 documents into")
    assert out.rstrip().endswith("skipped 4 files: 1 empty, 1 not .txt/.md, 2 not UTF-8 text")
    assert main(["search", str(tmp_path / "idx"), "satellite orbits", "-k", "5", "--json"]) == 0
    hits = json.loads(capsys.readouterr().out)
    assert [h["id"] for h in hits] == ["sub/b.txt", "a.md"]
    assert hits[0]["metadata"] == {"path": "sub/b.txt"} and hits[0]["text"].startswith("Notes on")
    # a folder with nothing to index is an error naming it (with what was skipped)
    (folder / "a.md").unlink()
    (folder / "sub" / "b.txt").unlink()
    assert main(["index", str(folder), "--index", str(tmp_path / "empty")]) == 2
    assert f"{folder} holds no .txt/.md files of UTF-8 text (skipped 4 files" in capsys.readouterr().err
    assert not (tmp_path / "empty").exists()


def test_errors_are_reported_not_raised(tmp_path, jsonl, capsys, monkeypatch):
    assert main(["search", str(tmp_path / "nothing"), "q"]) == 2
    assert "not a lir_agent index" in capsys.readouterr().err
    # adding ids that exist names the option that replaces them, and writes nothing
    assert main(["index", str(jsonl), "--index", str(tmp_path / "dup")]) == 0
    before = capsys.readouterr().out
    assert main(["index", str(jsonl), "--index", str(tmp_path / "dup")]) == 2
    assert "already in the index" in (err := capsys.readouterr().err) and "--upsert replaces" in err
    assert main(["index", str(jsonl), "--index", str(tmp_path / "dup"), "--upsert"]) == 0
    assert capsys.readouterr().out.split(" in ")[0] == before.split(" in ")[0]
    # a failed index command leaves nothing it created: a mistyped path fails before anything exists...
    assert main(["index", str(tmp_path / "typo.jsonl"), "--index", str(tmp_path / "new" / "idx1")]) == 2
    assert capsys.readouterr().err == f"error: {tmp_path / 'typo.jsonl'} does not exist\n"
    assert not (tmp_path / "new").exists()
    # ... (one clean line even for a path with bytes that are not UTF-8, which reach argv as surrogates)
    assert main(["index", str(tmp_path / "caf\udce9.jsonl"), "--index", str(tmp_path / "new" / "idx1")]) == 2
    assert capsys.readouterr().err == f"error: {tmp_path}/caf\\udce9.jsonl does not exist\n"
    # ... and the index directory it made (with its parents) is removed when a later line is bad
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "x", "text": "fine"}\n{not json}\n')
    assert main(["index", str(bad), "--index", str(tmp_path / "new" / "idx2")]) == 2
    assert "bad.jsonl:2" in capsys.readouterr().err
    assert not (tmp_path / "new").exists()
    # an empty input is an error naming the file, or with --allow-empty a warning
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    assert main(["index", str(empty), "--index", str(tmp_path / "idx3")]) == 2
    assert f"error: {empty} holds no documents" in capsys.readouterr().err
    assert not (tmp_path / "idx3").exists()
    assert main(["index", str(empty), "--index", str(tmp_path / "idx3"), "--allow-empty"]) == 0
    out, err = capsys.readouterr()
    assert err == f"warning: {empty} holds no documents\n" and "(0 documents in all)" in out
    main(["index", str(jsonl), "--index", str(tmp_path / "idx3")])
    capsys.readouterr()
    # a failure while adding to an existing index says how much was committed before it
    monkeypatch.setattr(cli, "ADD_CHUNK", 1)
    more = tmp_path / "more.jsonl"
    more.write_text('{"id": "m1", "text": "one"}\n{"id": "m2", "text": "two"}\n{"id": "m3"\n')
    assert main(["index", str(more), "--index", str(tmp_path / "idx3")]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {more}:3: not valid JSON")
    assert err[0].endswith(f"; 2 documents of {more} were committed to {tmp_path / 'idx3'} before the failure")
    assert main(["info", str(tmp_path / "idx3")]) == 0
    assert json.loads(capsys.readouterr().out)["documents"] == 5
    assert main(["search", str(tmp_path / "idx3"), "   "]) == 2
    assert "empty or whitespace" in capsys.readouterr().err
    assert main(["search", str(tmp_path / "idx3"), "q", "-k", "0"]) == 2
    assert "k must be positive" in capsys.readouterr().err


@needs(DATA / "multihop" / "hotpotqa_train100")
def test_eval_command_prints_metrics_and_caches(tmp_path, capsys):
    dataset = DATA / "multihop" / "hotpotqa_train100"
    args = ["eval", str(dataset), "--cache-dir", str(tmp_path / "cache"), "--metrics", "nDCG@10", "Recall@20"]
    assert main(args) == 0
    first = capsys.readouterr()
    lines = first.out.strip().splitlines()
    assert [line.split()[0] for line in lines] == ["nDCG@10", "Recall@20"]
    ndcg = float(lines[0].split()[1])
    assert 0.3 < ndcg <= 1.0
    assert main(args) == 0
    second = capsys.readouterr()
    assert "using the cached index" in second.err and second.out == first.out


def test_compressed_index_from_the_command_line(tmp_path, capsys):
    corpus = tmp_path / "docs.jsonl"
    topics = ["volcanoes erupt lava and ash", "neural networks learn weights", "bread rises with yeast",
              "comets orbit the sun", "rivers carve canyons over time"]
    corpus.write_text("\n".join(json.dumps({"id": f"n{i}", "text": f"Note {i}: {topics[i % 5]}, variant {i}."})
                                for i in range(60)) + "\n")
    index_dir = tmp_path / "idx"
    assert main(["index", str(corpus), "--index", str(index_dir), "--index-type", "compressed", "--nbits", "4"]) == 0
    capsys.readouterr()
    assert main(["info", str(index_dir)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["index_type"] == "compressed" and info["codec"]["nbits"] == 4
    assert info["codec"]["token_bytes_per_token"] == 384 * 4 // 8 + 4  # code, residual bits, scale
    assert main(["search", str(index_dir), "how does yeast make bread rise", "-k", "3", "--json", "--nprobe", "2"]) == 0
    hits = json.loads(capsys.readouterr().out)
    assert len(hits) == 3 and all("bread" in h["text"] for h in hits)
    assert main(["search", str(index_dir), "yeast", "--nprobe", "0"]) == 2
    assert "positive integer" in capsys.readouterr().err


def test_help_and_argument_errors_load_nothing_heavy(tmp_path, capsys):
    script = """
import sys
from lir_agent.cli import main
try:
    main(["--help"])
except SystemExit as exc:
    assert exc.code == 0, exc.code
heavy = [name for name in ("torch", "transformers", "numpy") if name in sys.modules]
assert not heavy, f"--help imported {heavy}"
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "usage: lir-agent [-h]" in result.stdout
    # the package's names, imported on first use, are all there
    names: dict = {}
    exec("from lir_agent import *", names)
    assert "Index" in lir_agent.__all__ and all(name in names for name in lir_agent.__all__)
    # an argument error of a subcommand shows that subcommand's usage
    with pytest.raises(SystemExit) as exited:
        main(["search", str(tmp_path), "q", "--bogus"])
    err = capsys.readouterr().err
    assert exited.value.code == 2
    assert err.startswith("usage: lir-agent search") and "lir-agent search: error: unrecognized arguments: --bogus" in err


def test_bad_json_and_text_arguments_name_the_argument(tmp_path, capsys):
    for bad, problem in [("{year: 2020}", "not valid JSON (Expecting property name enclosed in double quotes"),
                         ("[2020]", "a filter must be a dict"),
                         ('{"year": {"$gte": [1]}}', "filter on 'year': $gte needs a number or string")]:
        with pytest.raises(SystemExit):
            main(["search", str(tmp_path), "q", "--filter", bad])
        err = capsys.readouterr().err
        assert "lir-agent search: error: argument --filter: " + problem in err
        assert err.rstrip().endswith("""expected a JSON object such as --filter '{"year": {"$gte": 2020}}'""")
    # bytes that are not UTF-8 reach argv as surrogates (surrogateescape): refused, naming the byte
    with pytest.raises(SystemExit):
        main(["search", str(tmp_path), "caf\udce9"])
    assert "argument query: not UTF-8 text (unexpected end of data: byte 0xe9 at offset 3)" in capsys.readouterr().err
