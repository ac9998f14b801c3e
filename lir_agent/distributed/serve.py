"""An HTTP search service on Ray Serve over a :class:`~lir_agent.distributed.RayIndex`.

(No ``from __future__ import annotations`` here: FastAPI reads the request model from the
handler's annotations at run time.)

``POST /search`` takes JSON ``{"query": str}`` or ``{"queries": [str, ...]}`` with optional
``k``, ``filter`` and ``allow_partial``; single queries arriving together are batched
(``serve.batch``) into one sharded search. ``GET /health`` and ``GET /info`` report the index.
Bad requests get a 4xx naming the problem (never a 500): malformed JSON or wrong types 422,
k / query length / batch size over the limits 422, a query that is not text (a lone surrogate,
``"\\ud83d"``) 422, a missing or wrong bearer token 401, a bad filter (one holding such a
string included) 400. The service binds 127.0.0.1 unless told otherwise.
"""


import asyncio
import hmac
import json
from dataclasses import asdict, dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, StrictBool, StrictInt, StrictStr
from ray import serve

from ..errors import InvalidInputError, LIRError
from ..text import check_text
from .ray_index import RayIndex, ShardUnavailableError, ensure_ray


@dataclass(frozen=True)
class Limits:
    """Largest request the service accepts."""

    max_k: int = 1000
    max_query_chars: int = 4096
    max_batch: int = 64


class SearchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    query: StrictStr | None = None
    queries: list[StrictStr] | None = None
    k: StrictInt = 10
    filter: dict[str, Any] | None = None
    allow_partial: StrictBool = False


class AsciiJSONResponse(JSONResponse):
    """JSON with every non-ASCII character escaped: an answer that quotes the request (a
    validation error echoing a lone surrogate, ``"\\ud83d"``) still encodes, and stays 4xx."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, allow_nan=False, separators=(",", ":")).encode("ascii")


class RequestError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def check_request(request: SearchRequest, limits: Limits) -> list[str]:
    """The request's queries, or a RequestError naming what is out of bounds."""
    if (request.query is None) == (request.queries is None):
        raise RequestError(422, "give exactly one of 'query' (a string) or 'queries' (a list of strings)")
    queries = [request.query] if request.query is not None else request.queries
    if not 1 <= len(queries) <= limits.max_batch:
        raise RequestError(422, f"'queries' holds 1 to {limits.max_batch} queries, got {len(queries)}")
    for i, query in enumerate(queries):
        if not query.strip():
            raise RequestError(422, f"query #{i} is empty")
        if len(query) > limits.max_query_chars:
            raise RequestError(422, f"query #{i} has {len(query)} characters; the limit is {limits.max_query_chars}")
        try:
            check_text(query, f"query #{i}")
        except InvalidInputError as exc:
            raise RequestError(422, str(exc)) from exc
    if not 1 <= request.k <= limits.max_k:
        raise RequestError(422, f"k must be between 1 and {limits.max_k}, got {request.k}")
    return queries


def hits_json(hits: Any) -> dict[str, Any]:
    return {"hits": [{"id": h.id, "score": h.score, "rank": h.rank, "text": h.text, "metadata": h.metadata,
                      "passages": [{"start": p.start, "end": p.end, "score": p.score} for p in h.passages]}
                     for h in hits],
            "partial": hits.partial, "missing_shards": list(hits.missing_shards)}


def build_app(path: str, *, token: str | None = None, limits: Limits = Limits(), index_options: dict | None = None,
              max_batch_size: int = 32, batch_wait_timeout_s: float = 0.005, num_cpus: float = 0.25) -> serve.Application:
    """The Serve application for the sharded index at ``path`` (``index_options`` go to
    :meth:`RayIndex.open`); ``token``: bearer token every request must carry."""
    app = FastAPI(title="lir-agent", docs_url=None, redoc_url=None)

    @app.middleware("http")
    async def bearer_token(request: Request, call_next: Any) -> Any:
        if token is not None:
            given = request.headers.get("authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
                return JSONResponse({"error": "missing or wrong bearer token"}, status_code=401,
                                    headers={"WWW-Authenticate": "Bearer"})
        return await call_next(request)

    @app.exception_handler(RequestError)
    async def request_error(_: Request, exc: RequestError) -> JSONResponse:
        return AsciiJSONResponse({"error": str(exc)}, status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        return AsciiJSONResponse({"detail": jsonable_encoder(exc.errors())}, status_code=422)

    @serve.deployment(ray_actor_options={"num_cpus": num_cpus}, max_ongoing_requests=2 * max_batch_size)
    @serve.ingress(app)
    class SearchService:
        def __init__(self) -> None:
            self.index = RayIndex.open(path, **(index_options or {}))

        @app.get("/health")
        def health(self) -> dict[str, Any]:
            return {"status": "ok", "num_shards": self.index.num_shards}

        @app.get("/info")
        def info(self) -> dict[str, Any]:
            info = self.index.info()
            return {key: info[key] for key in ("num_shards", "index_type", "documents", "tokens", "bytes_per_token")} \
                | {"limits": asdict(limits)}

        @app.post("/search")
        async def search(self, request: SearchRequest) -> dict[str, Any]:
            queries = check_request(request, limits)
            try:
                if request.query is not None:
                    hits = await self.batched(request.query, request.k, request.filter, request.allow_partial)
                    return hits_json(unwrap(hits))
                results = await asyncio.to_thread(self.index.search_batch, queries, k=request.k, filter=request.filter,
                                                  allow_partial=request.allow_partial)
                return {"results": [hits_json(hits) for hits in results]}
            except InvalidInputError as exc:
                raise RequestError(400, str(exc)) from exc
            except ShardUnavailableError as exc:
                raise RequestError(503, str(exc)) from exc
            except LIRError as exc:
                raise RequestError(500, f"search failed: {exc}") from exc

        @serve.batch(max_batch_size=max_batch_size, batch_wait_timeout_s=batch_wait_timeout_s)
        async def batched(self, queries: list[str], ks: list[int], filters: list[Any],
                          partial: list[bool]) -> list[Any]:
            """Single queries that arrived together, searched as one batch per distinct
            (k, filter, allow_partial); a bad filter fails only the requests that carry it."""
            groups: dict[str, list[int]] = {}
            for i, key in enumerate(zip(ks, map(json.dumps, filters), partial)):
                groups.setdefault(json.dumps(key), []).append(i)
            out: list[Any] = [None] * len(queries)
            for members in groups.values():
                first = members[0]
                try:
                    results = await asyncio.to_thread(self.index.search_batch, [queries[i] for i in members],
                                                      k=ks[first], filter=filters[first], allow_partial=partial[first])
                except LIRError as exc:
                    results = [exc] * len(members)
                for i, result in zip(members, results):
                    out[i] = result
            return out

    return SearchService.bind()


def unwrap(result: Any) -> Any:
    """A batched result, or the error the batch raised for it."""
    if isinstance(result, Exception):
        raise result
    return result


def run(path: str, *, host: str = "127.0.0.1", port: int = 8000, token: str | None = None,
        limits: Limits = Limits(), index_options: dict | None = None, address: str | None = None,
        blocking: bool = True) -> None:
    """Starts Ray (or joins ``address``), Serve's HTTP proxy on ``host:port`` and the application."""
    ensure_ray(address)
    serve.start(http_options={"host": host, "port": port})
    serve.run(build_app(path, token=token, limits=limits, index_options=index_options), name="lir-agent",
              route_prefix="/", blocking=blocking)
