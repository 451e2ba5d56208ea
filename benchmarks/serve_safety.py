"""``unmask serve`` against crafted requests and a heavy load: what each costs the server, measured from outside.

    python benchmarks/serve_safety.py --out benchmarks/results/serve_safety.json

Starts ``unmask serve`` (the bundled model) in a process of its own on 127.0.0.1 and:

1. sends each request of ``unmask.testing.crafted_requests.CRAFTED``; after each, the server's peak RSS
   (VmHWM), the CPU seconds the request cost it, and how long a normal 16-token request then takes;
2. sends 16 requests at the largest canvas (480 tokens, one per step) and, once all 16 rows decode, a
   16-token request: its latency against the time the 16 take (acceptance: under a tenth);
3. fills a queue of 16 behind one running request and times the 429 the 17th gets.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from unmask.testing.crafted_requests import (
    CRAFTED, PROMPT, Crafted, cpu_seconds, health, peak_rss_bytes, send, server_process,
)

NORMAL = Crafted("normal", json.dumps({"prompt": PROMPT, "max_tokens": 16}).encode(), 200)
LONG = Crafted("long", json.dumps({"prompt": PROMPT, "max_tokens": 480}).encode(), 200)


def timed(url: str, crafted: Crafted) -> tuple[int, float]:
    start = time.perf_counter()
    status = send(url, crafted, timeout_s=3600)[0]
    return status, time.perf_counter() - start


def crafted_costs(url: str, pid: int) -> list[dict]:
    rows = []
    for crafted in CRAFTED:
        cpu = cpu_seconds(pid)
        status, wall = timed(url, crafted)
        cost = cpu_seconds(pid) - cpu
        normal_status, normal_s = timed(url, NORMAL)
        rows.append({"request": crafted.name, "status": status, "expected": crafted.status, "wall_s": round(wall, 3),
                     "server_cpu_s": round(cost, 3), "peak_rss_mb": round(peak_rss_bytes(pid) / 2**20, 1),
                     "normal_after_s": round(normal_s, 3), "normal_status": normal_status})
        print(f"{crafted.name:40} {status} (want {crafted.status})  cpu {cost:6.2f} s  peak {rows[-1]['peak_rss_mb']:7.1f}"
              f" MB  normal after: {normal_status} in {normal_s:.2f} s", flush=True)
    return rows


def fairness(url: str) -> dict:
    with ThreadPoolExecutor(16) as pool:
        start = time.perf_counter()
        longs = [pool.submit(timed, url, LONG) for _ in range(16)]
        while health(url)["rows_in_flight"] < 16:
            time.sleep(0.05)
        short_status, short_s = timed(url, NORMAL)
        long_statuses = [future.result()[0] for future in longs]
        long_s = time.perf_counter() - start
    result = {"long_requests": 16, "long_max_tokens": 480, "long_s": round(long_s, 2), "short_s": round(short_s, 3),
              "ratio": round(short_s / long_s, 4), "statuses": sorted(set(long_statuses + [short_status]))}
    print(f"16 x 480 tokens: {long_s:.1f} s; a 16-token request among them: {short_s:.2f} s "
          f"({result['ratio']:.3f} of their time)", flush=True)
    return result


def queue_full() -> dict:
    arguments = ["--gen-length", "32", "--max-batch", "1", "--max-running", "1", "--max-queue", "16",
                 "--request-timeout-s", "5"]
    with server_process(arguments) as (_, url):
        with ThreadPoolExecutor(17) as pool:
            waiting = [pool.submit(send, url, LONG) for _ in range(17)]
            while health(url)["queue"] < 16:
                time.sleep(0.02)
            status, wall = timed(url, NORMAL)
            statuses = sorted({future.result()[0] for future in waiting})
    print(f"the 17th request beyond a queue of 16: {status} in {wall * 1000:.1f} ms; the 17 queued: {statuses}")
    return {"status": status, "wall_s": round(wall, 4), "queued_statuses": statuses}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=None, help="write the figures as JSON here")
    parser.add_argument("--skip-fairness", action="store_true", help="skip the 16 long requests (minutes on a CPU)")
    args = parser.parse_args()
    arguments = ["--gen-length", "32", "--max-batch", "16", "--batch-wait-ms", "300"]
    with server_process(arguments) as (process, url):
        results = {"crafted": crafted_costs(url, process.pid)}
        if not args.skip_fairness:
            results["fairness"] = fairness(url)
        results["peak_rss_mb"] = round(peak_rss_bytes(process.pid) / 2**20, 1)
    results["queue_full"] = queue_full()
    results["machine"] = {"python": sys.version.split()[0], "platform": platform.platform()}
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        temporary = args.out.with_suffix(".tmp")
        temporary.write_text(json.dumps(results, indent=2) + "\n")
        temporary.replace(args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
