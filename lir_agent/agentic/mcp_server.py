"""The MCP server: the session tools of :mod:`lir_agent.agentic.tools` (``search``,
``search_more``, ``read_document``; same names, descriptions, JSON schemas, text and data as
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
"""

from __future__ import annotations

import hmac
import socket
import sys
from contextlib import ExitStack, redirect_stdout
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.to_thread
import mcp_types as types
from mcp.server.context import ServerRequestContext
from mcp.server.lowlevel import Server
from mcp.server.stdio import stdio_server
from mcp.shared.exceptions import MCPError
from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS, MODERN_PROTOCOL_VERSIONS
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from .. import __version__
from ..errors import LIRError
from .session import SearchSession
from .tools import TOOLS, call_tool

HOST = "127.0.0.1"
DEFAULT_PORT = 8001
MCP_PATH = "/mcp"
SHUTDOWN_GRACE_S = 5  # on shutdown, open event streams are closed after this long
STATE_KEY = "lir_agent.session"  # where an HTTP connection's state holds its session
INSTRUCTIONS = ("Search a document collection by meaning (late-interaction MaxSim retrieval). A search never "
                "returns a document this session was already given; search_more pages on; read_document reads "
                "a document's text from a character offset.")
TOOL_ANNOTATIONS = types.ToolAnnotations(read_only_hint=True, open_world_hint=False)


def tool_definitions() -> list[types.Tool]:
    """The three session tools as MCP tools, their input schemas derived from the tools' pydantic models."""
    return [types.Tool(name=spec.name, description=spec.description, input_schema=spec.args.model_json_schema(),
                       annotations=TOOL_ANNOTATIONS) for spec in TOOLS.values()]


@dataclass
class ClientState:
    """One MCP client session's search session, and the lock that runs its calls one at a time."""

    search: SearchSession
    lock: anyio.Lock = field(default_factory=anyio.Lock)


def build_server(index: Any, *, http: bool = False, **session_options: Any) -> Server:
    """The MCP server over ``index`` (``Index``, ``ShardedIndex`` or ``RayIndex``), one
    SearchSession per MCP client session, made with ``session_options`` (``k``, ``max_hops``,
    ``max_tokens``, ``passage_tokens``, ``cite``: checked here, InvalidInputError when wrong).
    ``http``: sessions per streamable-HTTP connection, else one for the process (stdio)."""
    def new_state() -> ClientState:
        return ClientState(SearchSession(index, **session_options))

    process_state = new_state()  # the stdio client's; made now, so that wrong settings fail before serving
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
                answer = await anyio.to_thread.run_sync(call_tool, client.search, params.name, params.arguments or {})
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
                refusal = Response(error.model_dump_json(by_alias=True, exclude_unset=True), status_code=401,
                                   media_type="application/json", headers={"WWW-Authenticate": "Bearer"})
                await refusal(scope, receive, send)
                return
        await self.app(scope, receive, send)


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
    ``session_options``: see :func:`build_server`."""
    with ExitStack() as stack:
        with redirect_stdout(sys.stderr):  # stdout is the stdio wire: what loading prints goes to stderr
            index = open_index(path, ray, address, stack)
        server = build_server(index, http=http, **session_options)
        if http:
            anyio.run(_serve_http, server, path, port, token)
        else:
            anyio.run(_serve_stdio, server)


async def _serve_stdio(server: Server) -> None:
    async with stdio_server() as (read, write):  # while serving, stray writes to stdout go to stderr
        await server.run(read, write, server.create_initialization_options())


async def _serve_http(server: Server, path: str, port: int, token: str | None) -> None:
    import uvicorn

    app = server.streamable_http_app(streamable_http_path=MCP_PATH, host=HOST)
    if token:
        app = BearerToken(app, token)
    with socket.create_server((HOST, port)) as sock:
        url = f"http://{HOST}:{sock.getsockname()[1]}{MCP_PATH}"
        print(f"serving {path} over MCP at {url}", file=sys.stderr, flush=True)
        config = uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=SHUTDOWN_GRACE_S)
        await uvicorn.Server(config).serve(sockets=[sock])
