"""Live target changes at scale: two replicas on one real redis-server, changes through one, load on the other.

For each target count (`--targets 1000,10000`), one run starts, as separate processes:
  * its own `redis-server` on a free port (nothing saved to disk) and `bench/fake_upstream.py`;
  * replica B (`unlearn-gateway serve --backend openai --store redis://...`), which registers the
    targets in bulk (`POST /admin/v1/targets:batch`, `--batch` per call): the registration row;
  * replica A, started after that: time until `/readyz` says ready, then its first request;
  * a closed-loop client at concurrency 1 on A (a fresh prompt each request), first for `--window`
    seconds without changes, then for `--window` seconds while B creates `--rate` targets per second;
    after each 201, A gets a request naming the new target at once: the time from B's 201 to A's
    refusal is the propagation time (every such request must be refused: a stale answer is counted).
Prints one table, both sizes side by side, with RSS per replica. Issue #11 goals: propagation p99
<= 100 ms at 10 changes/s; no request during churn more than 50 ms slower than without.

    .venv/bin/python bench/bench_churn.py [--targets 1000,10000] [--rate 10] [--window 10] [--semantic]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_proxy import (  # noqa: E402
    ADMIN_TOKEN, FIRST, LAST, ROOT, free_port, smollm2_gguf, stop_processes, wait_ready)

REFUSAL = "I'm sorry, but I can't help with that request."
HEADERS = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def person(i: int, tag: str = "") -> dict:
    name = f"{FIRST[i % len(FIRST)]} {LAST[(i // len(FIRST)) % len(LAST)]} {tag}{i:x}"
    return {"name": name, "methods": ["guard"], "description": f"{name} is a private individual.",
            "facts": [f"{name} lives in a small town."]}


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def chat(client: httpx.Client, prompt: str) -> tuple[float, str]:
    started = time.perf_counter()
    response = client.post("/v1/chat/completions", json={
        "model": "fake-model", "messages": [{"role": "user", "content": prompt}], "max_tokens": 16})
    response.raise_for_status()
    return time.perf_counter() - started, response.json()["choices"][0]["message"]["content"]


def load_window(url: str, seconds: float, stop_early: threading.Event | None = None) -> list[float]:
    """Closed loop at concurrency 1, every prompt different; returns each request's seconds."""
    latencies: list[float] = []
    deadline = time.monotonic() + seconds
    with httpx.Client(base_url=url, timeout=120) as client:
        i = 0
        while time.monotonic() < deadline and not (stop_early and stop_early.is_set()):
            latencies.append(chat(client, f"Give me fun fact number {i} about the sea, please ({time.time_ns()}).")[0])
            i += 1
    return latencies


def churn(b_url: str, a_url: str, seconds: float, rate: float, start: int) -> tuple[list[float], int]:
    """`rate` creates per second through B; after each 201, A is asked about the new target at once."""
    propagation: list[float] = []
    stale = 0
    with httpx.Client(base_url=b_url, headers=HEADERS, timeout=60) as admin, \
            httpx.Client(base_url=a_url, timeout=60) as client:
        deadline = time.monotonic() + seconds
        i = start
        while time.monotonic() < deadline:
            tick = time.monotonic()
            body = person(i, "churn")
            admin.post("/admin/v1/targets", json=body).raise_for_status()
            answered = time.perf_counter()
            _, text = chat(client, f"Who is {body['name']}?")
            propagation.append(time.perf_counter() - answered)
            stale += text != REFUSAL
            i += 1
            time.sleep(max(0.0, 1 / rate - (time.monotonic() - tick)))
    return propagation, stale


def start_gateway(port: int, upstream: str, store: str, cwd: str, semantic: bool, tokenizer: bool) -> subprocess.Popen:
    env = {**os.environ, "UNLEARN_ADMIN_TOKEN": ADMIN_TOKEN, "UNLEARN_ALU": "false", "UNLEARN_ULD": "false",
           "UNLEARN_GUARD_SEMANTIC": str(semantic).lower(), "HF_HUB_OFFLINE": "1"}
    gguf = smollm2_gguf() if tokenizer else None  # GUARD then builds and bans token tries, as with vLLM
    if gguf:
        env["UNLEARN_UPSTREAM_TOKENIZER"] = gguf
    return subprocess.Popen([str(Path(sys.executable).with_name("unlearn-gateway")), "serve", "--backend", "openai",
                             "--upstream", upstream, "--port", str(port), "--store", store, "--log-level", "warning"],
                            env=env, cwd=cwd)


def run_size(count: int, args: argparse.Namespace, console: Console) -> dict:
    procs: list[subprocess.Popen] = []
    with tempfile.TemporaryDirectory() as tmp:
        try:
            redis_port, up_port, a_port, b_port = free_port(), free_port(), free_port(), free_port()
            procs.append(subprocess.Popen([shutil.which("redis-server") or "redis-server", "--port", str(redis_port),
                                           "--save", "", "--appendonly", "no", "--dir", tmp],
                                          stdout=subprocess.DEVNULL))
            procs.append(subprocess.Popen([sys.executable, str(ROOT / "bench" / "fake_upstream.py"),
                                           "--port", str(up_port), "--tokens", "16"]))
            upstream, store = f"http://127.0.0.1:{up_port}", f"redis://127.0.0.1:{redis_port}/0"
            wait_ready(upstream + "/v1/models", 30, procs[-1])
            b_url, a_url = f"http://127.0.0.1:{b_port}", f"http://127.0.0.1:{a_port}"
            b = start_gateway(b_port, upstream, store, tmp, args.semantic, args.tokenizer)
            procs.append(b)
            wait_ready(b_url + "/readyz", 300, b)
            started = time.perf_counter()
            with httpx.Client(base_url=b_url, headers=HEADERS, timeout=600) as admin:
                for first in range(0, count, args.batch):
                    batch = [person(i) for i in range(first, min(count, first + args.batch))]
                    admin.post("/admin/v1/targets:batch", json={"targets": batch}).raise_for_status()
            registration = time.perf_counter() - started
            console.print(f"{count} targets registered in {registration:.1f} s")
            started = time.perf_counter()
            a = start_gateway(a_port, upstream, store, tmp, args.semantic, args.tokenizer)
            procs.append(a)
            wait_ready(a_url + "/readyz", 600, a)
            ready = time.perf_counter() - started
            with httpx.Client(base_url=a_url, timeout=120) as client:
                first_request = chat(client, "Hello there, first request!")[0]
            quiet = load_window(a_url, args.window)
            done = threading.Event()
            during: list[float] = []
            loader = threading.Thread(target=lambda: during.extend(load_window(a_url, args.window + 60, done)))
            loader.start()
            propagation, stale = churn(b_url, a_url, args.window, args.rate, count)
            done.set()
            loader.join()
            return {"targets": count, "registration": registration, "ready": ready, "first": first_request,
                    "propagation": propagation, "stale": stale, "quiet": quiet, "during": during,
                    "rss_a": rss_mb(a.pid), "rss_b": rss_mb(b.pid)}
        finally:
            stop_processes(procs)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def print_table(console: Console, results: list[dict], args: argparse.Namespace) -> None:
    table = Table(title=f"Target churn: 2 replicas on redis-server, c=1 on A, {args.rate:g} creates/s through B, "
                        f"{args.window:g} s windows (semantic {'on' if args.semantic else 'off'}, "
                        f"token tries {'on' if args.tokenizer else 'off'})")
    table.add_column("")
    for r in results:
        table.add_column(f"{r['targets']:,} targets", justify="right")
    ms = lambda v: f"{v * 1000:.1f} ms"  # noqa: E731

    def row(label: str, cell) -> None:
        table.add_row(label, *(cell(r) for r in results))

    row("registration (bulk)", lambda r: f"{r['registration']:.1f} s")
    row("A: start -> /readyz", lambda r: f"{r['ready']:.1f} s")
    row("A: first request", lambda r: ms(r["first"]))
    row("propagation min / median", lambda r: f"{ms(min(r['propagation']))} / {ms(statistics.median(r['propagation']))}")
    row("propagation p99 / max", lambda r: f"{ms(pct(r['propagation'], 0.99))} / {ms(max(r['propagation']))}")
    row("stale answers after 201", lambda r: f"{r['stale']} of {len(r['propagation'])}")
    row("A requests: quiet / churn", lambda r: f"{len(r['quiet'])} / {len(r['during'])}")
    row("A p50: quiet / churn", lambda r: f"{ms(statistics.median(r['quiet']))} / {ms(statistics.median(r['during']))}")
    row("A worst: quiet / churn", lambda r: f"{ms(max(r['quiet']))} / {ms(max(r['during']))}")
    row("RSS A / B", lambda r: f"{r['rss_a']:.0f} / {r['rss_b']:.0f} MB")
    console.print(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--targets", default="1000,10000")
    parser.add_argument("--rate", type=float, default=10.0, help="creates per second through B")
    parser.add_argument("--window", type=float, default=10.0, help="seconds of load without, then with, churn")
    parser.add_argument("--batch", type=int, default=5000, help="targets per targets:batch call")
    parser.add_argument("--semantic", action=argparse.BooleanOptionalAction, default=False,
                        help="GUARD semantic detection (registration then embeds every target)")
    parser.add_argument("--tokenizer", action=argparse.BooleanOptionalAction, default=True,
                        help="the upstream's tokenizer (SmolLM2): GUARD's token-trie floor is built and exported")
    args = parser.parse_args()
    console = Console(width=200)
    results = [run_size(int(n), args, console) for n in args.targets.split(",")]
    print_table(console, results, args)


if __name__ == "__main__":
    main()
