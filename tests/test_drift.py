"""Codec drift of a compressed index (issue 14): adds on new topics warn once drift passes the
threshold, and optimize() re-trains on the documents' original vectors (texts encoded again),
so it gives back exactly what a full build of the same documents gives."""

import logging

import numpy as np
import pytest
import torch

from lir_agent import Index
from lir_agent.corpus import read_documents
from lir_agent.index import DRIFT_THRESHOLD, encode_texts

from conftest import SAMPLE_CORPUS
from helpers import DIM

BASE, NEW = 40, 24  # base documents, then new ones in three adds


@pytest.fixture(scope="module")
def documents():
    return list(read_documents(SAMPLE_CORPUS))[: BASE + NEW]


def decoded(index: Index, ids) -> list[np.ndarray]:
    return [index.get_embeddings(i).float().numpy() for i in ids]


def test_optimize_re_encodes_texts_and_equals_a_full_build(tmp_path, encoder, documents):
    incremental = Index.create(tmp_path / "incremental", encoder, index_type="compressed", nbits=2)
    incremental.add(documents[:BASE])
    for start in range(BASE, BASE + NEW, NEW // 3):
        incremental.add(documents[start : start + NEW // 3])
    full = Index.create(tmp_path / "full", encoder, index_type="compressed", nbits=2)
    full.add(documents)
    ids = [d["id"] for d in documents]
    new_ids = ids[BASE:]
    originals, _, _ = encode_texts(encoder, [full.get(i).text for i in new_ids], full.passage_settings)  # long ones as passages

    def error(index: Index) -> float:  # mean distance of the stored vectors of the new documents to their originals
        return float(np.mean([np.linalg.norm(d - o.float().numpy(), axis=1).mean()
                              for d, o in zip(decoded(index, new_ids), originals)]))

    assert error(incremental) > error(full)  # encoded against centroids that never saw them
    assert incremental.optimize(force=True)
    assert error(incremental) == pytest.approx(error(full), abs=1e-6)
    for a, b in zip(decoded(incremental, ids), decoded(full, ids)):  # the same codec, the same codes
        np.testing.assert_array_equal(a, b)
    assert incremental.drift()["ratio"] == pytest.approx(full.drift()["ratio"])


def test_drift_past_the_threshold_warns_and_shows_in_info(tmp_path, encoder, documents, caplog):
    index = Index.create(tmp_path / "drift", encoder, index_type="compressed", nbits=2)
    index.add(documents[:BASE])
    assert index.info()["codec"]["drift_warning"] is None
    g = torch.Generator().manual_seed(0)
    noise = [torch.nn.functional.normalize(torch.randn(30, DIM, generator=g), dim=1) for _ in range(4)]
    with caplog.at_level(logging.WARNING, logger="lir_agent.index"):
        index.add([{"id": f"noise-{i}", "text": f"noise {i}"} for i in range(4)], embeddings=noise)
    assert index.drift()["ratio"] > DRIFT_THRESHOLD
    assert any("codec drift" in r.getMessage() and "optimize()" in r.getMessage() for r in caplog.records)
    info = index.info()["codec"]
    assert info["drift_warning"].startswith("codec drift") and info["embedded_documents"] == 4
    index.compact()
    assert index.info()["codec"]["embedded_documents"] == 4  # the mark survives rewrites
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="lir_agent.index"):
        index.optimize(force=True)  # the texts are encoded again, the given embeddings cannot be
    assert any("decoded vectors of 4 of" in r.getMessage() and "added as embeddings" in r.getMessage()
               for r in caplog.records)
    assert index.get("noise-0").embedded and not index.get(documents[0]["id"]).embedded
    assert index.info()["codec"]["embedded_documents"] == 4
