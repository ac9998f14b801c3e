"""The command line, end to end on small collections (JSONL and a folder of files)."""

import json

import pytest

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
    (folder / "sub" / "b.txt").write_text("Notes on the orbital mechanics of satellites.")
    (folder / "ignored.bin").write_bytes(b"\x00\x01")
    assert main(["index", str(folder), "--index", str(tmp_path / "idx")]) == 0
    capsys.readouterr()
    assert main(["search", str(tmp_path / "idx"), "satellite orbits", "-k", "1", "--json"]) == 0
    hit = json.loads(capsys.readouterr().out)[0]
    assert hit["id"] == "sub/b.txt" and hit["metadata"] == {"path": "sub/b.txt"}


def test_errors_are_reported_not_raised(tmp_path, jsonl, capsys):
    assert main(["search", str(tmp_path / "nothing"), "q"]) == 2
    assert "not a lir_agent index" in capsys.readouterr().err
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "x", "text": "fine"}\n{not json}\n')
    assert main(["index", str(bad), "--index", str(tmp_path / "idx2")]) == 2
    assert "bad.jsonl:2" in capsys.readouterr().err
    main(["index", str(jsonl), "--index", str(tmp_path / "idx3")])
    capsys.readouterr()
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
