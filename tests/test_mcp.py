"""The MCP server (``lir-agent mcp``) driven by the official SDK's clients, as an MCP host would:
over stdio (the handshake protocol; every answer compared with the same call on a local
SearchSession, so the model reads what the other frameworks' tools give it), over streamable
HTTP (a session per client, the bearer token), and in this process over a sharded index, local
and on Ray (the sessionless 2026-07-28 protocol)."""

import json
import os
import queue
import re
import shutil
import subprocess
import sys
import threading
from contextlib import ExitStack
from pathlib import Path

import anyio
import httpx2
import pytest

from mcp import Client, ClientSession, MCPError, StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS, MODERN_PROTOCOL_VERSIONS

import lir_agent.agentic
from conftest import CHAIN_QUESTION, check_multi_hop_answer
from lir_agent import Index, InvalidInputError, LIRError
from lir_agent.agentic import SearchSession, mcp_server
from lir_agent.agentic.mcp_server import build_server
from lir_agent.agentic.session import MIN_PASSAGE_TOKENS
from lir_agent.agentic.strategies import Condensed, make_strategy
from lir_agent.agentic.tools import TOOLS, call_tool
from lir_agent.cli import main
from lir_agent.distributed import RayIndex
from lir_agent.index import MAX_K
from lir_agent.sharded import ShardedIndex, reshard

K = 3
QUERY = "American football team"
TOKEN = "mcp-s3cret"
START_TIMEOUT_S = 120  # a loaded CI machine imports torch and loads the model slowly
REFUSAL_TIMEOUT_S = 10  # a refused message is answered at once, without searching


@pytest.fixture(scope="module")
def index_dir(sample_index_path, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("mcp") / "index"
    shutil.copytree(sample_index_path, path)
    return path


def server_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "lir_agent.cli", "mcp", *map(str, args)]


def stdio_params(*args: str) -> StdioServerParameters:
    command = server_command(*args)
    return StdioServerParameters(command=command[0], args=command[1:], env=dict(os.environ))


def answer(result) -> tuple[str, dict]:
    """A tool result's text and data, checked to be a successful answer."""
    assert not result.is_error, result.content[0].text
    assert len(result.content) == 1
    return result.content[0].text, result.structured_content


def expected(session: SearchSession, name: str, arguments: dict) -> tuple[str, dict]:
    """What the same call on a local session answers (its data as it travels: JSON)."""
    local = call_tool(session, name, arguments)
    return local.text, json.loads(json.dumps(local.data))


def ids(data: dict) -> list[str]:
    return [hit["id"] for hit in data["hits"]]


def test_stdio_tools_no_repeats_and_errors_that_leave_the_session_unchanged(index_dir, encoder):
    index = Index.open(index_dir, encoder=encoder)
    local = SearchSession(index, k=K)
    ranking = [hit.id for hit in index.search(QUERY, k=3 * K)]

    async def run():
        async with stdio_client(stdio_params(index_dir, "--k", K)) as (read, write), \
                ClientSession(read, write) as client:
            await client.initialize()
            assert client.protocol_version in HANDSHAKE_PROTOCOL_VERSIONS
            tools = (await client.list_tools()).tools
            assert [tool.name for tool in tools] == list(TOOLS)
            for tool in tools:
                assert tool.description == TOOLS[tool.name].description
                assert tool.input_schema == TOOLS[tool.name].args.model_json_schema()

            first = answer(await client.call_tool("search", {"query": QUERY}))
            second = answer(await client.call_tool("search", {"query": QUERY}))
            assert first == expected(local, "search", {"query": QUERY})
            assert second == expected(local, "search", {"query": QUERY})
            assert ids(first[1]) == ranking[:K] and ids(second[1]) == ranking[K:2 * K]   # no repeats

            doc_id = ids(first[1])[0]
            read_answer = answer(await client.call_tool("read_document", {"id": doc_id}))
            assert read_answer == expected(local, "read_document", {"id": doc_id})
            assert read_answer[1]["text"] == index.get(doc_id).text[:read_answer[1]["end"]]

            length = len(index.get(doc_id).text)
            for arguments, name, named in [({"query": QUERY, "k": 0}, "search", "k"),
                                           ({"query": QUERY, "filter": {"year": {"$regex": "19"}}}, "search", "filter"),
                                           ({"id": "no-such-document"}, "read_document", "id"),
                                           ({"id": doc_id, "start": length}, "read_document", "start")]:
                result = await client.call_tool(name, arguments)
                assert result.is_error, arguments
                with pytest.raises(LIRError) as error:
                    call_tool(local, name, arguments)
                assert result.content[0].text == str(error.value)
                assert re.search(rf"\b{named}\b", result.content[0].text), result.content[0].text

            more = answer(await client.call_tool("search_more", {}))   # the pages go on where they were
            assert more == expected(local, "search_more", {})
            assert ids(more[1]) == ranking[2 * K:3 * K]
            with pytest.raises(MCPError, match="unknown tool 'grep'"):
                await client.call_tool("grep", {})

    anyio.run(run)


class StdioWire:
    """``lir-agent mcp`` in a subprocess, spoken to in raw JSON-RPC lines: bytes no SDK client sends."""

    def __init__(self, *args: str):
        self.process = subprocess.Popen(server_command(*args), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE)
        self.answers: queue.Queue[bytes] = queue.Queue()
        self.stderr: list[bytes] = []
        threading.Thread(target=lambda: [self.answers.put(line) for line in self.process.stdout], daemon=True).start()
        threading.Thread(target=lambda: self.stderr.extend(self.process.stderr), daemon=True).start()

    def send(self, message: dict, raw: bytes = b"") -> None:
        """Writes ``message`` as one line of JSON (a lone surrogate as a ``\\udXXX`` escape), ``@@`` as ``raw``."""
        self.process.stdin.write(json.dumps(message).encode().replace(b"@@", raw) + b"\n")
        self.process.stdin.flush()

    def request(self, id_: int | str, method: str, params: dict, raw: bytes = b"",
                timeout: float = START_TIMEOUT_S) -> dict:
        """Sends a request; returns the next line the server writes, which must come within ``timeout``."""
        self.send({"jsonrpc": "2.0", "id": id_, "method": method, "params": params}, raw)
        try:
            return json.loads(self.answers.get(timeout=timeout))
        except queue.Empty:
            pytest.fail(f"no answer to {method} {params} within {timeout} s")

    def close(self) -> str:
        """Closes stdin (the server exits, else is killed); returns what the server wrote on stderr."""
        self.process.stdin.close()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            raise
        return b"".join(self.stderr).decode("utf-8", "replace")


def test_stdio_refuses_lone_surrogates_and_bytes_that_are_not_utf8(index_dir, encoder):
    ranking = [hit.id for hit in Index.open(index_dir, encoder=encoder).search(QUERY, k=2 * K)]
    wire = StdioWire(index_dir, "--k", K)
    try:
        wire.request(0, "initialize", {"protocolVersion": HANDSHAKE_PROTOCOL_VERSIONS[-1], "capabilities": {},
                                       "clientInfo": {"name": "raw", "version": "0"}})
        wire.send({"jsonrpc": "2.0", "method": "notifications/initialized"})

        def call(id_, arguments, raw=b"", timeout=START_TIMEOUT_S, name="search") -> dict:
            return wire.request(id_, "tools/call", {"name": name, "arguments": arguments}, raw, timeout)

        first = call(1, {"query": QUERY})
        assert first["id"] == 1 and ids(first["result"]["structuredContent"]) == ranking[:K]
        surrogate = "holds a lone UTF-16 surrogate"
        for id_, answered_id, name, arguments, raw, message in [
                (2, 2, "search", {"query": "film \ud83d"}, b"", f"params.arguments.query {surrogate} (U+D83D"),
                (3, 3, "read_document", {"id": "\udead"}, b"", f"params.arguments.id {surrogate} (U+DEAD"),
                (4, 4, "search", {"query": QUERY, "filter": {"year": {"$eq": "\ud83d"}}}, b"",
                 f"params.arguments.filter.year.$eq {surrogate}"),
                (5, 5, "search", {"query": "film @@"}, b"\xff\xfe", f"params.arguments.query {surrogate} (U+DCFF"),
                ("\udead", None, "search", {"query": QUERY}, b"", f"id {surrogate}")]:   # an id that is not text
            reply = call(id_, arguments, raw, REFUSAL_TIMEOUT_S, name)
            assert reply["id"] == answered_id and reply["error"]["code"] == -32602, reply
            assert reply["error"]["message"].startswith(message), reply
            if raw:
                assert "not UTF-8 (invalid start byte: byte 0xff at offset" in reply["error"]["message"]
        wire.send({"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": "\ud83d"}})

        second = call(6, {"query": QUERY})   # the next line: the notification went unanswered
        assert second["id"] == 6
        assert ids(second["result"]["structuredContent"]) == ranking[K:]   # the pages go on where they were
    finally:
        stderr = wire.close()
    assert f"dropped a notification: params.requestId {surrogate}" in stderr


@pytest.fixture(scope="module")
def sharded_dir(index_dir, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("mcp") / "sharded"
    reshard(index_dir, path, num_shards=2, show_progress=False)
    return path


def two_pages(index) -> list[list[str]]:
    """The ids of two searches of QUERY by one client of the server over ``index`` (in this
    process, in the 2026-07-28 protocol: no MCP session, the server process is the client's)."""
    async def run():
        async with Client(build_server(index, k=K)) as client:
            assert client.protocol_version in MODERN_PROTOCOL_VERSIONS
            return [ids(answer(await client.call_tool("search", {"query": QUERY}))[1]) for _ in range(2)]

    return anyio.run(run)


def test_multi_hop_search(chain_index_path, encoder):
    index = Index.open(chain_index_path, encoder=encoder)

    async def run():
        async with Client(build_server(index, k=2)) as client:   # the default strategy
            text, data = answer(await client.call_tool("multi_hop_search", {"question": CHAIN_QUESTION}))
            assert set(check_multi_hop_answer(text, data)) == {"journal", "society"}
            assert data["strategy"] == make_strategy("default").name
        # keep=1: a later hop's documents rank from the second place on, so "journal" would come back
        async with Client(build_server(index, k=3, strategy=Condensed(k=3, keep=1))) as client:
            first = answer(await client.call_tool("search", {"query": "Who publishes the Journal of Widgetry?",
                                                             "k": 1}))
            assert ids(first[1]) == ["journal"]
            text, data = answer(await client.call_tool("multi_hop_search", {"question": CHAIN_QUESTION}))
            assert "journal" not in check_multi_hop_answer(text, data)   # not handed out twice in one session
            for arguments in ({}, {"question": ""}):
                result = await client.call_tool("multi_hop_search", arguments)
                assert result.is_error and "invalid arguments for multi_hop_search: question: " in \
                    result.content[0].text
        async with Client(build_server(index, k=2, strategy="flipr")) as client:   # by name
            text, data = answer(await client.call_tool("multi_hop_search", {"question": CHAIN_QUESTION}))
            assert data["strategy"] == "flipr" and check_multi_hop_answer(text, data)

    anyio.run(run)
    with pytest.raises(InvalidInputError, match="unknown strategy 'nope'; known: default, "):
        build_server(index, strategy="nope")


def test_sharded_index(sharded_dir, encoder):
    index = ShardedIndex.open(sharded_dir, encoder=encoder)
    ranking = [hit.id for hit in index.search(QUERY, k=2 * K)]
    assert two_pages(index) == [ranking[:K], ranking[K:]]


def test_sharded_index_on_ray(ray_cluster, sharded_dir, encoder):
    ranking = [hit.id for hit in ShardedIndex.open(sharded_dir, encoder=encoder).search(QUERY, k=2 * K)]
    with ExitStack() as stack:   # what --ray opens
        index = mcp_server.open_index(str(sharded_dir), ray=True, address=None, stack=stack)
        assert isinstance(index, RayIndex)
        assert two_pages(index) == [ranking[:K], ranking[K:]]


class HTTPServer:
    """``lir-agent mcp --http --port 0`` in a subprocess: waits for the address it names on stderr."""

    def __init__(self, *args: str):
        self.process = subprocess.Popen(server_command(*args, "--http", "--port", "0"), stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, text=True)
        self.stderr: list[str] = []
        self.ready = threading.Event()
        threading.Thread(target=self._drain, daemon=True).start()   # keeps the pipe from filling up
        self.ready.wait(START_TIMEOUT_S)
        address = re.search(r"http://\S+", "".join(self.stderr))
        if address is None:
            self.stop()
            pytest.fail("the MCP server did not start:\n" + "".join(self.stderr))
        self.url = address.group(0)

    def _drain(self) -> None:
        for line in self.process.stderr:
            self.stderr.append(line)
            if "http://" in line:
                self.ready.set()
        self.ready.set()   # the server exited

    def stop(self) -> str:
        """Stops the server; returns what it wrote on stdout."""
        self.process.terminate()
        out, _ = self.process.communicate(timeout=30)
        return out


def mcp_error(error: BaseException) -> MCPError:
    """The MCPError a client raised, out of the task groups it passed through."""
    while isinstance(error, BaseExceptionGroup) and len(error.exceptions) == 1:
        error = error.exceptions[0]
    assert isinstance(error, MCPError), repr(error)
    return error


def test_http_sessions_are_per_client_and_the_token_is_required(index_dir, encoder):
    index = Index.open(index_dir, encoder=encoder)
    ranking = [hit.id for hit in index.search(QUERY, k=2 * K)]
    server = HTTPServer(index_dir, "--k", K, "--no-cite", "--token", TOKEN)
    assert server.url.startswith("http://127.0.0.1:") and server.url.endswith("/mcp")

    def client(token: str | None = TOKEN, mode: str = "auto") -> Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        http = httpx2.AsyncClient(headers=headers, timeout=START_TIMEOUT_S)   # a search may take seconds
        return Client(streamable_http_client(server.url, http_client=http), mode=mode)

    async def search(client: Client) -> list[str]:
        data = answer(await client.call_tool("search", {"query": QUERY}))[1]
        assert all(hit["highlights"] == [] and (hit["start"] == 0 or index.get(hit["id"]).passages)
                   for hit in data["hits"])   # --no-cite: a document's start, or a long one's best passage
        return ids(data)

    async def run():
        async with client() as a, client() as b:
            assert a.protocol_version in HANDSHAKE_PROTOCOL_VERSIONS   # discovery steers to a session
            assert await search(a) == ranking[:K]
            assert await search(b) == ranking[:K]   # b's session is not a's
            assert await search(a) == ranking[K:]
            assert await search(b) == ranking[K:]
        async with client() as c:   # a new client session starts afresh
            assert await search(c) == ranking[:K]
        for token in (None, "wrong"):
            with pytest.raises(BaseException) as refused:
                async with client(token):
                    pass
            assert "missing or wrong bearer token" in str(mcp_error(refused.value))
        async with client(mode=MODERN_PROTOCOL_VERSIONS[-1]) as sessionless:
            with pytest.raises(MCPError, match="initialize handshake"):
                await search(sessionless)

    try:
        anyio.run(run)
        for token in (None, "wrong"):
            headers = {"Authorization": f"Bearer {token}"} if token else {}
            refused = httpx2.post(server.url, json={"jsonrpc": "2.0", "id": 1, "method": "ping"}, headers=headers)
            assert refused.status_code == 401 and refused.headers["www-authenticate"] == "Bearer"
        search_for = json.dumps({"jsonrpc": "2.0", "id": 7, "method": "tools/call",
                                 "params": {"name": "search", "arguments": {"query": "film @@"}}}).encode()
        for raw in ("\ud83d".encode("ascii", "backslashreplace"), b"\xff\xfe"):   # a JSON escape, bytes
            refused = httpx2.post(server.url, content=search_for.replace(b"@@", raw), headers={
                "Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"})
            assert refused.status_code == 400, refused.text
            assert refused.json()["id"] == 7 and refused.json()["error"]["code"] == -32602
            assert refused.json()["error"]["message"].startswith("params.arguments.query holds a lone UTF-16 surrogate")
    finally:
        stdout = server.stop()
    assert stdout == ""


def test_cli_options_and_errors(capsys, monkeypatch):
    calls = []
    monkeypatch.setattr(mcp_server, "run", lambda path, **options: calls.append((path, options)))
    monkeypatch.setenv("LIR_AGENT_TOKEN", TOKEN)
    assert main(["mcp", "dir", "--http", "--port", "0", "-k", "4", "--max-hops", "3", "--max-tokens", "900",
                 "--passage-tokens", "50", "--no-cite"]) == 0
    assert main(["mcp", "dir", "--ray", "--address", "auto", "--strategy", "flipr"]) == 0
    assert calls == [("dir", dict(http=True, port=0, token=TOKEN, ray=False, address=None, k=4, max_hops=3,
                                  max_tokens=900, passage_tokens=50, cite=False, strategy="default")),
                     ("dir", dict(http=False, port=mcp_server.DEFAULT_PORT, token=TOKEN, ray=True, address="auto",
                                  k=5, max_hops=None, max_tokens=None, passage_tokens=200, cite=True,
                                  strategy="flipr"))]
    with pytest.raises(SystemExit) as exit_:
        main(["mcp", "dir", "--token", TOKEN])
    assert exit_.value.code == 2 and "--port and --token apply to --http only" in capsys.readouterr().err
    for named, option, bad, good in [("-k/--k", "-k", "0", str(MAX_K)), ("-k/--k", "--k", str(MAX_K + 1), "1"),
                                     ("-k/--k", "-k", "five", "5"), ("--max-hops", "--max-hops", "-1", "0"),
                                     ("--max-tokens", "--max-tokens", "-1", "0"),
                                     ("--passage-tokens", "--passage-tokens", str(MIN_PASSAGE_TOKENS - 1),
                                      str(MIN_PASSAGE_TOKENS)),
                                     ("--port", "--port", "65536", "65535")]:
        with pytest.raises(SystemExit) as exit_:   # refused naming the option, before anything is loaded
            main(["mcp", "dir", "--http", option, bad])
        assert exit_.value.code == 2
        assert f"argument {named}: expected an integer " in capsys.readouterr().err
        assert main(["mcp", "dir", "--http", option, good]) == 0   # the bounds are SearchSession's own

    for name in [name for name in sys.modules if name.split(".")[0] == "mcp"]:   # as if the SDK were not installed
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "mcp", None)
    monkeypatch.delitem(sys.modules, "lir_agent.agentic.mcp_server")
    monkeypatch.delattr(lir_agent.agentic, "mcp_server")
    assert main(["mcp", "dir"]) == 2
    assert "pip install 'lir-agent[mcp]'" in capsys.readouterr().err


def test_stdio_error_before_serving_leaves_stdout_empty(tmp_path):
    done = subprocess.run(server_command(tmp_path), capture_output=True, text=True, timeout=START_TIMEOUT_S)
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr.startswith("error: ") and str(tmp_path) in done.stderr
