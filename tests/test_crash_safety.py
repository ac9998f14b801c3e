"""Kill a writer at random points; the index must reopen at a state before or after some write."""

import json
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from lir_agent import Index
from lir_agent.codec import ResidualCodec

sys.path.insert(0, str(Path(__file__).parent))
from crash_worker import embedding, operations, passages_of  # noqa: E402

N_OPS = 12


def expected_states(ops):
    """Every state the index may legally be in: {id: (text, embedding seed)} after each prefix."""
    state, states = {}, [{}]
    for op in ops:
        if op[0] in ("add", "upsert"):
            for doc_id, text, seed in op[1]:
                state[doc_id] = (text, seed)
        elif op[0] == "delete":
            for doc_id in op[1]:
                state.pop(doc_id, None)
        states.append(dict(state))  # a rewrite or new field indexes change no document
    return states


def make_template(path, encoder, index_type):
    if index_type == "exact":
        return Index.create(path, encoder=encoder, index_type="exact")
    # float16 residuals: the compressed write paths (codes, inverted lists, codec swaps) with
    # vectors that come back exactly, so the check below can compare them
    sample = torch.cat([embedding(seed) for seed in range(40)])
    return Index.create(path, encoder=encoder, codec=ResidualCodec.fit(sample, nbits=16, num_centroids=32))


@pytest.mark.parametrize("index_type,kills", [
    ("exact", 24),
    pytest.param("exact", 100, marks=pytest.mark.slow),
    pytest.param("compressed", 100, marks=pytest.mark.slow),
])
def test_killed_writer_leaves_a_consistent_index(tmp_path, encoder, index_type, kills):
    template = tmp_path / "template"
    make_template(template, encoder, index_type)
    states = expected_states(operations(N_OPS))
    rng = random.Random(1234)
    reached = set()
    worker = Path(__file__).parent / "crash_worker.py"
    for round_number in range(kills):
        directory = tmp_path / f"round{round_number}"
        shutil.copytree(template, directory)
        child = subprocess.Popen([sys.executable, str(worker), str(directory), str(N_OPS)],
                                 stdout=subprocess.PIPE, text=True)
        assert child.stdout.readline().strip() == "ready"
        time.sleep(rng.uniform(0.0, 1.2))
        child.send_signal(signal.SIGKILL)
        child.wait()

        index = Index.open(directory)
        index.verify()
        assert index.index_type == index_type
        found = {doc_id: index.get(doc_id).text for doc_id in index.ids()}
        matches = [j for j, s in enumerate(states) if {k: v[0] for k, v in s.items()} == found]
        assert matches, f"round {round_number}: reopened state matches no prefix of the writes"
        reached.add(matches[-1])
        state = states[matches[-1]]
        for doc_id in list(found)[:: max(1, len(found) // 15)] + (["long"] if "long" in found else []):
            torch.testing.assert_close(index.get_embeddings(doc_id), embedding(state[doc_id][1]).half())
        if "long" in found:  # its passages came with the same write as its text and vectors
            assert index.get("long").passages == passages_of(found["long"], embedding(state["long"][1]))
        # the index stays writable and searchable, and leftovers of the killed write are gone
        index.add([{"id": "after-crash", "text": "still works"}], embeddings=[embedding(999)])
        assert index.search(embedding(999), k=1)[0].id == "after-crash"
        names = {p.name for p in (directory / "segments").iterdir()}
        manifest = json.loads((directory / "manifest.json").read_text())
        assert names == {entry["name"] for entry in manifest["segments"]}
        for entry in manifest["segments"]:  # no replaced or half-written document store left either
            assert {p.name for p in (directory / "segments" / entry["name"]).iterdir()} == set(entry["files"])
        # the document stores answer filters, with the indexes the manifest declares
        assert index.count({"seed": {"$gte": 0}}) == len(found)  # "after-crash" has no seed
        assert all(s.docs.indexed_fields() == set(manifest["indexed_fields"]) for s in index._snapshot().segments)
        codecs = {p.name for p in directory.glob("codec-*")}
        assert codecs == ({manifest["codec"]["dir"]} if manifest["codec"] else set())
    intermediate = reached - {0, len(states) - 1}
    assert len(intermediate) >= 3, f"kills landed only at {sorted(reached)}; the test would prove little"
