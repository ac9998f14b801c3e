"""The document store at scale: open time, memory, filtered search and add throughput.

Exact indexes of --sizes documents (default 10k, 100k, 1M and 10M), built from a deterministic
synthetic corpus so that the document side dominates:

* documents: id ``doc-00000123``, a short text ("document 123 about topic 45 in de", ~35
  characters), metadata ``year`` (1990..2029), ``lang`` (10 codes), ``tag`` (int 0..999),
  ``score`` (float in [0, 1)) and their independent twins ``tag_scan`` and ``score_scan`` (same
  distributions); ``tag`` and ``score`` are declared ``indexed_fields``, the twins are not;
* token vectors: 2-4 random unit rows of 32 dimensions per document, given as precomputed
  ``embeddings`` (the encoder is the bundled default wrapped with a 32-d projection, only for its
  settings: nothing is encoded); queries are random unit (8, 32) matrices.

Documents are generated and added in batches of 65,536, the segment size (MAX_SEGMENT_DOCS), so
every segment is full and no compaction runs. "add docs/s" counts only the time spent in
``Index.add``; generating the inputs is timed apart ("gen s"); "build s" is the whole build.
Built indexes are cached in benchmarks/.cache/store/<size>-docs/ (with a record of the build,
<size>-docs.json) and reused when they open with the expected size and the same corpus
parameters; --rebuild builds them again. A reused index reports the build figures of its record.

Every measurement runs in a fresh subprocess (``import lir_agent, torch``, torch pinned to
--threads), never in the process that built the index:

* open: ``Index.open`` timed in --opens processes that only open, plus the process that then
  searches; "open s" is the best of them (warm page cache), the first is kept as
  ``open_first_s`` (its page cache may be cold). ``lir_agent.Index`` is imported first (it is
  imported on first use, and lir_agent.index imports transformers with the encoder module): that
  import is timed apart, "import s" (``import_index_s``, from the searching process). RSS
  (VmRSS, from /proc/self/status) is read just before and just after the open in the searching
  process: "RSS MB" is the absolute value after the open, with the delta the open added in
  parentheses; after the searches RSS is read again (file-backed pages of the memory-mapped
  token arrays are counted apart: RssFile).
* search: p50 over --queries queries (after 2 warm-ups), k = 10, unfiltered and with filters
  ``{"tag": X}`` / ``{"tag_scan": X}`` (0.1% of the documents, a new X per query) and
  ``{"score": {"$lt": 0.3}}`` / ``{"score_scan": {"$lt": 0.3}}`` (30%), on the indexed field and
  its unindexed twin. Every hit must match its filter, and each search must return
  min(k, matching documents) hits, the matching count being known exactly from the generator;
  up to --count-max-docs documents ``Index.count`` of each filter is checked against it too.

Floors (issue): at 1M documents open <= 1 s and RSS after open <= 300 MB, judged on the RSS the
open adds (the issue's baseline figure, "adds 262 MB", is a delta too) and, as a second line, on
the absolute RSS (which includes torch and transformers, ~250 MB before the open); a filtered
search on an indexed field (tag and score) <= 2x the unfiltered p50 + 20 ms; 10M documents:
reported. Baseline ("today"): with --baseline-repo, a
checkout of the previous code (commit 1adce80, e.g. ``git worktree add /tmp/lir-baseline
1adce80``), the issue's setup, an exact index of --baseline-docs (200,000) short documents with
2 token vectors of the default encoder's 384 dimensions each (same texts and metadata, no
indexed fields), is built and opened with the old code and with this one (each run with its code
on PYTHONPATH); floor: this code opens it >= 20x faster.

Latencies are those of the machine at the time: each entry records the 1-minute load average
taken before it was measured (with other work on the cores, --threads 2 searches slow down
several-fold).

    OMP_NUM_THREADS=1 python benchmarks/store.py [--sizes 10000,100000,1000000,10000000] [--queries 20]
        [--threads 2] [--opens 3] [--rebuild] [--baseline-repo /tmp/lir-baseline] [--baseline-docs 200000]

Results go to benchmarks/results/store.json (entries of sizes not rerun are kept; the floors are
judged on every entry there).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
CACHE = HERE / ".cache" / "store"
RESULTS = HERE / "results"

CORPUS_VERSION = 1  # bump when the generator changes: cached indexes of another version are rebuilt
SEED = 0
BATCH = 2**16  # documents per add: lir_agent.engines.compressed.MAX_SEGMENT_DOCS (checked in the build)
SMALL_DIM = 32
SMALL_FINGERPRINT = "benchmarks/store.py: default encoder + fixed 32-d projection (embeddings are given)"
LANGS = ("en", "de", "fr", "es", "it", "nl", "pt", "sv", "pl", "ja")
INDEXED_FIELDS = ["tag", "score"]
QUERY_TOKENS = 8
K = 10
WARMUP = 2
BROAD = 0.3  # the broad filters keep score < BROAD
CASES = {  # search case -> filtered field (None: unfiltered)
    "unfiltered": None,
    "tag_idx": "tag",
    "tag_scan": "tag_scan",
    "score_idx": "score",
    "score_scan": "score_scan",
}


# ------------------------------------------------------------------ the synthetic corpus
def chunk_columns(seed: int, start: int, count: int) -> dict[str, np.ndarray]:
    """Metadata columns of documents start..start+count (a chunk starts at a multiple of BATCH)."""
    rng = np.random.default_rng([seed, CORPUS_VERSION, start, 0])
    return {
        "year": rng.integers(1990, 2030, count),
        "lang": rng.integers(0, len(LANGS), count),
        "tag": rng.integers(0, 1000, count),
        "score": rng.random(count),
        "tag_scan": rng.integers(0, 1000, count),
        "score_scan": rng.random(count),
    }


def chunk_documents(seed: int, start: int, count: int) -> list[dict[str, Any]]:
    columns = {name: values.tolist() for name, values in chunk_columns(seed, start, count).items()}
    docs = []
    for j in range(count):
        i = start + j
        lang = LANGS[columns["lang"][j]]
        metadata = {"year": columns["year"][j], "lang": lang, "tag": columns["tag"][j], "score": columns["score"][j],
                    "tag_scan": columns["tag_scan"][j], "score_scan": columns["score_scan"][j]}
        text = f"document {i} about topic {i % 997} in {lang}"
        docs.append({"id": f"doc-{i:08d}", "text": text, "metadata": metadata})
    return docs


def unit_rows(rng: np.random.Generator, rows: int, dim: int) -> np.ndarray:
    vectors = rng.standard_normal((rows, dim), dtype=np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors


def chunk_embeddings(seed: int, start: int, count: int, dim: int, tokens: tuple[int, int]) -> list[np.ndarray]:
    """One (tokens[0]..tokens[1], dim) float16 unit-row matrix per document of the chunk."""
    rng = np.random.default_rng([seed, CORPUS_VERSION, start, 1])
    lengths = rng.integers(tokens[0], tokens[1] + 1, count)
    vectors = unit_rows(rng, int(lengths.sum()), dim).astype(np.float16)
    return np.split(vectors, np.cumsum(lengths)[:-1])


def query_matrices(seed: int, count: int, dim: int) -> list[np.ndarray]:
    rng = np.random.default_rng([seed, CORPUS_VERSION, 2**31])
    return [unit_rows(rng, QUERY_TOKENS, dim) for _ in range(count)]


def expected_counts(seed: int, size: int) -> dict[str, Any]:
    """Exact match counts from the generator: per value of tag and tag_scan, and of score(_scan) < BROAD."""
    counts: dict[str, Any] = {"tag": np.zeros(1000, np.int64), "tag_scan": np.zeros(1000, np.int64),
                              "score": 0, "score_scan": 0}
    for start in range(0, size, BATCH):
        columns = chunk_columns(seed, start, min(BATCH, size - start))
        for name in ("tag", "tag_scan"):
            counts[name] += np.bincount(columns[name], minlength=1000)
        for name in ("score", "score_scan"):
            counts[name] += int((columns[name] < BROAD).sum())
    return {name: value.tolist() if isinstance(value, np.ndarray) else value for name, value in counts.items()}


def case_filter(field: str | None, tag: int) -> dict[str, Any] | None:
    if field is None:
        return None
    return {field: tag} if field.startswith("tag") else {field: {"$lt": BROAD}}


def matches(field: str, tag: int, metadata: dict[str, Any]) -> bool:
    """The filter's meaning, written independently of lir_agent.filters."""
    return metadata[field] == tag if field.startswith("tag") else metadata[field] < BROAD


def expected_matches(field: str | None, tag: int, counts: dict[str, Any], size: int) -> int:
    if field is None:
        return size
    return counts[field][tag] if field.startswith("tag") else counts[field]


# ------------------------------------------------------------------ helpers of the child processes
def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def memory_mb() -> dict[str, float]:
    """This process's VmRSS, RssAnon, RssFile and VmHWM (peak RSS) in MB, from /proc/self/status."""
    wanted = {"VmRSS": "rss", "RssAnon": "anon", "RssFile": "file", "VmHWM": "peak"}
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in wanted:
                out[wanted[key]] = int(value.split()[0]) / 1024  # kB
    return out


def import_library(spec: dict[str, Any]) -> tuple[Any, Any, float]:
    """``import lir_agent, torch`` with torch pinned to the spec's threads, then ``lir_agent.Index``
    (imported on first use: the seconds this takes come back, apart from the open's); checks
    that lir_agent comes from the spec's code root (the child runs with it on PYTHONPATH)."""
    import torch

    torch.set_num_threads(spec["threads"])
    import lir_agent

    where = Path(lir_agent.__file__).resolve()
    if not where.is_relative_to(Path(spec["root"]).resolve()):
        raise RuntimeError(f"lir_agent was imported from {where}, not from {spec['root']}")
    started = time.perf_counter()
    lir_agent.Index  # noqa: B018 (lir_agent.index imports the encoder module, and transformers with it)
    return lir_agent, torch, time.perf_counter() - started


def make_encoder(lir_agent, torch, kind: str):
    """The bundled default encoder ("default", 384-d), or it with a fixed 32-d projection ("small")."""
    import dataclasses

    base = lir_agent.Encoder.from_pretrained("default", device="cpu")
    if kind == "default":
        return base
    torch.manual_seed(SEED)  # the projection is never applied (embeddings are given), but stays deterministic
    settings = dataclasses.replace(base.settings, dim=SMALL_DIM, fingerprint=SMALL_FINGERPRINT)
    return lir_agent.Encoder(base.model, base.tokenizer, [torch.nn.Linear(base.dim, SMALL_DIM)], settings, "cpu")


def disk_bytes(path: Path) -> dict[str, int]:
    files = [p for p in path.rglob("*") if p.is_file()]
    docs = [p for p in files if p.suffix == ".sqlite" or p.name == "docs.jsonl"]
    return {"total": sum(p.stat().st_size for p in files), "documents": sum(p.stat().st_size for p in docs)}


# ------------------------------------------------------------------ child: build
def build_params(spec: dict[str, Any]) -> dict[str, Any]:
    """What decides an index's content (a cached index is reused only if its record has the same)."""
    keys = ("root", "size", "dim", "tokens", "encoder", "indexed_fields", "seed")
    return {"corpus_version": CORPUS_VERSION, **{key: spec[key] for key in keys}}


def cached_build(spec: dict[str, Any], Index) -> dict[str, Any] | None:
    path, record_path = Path(spec["path"]), Path(spec["path"] + ".json")
    if spec["rebuild"] or not record_path.exists():
        return None
    record = json.loads(record_path.read_text())
    if record.get("params") != build_params(spec):
        return None
    try:
        if len(Index.open(path)) != spec["size"]:
            return None
    except Exception as exc:  # noqa: BLE001 (any failure to open means: build it again)
        print(f"cached index {path} does not open ({exc}): rebuilding", file=sys.stderr, flush=True)
        return None
    return {**record, "cached": True}


def child_build(spec: dict[str, Any]) -> dict[str, Any]:
    """Builds (or reuses) the index the spec describes; returns its build record."""
    lir_agent, torch, _ = import_library(spec)
    from lir_agent.engines.compressed import MAX_SEGMENT_DOCS
    from tqdm.auto import tqdm

    if MAX_SEGMENT_DOCS != BATCH:
        raise RuntimeError(f"the segment size is {MAX_SEGMENT_DOCS}, this benchmark adds batches of {BATCH}")
    cached = cached_build(spec, lir_agent.Index)
    if cached is not None:
        return cached
    path, size = Path(spec["path"]), spec["size"]
    Path(spec["path"] + ".json").unlink(missing_ok=True)  # the record is written once the build is complete
    shutil.rmtree(path, ignore_errors=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    options = {"indexed_fields": spec["indexed_fields"]} if spec["indexed_fields"] else {}  # the old code has none
    index = lir_agent.Index.create(path, make_encoder(lir_agent, torch, spec["encoder"]), index_type="exact", **options)
    generate_s, add_s = 0.0, []
    with tqdm(total=size, unit="docs", desc=f"building {path.name}", mininterval=5, file=sys.stderr) as progress:
        for start in range(0, size, BATCH):
            count = min(BATCH, size - start)
            t0 = time.perf_counter()
            docs = chunk_documents(spec["seed"], start, count)
            embeddings = chunk_embeddings(spec["seed"], start, count, spec["dim"], tuple(spec["tokens"]))
            t1 = time.perf_counter()
            index.add(docs, embeddings=embeddings)
            add_s.append(time.perf_counter() - t1)
            generate_s += t1 - t0
            progress.update(count)
    build_s = time.perf_counter() - started
    if len(index) != size:
        raise RuntimeError(f"{path}: {len(index)} documents after adding {size}")
    record = {"params": build_params(spec), "build_s": build_s, "generate_s": generate_s, "add_s": sum(add_s),
              "add_docs_per_s": size / sum(add_s), "add_s_per_batch": add_s, "segments": len(add_s),
              "disk_bytes": disk_bytes(path), "built_at": now()}
    Path(spec["path"] + ".json").write_text(json.dumps(record, indent=1))
    return {**record, "cached": False}


# ------------------------------------------------------------------ child: measure
def child_measure(spec: dict[str, Any]) -> dict[str, Any]:
    """Opens the index (timed, RSS before and after); with queries, searches every case and checks the hits."""
    lir_agent, torch, import_s = import_library(spec)
    queries = [torch.from_numpy(m) for m in query_matrices(spec["seed"], WARMUP + spec["queries"], spec["dim"])] \
        if spec["queries"] else []
    gc.collect()
    before = memory_mb()
    started = time.perf_counter()
    index = lir_agent.Index.open(spec["path"])
    open_s = time.perf_counter() - started
    after = memory_mb()
    out: dict[str, Any] = {"open_s": open_s, "import_index_s": import_s, "rss_before_open_mb": before["rss"],
                           "rss_after_open_mb": after["rss"], "rss_open_delta_mb": after["rss"] - before["rss"],
                           "rss_file_after_open_mb": after["file"]}
    if len(index) != spec["size"]:
        raise AssertionError(f"{spec['path']}: {len(index)} documents, expected {spec['size']}")
    if not queries:
        return out
    size, counts, tags = spec["size"], spec["counts"], spec["tags"]
    out["search"] = {}
    for case, field in CASES.items():
        times, hits_total = [], 0
        for q, matrix in enumerate(queries):
            started = time.perf_counter()
            hits = index.search(matrix, k=K, filter=case_filter(field, tags[q]))
            elapsed = time.perf_counter() - started
            if q >= WARMUP:
                times.append(1e3 * elapsed)
            expected = min(K, expected_matches(field, tags[q], counts, size))
            if len(hits) != expected:
                raise AssertionError(f"{case}, query {q}: {len(hits)} hits, expected {expected}")
            if field is not None and not all(matches(field, tags[q], hit.metadata) for hit in hits):
                raise AssertionError(f"{case}, query {q}: a hit does not match {case_filter(field, tags[q])}")
            hits_total += len(hits)
        out["search"][case] = {"p50_ms": float(np.percentile(times, 50)), "p95_ms": float(np.percentile(times, 95)),
                               "mean_hits": hits_total / len(queries)}
    if spec["check_counts"]:
        out["count_s"] = {}
        for case, field in CASES.items():
            if field is None:
                continue
            started = time.perf_counter()
            found = index.count(case_filter(field, tags[0]))
            out["count_s"][case] = time.perf_counter() - started
            if found != expected_matches(field, tags[0], counts, size):
                raise AssertionError(f"count({case_filter(field, tags[0])}) = {found}, "
                                     f"expected {expected_matches(field, tags[0], counts, size)}")
    after_search = memory_mb()
    out.update(rss_after_search_mb=after_search["rss"], rss_file_after_search_mb=after_search["file"],
               rss_anon_after_search_mb=after_search["anon"], rss_peak_mb=after_search["peak"])
    return out


CHILDREN = {"build": child_build, "measure": child_measure}


# ------------------------------------------------------------------ the parent
def run_child(command: str, spec: dict[str, Any], workdir: Path) -> dict[str, Any]:
    """Runs ``command`` of this script in a fresh Python with the spec's code root on PYTHONPATH;
    its progress goes to this terminal, its result comes back as JSON."""
    spec_path, out_path = workdir / "spec.json", workdir / "out.json"
    spec_path.write_text(json.dumps(spec))
    out_path.unlink(missing_ok=True)
    env = {**os.environ, "PYTHONPATH": spec["root"], "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    subprocess.run([sys.executable, __file__, "--child", command, str(spec_path), str(out_path)], env=env, check=True)
    return json.loads(out_path.read_text())


def open_and_measure(spec: dict[str, Any], opens: int, workdir: Path) -> dict[str, Any]:
    """``opens`` processes that only open the index, then one that opens it and searches (if the
    spec has queries); open_s is the best of all, open_first_s the first."""
    open_times = [run_child("measure", {**spec, "queries": 0}, workdir)["open_s"] for _ in range(opens)]
    result = run_child("measure", spec, workdir)
    open_times.append(result["open_s"])
    return {**result, "open_s": min(open_times), "open_first_s": open_times[0], "open_all_s": open_times}


def measure_size(size: int, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    spec = {"root": str(REPO), "path": str(CACHE / f"{size}-docs"), "size": size, "dim": SMALL_DIM, "tokens": [2, 4],
            "encoder": "small", "indexed_fields": INDEXED_FIELDS, "seed": SEED, "threads": args.threads,
            "rebuild": args.rebuild}
    build = run_child("build", spec, workdir)
    print(f"{size} documents: {'reusing the cached index' if build['cached'] else 'built'} {spec['path']}; "
          "measuring", flush=True)
    load = os.getloadavg()[0]  # other work on the machine inflates latencies (the build's own decays meanwhile)
    tags = np.random.default_rng([SEED, CORPUS_VERSION, 2**31 + 1]).integers(0, 1000, WARMUP + args.queries).tolist()
    measured = open_and_measure({**spec, "queries": args.queries, "tags": tags, "counts": expected_counts(SEED, size),
                                 "check_counts": size <= args.count_max_docs}, args.opens, workdir)
    return {"size": size, "threads": args.threads, "queries": args.queries, "k": K, "measured_at": now(),
            "load_average_1m": load, "build": build, **measured}


def measure_baseline(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """The issue's setup built and opened by the old code (``before``) and by this one (``after``)."""
    out: dict[str, Any] = {"docs": args.baseline_docs, "baseline_repo": str(args.baseline_repo),
                           "threads": args.threads, "measured_at": now(), "load_average_1m": os.getloadavg()[0]}
    for label, root in (("before", Path(args.baseline_repo).resolve()), ("after", REPO)):
        spec = {"root": str(root), "path": str(CACHE / f"baseline-{args.baseline_docs}-docs-{label}"),
                "size": args.baseline_docs, "dim": 384, "tokens": [2, 2], "encoder": "default", "indexed_fields": [],
                "seed": SEED, "threads": args.threads, "rebuild": args.rebuild, "queries": 0}
        build = run_child("build", spec, workdir)
        out[label] = {"build": build, **open_and_measure(spec, args.opens, workdir)}
        print(f"baseline, {label} ({root}): open {out[label]['open_s']:.3f} s, "
              f"+{out[label]['rss_open_delta_mb']:.0f} MB RSS", flush=True)
    out["open_speedup"] = out["before"]["open_s"] / out["after"]["open_s"]
    return out


def table_row(entry: dict[str, Any]) -> str:
    build, search = entry["build"], entry["search"]
    cells = [f"{entry['size']:>10,}", f"{build['generate_s']:>7.1f}", f"{build['build_s']:>8.1f}",
             f"{build['add_docs_per_s']:>9,.0f}", f"{entry['import_index_s']:>8.2f}", f"{entry['open_s']:>7.3f}",
             f"{entry['rss_after_open_mb']:>6.0f} ({entry['rss_open_delta_mb']:+5.0f})"]
    cells += [f"{search[case]['p50_ms']:>9.1f}" for case in CASES]
    return " ".join(cells) + ("  (cached build)" if build.get("cached") else "")


TABLE_HEADER = (f"{'docs':>10} {'gen s':>7} {'build s':>8} {'add doc/s':>9} {'import s':>8} {'open s':>7} "
                f"{'RSS MB (Δ)':>13} "
                + " ".join(f"{name:>9}" for name in ("unfilt", "tag idx", "tag scan", "score idx", "scorescan"))
                + "\n" + " " * 68 + "search p50 ms (k=10; tag: 0.1%, score: 30%)")


def floors(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's floors, judged on every entry in ``results`` (None: not measured)."""
    out = []

    def floor(name: str, value: float | None, limit: float | None, unit: str, when: str | None,
              at_least: bool = False) -> None:
        passed = None if value is None or limit is None else (value >= limit if at_least else value <= limit)
        out.append({"floor": name, "value": value, "limit": limit, "unit": unit, "passed": passed, "measured_at": when})

    million, ten_million = results["sizes"].get("1000000"), results["sizes"].get("10000000")
    when = million and million["measured_at"]
    floor("open at 1M docs <= 1 s", million and million["open_s"], 1.0, "s", when)
    floor("RSS the open adds at 1M docs <= 300 MB", million and million["rss_open_delta_mb"], 300.0, "MB", when)
    floor("RSS after open at 1M docs <= 300 MB (absolute: torch and transformers included)",
          million and million["rss_after_open_mb"], 300.0, "MB", when)
    for case in ("tag_idx", "score_idx"):
        limit = million and 2 * million["search"]["unfiltered"]["p50_ms"] + 20
        floor(f"{case} p50 at 1M docs <= 2x unfiltered p50 + 20 ms", million and million["search"][case]["p50_ms"],
              limit, "ms", when)
    floor("open at 10M docs (reported)", ten_million and ten_million["open_s"], None, "s",
          ten_million and ten_million["measured_at"])
    floor("RSS the open adds at 10M docs (reported)", ten_million and ten_million["rss_open_delta_mb"], None, "MB",
          ten_million and ten_million["measured_at"])
    baseline = results.get("baseline")
    floor(f"open of the {baseline['docs'] if baseline else 200000:,}-document baseline >= 20x faster than the "
          "previous code", baseline and baseline["open_speedup"], 20.0, "x", baseline and baseline["measured_at"],
          at_least=True)
    return out


def print_floors(rows: list[dict[str, Any]]) -> None:
    print("\nfloors:")
    for row in rows:
        verdict = {True: "PASS", False: "FAIL", None: "INFO" if row["value"] is not None else "SKIP"}[row["passed"]]
        value = "not measured" if row["value"] is None else f"{row['value']:.3f} {row['unit']}"
        limit = "" if row["limit"] is None else f" (limit {row['limit']:.3f} {row['unit']})"
        print(f"  {verdict}  {row['floor']}: {value}{limit}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,100000,1000000,10000000",
                        help="comma-separated index sizes in documents, run in this order")
    parser.add_argument("--queries", type=int, default=20, help="timed queries per search case (after 2 warm-ups)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads of the measuring processes")
    parser.add_argument("--opens", type=int, default=3, help="extra processes that only time Index.open")
    parser.add_argument("--count-max-docs", type=int, default=1_000_000,
                        help="check Index.count of each filter up to this index size")
    parser.add_argument("--rebuild", action="store_true", help="build cached indexes again")
    parser.add_argument("--baseline-repo", type=Path, default=None,
                        help="a checkout of the previous code (commit 1adce80) for the open-time baseline")
    parser.add_argument("--baseline-docs", type=int, default=200_000)
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]

    RESULTS.mkdir(exist_ok=True)
    output = RESULTS / "store.json"
    results = json.loads(output.read_text()) if output.exists() else {}
    results.setdefault("sizes", {})
    results["setup"] = {"dim": SMALL_DIM, "tokens_per_doc": [2, 4], "indexed_fields": INDEXED_FIELDS,
                        "batch_docs": BATCH, "k": K, "query_tokens": QUERY_TOKENS, "broad_share": BROAD}
    CACHE.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=CACHE) as tmp:
        workdir = Path(tmp)
        rows = []
        for size in sizes:
            entry = results["sizes"][str(size)] = measure_size(size, args, workdir)
            output.write_text(json.dumps(results, indent=1))  # a long run keeps what it measured so far
            rows.append(table_row(entry))
            print(TABLE_HEADER + "\n" + "\n".join(rows), flush=True)
        if args.baseline_repo is None:
            print("\nbaseline skipped: pass --baseline-repo PATH, a checkout of commit 1adce80 "
                  "(git worktree add /tmp/lir-baseline 1adce80)", flush=True)
        else:
            results["baseline"] = measure_baseline(args, workdir)
            b = results["baseline"]
            print(f"\nbaseline, {b['docs']:,} documents x 2 tokens x 384 dims: open {b['before']['open_s']:.3f} s "
                  f"(+{b['before']['rss_open_delta_mb']:.0f} MB) before, {b['after']['open_s']:.3f} s "
                  f"(+{b['after']['rss_open_delta_mb']:.0f} MB) now: {b['open_speedup']:.1f}x faster", flush=True)
    results["floors"] = floors(results)
    output.write_text(json.dumps(results, indent=1))
    if rows:
        print("\n" + TABLE_HEADER + "\n" + "\n".join(rows))
    print_floors(results["floors"])


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--child":  # a measuring or building process (see run_child)
        _, _, command, spec_file, out_file = sys.argv
        Path(out_file).write_text(json.dumps(CHILDREN[command](json.loads(Path(spec_file).read_text()))))
    else:
        main()
