"""``unmask serve`` with real clients: the openai package and plain HTTP, against a server on 127.0.0.1."""

import json
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest
import uvicorn

import unmask
from unmask.contrib.models.reference import load_reference_model
from unmask.contrib.models.transformers import decode_text
from unmask.contrib.serve import build_app
from unmask.contrib.serve.app import ServeConfig
from unmask.contrib.serve.batching import Settings
from unmask.contrib.tasks import samples
from unmask.contrib.tasks.lists import ITEMS

PROMPTS = [s.prompt for task in ("shuffle", "sort", "copy") for s in samples(task, 3, 0)]


@pytest.fixture(scope="module")
def server():
    model, tokenizer = load_reference_model()
    app = build_app(model, tokenizer, ServeConfig(name="reference", defaults=Settings(gen_length=32, block_length=32),
                                                  max_batch=8, wait_s=0.2))
    instance = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=instance.run, daemon=True)
    thread.start()
    while not instance.started:
        time.sleep(0.05)
    port = instance.servers[0].sockets[0].getsockname()[1]
    yield {"url": f"http://127.0.0.1:{port}", "app": app, "model": model, "tokenizer": tokenizer}
    instance.should_exit = True
    thread.join(timeout=30)


@pytest.fixture
def client(server):
    return openai.OpenAI(base_url=server["url"] + "/v1", api_key="unused")


def alone(server, prompt, **settings):
    settings = {"gen_length": 32, "block_length": 32, **settings}
    answers, result = decode_text(server["model"], server["tokenizer"], [prompt], **settings)
    return answers[0], result


def test_models_lists_the_served_model(client):
    assert [m.id for m in client.models.list()] == ["reference"]


def test_a_completion_equals_the_same_decode_in_python(server, client):
    expected, result = alone(server, PROMPTS[0], policy="threshold:tau=0.9")
    reply = client.completions.create(model="reference", prompt=PROMPTS[0], max_tokens=32,
                                      extra_body={"policy": "threshold:tau=0.9"})
    assert reply.choices[0].text == expected and reply.choices[0].finish_reason == "stop"
    assert reply.usage.completion_tokens == int(result.answer_lengths[0])
    assert reply.usage.model_extra["forwards"] == int(result.nfe[0])


def test_an_inline_grammar_gives_an_answer_that_parses(client):
    from unmask.constraints.grammar import lark_parser

    grammar = 'start: NUMBER (("+" | "-") NUMBER)*\nNUMBER: /[0-9]+/\n%ignore " "'  # its tokens are words
    reply = client.completions.create(model="reference", prompt=PROMPTS[0], max_tokens=16,
                                      extra_body={"response_format": {"type": "grammar", "grammar": grammar}})
    lark_parser(grammar).parse(reply.choices[0].text)


def test_a_recursive_json_schema_goes_through_the_grammar_route(client):
    tree = {"anyOf": [{"type": "integer"}, {"type": "array", "items": {"$ref": "#"}}]}  # outlines-core refuses it
    reply = client.completions.create(model="reference", prompt=PROMPTS[0], max_tokens=16, extra_body={
        "response_format": {"type": "json_schema", "json_schema": {"name": "tree", "schema": tree}}})
    assert isinstance(json.loads(reply.choices[0].text), (int, list)), reply.choices[0].text


def test_chat_without_a_template_takes_one_user_message(server, client):
    expected, _ = alone(server, PROMPTS[1])
    reply = client.chat.completions.create(model="reference", max_tokens=32,
                                           messages=[{"role": "user", "content": PROMPTS[1]}])
    assert reply.choices[0].message.content == expected
    with pytest.raises(openai.BadRequestError, match="one user message"):
        client.chat.completions.create(model="reference", messages=[{"role": "user", "content": "a"},
                                                                    {"role": "user", "content": "b"}])


def test_a_stream_sends_the_settled_prefix_and_ends_with_the_answer(server, client):
    # The bundled model fills the padding first; on this sort prompt its answer's prefix settles in five steps.
    expected, _ = alone(server, PROMPTS[3])
    chunks = list(client.completions.create(model="reference", prompt=PROMPTS[3], max_tokens=32, stream=True))
    assert "".join(c.choices[0].text for c in chunks) == expected
    assert chunks[-1].choices[0].finish_reason == "stop" and len(chunks) > 2
    pieces = list(client.chat.completions.create(model="reference", max_tokens=32, stream=True,
                                                 messages=[{"role": "user", "content": PROMPTS[3]}]))
    assert "".join(p.choices[0].delta.content or "" for p in pieces) == expected


def test_concurrent_requests_are_batched_and_each_equals_its_decode_alone(server, client):
    log = server["app"].state.service.batcher.log
    before = len(log)
    with ThreadPoolExecutor(len(PROMPTS)) as pool:
        replies = list(pool.map(lambda p: client.completions.create(model="reference", prompt=p, max_tokens=32,
                                                                    extra_body={"policy": "topk:k=2"}), PROMPTS))
    sizes = [len(batch["forwards"]) for batch in log[before:]]
    assert max(sizes) > 1 and sum(sizes) == len(PROMPTS)
    for prompt, reply in zip(PROMPTS, replies):
        assert reply.choices[0].text == alone(server, prompt, policy="topk:k=2")[0]



def _two_requests(server, max_batch, join_running):
    """A request, and a second with its settings sent at the first's third step; the batches' log and replies."""
    from unmask.contrib.serve.batching import Batcher, Job

    batcher = Batcher(server["model"], server["tokenizer"], max_batch=max_batch, join_running=join_running)
    settings = Settings(policy="topk", gen_length=32, block_length=8)
    ids = [server["tokenizer"](prompt)["input_ids"] for prompt in PROMPTS[:2]]
    second = []

    def arrive_meanwhile(update):
        if update.step == 3 and not second:
            second.append(batcher.submit(Job(ids[1], settings)))

    try:
        replies = [batcher.submit(Job(ids[0], settings, on_step=arrive_meanwhile)).result(timeout=120)]
        replies.append(second[0].result(timeout=120))
    finally:
        batcher.close()
    return batcher.log, ids, replies


def test_a_request_joins_a_running_batch_with_its_settings_and_each_equals_its_decode_alone(server):
    """Continuous batching (--join-running): a request that arrives while a batch with its settings decodes
    joins it at the batch's next block boundary; both answers, forwards and commit steps equal their decodes
    alone."""
    log, ids, replies = _two_requests(server, max_batch=8, join_running=True)
    (batch,) = log
    assert batch["joined"] == 1 and len(batch["forwards"]) == 2
    for prompt_ids, reply in zip(ids, replies):
        result = unmask.decode(server["model"], [prompt_ids], gen_length=32, block_length=8, policy="topk")
        assert reply["tokens"] == result.tokens[0].tolist() and reply["nfe"] == int(result.nfe[0])
        assert reply["commit_step"] == result.commit_step[0].tolist()


@pytest.mark.parametrize("max_batch, join_running", [(1, True), (8, False)])
def test_no_request_joins_a_full_batch_or_without_join_running(server, max_batch, join_running):
    log, _, _ = _two_requests(server, max_batch=max_batch, join_running=join_running)
    assert [(len(batch["forwards"]), batch["joined"]) for batch in log] == [(1, 0), (1, 0)]


def test_lm_eval_local_completions_against_the_server_scores_like_bench(server, tmp_path, capsys, monkeypatch):
    from unmask.contrib.cli import main

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    assert main(["export-tasks", str(tmp_path / "tasks"), "--tasks", "shuffle", "--n", "20", "--seed", "4"]) == 0
    log = server["app"].state.service.batcher.log
    before = len(log)
    model_args = (f"model=reference,base_url={server['url']}/v1/completions,tokenizer_backend=none,"
                  "max_gen_toks=32,num_concurrent=4")
    assert main(["lm-eval", "--model", "local-completions", "--model_args", model_args, "--tasks", "unmask_shuffle",
                 "--include_path", str(tmp_path / "tasks"), "--output_path", str(tmp_path / "out")]) == 0
    results = json.loads(next((tmp_path / "out").rglob("results_*.json")).read_text())
    assert max(len(batch["forwards"]) for batch in log[before:]) > 1  # concurrent requests shared batches
    capsys.readouterr()
    assert main(["bench", "--tasks", "shuffle", "--n", "20", "--seed", "4", "--gen-length", "32", "--block-length",
                 "32", "--policy", "topk", "--stop", "none", "--json"]) == 0
    bench = json.loads(capsys.readouterr().out)[0]
    assert results["results"]["unmask_shuffle"]["acc,none"] * 100 == pytest.approx(bench["accuracy"])

def test_max_tokens_below_a_block_cuts_the_answer(server, client):
    reply = client.completions.create(model="reference", prompt=PROMPTS[3], max_tokens=2)
    assert len(reply.choices[0].text.split()) <= 2 and reply.usage.completion_tokens <= 2


def post(server, path, body):
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(server["url"] + path, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


@pytest.mark.parametrize("body, status, param, message", [
    (b"{not json", 400, None, "not valid JSON"),
    ({"prompt": "copy: ada", "policy": "no_such"}, 400, "policy", "no_such"),
    ({"prompt": "copy: ada", "max_tokens": 0}, 400, "max_tokens", "max_tokens must be an integer in [1, 4096]"),
    ({"prompt": "copy: ada", "max_tokens": 4000}, 400, "max_tokens", "exceed the model's 512 positions"),
    ({"prompt": "copy: ada", "temperature": -1}, 400, "temperature", "temperature must be a number in [0, 2]"),
    ({"prompt": "copy: ada", "temperature": "warm"}, 400, "temperature", "must be a number"),
    ({"prompt": "copy: ada", "model": "gpt-9"}, 404, "model", "does not exist"),
    ({"prompt": "copy: ada", "n": 2}, 400, "n", "n must be 1"),
    ({"prompt": 3}, 400, "prompt", "prompt must be a string"),
    ({"prompt": "copy: " + "ada " * 600}, 400, "prompt", "exceed the model's 512 positions"),
    ({"prompt": "copy: ada", "stop": ["a"] * 5}, 400, "stop", "at most 4"),
    ({"prompt": "copy: ada", "constraint": "regex:pattern='[a-'"}, 400, "constraint", "unterminated character set"),
    ({"prompt": "copy: ada", "response_format": {"type": "grammar", "grammar": "start: (("}}, 400, "response_format",
     "grammar: "),
    ({"prompt": "copy: ada", "response_format": {"type": "grammar", "grammar": "start: x*"}}, 400, "response_format",
     "Rule 'x' used but not defined"),
    ({"prompt": "copy: ada", "constraint": "grammar:file=/etc/passwd"}, 400, "constraint", "a request may not set it"),
])
def test_bad_requests_get_openai_style_errors_naming_the_field(server, body, status, param, message):
    code, reply = post(server, "/v1/completions", body)
    assert code == status and reply["error"]["param"] == param and message in reply["error"]["message"]


def test_nan_temperature_is_refused(server):
    code, reply = post(server, "/v1/completions", b'{"prompt": "copy: ada", "temperature": NaN}')
    assert code == 400 and reply["error"]["param"] == "temperature"


def test_a_failing_request_in_a_batch_fails_alone(server, client):
    # Same settings, so one batch; 24 names cannot be permuted into 16 tokens: that request fails alone.
    log = server["app"].state.service.batcher.log
    before = len(log)
    constraint = {"constraint": "distinct_items:permutation_of_prompt=true"}
    long = "shuffle: " + " ".join(ITEMS)
    expected, _ = alone(server, PROMPTS[4], constraint="distinct_items:permutation_of_prompt=true", gen_length=16,
                        block_length=16)
    with ThreadPoolExecutor(2) as pool:
        bad = pool.submit(post, server, "/v1/completions", {"prompt": long, "max_tokens": 16, **constraint})
        good = pool.submit(lambda: client.completions.create(model="reference", prompt=PROMPTS[4], max_tokens=16,
                                                             extra_body=constraint))
        code, reply = bad.result()
        assert good.result().choices[0].text == expected
    assert code == 400 and "no answer that fits" in reply["error"]["message"]
    assert [len(b["forwards"]) for b in log[before:]] == [1]  # the batch of two failed; the good one ran alone



def test_a_client_that_goes_away_frees_its_row_and_the_others_are_unchanged(server, client):
    import http.client

    log = server["app"].state.service.batcher.log
    before = len(log)
    body = {"prompt": PROMPTS[5], "max_tokens": 256, "stream": True, "unmask_steps": True}
    expected, _ = alone(server, PROMPTS[6], gen_length=256)

    def leave():
        host, port = server["url"].removeprefix("http://").split(":")
        connection = http.client.HTTPConnection(host, int(port))
        connection.request("POST", "/v1/completions", json.dumps(body), {"Content-Type": "application/json"})
        response = connection.getresponse()
        assert response.status == 200 and b"unmask.step" in response.read1(4096)
        connection.close()  # gone after the first step

    with ThreadPoolExecutor(2) as pool:
        gone = pool.submit(leave)
        stays = pool.submit(lambda: client.completions.create(model="reference", prompt=PROMPTS[6], max_tokens=256))
        gone.result()
        assert stays.result().choices[0].text == expected
    (batch,) = log[before:]
    forwards = dict(zip(batch["cancelled"], batch["forwards"]))
    assert forwards[True] < forwards[False] == 256  # one token per step: the other row took every step


def test_sigterm_finishes_the_requests_in_flight_then_exits():
    import http.client
    import signal

    from unmask.testing.crafted_requests import server_process

    with server_process(["--gen-length", "64"]) as (process, url):
        host, port = url.removeprefix("http://").split(":")
        connection = http.client.HTTPConnection(host, int(port), timeout=120)
        body = {"prompt": PROMPTS[0], "stream": True, "unmask_steps": True}
        connection.request("POST", "/v1/completions", json.dumps(body), {"Content-Type": "application/json"})
        response = connection.getresponse()
        first = response.readline()
        while b"unmask.step" not in first:  # in flight once its first step has been sent
            first = response.readline()
        process.send_signal(signal.SIGTERM)
        rest = response.read().decode()
        finals = [json.loads(line[5:]) for line in rest.splitlines()
                  if line.startswith("data:") and '"finish_reason": "stop"' in line]
        assert rest.rstrip().endswith("data: [DONE]") and finals and finals[-1]["usage"]["forwards"] == 64
        # After its graceful shutdown uvicorn re-raises the signal it caught, so the exit is SIGTERM's own.
        assert process.wait(timeout=60) in (0, -signal.SIGTERM)

def test_the_page_fills_the_canvas_live_and_shows_the_apis_answer(server, client):
    import shutil

    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    assert chromium, "the page test drives the distribution's Chromium: run scripts/install_browser.sh"
    expected = client.completions.create(model="reference", prompt=PROMPTS[7], max_tokens=32,
                                         extra_body={"policy": "topk", "stop_criterion": "none"}).choices[0].text
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        try:
            page = browser.new_page()
            page.goto(server["url"] + "/")
            page.wait_for_function("document.getElementById('policy').options.length > 0")
            assert page.input_value("#cache") == "none" and page.input_value("#stop") == "none"  # the defaults
            page.fill("#prompt", PROMPTS[7])
            page.select_option("#policy", "topk")
            page.select_option("#stop", "none")
            page.fill("#max_tokens", "32")
            # Holes on the page after each drawing (steps that arrive together are drawn one by one).
            page.evaluate("""() => { window.holes = []; const drawStep = window.draw;
                window.draw = event => { drawStep(event);
                    window.holes.push(document.querySelectorAll('#canvas span.open').length); }; }""")
            page.click("#go")
            page.wait_for_function("document.getElementById('summary').textContent.includes('forwards')")
            assert page.text_content("#answer") == expected
            assert "in 32 forwards" in page.text_content("#summary")
            # Drawn once per step, one token per step: 31 holes left after the first step, none after the last.
            assert page.evaluate("window.holes") == list(range(31, -1, -1))
            steps = [cell.get_attribute("title") for cell in page.query_selector_all("#canvas span")]
            colours = {cell.evaluate("c => c.style.background") for cell in page.query_selector_all("#canvas span")}
            assert sorted(steps) == sorted(f"step {i}" for i in range(32)) and len(colours) > 16
        finally:
            browser.close()


def test_a_block_causal_model_batches_prompts_of_every_length_together():
    """Rows of any prompt length share a batch on a block-causal model (each answer from its own column of
    the shared blocks), and every answer equals its solo decode."""
    from unmask.contrib.models.tiny import tiny_denoiser, tiny_tokenizer
    from unmask.contrib.serve.batching import Batcher, Job, Settings

    model, tokenizer = tiny_denoiser("llama", block_size=4), tiny_tokenizer()
    batcher = Batcher(model, tokenizer, max_batch=8, wait_s=0.5)
    settings = Settings(policy="threshold:tau=0.3", cache="exact", gen_length=8, block_length=4)
    prompts = [[5 + i] * (1 + i) for i in range(6)]  # lengths 1-6: four residues modulo the block
    seen = []
    try:
        futures = [batcher.submit(Job(prompt_ids=p, settings=settings, on_step=seen.append)) for p in prompts]
        answers = [future.result(timeout=60)["tokens"] for future in futures]
    finally:
        batcher.close()
    assert seen and len(batcher.log) < 4  # four residues in fewer batches: batches mix residues
    for prompt, answer in zip(prompts, answers):
        alone = unmask.decode(model, [prompt], gen_length=8, block_length=4, policy="threshold:tau=0.3")
        assert alone.tokens[0].tolist() == answer
