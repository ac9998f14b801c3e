"""The ``lir-agent`` command line: index, search, info, eval; reshard, build and serve (sharded indexes)."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import time
from itertools import islice
from pathlib import Path
from typing import Iterable, Iterator

from tqdm.auto import tqdm

from .corpus import read_documents
from .errors import LIRError, NotAnIndexError
from .eval import DEFAULT_METRICS, evaluate, load_beir
from .index import Index
from .sharded import ShardedIndex, open_index, reshard

ADD_CHUNK = 2048  # documents per write while indexing a collection


def _batched(items: Iterable, size: int) -> Iterator[list]:
    iterator = iter(items)
    while chunk := list(islice(iterator, size)):
        yield chunk


def index_collection(index: Index, documents: Iterable[dict], upsert: bool = False,
                     batch_size: int = 32, total: int | None = None) -> int:
    """Adds a stream of documents in chunks, with one progress bar over documents."""
    added = 0
    with tqdm(total=total, desc="indexing", unit="doc", disable=None) as progress:
        for chunk in _batched(documents, ADD_CHUNK):
            index.add(chunk, upsert=upsert, batch_size=batch_size, show_progress=False)
            added += len(chunk)
            progress.update(len(chunk))
    return added


def _open_or_create(args: argparse.Namespace, directory: str | Path) -> Index:
    try:
        return Index.open(directory, encoder=args.encoder)
    except NotAnIndexError:
        return Index.create(directory, encoder=args.encoder, index_type=args.index_type, nbits=args.nbits,
                            projection_dim=args.projection_dim)


def _search_params(args: argparse.Namespace) -> dict[str, int]:
    names = ("nprobe", "candidates", "rerank")
    return {name: getattr(args, name) for name in names if getattr(args, name) is not None}


def cmd_index(args: argparse.Namespace) -> None:
    index = _open_or_create(args, args.index)
    start = time.perf_counter()
    added = index_collection(index, read_documents(args.path), upsert=args.upsert, batch_size=args.batch_size)
    if args.compact:
        index.compact()
    print(f"indexed {added} documents into {args.index} in {time.perf_counter() - start:.1f}s "
          f"({len(index)} documents in all)")


def cmd_search(args: argparse.Namespace) -> None:
    index = open_index(args.index)
    hits = index.search(args.query, k=args.k, filter=json.loads(args.filter) if args.filter else None,
                        **_search_params(args))
    if args.json:
        print(json.dumps([hit.__dict__ for hit in hits], ensure_ascii=False, indent=1))
        return
    width = max([len(h.id) for h in hits] + [2])
    print(f"{'rank':>4}  {'score':>8}  {'id':<{width}}  text")
    for hit in hits:
        text = " ".join(hit.text.split())
        print(f"{hit.rank:>4}  {hit.score:8.4f}  {hit.id:<{width}}  {text[:100]}")


def cmd_info(args: argparse.Namespace) -> None:
    index = open_index(args.index)
    if args.verify:
        for shard in (index.shards.indexes if isinstance(index, ShardedIndex) else [index]):
            shard.verify()
    info = index.info()
    if args.verify:
        info["verified"] = True
    print(json.dumps(info, indent=1))


def _eval_cache_dir(dataset_dir: Path, args: argparse.Namespace, cache_root: Path) -> Path:
    corpus = (dataset_dir / "corpus.jsonl").stat()
    key = json.dumps([str(dataset_dir.resolve()), corpus.st_size, corpus.st_mtime_ns, args.encoder or "default",
                      args.index_type, args.nbits, args.projection_dim])
    return cache_root / f"{dataset_dir.name}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"


def cmd_eval(args: argparse.Namespace) -> None:
    dataset_dir = Path(args.dataset)
    dataset = load_beir(dataset_dir, split=args.split)
    cache_root = Path(args.cache_dir or os.environ.get("LIR_AGENT_CACHE", Path.home() / ".cache" / "lir_agent" / "eval"))
    cache = _eval_cache_dir(dataset_dir, args, cache_root)
    index = None
    if cache.exists():
        try:
            index = Index.open(cache)
            if len(index) != len(dataset.corpus):
                index = None
        except LIRError:
            index = None
        if index is None:
            shutil.rmtree(cache)
    if index is None:
        index = _open_or_create(args, cache)
        index_collection(index, dataset.corpus, batch_size=args.batch_size, total=len(dataset.corpus))
        index.compact()
    else:
        print(f"using the cached index {cache}", file=sys.stderr)
    for name, value in evaluate(index, dataset, metrics=args.metrics, **_search_params(args)).items():
        print(f"{name} {value:.4f}")


def cmd_reshard(args: argparse.Namespace) -> None:
    counts = reshard(args.source, args.target, args.shards)
    print(f"wrote {counts['documents']} documents into {counts['num_shards']} shards at {args.target}")


def cmd_build(args: argparse.Namespace) -> None:
    from .distributed.build import build_sharded  # imports Ray

    start = time.perf_counter()
    counts = build_sharded(read_documents(args.path), args.index, args.shards, model=args.encoder,
                           index_type=args.index_type, nbits=args.nbits, num_encoders=args.encoders,
                           encoder_gpus=args.encoder_gpus, num_gpus_per_shard=args.num_gpus_per_shard)
    print(f"built {args.index}: {counts['documents']} documents in {counts['num_shards']} shards "
          f"in {time.perf_counter() - start:.1f}s")


def cmd_serve(args: argparse.Namespace) -> None:
    from .distributed import serve  # imports Ray

    limits = serve.Limits(max_k=args.max_k, max_query_chars=args.max_query_chars, max_batch=args.max_batch)
    options = {"num_replicas": args.replicas, "num_gpus_per_shard": args.num_gpus_per_shard,
               "num_cpus_per_shard": args.num_cpus_per_shard}
    print(f"serving {args.index} on http://{args.host}:{args.port} (POST /search, GET /health, GET /info)")
    serve.run(str(Path(args.index).resolve()), host=args.host, port=args.port,
              token=args.token or os.environ.get("LIR_AGENT_TOKEN"), limits=limits, index_options=options,
              address=args.address)


def _index_options(parser: argparse.ArgumentParser, default_type: str) -> None:
    parser.add_argument("--index-type", choices=["auto", "exact", "compressed"], default=default_type,
                        help=f"for a new index (default: {default_type}; auto compresses above a small corpus size)")
    parser.add_argument("--nbits", type=int, choices=[1, 2, 4, 16], default=2,
                        help="bits per dimension of compressed residuals (16: float16)")
    parser.add_argument("--projection-dim", type=int, help="PCA-reduce token vectors to this many dimensions")


def _search_options(parser: argparse.ArgumentParser) -> None:
    for name in ("nprobe", "candidates", "rerank"):
        parser.add_argument(f"--{name}", type=int, help=f"compressed search: {name} (default depends on k)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lir-agent", description="Late-interaction retrieval for agents")
    commands = parser.add_subparsers(dest="command", required=True)

    p = commands.add_parser("index", help="index a JSONL file or a folder of .txt/.md files")
    p.add_argument("path", help="JSONL of {_id|id, text, title?, metadata?} records, or a folder")
    p.add_argument("--index", required=True, help="index directory (created if absent)")
    p.add_argument("--encoder", help="model name or path (default: bundled all-MiniLM-L6-v2)")
    _index_options(p, default_type="auto")
    p.add_argument("--upsert", action="store_true", help="replace documents whose ids exist")
    p.add_argument("--compact", action="store_true", help="merge segments when done")
    p.add_argument("--batch-size", type=int, default=32)
    p.set_defaults(func=cmd_index)

    p = commands.add_parser("search", help="search an index")
    p.add_argument("index")
    p.add_argument("query")
    p.add_argument("-k", type=int, default=10)
    p.add_argument("--filter", help='metadata filter as JSON, e.g. \'{"year": {"$gte": 2020}}\'')
    p.add_argument("--json", action="store_true", help="print hits as JSON")
    _search_options(p)
    p.set_defaults(func=cmd_search)

    p = commands.add_parser("info", help="describe an index")
    p.add_argument("index")
    p.add_argument("--verify", action="store_true", help="hash every file against the manifest")
    p.set_defaults(func=cmd_info)

    p = commands.add_parser("eval", help="index a BEIR folder (cached) and score its judged queries")
    p.add_argument("dataset")
    p.add_argument("--encoder", help="model name or path (default: bundled all-MiniLM-L6-v2)")
    _index_options(p, default_type="exact")
    _search_options(p)
    p.add_argument("--split", default="test")
    p.add_argument("--metrics", nargs="+", default=list(DEFAULT_METRICS))
    p.add_argument("--cache-dir", help="where built indexes are kept between runs")
    p.add_argument("--batch-size", type=int, default=32)
    p.set_defaults(func=cmd_eval)

    p = commands.add_parser("reshard", help="rewrite an index (single or sharded) into N shards")
    p.add_argument("source")
    p.add_argument("target", help="a new directory")
    p.add_argument("--shards", type=int, required=True)
    p.set_defaults(func=cmd_reshard)

    p = commands.add_parser("build", help="build a sharded index on Ray (encoder actors, shard actors)")
    p.add_argument("path", help="JSONL of {_id|id, text, title?, metadata?} records, or a folder")
    p.add_argument("--index", required=True, help="new sharded index directory")
    p.add_argument("--shards", type=int, required=True)
    p.add_argument("--encoder", help="model name or path (default: bundled all-MiniLM-L6-v2)")
    p.add_argument("--index-type", choices=["exact", "compressed"], default="exact")
    p.add_argument("--nbits", type=int, choices=[1, 2, 4, 16], default=2)
    p.add_argument("--encoders", type=int, default=2, help="encoder actors")
    p.add_argument("--encoder-gpus", type=float, default=0.0, help="GPUs per encoder actor")
    p.add_argument("--num-gpus-per-shard", type=float, default=0.0)
    p.set_defaults(func=cmd_build)

    p = commands.add_parser("serve", help="serve a sharded index over HTTP on Ray Serve")
    p.add_argument("index")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--token", help="bearer token every request must carry (default: $LIR_AGENT_TOKEN)")
    p.add_argument("--replicas", type=int, default=1, help="replicas per shard")
    p.add_argument("--num-cpus-per-shard", type=float, default=0.5)
    p.add_argument("--num-gpus-per-shard", type=float, default=0.0, help="fractional GPUs per shard replica")
    p.add_argument("--address", help="Ray cluster address (default: $RAY_ADDRESS, else a local Ray)")
    p.add_argument("--max-k", type=int, default=1000)
    p.add_argument("--max-query-chars", type=int, default=4096)
    p.add_argument("--max-batch", type=int, default=64)
    p.set_defaults(func=cmd_serve)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (LIRError, json.JSONDecodeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
