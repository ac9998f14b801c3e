"""Quality of incremental adds on new topics in a compressed index, and what optimize() restores.

Issue item 14. A 2-bit compressed index is built on one topic (SciFact abstracts), then given
documents on other topics (HotpotQA paragraphs, MS MARCO passages) in several small adds, which
are encoded against the SciFact-trained centroids and buckets. For every (query, relevant new
document) pair this measures the relative error of the compressed score against exact MaxSim,
``(exact - compressed) / exact``: the compressed score is MaxSim against the document's decoded
vectors (``Index.get_embeddings``, what the rerank stage scores up to float16/bfloat16
rounding), the exact one MaxSim against the encoder's float vectors. The same is measured for

* ``full build``: one index built from all the same documents at once (the codec trained on all
  topics; the reference the issue asks optimize() to reach);
* ``optimize (library)``: the incremental index after ``optimize(force=True)`` as the library
  does it (before the fix: it re-trains on the stored, decoded vectors, so the loss of the adds
  is baked in; with the proposed fix, it re-encodes the stored texts and equals the prototype);
* ``optimize (re-encoded)``: the prototype fix: the same ``optimize(force=True)`` but the
  re-training and rewrite read each document's original vectors, re-encoded from its stored
  text with the index's encoder (timed: the cost of the fix);
* ``auto re-train, decoded rest``: a cheap automatic re-train on every write that pushes drift
  past the threshold, with that write's own original vectors and the *decoded* vectors of the
  documents already stored (no encoder run); each re-train re-quantises the stored documents;
* ``full build + optimize (decoded)``: a full build re-trained on its decoded vectors (what
  re-training on decoded vectors costs documents that were encoded well);
* ``auto_optimize (library)``, with --library-auto and a library that has it (the proposed
  ``Index.create(..., auto_optimize=True)``): re-trains inside the write that passes the threshold.

The documents are added with precomputed embeddings (the same encoder's output for their texts,
cached to keep runs short); where the library has ``add(..., embeddings_from_text=True)`` the
benchmark says so, which lets a fixed ``optimize()`` re-encode their texts.

Ranking figures, for the new-topic queries (HotpotQA questions, MS MARCO queries) over the whole
index: overlap of the top 10 by compressed score (full scan of decoded vectors) with the exact
top 10, recall@10 of the judged documents under each, how many judged documents keep their exact
rank, old (SciFact) documents pushed into the top 10 by the compression, and the same overlap and
recall for the real three-stage ``Index.search(k=10)``. For every query (both topics), "flips":
among the pairs of one new and one old document in its exact top 50, the share whose exact order
the compression reverses; "newD/oldQ": the mean error of every new document against every
old-topic query (negative: scored above exact, i.e. pulled towards the old topic). Old-document
figures (SciFact test queries against their judged abstracts) are the control. ``drift()``, the
warning (prototype, and the library's where it has one) are printed after the adds.

Drift calibration: ``drift()`` divides by the codec's reference residual norm, before the fix the
mean over its own training sample (in-sample, so optimistic). For held-out SciFact documents
(same topic, not in the base) and for the new documents, it prints per-document and per-write
ratios against the index codec's reference and against one measured on base documents held out
of training.

The prototypes only monkeypatch this process (no library file is changed): during a re-train,
``CompressedSegment.vectors`` returns the original vectors of the documents it is given.

    python benchmarks/incremental_quality.py [--quick] [--base-docs 400] [--new-queries 20 10] [--adds 4]

Encodings are cached (npz, keyed by the texts) under --cache (default /tmp/item14/cache); the
re-encoding of the fix is always run for real and timed. Runs on CPU with one thread by default
(--threads).
"""

from __future__ import annotations

import argparse
import hashlib
import inspect
import json
import logging
import os
import random
import shutil
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np
import torch

from lir_agent import Encoder, Index
from lir_agent.engines.compressed import CompressedSegment
from lir_agent.eval import load_beir

HERE = Path(__file__).resolve().parent
DATA = Path(os.environ.get("LIR_SHARED", HERE.parent.parent / "shared")) / "data"
DRIFT_THRESHOLD = 1.15  # optimize()'s default
log = logging.getLogger("lir_agent.index")


# ------------------------------------------------------------------ data
def doc_text(record: dict) -> str:
    title = record.get("title")
    return f"{title}. {record['text']}" if isinstance(title, str) and title.strip() else record["text"]


def load_sets(base_docs: int, hotpot_queries: int, marco_queries: int, seed: int = 0):
    """Base documents (SciFact: judged abstracts of the test queries first, then corpus order),
    new documents (the 10 paragraphs of each of the first HotpotQA questions, the judged passages
    of the first MS MARCO queries), and the queries with their judged documents in the index."""
    scifact = load_beir(DATA / "scifact")
    corpus = {r["id"]: r for r in scifact.corpus}
    base_ids: list[str] = []
    old_queries = {}
    for qid in sorted(scifact.qrels, key=lambda q: int(q) if q.isdigit() else q):
        judged = [d for d in scifact.qrels[qid] if d in corpus]
        if len(base_ids) + len(judged) > base_docs // 2:
            break
        base_ids += [d for d in judged if d not in base_ids]
        old_queries[qid] = (scifact.queries[qid], judged)
    for doc_id in corpus:
        if len(base_ids) >= base_docs:
            break
        if doc_id not in base_ids:
            base_ids.append(doc_id)
    base = [{"id": d, "text": doc_text(corpus[d]), "metadata": {"set": "scifact"}} for d in base_ids]

    new, new_queries = [], {}
    hotpot = load_beir(DATA / "multihop" / "hotpotqa_train100")
    hcorpus = {r["id"]: r for r in hotpot.corpus}
    hids = list(hcorpus)
    for qid in list(hotpot.qrels)[:hotpot_queries]:
        gold = list(hotpot.qrels[qid])
        # a question's 10 paragraphs are consecutive in the pooled corpus: take the block around its gold ones
        first = min(hids.index(g) for g in gold)
        block = hids[first - first % 10: first - first % 10 + 10]
        for d in dict.fromkeys(block + gold):
            if d not in {n["id"] for n in new}:
                new.append({"id": d, "text": doc_text(hcorpus[d]), "metadata": {"set": "hotpotqa"}})
        new_queries["hotpot-" + qid] = (hotpot.queries[qid], gold)
    marco = load_beir(DATA / "msmarco_5k")
    mcorpus = {r["id"]: r for r in marco.corpus}
    for qid in list(marco.qrels)[:marco_queries]:
        judged = sorted(marco.qrels[qid], key=lambda d: -marco.qrels[qid][d])[:5]
        judged = [d for d in judged if d in mcorpus]
        for d in judged:
            if d not in {n["id"] for n in new}:
                new.append({"id": d, "text": doc_text(mcorpus[d]), "metadata": {"set": "msmarco"}})
        gold = [d for d in judged if marco.qrels[qid][d] >= 2] or judged
        new_queries["marco-" + qid] = (marco.queries[qid], gold)
    random.Random(seed).shuffle(new)  # the adds mix topics
    return base, new, old_queries, new_queries


# ------------------------------------------------------------------ encodings (cached)
def encode_cached(encoder: Encoder, texts: list[str], kind: str, cache: Path) -> list[torch.Tensor]:
    key = hashlib.blake2b(json.dumps([encoder.settings.fingerprint, kind, texts]).encode(), digest_size=12).hexdigest()
    path = cache / f"{kind}-{key}.npz"
    if path.exists():
        data = np.load(path)
        tokens, offsets = torch.from_numpy(data["tokens"]), data["offsets"]
        return [tokens[a:b] for a, b in zip(offsets[:-1], offsets[1:])]
    start = time.perf_counter()
    fn = encoder.encode_queries if kind == "queries" else encoder.encode_documents
    matrices = fn(texts)
    print(f"  encoded {len(texts)} {kind} in {time.perf_counter() - start:.1f} s (cached in {path})", flush=True)
    cache.mkdir(parents=True, exist_ok=True)
    offsets = np.concatenate([[0], np.cumsum([m.shape[0] for m in matrices])])
    np.savez(path, tokens=torch.cat(matrices).numpy(), offsets=offsets)
    return matrices


# ------------------------------------------------------------------ scoring
def maxsim_all(queries: list[torch.Tensor], docs: list[torch.Tensor], chunk_tokens: int = 8192) -> np.ndarray:
    """(n_queries, n_docs) exact MaxSim of every query against every document (float32)."""
    q = torch.cat(queries).float()
    q_offsets = np.concatenate([[0], np.cumsum([m.shape[0] for m in queries])])
    out = np.empty((len(queries), len(docs)), dtype=np.float32)
    start = 0
    while start < len(docs):
        end, tokens = start, 0
        while end < len(docs) and (tokens == 0 or tokens + docs[end].shape[0] <= chunk_tokens):
            tokens += docs[end].shape[0]
            end += 1
        chunk = torch.cat(docs[start:end]).float()
        d_offsets = np.concatenate([[0], np.cumsum([m.shape[0] for m in docs[start:end]])])
        sims = (q @ chunk.T).numpy()
        per_doc = np.maximum.reduceat(sims, d_offsets[:-1], axis=1)  # (query tokens, docs)
        out[:, start:end] = np.add.reduceat(per_doc, q_offsets[:-1], axis=0)
        start = end
    return out


def decoded(index: Index, ids: list[str]) -> list[torch.Tensor]:
    return [index.get_embeddings(i) for i in ids]


def evaluate(index: Index, ids: list[str], is_new: np.ndarray, exact: np.ndarray, queries: dict,
             query_matrices: dict, search: bool = True) -> dict:
    """Score errors of judged pairs and ranking figures of one index state."""
    comp = maxsim_all([query_matrices[q] for q in queries], decoded(index, ids))
    pos = {d: i for i, d in enumerate(ids)}
    res: dict = {}
    for group, want_new in (("new", True), ("old", False)):
        rel = []
        for qi, qid in enumerate(queries):
            if qid.startswith(("hotpot-", "marco-")) != want_new:
                continue
            for d in queries[qid][1]:
                j = pos[d]
                rel.append((exact[qi, j] - comp[qi, j]) / exact[qi, j])
        if rel:
            rel = np.asarray(rel)
            res[f"{group}_rel_err_mean"] = float(rel.mean())
            res[f"{group}_rel_err_p90"] = float(np.quantile(rel, 0.9))
            res[f"{group}_pairs"] = len(rel)
    # mixed pairs: among each query's exact top 50, a new and an old document; how often the
    # compression reverses their exact order, split by the query's topic
    flips = {True: [0, 0], False: [0, 0]}  # new-topic query? -> [reversed, pairs]
    for qi, qid in enumerate(queries):
        top = np.argsort(-exact[qi], kind="stable")[:50]
        e, c, n = exact[qi, top], comp[qi, top], is_new[top]
        pair = np.triu(n[:, None] != n[None, :], 1) & (e[:, None] > e[None, :])
        reversed_ = pair & (c[:, None] < c[None, :])
        new_query = qid.startswith(("hotpot-", "marco-"))
        flips[new_query][0] += int(reversed_.sum())
        flips[new_query][1] += int(pair.sum())
    res["flips_new_queries"] = flips[True][0] / max(1, flips[True][1])
    res["flips_old_queries"] = flips[False][0] / max(1, flips[False][1])
    res["mixed_pairs"] = flips[True][1] + flips[False][1]
    # every (query, document) pair across topics: is the compression biased?
    old_q = np.array([not q.startswith(("hotpot-", "marco-")) for q in queries])
    rel_all = (exact - comp) / exact
    res["cross_rel_err_new_docs_old_queries"] = float(rel_all[np.ix_(old_q, is_new)].mean())
    res["cross_rel_err_old_docs_new_queries"] = float(rel_all[np.ix_(~old_q, ~is_new)].mean())
    overlap, rec_exact, rec_comp, same_rank, intruders, s_overlap, s_recall = ([] for _ in range(7))
    new_q = [(qi, qid) for qi, qid in enumerate(queries) if qid.startswith(("hotpot-", "marco-"))]
    hits = index.search_batch([query_matrices[qid] for _, qid in new_q], k=10) if search else None
    for n, (qi, qid) in enumerate(new_q):
        e_order, c_order = np.argsort(-exact[qi], kind="stable"), np.argsort(-comp[qi], kind="stable")
        e10, c10 = set(e_order[:10]), set(c_order[:10])
        gold = {pos[d] for d in queries[qid][1]}
        overlap.append(len(e10 & c10) / 10)
        rec_exact.append(len(gold & e10) / len(gold))
        rec_comp.append(len(gold & c10) / len(gold))
        e_rank, c_rank = np.empty(len(ids), int), np.empty(len(ids), int)
        e_rank[e_order], c_rank[c_order] = np.arange(len(ids)), np.arange(len(ids))
        same_rank += [e_rank[g] == c_rank[g] for g in gold]
        intruders.append(sum(1 for j in c10 - e10 if not is_new[j]))
        if hits is not None:
            s10 = {pos[h.id] for h in hits[n]}
            s_overlap.append(len(e10 & s10) / 10)
            s_recall.append(len(gold & s10) / len(gold))
    res |= {"top10_overlap": float(np.mean(overlap)), "recall10_exact": float(np.mean(rec_exact)),
            "recall10_compressed": float(np.mean(rec_comp)), "judged_same_rank": float(np.mean(same_rank)),
            "old_intruders_top10": float(np.mean(intruders))}
    if hits is not None:
        res |= {"search_top10_overlap": float(np.mean(s_overlap)), "search_recall10": float(np.mean(s_recall))}
    return res


# ------------------------------------------------------------------ the prototype fix
def live_segments(index: Index):
    """(store, documents) of each segment of the index's current snapshot."""
    return [(s.store, s.documents) for s in index._state.segments]


@contextmanager
def originals_for(index: Index, originals: dict[str, torch.Tensor]):
    """While active, ``CompressedSegment.vectors(row)`` of this index's segments returns the
    original vectors of the documents in ``originals`` (decoded vectors for the others): what
    ``Index._rewrite_locked`` reads to re-train the codec and rewrite the segments."""
    by_store = {id(store): [d.id for d in documents] for store, documents in live_segments(index)}
    plain = CompressedSegment.vectors

    def vectors(self, row):
        ids = by_store.get(id(self))
        if ids is not None and ids[row] in originals:
            return originals[ids[row]]
        return plain(self, row)

    CompressedSegment.vectors = vectors
    try:
        yield
    finally:
        CompressedSegment.vectors = plain


def optimize_reencoded(index: Index, encoder: Encoder) -> dict:
    """The fix, prototyped: optimize(force=True) re-training on, and re-encoding, each document's
    original vectors, re-encoded from its stored text. Returns the timings."""
    ids = list(index.ids())
    texts = [index.get(i).text for i in ids]
    start = time.perf_counter()
    matrices = encoder.encode_documents(texts)
    encode_s = time.perf_counter() - start
    tokens = sum(m.shape[0] for m in matrices)
    lengths_ok = all(m.shape[0] == index.get_embeddings(i).shape[0] for i, m in zip(ids, matrices))
    start = time.perf_counter()
    with originals_for(index, dict(zip(ids, matrices))):
        index.optimize(force=True)
    return {"docs": len(ids), "tokens": tokens, "encode_s": encode_s, "rewrite_s": time.perf_counter() - start,
            "lengths_match": lengths_ok}


def drift_warning(index: Index, threshold: float = DRIFT_THRESHOLD) -> dict | None:
    """The proposed warning (prototype): info()["codec"]["drift_warning"] and a logged warning
    when the drift ratio passes the threshold."""
    drift = index.drift()
    if drift is None or drift["ratio"] <= threshold:
        return None
    warning = {"ratio": round(drift["ratio"], 3), "threshold": threshold, "added_tokens": drift["added_tokens"],
               "message": f"codec drift {drift['ratio']:.2f} > {threshold}: documents added since the codec was "
                          "trained are compressed with a larger error; run optimize()"}
    log.warning("%s: %s", index.path, warning["message"])
    return warning


def calibration(encoder: Encoder, index: Index, base: list[torch.Tensor], new: list[torch.Tensor], base_ids: set,
                cache: Path, count: int) -> dict:
    """Per-document and per-write (5 documents) drift ratios of held-out same-topic documents and
    of the new documents, against the index codec's own reference (in-sample before the fix) and a
    reference measured on documents held out of training (a codec fitted on 90% of the base)."""
    scifact = load_beir(DATA / "scifact")
    held = [r for r in scifact.corpus if r["id"] not in base_ids][-count:]  # far from the base in corpus order
    held = encode_cached(encoder, [doc_text(r) for r in held], "documents", cache)
    codec = live_segments(index)[0][0].codec

    def mean_norm(c, m):
        return float(c.encode(torch.cat(m).float() if isinstance(m, list) else m.float())[1].mean())

    order = list(range(len(base)))
    random.Random(0).shuffle(order)
    cut = max(1, len(base) // 10)
    refit = type(codec).fit(torch.cat([base[i] for i in order[cut:]]).float(), nbits=codec.nbits,
                            num_centroids=codec.num_centroids)
    out = {}
    for name, c, reference in (("the index codec's reference", codec, codec.mean_residual_norm),
                               ("held-out reference", refit, mean_norm(refit, [base[i] for i in order[:cut]]))):
        h = np.array([mean_norm(c, m) for m in held]) / reference
        n = np.array([mean_norm(c, m) for m in new]) / reference
        writes = np.array([mean_norm(c, held[i:i + 5]) for i in range(0, len(held) - 4, 5)]) / reference
        out[name] = {"reference": reference, "held_out_mean": float(h.mean()), "held_out_over": float((h > DRIFT_THRESHOLD).mean()),
                     "held_out_writes5_max": float(writes.max()), "held_out_writes5_over": float((writes > DRIFT_THRESHOLD).mean()),
                     "new_mean": float(n.mean()), "new_min": float(n.min()), "new_over": float((n > DRIFT_THRESHOLD).mean())}
    return out


# ------------------------------------------------------------------ main
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller sets (about a minute once encodings are cached)")
    parser.add_argument("--base-docs", type=int, default=None, help="SciFact documents of the first build (400; quick 200)")
    parser.add_argument("--new-queries", type=int, nargs=2, default=None, metavar=("HOTPOT", "MARCO"),
                        help="HotpotQA questions (10 paragraphs each) and MS MARCO queries of the new documents (20 10; quick 10 6)")
    parser.add_argument("--adds", type=int, default=None, help="adds the new documents arrive in (4; quick 3)")
    parser.add_argument("--nbits", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--cache", type=Path, default=Path("/tmp/item14/cache"))
    parser.add_argument("--workdir", type=Path, default=None, help="where the indexes go (a temporary folder)")
    parser.add_argument("--skip", nargs="*", default=[], choices=["auto", "full-optimize", "calibration"])
    parser.add_argument("--library-auto", action="store_true",
                        help="also build with Index.create(auto_optimize=True) where the library has it (slow: re-encodes)")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args()
    base_docs = args.base_docs or (200 if args.quick else 400)
    hq, mq = args.new_queries or ((10, 6) if args.quick else (20, 10))
    adds = args.adds or (3 if args.quick else 4)
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING, format="  [log %(levelname)s %(name)s] %(message)s")
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="incremental-quality-"))
    workdir.mkdir(parents=True, exist_ok=True)

    base, new, old_queries, new_queries = load_sets(base_docs, hq, mq)
    queries = old_queries | new_queries
    print(f"base: {len(base)} SciFact docs; new: {len(new)} docs (HotpotQA {sum(d['metadata']['set'] == 'hotpotqa' for d in new)},"
          f" MS MARCO {sum(d['metadata']['set'] == 'msmarco' for d in new)}) in {adds} adds; queries: {len(old_queries)} old,"
          f" {len(new_queries)} new; nbits={args.nbits}; threads={args.threads}", flush=True)
    encoder = Encoder.from_pretrained("default", device="cpu")
    docs = base + new
    ids = [d["id"] for d in docs]
    matrices = encode_cached(encoder, [d["text"] for d in docs], "documents", args.cache)
    vectors = dict(zip(ids, matrices))
    qm = dict(zip(queries, encode_cached(encoder, [queries[q][0] for q in queries], "queries", args.cache)))
    is_new = np.array([i >= len(base) for i in range(len(ids))])
    print(f"tokens: base {sum(m.shape[0] for m in matrices[:len(base)])}, new {sum(m.shape[0] for m in matrices[len(base):])}", flush=True)
    exact = maxsim_all([qm[q] for q in queries], matrices)
    results: dict = {"config": {"base_docs": len(base), "new_docs": len(new), "adds": adds, "nbits": args.nbits,
                                "old_queries": len(old_queries), "new_queries": len(new_queries)}}

    def stage(name: str, index: Index, **extra) -> None:
        start = time.perf_counter()
        figures = evaluate(index, ids, is_new, exact, queries, qm)
        results[name] = figures | extra
        print(f"  {name}: evaluated in {time.perf_counter() - start:.1f} s", flush=True)

    def build_incremental(path: Path, auto: bool = False, **create) -> tuple[Index, list]:
        index = Index.create(path, encoder=encoder, index_type="compressed", nbits=args.nbits, **create)
        index.add(base, embeddings=matrices[: len(base)], **from_text)  # trains the codec on SciFact (original vectors)
        log_ = []
        for part in np.array_split(np.arange(len(new)), adds):
            batch = [new[i] for i in part]
            index.add(batch, embeddings=[vectors[d["id"]] for d in batch], **from_text)
            drift = index.drift()
            entry = {"docs": len(batch), "ratio": round(drift["ratio"], 3)}
            if auto and drift["ratio"] > DRIFT_THRESHOLD:
                # prototype of a re-train on the write: this write's originals, the stored (decoded) rest
                start = time.perf_counter()
                with originals_for(index, {d["id"]: vectors[d["id"]] for d in batch}):
                    index.optimize(force=True, **({"reencode": False} if library_fixed else {}))
                entry["retrained_s"] = round(time.perf_counter() - start, 2)
            log_.append(entry)
        return index, log_

    # with the fix, add() can be told that given embeddings are the index encoder's encoding of the texts
    from_text = {"embeddings_from_text": True} if "embeddings_from_text" in inspect.signature(Index.add).parameters else {}
    library_fixed = "reencode" in inspect.signature(Index.optimize).parameters
    print(f"library: {'has the proposed fix (optimize re-encodes texts)' if library_fixed else 'optimize() re-trains on decoded vectors'}")
    print("incremental build (base, then the new documents in adds)", flush=True)
    start = time.perf_counter()
    incremental, adds_log = build_incremental(workdir / "incremental")
    print(f"  built in {time.perf_counter() - start:.1f} s; drift after each add: {[a['ratio'] for a in adds_log]}", flush=True)
    drift = incremental.drift()
    warning = drift_warning(incremental)
    stage("incremental", incremental, drift=drift, proposed_warning=warning,
          info_drift_warning=incremental.info()["codec"].get("drift_warning", "(no such field)"))

    print("full build (all documents in one add)", flush=True)
    full = Index.create(workdir / "full", encoder=encoder, index_type="compressed", nbits=args.nbits)
    start = time.perf_counter()
    full.add(docs, embeddings=matrices, **from_text)
    stage("full build", full, build_s=round(time.perf_counter() - start, 2))

    print("incremental + optimize(force=True), as the library does it", flush=True)
    current = workdir / "optimize-current"
    shutil.copytree(workdir / "incremental", current)
    index = Index.open(current, encoder=encoder)
    start = time.perf_counter()
    index.optimize(force=True)
    stage("optimize (library)", index, optimize_s=round(time.perf_counter() - start, 2))

    print("incremental + optimize(force=True), prototype fix (re-encodes stored texts)", flush=True)
    fixed = workdir / "optimize-fixed"
    shutil.copytree(workdir / "incremental", fixed)
    index = Index.open(fixed, encoder=encoder)
    timing = optimize_reencoded(index, encoder)
    timing |= {"encode_s_per_1k_docs": round(1000 * timing["encode_s"] / timing["docs"], 1),
               "encode_s_per_100k_tokens": round(1e5 * timing["encode_s"] / timing["tokens"], 1)}
    stage("optimize (re-encoded)", index, **timing)

    if "auto" not in args.skip:
        print(f"auto re-train on the write that passes drift {DRIFT_THRESHOLD} (the write's originals + decoded rest)", flush=True)
        index, auto_log = build_incremental(workdir / "auto", auto=True)
        stage("auto re-train, decoded rest", index, adds=auto_log)
    if "full-optimize" not in args.skip:
        print("full build + optimize(force=True) on decoded vectors", flush=True)
        path = workdir / "full-optimize"
        shutil.copytree(workdir / "full", path)
        index = Index.open(path, encoder=encoder)
        index.optimize(force=True, **({"reencode": False} if library_fixed else {}))
        stage("full build + optimize (decoded)", index)
    if args.library_auto and "auto_optimize" in inspect.signature(Index.create).parameters:
        print("Index.create(..., auto_optimize=True): the library re-trains inside the write", flush=True)
        start = time.perf_counter()
        index, auto_log = build_incremental(workdir / "library-auto", auto_optimize=True)
        stage("auto_optimize (library)", index, adds=auto_log, build_s=round(time.perf_counter() - start, 2))

    if "calibration" not in args.skip:
        print("drift calibration (held-out SciFact documents vs new topics)", flush=True)
        results["calibration"] = calibration(encoder, incremental, matrices[: len(base)], matrices[len(base):],
                                             {d["id"] for d in base}, args.cache, 60 if args.quick else 120)

    print()
    print(f"drift after the adds: ratio {drift['ratio']:.2f} (added tokens {drift['added_tokens']}, mean residual norm "
          f"{drift['mean_residual_norm']:.3f} vs {drift['reference']:.3f}); info()['codec']['drift_warning']: "
          f"{results['incremental']['info_drift_warning']}")
    print(f"re-encoding cost of the fix: {timing['docs']} docs / {timing['tokens']} tokens in {timing['encode_s']:.1f} s "
          f"= {timing['encode_s_per_1k_docs']} s per 1k docs, {timing['encode_s_per_100k_tokens']} s per 100k tokens "
          f"({args.threads} thread(s)); then optimize() {timing['rewrite_s']:.1f} s; token counts match: {timing['lengths_match']}; "
          f"optimize() as the library does it: {results['optimize (library)']['optimize_s']} s")
    cols = [("new_rel_err_mean", "new err", "{:.1%}"), ("new_rel_err_p90", "new p90", "{:.1%}"),
            ("old_rel_err_mean", "old err", "{:.1%}"), ("top10_overlap", "top10 ovl", "{:.3f}"),
            ("recall10_compressed", "R@10 comp", "{:.3f}"), ("judged_same_rank", "same rank", "{:.3f}"),
            ("old_intruders_top10", "old intr.", "{:.2f}"),
            ("flips_new_queries", "flips newQ", "{:.3f}"), ("flips_old_queries", "flips oldQ", "{:.3f}"),
            ("cross_rel_err_new_docs_old_queries", "newD/oldQ", "{:+.1%}"), ("search_top10_overlap", "search ovl", "{:.3f}"),
            ("search_recall10", "search R@10", "{:.3f}")]
    print(f"{'':34}" + "".join(f"{c[1]:>12}" for c in cols))
    for name, figures in results.items():
        if name in ("config", "calibration"):
            continue
        print(f"{name:34}" + "".join(f"{c[2].format(figures[c[0]]) if c[0] in figures else '-':>12}" for c in cols))
    r = results["incremental"]
    print(f"{'exact MaxSim':34}{'0.0%':>12}{'':>12}{'0.0%':>12}{'1.000':>12}{r['recall10_exact']:>12.3f}{'1.000':>12}"
          f"{'0.00':>12}{'0':>12}{'0':>12}{'0.0%':>12}")
    print(f"(pairs: {r.get('new_pairs')} new judged, {r.get('old_pairs')} old judged, {r['mixed_pairs']} mixed new/old in exact"
          f" top 50s; err = mean (exact - compressed) / exact; flips: share of mixed new/old pairs whose exact order"
          f" the compression reverses, on new-topic / old-topic queries; newD/oldQ: mean err of every new document"
          f" against every old-topic query, negative = scored above exact)")
    if "auto re-train, decoded rest" in results:
        print(f"auto re-train: drift after each add and re-train seconds: {results['auto re-train, decoded rest']['adds']}")
    if "calibration" in results:
        c = results["calibration"]
        for name in ("the index codec's reference", "held-out reference"):
            r = c[name]
            print(f"drift ratio, {name} ({r['reference']:.3f}): held-out same-topic docs mean {r['held_out_mean']:.3f} "
                  f"(> {DRIFT_THRESHOLD}: {r['held_out_over']:.0%} of docs, {r['held_out_writes5_over']:.0%} of 5-doc writes, "
                  f"max 5-doc write {r['held_out_writes5_max']:.3f}); new-topic docs mean {r['new_mean']:.3f}, "
                  f"min {r['new_min']:.3f} (> {DRIFT_THRESHOLD}: {r['new_over']:.0%})")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1, default=float))
    if args.workdir is None:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
