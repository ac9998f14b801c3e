"""The ``lir-agent`` command line: index, search, info, eval, eval-multihop; reshard, build and serve
(sharded indexes); mcp.

Only the standard library and lir_agent's light modules are imported before the arguments are
parsed; torch, transformers and the index are imported by the commands that use them, so
``--help`` and argument errors answer at once. Any LIRError (and OSError) is reported as one
``error: ...`` line on stderr with exit status 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import shutil
import sys
import time
from collections import Counter
from itertools import chain, islice
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator

from .corpus import NOT_TEXT_SUFFIX, NotTextError, SkippedFile, decode_text, read_documents
from .errors import DuplicateIdError, InvalidInputError, LIRError
from .eval import DEFAULT_METRICS, evaluate, load_beir
from .filters import compile_filter

if TYPE_CHECKING:
    from .index import Index
    from .sharded import ShardedIndex

ADD_CHUNK = 2048  # documents per write while indexing a collection
FILTER_EXAMPLE = """--filter '{"year": {"$gte": 2020}}'"""
SEARCH_PARAMS = ("nprobe", "candidates", "rerank")


def _batched(items: Iterable, size: int) -> Iterator[list]:
    iterator = iter(items)
    while chunk := list(islice(iterator, size)):
        yield chunk


def _stderr(message: str) -> None:
    from tqdm.auto import tqdm

    tqdm.write(message, file=sys.stderr)  # keeps a progress bar on the terminal intact


def index_collection(index: "Index", documents: Iterable[dict], upsert: bool = False,
                     batch_size: int = 32, total: int | None = None) -> Iterator[int]:
    """Adds a stream of documents in chunks, with one progress bar over documents. Yields, after
    each chunk is committed, how many documents have been committed so far."""
    from tqdm.auto import tqdm

    added = 0
    with tqdm(total=total, desc="indexing", unit="doc", disable=None) as progress:
        for chunk in _batched(documents, ADD_CHUNK):
            index.add(chunk, upsert=upsert, batch_size=batch_size, show_progress=False)
            added += len(chunk)
            progress.update(len(chunk))
            yield added


def _is_new(directory: Path) -> bool:
    """Whether an index at ``directory`` would be created (absent or an empty folder) rather than opened."""
    return not directory.exists() or not any(directory.iterdir())


def _open_or_create(args: argparse.Namespace, directory: str | Path) -> "Index":
    from .index import Index

    directory = Path(directory)
    if _is_new(directory):
        return Index.create(directory, encoder=args.encoder, index_type=args.index_type, nbits=args.nbits,
                            projection_dim=args.projection_dim,
                            indexed_fields=getattr(args, "index_field", None) or [],
                            passage_tokens=getattr(args, "passage_tokens", None),
                            passage_overlap=getattr(args, "passage_overlap", None))
    index = Index.open(directory, encoder=args.encoder)
    if getattr(args, "index_field", None):
        index.index_fields(args.index_field)
    return index


def _outermost_missing(path: Path) -> Path | None:
    """The outermost directory of ``path`` (itself or a parent) that does not exist yet, if any."""
    missing = None
    for candidate in (path.absolute(), *path.absolute().parents):
        if candidate.exists():
            break
        missing = candidate
    return missing


def _undo_creation(directory: Path, missing: Path | None) -> None:
    """Removes what creating an index at ``directory`` made: the outermost directory that did not
    exist before, or else the contents of the empty directory that did."""
    targets = [missing] if missing is not None else list(directory.iterdir())
    for target in targets:
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()


def _search_params(args: argparse.Namespace) -> dict[str, int]:
    return {name: getattr(args, name) for name in SEARCH_PARAMS if getattr(args, name) is not None}


class SkipReport:
    """Counts the files of a folder that were skipped, with a note on stderr for each .txt/.md file skipped."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()

    def __call__(self, skipped: SkippedFile) -> None:
        self.counts[skipped.reason] += 1
        if skipped.reason != NOT_TEXT_SUFFIX:
            _stderr(f"skipped {skipped.path}: {skipped.detail}")

    def summary(self) -> str:
        """E.g. "skipped 3 files: 1 not UTF-8 text, 2 not .txt/.md"; empty when nothing was skipped."""
        if not self.counts:
            return ""
        total = sum(self.counts.values())
        reasons = ", ".join(f"{count} {reason}" for reason, count in sorted(self.counts.items()))
        return f"skipped {total} file{'s' if total > 1 else ''}: {reasons}"


def cmd_index(args: argparse.Namespace) -> None:
    """``index``: adds a JSONL file or a folder to an index, created if absent; a failure leaves nothing it created."""
    directory = Path(args.index)
    if directory.exists() and not directory.is_dir():
        raise InvalidInputError(f"--index {directory} is a file, not an index directory")
    skips = SkipReport()
    documents = read_documents(args.path, strict=args.strict, on_skip=skips)
    first = next(documents, None)  # errors of the input's start come before anything is created
    if first is None:
        what = "no .txt/.md files of UTF-8 text" if Path(args.path).is_dir() else "no documents"
        empty = f"{args.path} holds {what}" + (f" ({skips.summary()})" if skips.counts else "")
        if not args.allow_empty:
            raise InvalidInputError(f"{empty}; nothing was indexed (--allow-empty accepts an empty input)")
        _stderr(f"warning: {empty}")
    else:
        documents = chain([first], documents)
    new, missing = _is_new(directory), _outermost_missing(directory)
    start = time.perf_counter()
    added = 0
    try:
        index = _open_or_create(args, directory)
        for added in index_collection(index, documents, upsert=args.upsert, batch_size=args.batch_size):
            pass
        if args.compact:
            index.compact()
    except BaseException as exc:
        if new:
            _undo_creation(directory, missing)
        elif added:
            exc.add_note(f"{added} documents of {args.path} were committed to {directory} before the failure")
        if isinstance(exc, DuplicateIdError) and not args.upsert:
            exc.add_note("--upsert replaces documents whose ids exist")
        raise
    summary = f"; {skips.summary()}" if skips.counts else ""
    print(f"indexed {added} document{'' if added == 1 else 's'} into {args.index} in "
          f"{time.perf_counter() - start:.1f}s ({len(index)} documents in all){summary}")


def _no_results(index: "Index | ShardedIndex", filter: Any) -> str:
    """Why a search found nothing: the index is empty, or no document matches the filter."""
    total = index.count()
    if filter is None:
        return f"no results: the index holds {total} documents"
    return f"no results: {index.count(filter)} of {total} documents match the filter"


def format_hits(hits: list, as_json: bool = False) -> str:
    """Hits as ``search`` prints them: JSON, or a table of rank, score, id and the start of the
    text, or of its best passage (with its character span) for a document stored as passages."""
    if as_json:
        return json.dumps([dataclasses.asdict(hit) for hit in hits], ensure_ascii=False, indent=1)
    width = max([len(h.id) for h in hits] + [2])
    lines = [f"{'rank':>4}  {'score':>8}  {'id':<{width}}  text"]
    for hit in hits:
        best = hit.passages[0] if hit.passages and (hit.passages[0].start, hit.passages[0].end) != (0, len(hit.text)) \
            else None
        text = " ".join(hit.text[best.start:best.end].split()) if best else " ".join(hit.text.split())
        where = f"[{best.start}-{best.end}] " if best else ""
        lines.append(f"{hit.rank:>4}  {hit.score:8.4f}  {hit.id:<{width}}  {where}{text[:100]}")
    return "\n".join(lines)


def cmd_search(args: argparse.Namespace) -> None:
    """``search``: prints the top-k hits (a table or JSON), or why there are none."""
    from .sharded import open_index

    index = open_index(args.index)
    params = _search_params(args)
    if params and index.info()["index_type"] == "exact":
        names = ", ".join(f"--{name}" for name in params)
        print(f"warning: {names} ignored: {args.index} is an exact index, and only compressed indexes take {names}",
              file=sys.stderr)
        params = {}
    hits = index.search(args.query, k=args.k, filter=args.filter, by=args.by, **params)
    if hits or args.json:
        print(format_hits(hits, as_json=args.json))
    if not hits:
        print(_no_results(index, args.filter), file=sys.stderr if args.json else sys.stdout)


def cmd_info(args: argparse.Namespace) -> None:
    """``info``: prints an index's summary as JSON, after hashing every file with ``--verify``."""
    from .sharded import ShardedIndex, open_index

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


def _cached_eval_index(args: argparse.Namespace, dataset_dir: Path, corpus: list[dict]) -> "Index":
    """The index of a BEIR folder's corpus for ``eval`` commands: built once, then reused from
    the cache (rebuilt when the corpus or the index options changed)."""
    from .index import Index

    cache_root = Path(args.cache_dir or os.environ.get("LIR_AGENT_CACHE", Path.home() / ".cache" / "lir_agent" / "eval"))
    cache = _eval_cache_dir(dataset_dir, args, cache_root)
    if cache.exists():
        try:
            index = Index.open(cache)
            if len(index) == len(corpus):
                print(f"using the cached index {cache}", file=sys.stderr)
                return index
        except LIRError:
            pass
        shutil.rmtree(cache)
    index = _open_or_create(args, cache)
    for _ in index_collection(index, corpus, batch_size=args.batch_size, total=len(corpus)):
        pass
    index.compact()
    return index


def cmd_eval(args: argparse.Namespace) -> None:
    """``eval``: indexes a BEIR folder (cached between runs) and prints one line per metric."""
    dataset_dir = Path(args.dataset)
    dataset = load_beir(dataset_dir, split=args.split)
    index = _cached_eval_index(args, dataset_dir, dataset.corpus)
    for name, value in evaluate(index, dataset, metrics=args.metrics, **_search_params(args)).items():
        print(f"{name} {value:.4f}")


def chat_model_from_spec(spec: str, base_url: str | None = None) -> Any:
    """A LangChain chat model from ``provider:model`` (LangChain's ``init_chat_model``: "openai:...",
    "anthropic:...", "ollama:...", with that provider's package installed); ``base_url`` for
    OpenAI-compatible local servers. Raises InvalidInputError for a malformed spec or a missing
    package."""
    provider, _, model = spec.partition(":")
    if not provider or not model:
        raise InvalidInputError(f"--llm: expected provider:model (e.g. openai:gpt-4o-mini), got {spec!r}")
    try:
        from langchain.chat_models import init_chat_model
    except ImportError:
        raise InvalidInputError("--llm needs langchain: pip install -e \"integrations/langchain[agent]\"") from None
    options: dict[str, Any] = {"temperature": 0}
    if base_url:
        options["base_url"] = base_url
        if provider == "openai" and not os.environ.get("OPENAI_API_KEY"):
            options["api_key"] = "unused"  # local OpenAI-compatible servers take any key
    try:
        return init_chat_model(model, model_provider=provider, **options)
    except Exception as exc:  # noqa: BLE001  (a missing package, credentials, an unknown provider: one line)
        raise InvalidInputError(f"--llm {spec}: {type(exc).__name__}: {exc}") from None


def cmd_eval_multihop(args: argparse.Namespace) -> None:
    """``eval-multihop``: runs multi-hop strategies on a BEIR folder's questions (index cached)
    and prints one line of metrics per strategy (:mod:`lir_agent.agentic.evaluation`)."""
    import random

    from .agentic.evaluation import EVAL_DEPTH, evaluate_strategy, strategy_label
    from .agentic.strategies import DEFAULT_STRATEGY, STRATEGIES, make_strategy
    from .agentic.strategies.llm_driven import oracle_plans

    dataset_dir = Path(args.dataset)
    dataset = load_beir(dataset_dir, split=args.split)
    names = args.strategy or ["single", "default"] + [n for n, cls in STRATEGIES.items()
                                                      if n not in ("single", DEFAULT_STRATEGY) and not cls.needs_llm
                                                      and n != "oracle"]
    try:
        plans = oracle_plans(dataset_dir / "queries.jsonl")
    except InvalidInputError as exc:
        if "oracle" in names:
            raise
        plans = {}
        if not args.strategy:
            print(f"oracle skipped: {exc}", file=sys.stderr)
    if not args.strategy and plans:
        names.append("oracle")
    for name in names:  # fail before any work on a name that does not exist
        if name not in STRATEGIES and name != "default":
            make_strategy(name)
    llm = chat_model_from_spec(args.llm, args.llm_base_url) if args.llm else None
    question_ids = list(dataset.queries)
    if args.questions:
        question_ids = sorted(random.Random(args.seed).sample(question_ids, min(args.questions, len(question_ids))))
    index = _cached_eval_index(args, dataset_dir, dataset.corpus)
    width = max(len(strategy_label(n)) for n in names + ["default"]) + 2
    for name in names:
        cls = STRATEGIES[DEFAULT_STRATEGY if name == "default" else name]
        if cls.needs_llm and llm is None:
            print(f"{name:<{width}}skipped: needs a model (--llm provider:model)")
            continue
        if name == "oracle" and not plans:
            print(f"{name:<{width}}skipped: the queries carry no question_decomposition")
            continue
        options = {"plans": plans} if name == "oracle" else {}
        strategy = make_strategy(name, k=EVAL_DEPTH, llm=llm, **options)
        print(evaluate_strategy(index, dataset, strategy, strategy_label(name), question_ids).line(width), flush=True)


def cmd_upgrade(args: argparse.Namespace) -> None:
    """``upgrade``: rewrites an index (single or sharded) of an older format into the current one."""
    from .sharded import open_index

    if open_index(args.index).upgrade():
        print(f"upgraded {args.index} to the current format")
    else:
        print(f"{args.index} is already in the current format")


def cmd_reshard(args: argparse.Namespace) -> None:
    """``reshard``: rewrites an index into N shards."""
    from .sharded import reshard

    counts = reshard(args.source, args.target, args.shards)
    print(f"wrote {counts['documents']} documents into {counts['num_shards']} shards at {args.target}")


def cmd_build(args: argparse.Namespace) -> None:
    """``build``: builds a sharded index on Ray."""
    from .distributed.build import build_sharded  # imports Ray

    skips = SkipReport()
    start = time.perf_counter()
    counts = build_sharded(read_documents(args.path, on_skip=skips), args.index, args.shards, model=args.encoder,
                           index_type=args.index_type, nbits=args.nbits, num_encoders=args.encoders,
                           encoder_gpus=args.encoder_gpus, num_gpus_per_shard=args.num_gpus_per_shard)
    print(f"built {args.index}: {counts['documents']} documents in {counts['num_shards']} shards "
          f"in {time.perf_counter() - start:.1f}s" + (f"; {skips.summary()}" if skips.counts else ""))


def cmd_serve(args: argparse.Namespace) -> None:
    """``serve``: serves a sharded index over HTTP on Ray Serve."""
    from .distributed import serve  # imports Ray

    limits = serve.Limits(max_k=args.max_k, max_query_chars=args.max_query_chars, max_batch=args.max_batch)
    options = {"num_replicas": args.replicas, "num_gpus_per_shard": args.num_gpus_per_shard,
               "num_cpus_per_shard": args.num_cpus_per_shard}
    print(f"serving {args.index} on http://{args.host}:{args.port} (POST /search, GET /health, GET /info)")
    serve.run(str(Path(args.index).resolve()), host=args.host, port=args.port,
              token=args.token or os.environ.get("LIR_AGENT_TOKEN"), limits=limits, index_options=options,
              address=args.address)


def cmd_mcp(args: argparse.Namespace) -> None:
    """``mcp``: serves the session tools over MCP (stdio, or streamable HTTP with ``--http``)."""
    if not args.http and (args.port is not None or args.token):
        args.command_parser.error("--port and --token apply to --http only")
    try:
        from .agentic import mcp_server  # imports the mcp SDK, torch and the index
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] not in ("mcp", "mcp_types"):
            raise
        raise LIRError("the mcp command needs the MCP SDK: pip install 'lir-agent[mcp]'") from exc

    mcp_server.run(args.index, http=args.http, port=mcp_server.DEFAULT_PORT if args.port is None else args.port,
                   token=args.token or os.environ.get("LIR_AGENT_TOKEN"), ray=args.ray, address=args.address,
                   k=args.k, max_hops=args.max_hops, max_tokens=args.max_tokens, passage_tokens=args.passage_tokens,
                   cite=not args.no_cite, strategy=args.strategy)


def _index_options(parser: argparse.ArgumentParser, default_type: str) -> None:
    parser.add_argument("--index-type", choices=["auto", "exact", "compressed"], default=default_type,
                        help=f"for a new index (default: {default_type}; auto compresses above a small corpus size)")
    parser.add_argument("--nbits", type=int, choices=[1, 2, 4, 16], default=2,
                        help="bits per dimension of compressed residuals (16: float16)")
    parser.add_argument("--projection-dim", type=int, help="PCA-reduce token vectors to this many dimensions")


def _search_options(parser: argparse.ArgumentParser) -> None:
    for name in SEARCH_PARAMS:
        parser.add_argument(f"--{name}", type=int,
                            help=f"compressed indexes only (ignored with a warning on exact ones): {name} "
                                 "(default depends on k)")


def _argv_text(value: str) -> str:
    """A text argument. Bytes of argv that are not UTF-8 arrive as lone surrogates
    (surrogateescape); they are refused here, naming the byte."""
    try:
        data = value.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return value  # not from argv's bytes: the index's own check of the text reports it
    try:
        return decode_text(data)
    except NotTextError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _int_range(low: int, high: int | None = None) -> Callable[[str], int]:
    """An argparse type: an integer from ``low`` to ``high`` (None: no limit), so that a value out
    of range is refused naming its option before anything is loaded."""
    bounds = f"at least {low}" if high is None else f"from {low} to {high}"

    def parse(value: str) -> int:
        try:
            number = int(value)
        except ValueError:
            number = None
        if number is None or number < low or (high is not None and number > high):
            raise argparse.ArgumentTypeError(f"expected an integer {bounds}, got {value!r}")
        return number

    return parse


def _filter_arg(value: str) -> Any:
    """``--filter``: JSON in the metadata filter language, checked before anything is loaded."""
    try:
        spec = json.loads(value)
        compile_filter(spec)
    except json.JSONDecodeError as exc:
        problem = f"not valid JSON ({exc})"
    except InvalidInputError as exc:
        problem = str(exc)
    else:
        return spec
    raise argparse.ArgumentTypeError(f"{problem}; expected a JSON object such as {FILTER_EXAMPLE}")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``lir-agent`` and its commands."""
    parser = argparse.ArgumentParser(prog="lir-agent", description="Late-interaction retrieval for agents")
    commands = parser.add_subparsers(dest="command", required=True)

    p = commands.add_parser("index", help="index a JSONL file or a folder of .txt/.md files")
    p.add_argument("path", help="JSONL of {_id|id, text, title?, metadata?} records, or a folder")
    p.add_argument("--index", required=True, help="index directory (created if absent)")
    p.add_argument("--encoder", help="model name or path (default: bundled all-MiniLM-L6-v2)")
    _index_options(p, default_type="auto")
    p.add_argument("--passage-tokens", type=int, help="for a new index: texts longer than the encoder reads are "
                   "stored as passages of at most this many tokens (default: the encoder's length; 0: cut them)")
    p.add_argument("--passage-overlap", type=int, help="for a new index: tokens neighbouring passages share "
                   "(default: an eighth of --passage-tokens)")
    p.add_argument("--index-field", action="append", metavar="FIELD",
                   help="metadata field (dotted path) to index for fast filters; repeatable, also on an existing index")
    p.add_argument("--upsert", action="store_true", help="replace documents whose ids exist")
    p.add_argument("--compact", action="store_true", help="merge segments when done")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--strict", action="store_true",
                   help="fail on a .txt/.md file that is not UTF-8 text (default: skip it with a note)")
    p.add_argument("--allow-empty", action="store_true",
                   help="accept an input without documents (a warning instead of an error)")
    p.set_defaults(func=cmd_index)

    p = commands.add_parser("search", help="search an index")
    p.add_argument("index")
    p.add_argument("query", type=_argv_text)
    p.add_argument("-k", type=int, default=10)
    p.add_argument("--filter", type=_filter_arg, help=f"metadata filter as a JSON object, e.g. {FILTER_EXAMPLE}")
    p.add_argument("--json", action="store_true", help="print hits as JSON")
    p.add_argument("--by", choices=["document", "passage"], default="document",
                   help="rank documents (MaxSim over all their passages) or passages")
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

    p = commands.add_parser("eval-multihop", help="score multi-hop strategies on a BEIR folder's questions "
                                                  "(R@2, R@5, all-gold@10/20, hops, tokens, ms)")
    p.add_argument("dataset")
    p.add_argument("--strategy", action="append", metavar="NAME",
                   help="a strategy to run (repeatable; 'default' names the default LLM-free one); "
                        "default: single and every LLM-free strategy, and the oracle planner on sets "
                        "whose queries carry a question_decomposition")
    p.add_argument("--llm", metavar="PROVIDER:MODEL",
                   help="the model of LLM-driven strategies, e.g. openai:gpt-4o-mini (LangChain init_chat_model)")
    p.add_argument("--llm-base-url", help="base URL of an OpenAI-compatible server for --llm")
    p.add_argument("--questions", type=_int_range(1), help="a seeded sample of this many questions")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--encoder", help="model name or path (default: bundled all-MiniLM-L6-v2)")
    _index_options(p, default_type="exact")
    p.add_argument("--split", default="test")
    p.add_argument("--cache-dir", help="where built indexes are kept between runs")
    p.add_argument("--batch-size", type=int, default=32)
    p.set_defaults(func=cmd_eval_multihop)

    p = commands.add_parser("upgrade", help="rewrite an index of an older format into the current one "
                            "(the first write does it too)")
    p.add_argument("index")
    p.set_defaults(func=cmd_upgrade)

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

    p = commands.add_parser("mcp", help="serve the agent tools (search, search_more, read_document, "
                                        "multi_hop_search) over MCP")
    p.add_argument("index", help="an index directory, single or sharded")
    p.add_argument("--http", action="store_true", help="streamable HTTP on 127.0.0.1 (default: stdio)")
    p.add_argument("--port", type=_int_range(0, 65535),
                   help="HTTP port (default: 8001; 0: a free one, named on stderr)")
    p.add_argument("--token", help="bearer token every HTTP request must carry (default: $LIR_AGENT_TOKEN)")
    p.add_argument("--ray", action="store_true", help="serve the shards from Ray actors (a sharded index)")
    p.add_argument("--address", help="with --ray: Ray cluster address (default: $RAY_ADDRESS, else a local Ray)")
    # the bounds SearchSession checks (lir_agent.index.MAX_K, MIN_PASSAGE_TOKENS; tests/test_mcp.py pins them)
    p.add_argument("-k", "--k", type=_int_range(1, 100_000), default=5,
                   help="documents per search unless the model asks (default: 5)")
    p.add_argument("--max-hops", type=_int_range(0), help="searches per client session (default: no limit)")
    p.add_argument("--max-tokens", type=_int_range(0),
                   help="tokens of text handed out per client session (default: no limit)")
    p.add_argument("--passage-tokens", type=_int_range(16), default=200,
                   help="the longest passage per hit (default: 200)")
    p.add_argument("--no-cite", action="store_true",
                   help="passages from each document's beginning instead of around the match (no re-encoding)")
    p.add_argument("--strategy", default="default",
                   help="the multi-hop strategy multi_hop_search runs, by name (LLM-free ones; default: the "
                        "default one; an unknown name is refused, naming the known ones)")
    p.set_defaults(func=cmd_mcp)
    for command in commands.choices.values():
        command.set_defaults(command_parser=command)  # argument errors show this command's usage
    return parser


def _report(exc: BaseException) -> None:
    """Prints an error as one ``error: ...`` line on stderr, with the notes added to it."""
    message = "; ".join([str(exc) or type(exc).__name__, *getattr(exc, "__notes__", [])])
    message = " ".join(message.splitlines()).encode("utf-8", "backslashreplace").decode("utf-8")
    print(f"error: {message}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    """Runs the ``lir-agent`` command. Returns 0, 2 after an error (one line on stderr) or 130
    when interrupted; argument errors exit with status 2 and the command's usage."""
    args, unknown = build_parser().parse_known_args(argv)
    if unknown:
        args.command_parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    try:
        args.func(args)
    except (LIRError, OSError) as exc:
        _report(exc)
        return 2
    except KeyboardInterrupt as exc:
        _report(exc)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
