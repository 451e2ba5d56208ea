"""Requests crafted against ``unmask serve``, as an attacker would send them, and what a safe server answers.

Each is a raw HTTP request (body bytes and headers) with the status it must get: never a 500, never the
content of a server file, never a runaway in memory or time. The tests send them to a real server process
(tests/test_serve_safety.py) and ``benchmarks/serve_safety.py`` measures the server after each (peak RSS,
CPU seconds, and how long a normal request then takes). An operator can send them to a deployment too:
``for crafted in CRAFTED: send(crafted.body, crafted.headers)``.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import attrs

__all__ = ["Crafted", "CRAFTED", "PROMPT", "nested_schema", "server_process", "send", "health", "peak_rss_bytes", "cpu_seconds"]

PROMPT = "shuffle: ada ben cal dov"
BOMB = "(a|b)*a(a|b){40}"  # a 2**41-state automaton


@attrs.frozen
class Crafted:
    name: str
    body: bytes
    status: int  # what a safe server answers
    param: str | None = None  # the field its error must name
    path: str = "/v1/completions"
    content_type: str = "application/json"


def nested_schema(depth: int) -> str:
    """A JSON Schema of objects ``depth`` deep, as JSON text (the encoder would recurse too deep for 500)."""
    opening = '{"type": "object", "required": ["a"], "properties": {"a": '
    return opening * depth + '{"type": "integer"}' + "}}" * depth


def _json(name: str, status: int, param: str | None = None, **fields: Any) -> Crafted:
    return Crafted(name, json.dumps({"prompt": PROMPT, "max_tokens": 16, **fields}).encode(), status, param)


def _schema(schema: Any) -> dict[str, Any]:
    return {"response_format": {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema}}}


def _nested(name: str, depth: int) -> Crafted:
    body = ('{"prompt": "%s", "response_format": {"type": "json_schema", "json_schema": {"name": "answer", '
            '"schema": %s}}}' % (PROMPT, nested_schema(depth)))
    return Crafted(name, body.encode(), 400)


CRAFTED: list[Crafted] = [
    # Memory and time: automata that explode, specs of thousands of parts.
    _json("regex bomb", 400, "regex", regex=BOMB),
    _json("regex bomb in a constraint spec", 400, "constraint", constraint=f"regex:pattern='{BOMB}'"),
    _json("schema pattern bomb", 400, "response_format", **_schema({"type": "string", "pattern": BOMB})),
    _json("schema minLength 1000000", 400, "response_format", **_schema({"type": "string", "minLength": 1_000_000})),
    _json("schema minItems 100000", 400, "response_format", **_schema({"type": "array", "minItems": 100_000})),
    _nested("schema nested 50 deep", 50),
    _json("policy of 20,000 parts", 400, "policy", policy=" + ".join(["topk"] * 20_000)),
    _json("stop of 20,000 parts", 400, "stop_criterion", stop_criterion=" + ".join(["eotp"] * 20_000)),
    # Values that used to end as "Internal Server Error".
    Crafted("a 5,000-digit integer", b'{"prompt": "copy: ada", "max_tokens": ' + b"9" * 5000 + b"}", 400),
    _nested("schema nested 500 deep", 500),
    Crafted("a body nested 100,000 deep", b"[" * 100_000 + b"]" * 100_000, 400),
    _json("seed 2**70 in a stream", 400, "seed", seed=2**70, stream=True),
    _json("seed 2**70", 400, "seed", seed=2**70),
    # Values the server cannot honour, once taken without a word.
    _json("temperature 1e308", 400, "temperature", temperature=1e308),
    Crafted("a 10 MB prompt", json.dumps({"prompt": "ada" * 3_500_000}).encode(), 413),
    _json("a blank prompt", 400, "prompt", prompt="  "),
    _json("logprobs", 400, "logprobs", logprobs=5),
    _json("echo", 400, "echo", echo=True),
    _json("best_of", 400, "best_of", best_of=3),
    _json("suffix", 400, "suffix", suffix="x"),
    _json("logit_bias", 400, "logit_bias", logit_bias={"5": 100}),
    _json("an unknown field", 400, "frobnicate", frobnicate=1),
    _json("response_format json_object", 400, "response_format", response_format={"type": "json_object"}),
    _json("a spec parameter of 5,000 digits", 400, "policy", policy="topk:k=" + "9" * 5000),
    # Origin: a page on another site posting a "simple" (preflight-free) request.
    Crafted("a JSON body sent as text/plain", json.dumps({"prompt": PROMPT}).encode(), 415,
            content_type="text/plain"),
]


# Run as the server process when a test watches which files it opens: every open, listdir and scandir of a
# path under WATCHED is written to LOG (opened before the hook, so its own writes are not events).
_AUDITED = """
import sys
log, watched = open(sys.argv[1], "a", buffering=1), sys.argv[2]
def hook(event, args):
    if event in ("open", "os.listdir", "os.scandir") and args and watched in str(args[0]):
        log.write(f"{event} {args[0]}\\n")
sys.addaudithook(hook)
from unmask.contrib.cli import main
sys.exit(main(sys.argv[3:]))
"""


@contextmanager
def server_process(arguments: list[str], *, audit_log: Path | None = None, watched: str = "",
                   timeout_s: float = 120) -> Iterator[tuple[subprocess.Popen, str]]:
    """``unmask serve ARGUMENTS`` in a process of its own on a free port of 127.0.0.1, until the block ends;
    with ``audit_log``, every file it opens under ``watched`` is logged there."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = ["serve", "--host", "127.0.0.1", "--port", str(port), *arguments]
    launcher = (["-c", _AUDITED, str(audit_log), watched] if audit_log else ["-m", "unmask.contrib.cli"])
    process = subprocess.Popen([sys.executable, *launcher, *command], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                urllib.request.urlopen(url + "/health", timeout=5).read()
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"unmask serve did not start (exit {process.poll()})") from None
                time.sleep(0.1)
        yield process, url
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()


def send(url: str, crafted: Crafted, headers: dict[str, str] | None = None,
         timeout_s: float = 60) -> tuple[int, dict[str, str], Any]:
    """POST a crafted request; its status, headers and JSON body (None if the body is not JSON)."""
    host, port = url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=timeout_s)
    try:
        connection.request("POST", crafted.path, crafted.body,
                           {"Content-Type": crafted.content_type, **(headers or {})})
        response = connection.getresponse()
        data = response.read()
    finally:
        connection.close()
    try:
        body = json.loads(data)
    except ValueError:
        body = None
    return response.status, dict(response.getheaders()), body


def health(url: str) -> dict[str, Any]:
    """The server's ``/health``: its queue and the rows it is decoding."""
    with urllib.request.urlopen(url + "/health", timeout=60) as response:
        return json.loads(response.read())


def peak_rss_bytes(pid: int) -> int:
    """The process's peak resident memory (VmHWM), read from outside it."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmHWM for process {pid}")


def cpu_seconds(pid: int) -> float:
    """User and system CPU time the process has used so far, read from outside it."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
