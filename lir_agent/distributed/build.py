"""Building a sharded index on Ray: a pool of encoder actors streams batches of documents, and
each shard actor writes its own part.

Memory stays bounded whatever the collection's size: at most ``max_in_flight`` batches are
being encoded, and each shard buffers at most ``flush_docs`` encoded documents before writing
them as one segment.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import replace
from itertools import islice
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import ray
import torch
from tqdm.auto import tqdm

from ..codec import ResidualCodec
from ..encoder import Encoder
from ..index import Document, as_documents, encode_texts, warn_truncated
from ..sharded import create_shards, shard_of
from .ray_index import RayIndex, ensure_ray


@ray.remote
class EncoderActor:
    """One copy of the encoder (on a GPU when the actor was given one)."""

    def __init__(self, model: str | None):
        self.encoder = Encoder.from_pretrained(model or "default", device="cuda" if torch.cuda.is_available() else "cpu")

    def encode(self, texts: list[str], batch_size: int, passages: tuple[int, int] | None = None,
               ) -> tuple[list[np.ndarray], list[int], list[Any]]:
        """Float16 (n_tokens, dim) token matrices of ``texts``, the tokens cut off each, and
        their passage layouts (``passages``: see :func:`lir_agent.index.encode_texts`)."""
        matrices, truncated, layouts = encode_texts(self.encoder, texts, passages, batch_size, show_progress=False)
        return [m.to(torch.float16).numpy() for m in matrices], truncated, layouts


def build_sharded(documents: Iterable[Any], path: str | Path, num_shards: int, *, model: str | None = None,
                  index_type: str = "exact", nbits: int = 2, num_encoders: int = 2, encoder_gpus: float = 0.0,
                  encoder_cpus: float = 1.0, batch_docs: int = 256, max_in_flight: int = 4, flush_docs: int = 4096,
                  codec_sample_docs: int = 2048, total: int | None = None, indexed_fields: Sequence[str] = (),
                  passage_tokens: int | None = None, passage_overlap: int | None = None,
                  **index_options: Any) -> dict[str, int]:
    """Encodes ``documents`` (dicts or Documents) with ``num_encoders`` encoder actors and writes
    a new sharded index at ``path`` through shard actors (``index_options`` go to
    :meth:`RayIndex.open`). A compressed index's codec is trained on the first
    ``codec_sample_docs`` documents; ``indexed_fields``: metadata fields the shards' document
    stores index; ``passage_tokens`` / ``passage_overlap``: long texts as passages (see
    :meth:`Index.create`). Returns counts."""
    ensure_ray()
    encoders = [EncoderActor.options(num_cpus=encoder_cpus, num_gpus=encoder_gpus).remote(model)
                for _ in range(num_encoders)]
    stream = iter(documents)
    sample = as_documents(list(islice(stream, codec_sample_docs)))
    codec = None
    if index_type == "compressed":
        vectors = _encode_all(encoders, sample, batch_docs)
        codec = ResidualCodec.fit(torch.cat([torch.from_numpy(v).float() for v in vectors]), nbits=nbits)
    create_shards(path, num_shards, Encoder.from_pretrained(model or "default"), index_type=index_type, codec=codec,
                  indexed_fields=indexed_fields, passage_tokens=passage_tokens, passage_overlap=passage_overlap)
    written = 0
    with RayIndex.open(path, **index_options) as index, \
            tqdm(total=total, desc="building", unit="doc", disable=None) as progress:
        passages = index.passage_settings
        buffers: dict[int, list[tuple[Document, np.ndarray, int]]] = defaultdict(list)
        cut: list[int] = []

        def write(shard: int) -> None:
            nonlocal written
            docs, matrices, truncated = zip(*buffers.pop(shard))
            index.shards.call(shard, "add", list(docs), embeddings=list(matrices), truncated_tokens=list(truncated),
                              upsert=True, embeddings_from_text=True)  # encoded from the texts here
            written += len(docs)

        batches = _batches(sample, stream, batch_docs)
        for docs, (matrices, truncated, layouts) in _encode_stream(encoders, batches, max_in_flight, passages):
            cut.extend(truncated)
            for doc, matrix, n, layout in zip(docs, matrices, truncated, layouts):
                shard = shard_of(doc.id, num_shards)
                buffers[shard].append((replace(doc, passages=layout), matrix, n))
                if len(buffers[shard]) >= flush_docs:
                    write(shard)
            progress.update(len(docs))
        for shard in list(buffers):
            write(shard)
        index.compact()  # each shard's flushed parts into as few segments as possible
        warn_truncated(cut, index.settings.document_length)
        documents_held = len(index)
    for actor in encoders:
        ray.kill(actor)
    return {"documents": documents_held, "written": written, "num_shards": num_shards}


def _batches(first: list[Document], rest: Iterable[Any], size: int) -> Iterable[list[Document]]:
    for start in range(0, len(first), size):
        yield first[start : start + size]
    while chunk := list(islice(rest, size)):
        yield as_documents(chunk)


def _encode_stream(encoders: list, batches: Iterable[list[Document]], max_in_flight: int,
                   passages: tuple[int, int] | None) -> Iterable[tuple[list[Document], tuple[Any, ...]]]:
    """(documents, (token matrices, tokens cut, passage layouts)) per batch, in completion order,
    with at most ``max_in_flight`` batches being encoded at once (round robin over the encoders)."""
    in_flight: dict[Any, list[Document]] = {}
    turn = 0
    for batch in batches:
        if len(in_flight) >= max_in_flight:
            yield from _finished(in_flight)
        in_flight[encoders[turn % len(encoders)].encode.remote([d.text for d in batch], 32, passages)] = batch
        turn += 1
    while in_flight:
        yield from _finished(in_flight)


def _finished(in_flight: dict[Any, list[Document]]) -> Iterable[tuple[list[Document], tuple[Any, ...]]]:
    done, _ = ray.wait(list(in_flight), num_returns=1)
    for ref in done:
        yield in_flight.pop(ref), ray.get(ref)


def _encode_all(encoders: list, documents: list[Document], batch_docs: int) -> list[np.ndarray]:
    batches = [documents[i : i + batch_docs] for i in range(0, len(documents), batch_docs)]
    refs = [encoders[i % len(encoders)].encode.remote([d.text for d in b], 32) for i, b in enumerate(batches)]
    return [matrix for matrices, _, _ in ray.get(refs) for matrix in matrices]
