"""``unmask serve`` under load: concurrent streaming clients against requests sent one at a time.

    python benchmarks/serve_load.py --out benchmarks/results/serve_load.json

Starts ``unmask serve`` on 127.0.0.1 (the bundled model) in a process of its own, then sends the same requests (the task
suite's evaluation prompts, round robin over the tasks) twice with the ``openai`` client:

1. one at a time: each is decoded alone, so its answer is the solo decode;
2. from ``--clients`` concurrent streaming clients (a bounded asyncio loop): the server batches them.

Reports lost and mismatched responses (a concurrent answer that differs from the solo one), throughput of
both runs and their ratio, p50/p99 latency, and when the first text chunk of each stream arrived against
the end of its decode. ``--screenshot PATH`` also saves the page at ``/`` after a decode (Chromium through
Playwright), the picture in docs/serve.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from unmask._files import write_atomically, write_text_atomically
from unmask.testing.crafted_requests import server_process


def screenshot(url: str, path: Path) -> None:
    import shutil

    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        raise SystemExit("--screenshot needs the distribution's Chromium: scripts/install_browser.sh")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1000, "height": 620})
            page.goto(url.removesuffix("/v1") + "/")
            page.wait_for_function("document.getElementById('policy').options.length > 0")
            page.fill("#prompt", "shuffle: ada ben cal dov eli fay gus hal")
            page.select_option("#policy", "threshold")
            page.select_option("#stop", "eotp")
            page.click("#go")
            page.wait_for_function("document.getElementById('summary').textContent.includes('forwards')")
            picture = page.screenshot(full_page=True)
            write_atomically(path, lambda temporary: temporary.write_bytes(picture))
        finally:
            browser.close()


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


async def both_runs(url: str, prompts: list[str], args: argparse.Namespace) -> tuple[Any, ...]:
    from openai import AsyncOpenAI

    async with AsyncOpenAI(base_url=url, api_key="unused", timeout=600, max_retries=0) as client:
        solo, solo_s = await one_at_a_time(client, prompts, args.max_tokens)
        replies, together_s = await concurrent(client, prompts, args.max_tokens, args.clients)
    return solo, solo_s, replies, together_s


async def one_at_a_time(client: Any, prompts: list[str], max_tokens: int) -> tuple[list[str], float]:
    started, answers = time.perf_counter(), []
    for prompt in prompts:
        reply = await client.completions.create(model="reference", prompt=prompt, max_tokens=max_tokens)
        answers.append(reply.choices[0].text)
    return answers, time.perf_counter() - started


async def concurrent(client: Any, prompts: list[str], max_tokens: int, clients: int) -> tuple[list[dict[str, Any]], float]:
    gate = asyncio.Semaphore(clients)

    async def request(prompt: str) -> dict[str, Any]:
        async with gate:
            sent, first, text = time.perf_counter(), None, ""
            try:
                stream = await client.completions.create(model="reference", prompt=prompt, max_tokens=max_tokens,
                                                         stream=True)
                async for chunk in stream:
                    if chunk.choices and chunk.choices[0].text:
                        first = first if first is not None else time.perf_counter()
                        text += chunk.choices[0].text
            except Exception as error:  # a lost response is counted, not raised
                return {"error": f"{error.__class__.__name__}: {error}"}
            done = time.perf_counter()
            return {"text": text, "latency_s": done - sent, "first_chunk_s": (first or done) - sent}

    started = time.perf_counter()
    replies = await asyncio.gather(*(request(prompt) for prompt in prompts))
    return list(replies), time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=256, help="requests in each run (default: 256)")
    parser.add_argument("--clients", type=int, default=64, help="concurrent clients (default: 64)")
    parser.add_argument("--max-batch", type=int, default=64, help="the server's --max-batch (default: 64)")
    parser.add_argument("--batch-wait-ms", type=float, default=20, help="the server's --batch-wait-ms (default: 20)")
    parser.add_argument("--policy", default="threshold:tau=0.9", help="decoding policy (default: threshold:tau=0.9)")
    parser.add_argument("--stop", default="eotp", help="stop criterion (default: eotp)")
    parser.add_argument("--cache", default="none", help="KV cache (default: none)")
    parser.add_argument("--max-tokens", type=int, default=64, help="max_tokens of each request (default: 64)")
    parser.add_argument("--join-running", action="store_true", help="the server's --join-running (continuous "
                        "batching)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default: 2)")
    parser.add_argument("--device", default="cpu", help="the server's torch device, e.g. cuda (default: cpu)")
    parser.add_argument("--out", type=Path, default=None, help="write the figures as JSON here")
    parser.add_argument("--screenshot", type=Path, default=None, help="save a PNG of the page after a decode here")
    args = parser.parse_args()
    for name in ("requests", "clients", "max_batch", "max_tokens", "threads"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    torch.set_num_threads(args.threads)

    from unmask.contrib.tasks import DEFAULT_TASKS, samples

    per_task = -(-args.requests // len(DEFAULT_TASKS))
    drawn = [samples(task, per_task, 0) for task in DEFAULT_TASKS]
    prompts = [drawn[i % len(drawn)][i // len(drawn)].prompt for i in range(args.requests)]

    flags = ["--policy", args.policy, "--stop", args.stop, "--cache", args.cache, "--gen-length", str(args.max_tokens),
             "--max-batch", str(args.max_batch), "--batch-wait-ms", str(args.batch_wait_ms), "--device", args.device]
    flags += ["--join-running"] if args.join_running else []
    # In a process of its own: the clients' event loop does not share its interpreter.
    with server_process(flags) as (_, base):
        url = base + "/v1"
        solo, solo_s, replies, together_s = asyncio.run(both_runs(url, prompts, args))
        if args.screenshot:
            screenshot(url, args.screenshot)

    lost = [r for r in replies if "error" in r]
    answered = [(r, expected) for r, expected in zip(replies, solo) if "error" not in r]
    mismatched = sum(r["text"] != expected for r, expected in answered)
    latencies = [r["latency_s"] for r, _ in answered]
    early = sum(r["first_chunk_s"] < r["latency_s"] for r, _ in answered)
    figures = {
        "requests": args.requests, "clients": args.clients, "max_batch": args.max_batch,
        "batch_wait_ms": args.batch_wait_ms, "join_running": args.join_running, "policy": args.policy,
        "stop": args.stop, "cache": args.cache, "max_tokens": args.max_tokens,
        "lost": len(lost), "mismatched": mismatched,
        "one_at_a_time_s": round(solo_s, 2), "concurrent_s": round(together_s, 2),
        "one_at_a_time_rps": round(args.requests / solo_s, 2), "concurrent_rps": round(args.requests / together_s, 2),
        "throughput_ratio": round(solo_s / together_s, 2),
        "latency_p50_s": round(percentile(latencies, 0.5), 3) if latencies else None,
        "latency_p99_s": round(percentile(latencies, 0.99), 3) if latencies else None,
        "first_chunk_p50_s": round(statistics.median(r["first_chunk_s"] for r, _ in answered), 3) if answered else None,
        "first_chunk_before_end": early,
        "machine": platform.machine(), "device": args.device, "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "errors": [r["error"] for r in lost[:5]],
    }
    print(f"{args.requests} requests of the task suite, {args.clients} concurrent streaming clients, "
          f"{args.policy} + {args.stop}, cache {args.cache}, max_tokens {args.max_tokens}, --max-batch {args.max_batch}")
    print("| run | seconds | requests/s |\n|---|---|---|")
    print(f"| one at a time | {figures['one_at_a_time_s']} | {figures['one_at_a_time_rps']} |")
    print(f"| {args.clients} clients | {figures['concurrent_s']} | {figures['concurrent_rps']} |")
    print(f"throughput {figures['throughput_ratio']}x; lost {len(lost)}, mismatched {mismatched}; latency p50 "
          f"{figures['latency_p50_s']} s, p99 {figures['latency_p99_s']} s; first text chunk p50 "
          f"{figures['first_chunk_p50_s']} s, before the end of its decode in {early} of {len(answered)}")
    if args.out:
        write_text_atomically(args.out, json.dumps(figures, indent=1) + "\n")


if __name__ == "__main__":
    main()
