"""``unmask serve`` against untrusted requests, on a real server process: files it must not read, requests
that would exhaust it, origins and keys it must refuse, and a bounded, fair queue. Memory and CPU are read
from outside the process (/proc)."""

import http.client
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

import unmask
from unmask.contrib.models.reference import load_reference_model
from unmask.testing.crafted_requests import (
    CRAFTED, PROMPT, Crafted, cpu_seconds, health, peak_rss_bytes, send, server_process,
)

KEY = "s3cret-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
NORMAL = Crafted("normal", json.dumps({"prompt": PROMPT, "max_tokens": 16}).encode(), 200)


@pytest.fixture(scope="module")
def guarded(tmp_path_factory):
    """A server with an API key and one allowed browser origin, whose file opens under ``watched`` are logged."""
    watched = tmp_path_factory.mktemp("server-files")
    audit = watched.parent / "audit.log"
    arguments = ["--gen-length", "32", "--api-key", KEY, "--cors-origin", "http://allowed.example",
                 "--max-batch", "16", "--batch-wait-ms", "300", "--max-running", "4",
                 "--compile-timeout-s", "2", "--compile-memory-bytes", str(256 * 2**20)]
    with server_process(arguments, audit_log=audit, watched=str(watched)) as (process, url):
        yield {"url": url, "pid": process.pid, "watched": watched, "audit": audit}


def get(url, path, headers=None, method="GET"):
    host, port = url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=60)
    try:
        connection.request(method, path, headers=headers or {})
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        connection.close()


def completion(url, timeout_s=60, **fields):
    crafted = Crafted("request", json.dumps({"prompt": PROMPT, "max_tokens": 16, **fields}).encode(), 200)
    return send(url, crafted, AUTH, timeout_s)


@pytest.mark.parametrize("crafted", CRAFTED, ids=[c.name for c in CRAFTED])
def test_a_crafted_request_is_refused_clearly_and_the_server_stays_well(guarded, crafted):
    cpu = cpu_seconds(guarded["pid"])
    status, _, reply = send(guarded["url"], crafted, AUTH)
    assert status == crafted.status, reply
    assert reply["error"]["message"] and (crafted.param is None or reply["error"]["param"] == crafted.param)
    assert cpu_seconds(guarded["pid"]) - cpu < 10  # the acceptance bound: none of these decodes anything
    assert send(guarded["url"], NORMAL, AUTH)[0] == 200  # and a normal request is answered right after
    assert peak_rss_bytes(guarded["pid"]) < 2**30


def test_no_request_reads_a_file_it_names_and_present_and_missing_paths_answer_alike(guarded):
    watched = guarded["watched"]
    (watched / "secret.json").write_text('{"type": "integer", "enum": [424242], "password": "hunter2"}')
    (watched / "filter").mkdir()
    (watched / "filter" / "filter.json").write_text('{"format": "unmask-filter/1", "token": "hunter2"}')
    replies = {}
    for field, template in (("constraint", "json_schema:schema={}"), ("policy", "learn2pd:filter={}"),
                            ("cache", "dual:dtype={}"), ("stop_criterion", "eotp:scope={}")):
        for name in ("secret.json", "filter", "missing.json"):
            path = str(watched / name)
            status, _, reply = completion(guarded["url"], **{field: template.format(path)})
            replies[field, name] = (status, reply["error"]["message"].replace(path, "PATH"))
            assert status == 400 and reply["error"]["param"] == field
            assert "424242" not in json.dumps(reply) and "hunter2" not in json.dumps(reply)
        assert replies[field, "secret.json"] == replies[field, "filter"] == replies[field, "missing.json"]
    assert "may not set it" in replies["constraint", "secret.json"][1]
    assert "must name one of the server's trained_filters" in replies["policy", "filter"][1]
    assert not guarded["audit"].exists() or guarded["audit"].read_text() == ""  # nothing under it was opened


def test_a_schema_or_pattern_comes_inline_and_constrains_the_answer(guarded):
    pattern = "(ada|ben|cal|dov)( (ada|ben|cal|dov)){3}"
    status, _, reply = completion(guarded["url"], regex=pattern, max_tokens=32, policy="threshold:tau=0.9")
    assert status == 200
    model, tokenizer = load_reference_model()
    from unmask.contrib.models.transformers import decode_text

    expected, _ = decode_text(model, tokenizer, [PROMPT], gen_length=32, block_length=32,
                              policy="threshold:tau=0.9", constraint=f"regex:pattern='{pattern}'")
    assert reply["choices"][0]["text"] == expected[0]
    status, _, reply = completion(guarded["url"], regex=pattern, constraint="distinct_items")
    assert status == 400 and "one of constraint, regex and response_format" in reply["error"]["message"]


def test_foreign_hosts_missing_keys_and_other_origins_are_refused(guarded):
    url = guarded["url"]
    status, _, body = get(url, "/v1/models", {**AUTH, "Host": "attacker.example"})
    assert status == 400 and json.loads(body)["error"]["code"] == "bad_host"
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}):
        status, _, reply = send(url, NORMAL, headers)
        assert status == 401 and reply["error"]["code"] == "invalid_api_key"
    assert get(url, "/v1/models", AUTH)[0] == 200 and get(url, "/health")[0] == 200 and get(url, "/")[0] == 200
    preflight = {"Origin": "http://allowed.example", "Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "authorization,content-type"}
    _, headers, _ = get(url, "/v1/completions", preflight, method="OPTIONS")
    assert headers.get("access-control-allow-origin") == "http://allowed.example"
    _, headers, _ = get(url, "/v1/completions", {**preflight, "Origin": "http://evil.example"}, method="OPTIONS")
    assert "access-control-allow-origin" not in headers


def test_metrics_count_rejects_by_reason_and_answered_tokens(guarded):
    assert send(guarded["url"], NORMAL, AUTH)[0] == 200
    send(guarded["url"], NORMAL, {})  # 401
    status, _, text = get(guarded["url"], "/metrics", AUTH)
    metrics = {line.split()[0]: float(line.split()[1]) for line in text.decode().splitlines()
               if line and not line.startswith("#")}
    assert status == 200 and metrics['unmask_requests_rejected_total{reason="unauthorized"}'] >= 1
    assert metrics["unmask_completion_tokens_total"] > 0 and metrics["unmask_requests_completed_total"] >= 1
    assert metrics["unmask_queue_depth"] == 0 and "unmask_rows_in_flight" in metrics


def _stream_until_closed(url, body, started, stop):
    """A streaming request held open until ``stop`` is set, then dropped (its row is freed)."""
    host, port = url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=600)
    connection.request("POST", "/v1/completions", json.dumps(body), {"Content-Type": "application/json", **AUTH})
    response = connection.getresponse()
    assert response.status == 200
    started.release()
    finished = False
    while not stop.is_set() and not finished:
        finished = b"[DONE]" in response.read1(65536)
    connection.close()
    return finished


def test_a_short_request_is_answered_while_sixteen_max_canvas_requests_decode(guarded):
    """Batches take turns a step each: the short request does not wait for the long ones to finish (the ratio
    of times is measured by benchmarks/serve_safety.py)."""
    url, started, stop = guarded["url"], threading.Semaphore(0), threading.Event()
    long = {"prompt": PROMPT, "max_tokens": 480, "stream": True, "unmask_steps": True}  # the largest canvas
    with ThreadPoolExecutor(16) as pool:
        streams = [pool.submit(_stream_until_closed, url, long, started, stop) for _ in range(16)]
        for _ in range(16):
            assert started.acquire(timeout=120)
        while health(url)["rows_in_flight"] < 16:
            time.sleep(0.05)
        status, _, reply = completion(url, timeout_s=300)
        assert status == 200 and reply["usage"]["completion_tokens"] > 0
        assert health(url)["rows_in_flight"] == 16  # every long request still decoding
        stop.set()
        assert not any(stream.result() for stream in streams)
    while health(url)["rows_in_flight"]:  # the dropped streams' rows are freed at their next step
        time.sleep(0.1)


def test_a_full_queue_answers_429_at_once_and_deadlines_answer_504():
    arguments = ["--gen-length", "32", "--max-batch", "1", "--max-running", "1", "--max-queue", "16",
                 "--request-timeout-s", "3"]
    long = Crafted("long", json.dumps({"prompt": PROMPT, "max_tokens": 480}).encode(), 504)
    with server_process(arguments) as (_, url):
        with ThreadPoolExecutor(17) as pool:
            waiting = [pool.submit(send, url, long) for _ in range(17)]  # one decoding, sixteen queued
            while health(url)["queue"] < 16:
                time.sleep(0.02)
            status, headers, reply = send(url, NORMAL)
            assert status == 429 and headers["retry-after"] == "1" and reply["error"]["code"] == "queue_full"
            answers = [future.result() for future in waiting]
        assert [status for status, _, _ in answers] == [504] * 17
        assert all("deadline" in reply["error"]["message"] for _, _, reply in answers)
        assert send(url, NORMAL)[0] == 200 and health(url) == {"status": "ok", "queue": 0, "rows_in_flight": 0}


def test_the_python_api_still_reads_schema_files(tmp_path):
    """The rule belongs to the request surface: Python and the CLI keep reading files."""
    schema = tmp_path / "schema.json"
    schema.write_text('{"type": "string", "enum": ["a"]}')
    constraint = unmask.create("constraints", f"json_schema:schema={schema}")
    assert constraint.schema == str(schema)


def test_docs_list_every_limit_with_its_flag_and_default():
    from pathlib import Path

    import attrs

    from unmask.contrib.serve.limits import Limits

    text = (Path(__file__).parents[1] / "docs" / "serve.md").read_text()
    for field in attrs.fields(Limits):
        flag = "--" + field.name.replace("_", "-")
        default = f"{field.default:g}" if isinstance(field.default, float) else str(field.default)
        assert f"| `{flag}` | {default} |" in text, flag
