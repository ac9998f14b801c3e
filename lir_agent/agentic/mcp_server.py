"""The MCP server: the session tools of :mod:`lir_agent.agentic.tools` (``search``,
``search_more``, ``read_document``, ``multi_hop_search``; same names, descriptions, JSON schemas, text and data as
every other framework) served with the official ``mcp`` SDK, over stdio or streamable HTTP.

Each MCP client session gets its own :class:`~lir_agent.agentic.SearchSession` over one opened
index, so a client's searches never repeat a document it was given, and two clients share
nothing. Over stdio the server process serves one client, so the process holds one session;
over streamable HTTP a session lives in the state of its MCP connection (``Mcp-Session-Id``),
created by the initialize handshake and dropped with it (the client's DELETE, the idle timeout,
shutdown). The 2026-07-28 protocol has no sessions: the HTTP server advertises the handshake
versions on ``server/discover``, so clients that probe fall back to a session, and answers a
sessionless tool call with an error saying so. Over stdio either era works.

A tool's answer is its text (``content``) and its JSON data (``structuredContent``); bad
arguments come back as a tool error (``isError``) naming the argument, the session unchanged.
Over HTTP the server binds 127.0.0.1 and, given a token, refuses any request without
``Authorization: Bearer <token>`` (401).

Text must be text (:mod:`lir_agent.text`): a request or notification holding a lone UTF-16
surrogate (a ``"\\ud83d"`` escape without its pair) or bytes that are not UTF-8 is refused
before the SDK reads it (which would drop it unanswered, or replace the bytes silently), with a
JSON-RPC error (invalid params) naming the field, e.g. ``params.arguments.query``: over stdio a
request is answered with it and a notification is dropped with a note on stderr; over HTTP
either gets it with status 400.
"""

from __future__ import annotations

import hmac
import json
import socket
import sys
from contextlib import ExitStack, redirect_stdout
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, AsyncIterator

import anyio
import anyio.to_thread
import mcp_types as types
from mcp.server.context import ServerRequestContext
from mcp.server.lowlevel import Server
from mcp.server.stdio import _claim_fd, _open_stdin_diversion, stdio_server
from mcp.shared.exceptions import MCPError
from mcp.shared.message import SessionMessage
from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS, MODERN_PROTOCOL_VERSIONS
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from .. import __version__
from ..errors import InvalidInputError, LIRError
from ..text import check_json, check_text
from .session import SearchSession
from .strategies import Strategy
from .tools import TOOLS, call_tool, resolve_strategy

if TYPE_CHECKING:
    from mcp.shared._context_streams import ContextSendStream

HOST = "127.0.0.1"
DEFAULT_PORT = 8001
MCP_PATH = "/mcp"
SHUTDOWN_GRACE_S = 5  # on shutdown, open event streams are closed after this long
STATE_KEY = "lir_agent.session"  # where an HTTP connection's state holds its session
INSTRUCTIONS = ("Search a document collection by meaning (late-interaction MaxSim retrieval). A search never "
                "returns a document this session was already given; search_more pages on; read_document reads "
                "a document's text from a character offset; multi_hop_search runs several searches for a "
                "question whose answer takes facts that build on each other.")
TOOL_ANNOTATIONS = types.ToolAnnotations(read_only_hint=True, open_world_hint=False)


def tool_definitions() -> list[types.Tool]:
    """The session tools as MCP tools, their input schemas derived from the tools' pydantic models."""
    return [types.Tool(name=spec.name, description=spec.description, input_schema=spec.args.model_json_schema(),
                       annotations=TOOL_ANNOTATIONS) for spec in TOOLS.values()]


@dataclass
class ClientState:
    """One MCP client session's search session, and the lock that runs its calls one at a time."""

    search: SearchSession
    lock: anyio.Lock = field(default_factory=anyio.Lock)


def build_server(index: Any, *, http: bool = False, strategy: Strategy | str | None = None,
                 **session_options: Any) -> Server:
    """The MCP server over ``index`` (``Index``, ``ShardedIndex`` or ``RayIndex``), one
    SearchSession per MCP client session, made with ``session_options`` (``k``, ``max_hops``,
    ``max_tokens``, ``passage_tokens``, ``cite``: checked here, InvalidInputError when wrong).
    ``http``: sessions per streamable-HTTP connection, else one for the process (stdio).
    ``strategy``: what ``multi_hop_search`` runs, a Strategy or the name of one (None: the
    default), returning ``k`` documents (:func:`~lir_agent.agentic.tools.resolve_strategy`:
    InvalidInputError naming the known strategies for an unknown name). Over HTTP the clients'
    calls may run at once, so the strategy must be safe to run concurrently on separate sessions."""
    def new_state() -> ClientState:
        return ClientState(SearchSession(index, **session_options))

    process_state = new_state()  # the stdio client's; made now, so that wrong settings fail before serving
    strategy = resolve_strategy(strategy, process_state.search.k)
    tools = tool_definitions()
    schemas = {tool.name: tool.input_schema for tool in tools}

    def client_state(ctx: ServerRequestContext) -> ClientState:
        if not http:
            return process_state
        if ctx.session.protocol_version in MODERN_PROTOCOL_VERSIONS:
            raise MCPError(types.INVALID_REQUEST, "this server keeps a search session per MCP session, and the "
                           f"{ctx.session.protocol_version} protocol has none: connect with the initialize handshake "
                           f"(protocol {HANDSHAKE_PROTOCOL_VERSIONS[-1]} or earlier)")
        # The connection's state lives exactly as long as the MCP session. The SDK's request context
        # does not expose the connection yet (its `Context.connection` will): the SDK's tests reach it so too.
        state = ctx.session._connection.state
        if STATE_KEY not in state:
            state[STATE_KEY] = new_state()
        return state[STATE_KEY]

    async def list_tools(ctx: ServerRequestContext,
                         params: types.PaginatedRequestParams | None) -> types.ListToolsResult:
        return types.ListToolsResult(tools=tools)

    async def call(ctx: ServerRequestContext, params: types.CallToolRequestParams) -> types.CallToolResult:
        if params.name not in TOOLS:  # not the model's mistake to correct: a protocol error
            raise MCPError(types.INVALID_PARAMS, f"unknown tool {params.name!r}; the tools are {', '.join(TOOLS)}")
        client = client_state(ctx)
        async with client.lock:
            try:
                answer = await anyio.to_thread.run_sync(call_tool, client.search, params.name, params.arguments or {},
                                                        strategy)
            except LIRError as exc:
                return types.CallToolResult(content=[types.TextContent(text=str(exc))], is_error=True)
        return types.CallToolResult(content=[types.TextContent(text=answer.text)], structured_content=answer.data)

    server = Server("lir-agent", version=__version__, instructions=INSTRUCTIONS, on_list_tools=list_tools,
                    on_call_tool=call, get_tool_input_schema=schemas.get)
    if http:
        async def discover(ctx: ServerRequestContext, params: types.RequestParams | None) -> types.DiscoverResult:
            """Advertises the handshake versions only: a probing client falls back to a session."""
            return types.DiscoverResult(supported_versions=list(HANDSHAKE_PROTOCOL_VERSIONS),
                                        capabilities=server.get_capabilities(), instructions=INSTRUCTIONS)

        server.add_request_handler("server/discover", types.RequestParams, discover)
    return server


def refusal(data: bytes) -> tuple[types.JSONRPCError, bool] | None:
    """Whether ``data``, one JSON-RPC message (a line over stdio, a body over HTTP), is refused.
    For a request or notification holding a lone UTF-16 surrogate or bytes that are not UTF-8
    (read as U+DC80..U+DCFF, ``surrogateescape``): the invalid-params error naming the first such
    field (``params.arguments.query holds a lone UTF-16 surrogate ...``) with the request's id
    (null where the id is not text), and whether the message is a request (else a notification).
    None for any other message: the SDK reads it as it does."""
    try:
        text, not_utf8 = data.decode("utf-8"), ""
    except UnicodeDecodeError as exc:
        text = data.decode("utf-8", "surrogateescape")
        not_utf8 = f": the message is not UTF-8 ({exc.reason}: byte 0x{data[exc.start]:02x} at offset {exc.start})"
    try:
        message = json.loads(text)
    except (ValueError, RecursionError):  # not JSON: the SDK answers that as it does
        return None
    if not isinstance(message, dict) or "method" not in message:
        return None
    try:
        for key, value in message.items():
            check_text(key, f"key {key!r}")
            check_json(value, key)
    except InvalidInputError as exc:
        error = types.ErrorData(code=types.INVALID_PARAMS, message=f"{exc}{not_utf8}")
        return types.JSONRPCError(jsonrpc="2.0", id=_reply_id(message.get("id")), error=error), "id" in message
    return None


def _reply_id(value: Any) -> types.RequestId | None:
    """``value`` if an answer can carry it as its JSON-RPC id, else None (the id is unknown)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    try:
        return check_text(value, "id")
    except InvalidInputError:  # not a string, or not text
        return None


def _error_response(error: types.JSONRPCError, status: int, headers: dict[str, str] | None = None) -> Response:
    return Response(error.model_dump_json(by_alias=True, exclude_unset=True), status_code=status,
                    media_type="application/json", headers=headers)


class BearerToken:
    """ASGI middleware: every HTTP request must carry ``Authorization: Bearer <token>``, else 401
    with a JSON-RPC error in the body (which MCP clients show as the request's error)."""

    def __init__(self, app: ASGIApp, token: str):
        self.app = app
        self.expected = f"Bearer {token}".encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            given = next((value for name, value in scope["headers"] if name == b"authorization"), b"")
            if not hmac.compare_digest(given, self.expected):
                error = types.JSONRPCError(jsonrpc="2.0", id=None, error=types.ErrorData(
                    code=types.INVALID_REQUEST, message="missing or wrong bearer token (HTTP 401)"))
                await _error_response(error, 401, {"WWW-Authenticate": "Bearer"})(scope, receive, send)
                return
        await self.app(scope, receive, send)


class TextOnly:
    """ASGI middleware: a POSTed request or notification that :func:`refusal` refuses gets its
    JSON-RPC error with status 400, and never reaches the SDK; any other request goes on, its
    body replayed."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        received = [await receive()]
        while received[-1]["type"] == "http.request" and received[-1].get("more_body", False):
            received.append(await receive())
        refused = refusal(b"".join(message.get("body", b"") for message in received))
        if refused is not None:
            await _error_response(refused[0], 400)(scope, receive, send)
            return

        async def replay() -> Any:
            return received.pop(0) if received else await receive()

        await self.app(scope, replay, send)


class StdinLines:
    """The SDK stdio transport's stdin: reads ``source``'s lines as bytes and hands the SDK each
    one as text, except those :func:`refusal` refuses: a request is answered with its error on
    the SDK's write stream (given to :meth:`answer_on`, so that answers never interleave), a
    notification is dropped with a note on stderr."""

    def __init__(self, source: anyio.AsyncFile[bytes]):
        self.source = source
        self.write: ContextSendStream[SessionMessage] | None = None
        self.writable = anyio.Event()

    def answer_on(self, write: ContextSendStream[SessionMessage]) -> None:
        """Answers refused requests on ``write``, the write stream ``stdio_server`` yields."""
        self.write = write
        self.writable.set()

    def __aiter__(self) -> AsyncIterator[str]:
        return self._lines()

    async def _lines(self) -> AsyncIterator[str]:
        async for line in self.source:
            refused = refusal(line)
            if refused is None:
                yield line.decode("utf-8", "replace")  # as the SDK reads stdin
                continue
            error, is_request = refused
            if is_request:
                await self.writable.wait()
                await self.write.send(SessionMessage(error))
            else:
                print(f"lir-agent mcp: dropped a notification: {error.error.message}", file=sys.stderr, flush=True)


def open_index(path: str, ray: bool, address: str | None, stack: ExitStack) -> Any:
    """The index at ``path``: local (single or sharded), or served by Ray actors (closed with ``stack``)."""
    if ray:
        from ..distributed import RayIndex

        return stack.enter_context(RayIndex.open(path, address=address))
    from ..sharded import open_index as open_local

    return open_local(path)


def run(path: str, *, http: bool = False, port: int = DEFAULT_PORT, token: str | None = None, ray: bool = False,
        address: str | None = None, **session_options: Any) -> None:
    """Serves the index at ``path`` over stdio (until the client closes it) or, with ``http``, over
    streamable HTTP on 127.0.0.1:``port`` at ``/mcp`` (``port`` 0: a free one; the address goes
    to stderr once the index is open) until interrupted. ``token``: the bearer token HTTP
    requests must carry; ``ray``: the shards in Ray actors (``address``: a cluster);
    ``session_options`` (``strategy`` too): see :func:`build_server`."""
    with ExitStack() as stack:
        with redirect_stdout(sys.stderr):  # stdout is the stdio wire: what loading prints goes to stderr
            index = open_index(path, ray, address, stack)
        server = build_server(index, http=http, **session_options)
        if http:
            anyio.run(_serve_http, server, path, port, token)
        else:
            anyio.run(_serve_stdio, server)


async def _serve_stdio(server: Server) -> None:
    # The SDK reads stdin as text, replacing bytes that are not UTF-8: stdin is read here, claimed as
    # the SDK claims it (fd 0 then reads the null device), with the SDK's own (private) helper.
    wire, release = _claim_fd(0, sys.stdin, "rb", _open_stdin_diversion)
    try:
        stdin = StdinLines(anyio.wrap_file(wire))
        async with stdio_server(stdin) as (read, write):  # while serving, stray writes to stdout go to stderr
            stdin.answer_on(write)
            await server.run(read, write, server.create_initialization_options())
    finally:
        if release is not None:
            release()


async def _serve_http(server: Server, path: str, port: int, token: str | None) -> None:
    import uvicorn

    app = TextOnly(server.streamable_http_app(streamable_http_path=MCP_PATH, host=HOST))
    if token:
        app = BearerToken(app, token)
    with socket.create_server((HOST, port)) as sock:
        url = f"http://{HOST}:{sock.getsockname()[1]}{MCP_PATH}"
        print(f"serving {path} over MCP at {url}", file=sys.stderr, flush=True)
        config = uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=SHUTDOWN_GRACE_S)
        await uvicorn.Server(config).serve(sockets=[sock])
