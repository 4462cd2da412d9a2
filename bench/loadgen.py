"""Closed-loop HTTP load generator for the proxy benchmark: latency, TTFT, inter-chunk gaps.

Each of `--concurrency` workers keeps one keep-alive connection and sends chat
requests back to back for `--duration` seconds (after `--warmup`): the same one, or
with `--unique-seed N` every request a different prompt from `bench/prompts.py`
(real traffic: nothing is served from an embedding cache).
Raw asyncio + httptools on uvloop: a Python client that costs far less per
request than httpx, so it can drive a fast server from the same small machine.
Prints one JSON object (times in milliseconds) for `bench_proxy.py` to tabulate.

    python bench/loadgen.py --url http://127.0.0.1:8000 --concurrency 16 --stream
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

import httptools
import orjson


class _Exchange:
    """httptools callbacks for one response; times the first SSE event and every later one."""

    def __init__(self, started: float):
        self.started = started
        self.status = 0
        self.complete = False
        self.events: list[float] = []
        self.body_bytes = 0

    def on_status(self, _status: bytes) -> None:
        pass

    def on_body(self, body: bytes) -> None:
        now = time.perf_counter()
        self.body_bytes += len(body)
        self.events.extend([now] * body.count(b"\n\n"))

    def on_message_complete(self) -> None:
        self.complete = True


async def _worker(host: str, port: int, next_request: Callable[[], bytes], stream: bool, stop_at: float,
                  record_from: float, results: dict) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        while time.perf_counter() < stop_at:
            started = time.perf_counter()
            exchange = _Exchange(started)
            parser = httptools.HttpResponseParser(exchange)
            writer.write(next_request())
            while not exchange.complete:
                data = await reader.read(65536)
                if not data:
                    raise ConnectionError("server closed the connection")
                parser.feed_data(data)
            exchange.status = parser.get_status_code()
            done = time.perf_counter()
            if started < record_from:
                continue
            if exchange.status != 200 or (stream and not exchange.events):
                results["errors"] += 1
                continue
            results["latency"].append(done - started)
            if stream:
                events = exchange.events
                results["ttft"].append(events[0] - started)
                results["events"].append(len(events))
                results["gaps"].extend(b - a for a, b in zip(events, events[1:]))
            results["ok"] += 1
    except (OSError, ConnectionError, httptools.HttpParserError) as exc:
        results["errors"] += 1
        results.setdefault("error_kinds", []).append(type(exc).__name__)
    finally:
        writer.close()


def _percentiles(values: list[float]) -> dict:
    if not values:
        return {"p50": None, "p99": None, "mean": None}
    ordered = sorted(values)

    def at(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000

    return {"p50": at(0.50), "p99": at(0.99), "mean": sum(ordered) / len(ordered) * 1000}


def _requests(host: str, port: int, *, stream: bool, model: str, max_tokens: int, api_key: str | None,
              unique_seed: int | None) -> Callable[[], bytes]:
    """The next request's bytes: always the same one, or each with the next unique prompt."""

    def build(prompt: str) -> bytes:
        body = orjson.dumps({"model": model, "max_tokens": max_tokens, "stream": stream,
                             "messages": [{"role": "user", "content": prompt}]})
        head = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n")
        if api_key:
            head += f"Authorization: Bearer {api_key}\r\n"
        return (head + "\r\n").encode() + body

    if unique_seed is None:
        request = build("Write one sentence about the weather in spring.")
        return lambda: request
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from bench.prompts import unique_prompts

    prompts = unique_prompts(seed=unique_seed)
    return lambda: build(next(prompts))


async def run(url: str, *, concurrency: int, duration: float, warmup: float, stream: bool, model: str,
              max_tokens: int, api_key: str | None, unique_seed: int | None = None) -> dict:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    next_request = _requests(host, port, stream=stream, model=model, max_tokens=max_tokens, api_key=api_key,
                             unique_seed=unique_seed)
    results: dict = {"ok": 0, "errors": 0, "latency": [], "ttft": [], "gaps": [], "events": []}
    now = time.perf_counter()
    record_from, stop_at = now + warmup, now + warmup + duration
    await asyncio.gather(*(_worker(host, port, next_request, stream, stop_at, record_from, results)
                           for _ in range(concurrency)))
    elapsed = time.perf_counter() - record_from
    return {
        "concurrency": concurrency, "stream": stream, "ok": results["ok"], "errors": results["errors"],
        "error_kinds": sorted(set(results.get("error_kinds", []))),
        "rps": results["ok"] / elapsed, "latency_ms": _percentiles(results["latency"]),
        "ttft_ms": _percentiles(results["ttft"]), "gap_ms": _percentiles(results["gaps"]),
        "events_per_response": sum(results["events"]) / len(results["events"]) if results["events"] else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--duration", type=float, default=3.0)
    parser.add_argument("--warmup", type=float, default=0.5)
    parser.add_argument("--stream", action="store_true")
    parser.add_argument("--model", default="fake-model")
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--api-key")
    parser.add_argument("--unique-seed", type=int, help="every request a different prompt (bench/prompts.py)")
    args = parser.parse_args()
    try:
        from uvloop import run as run_loop
    except ImportError:
        run_loop = asyncio.run
    result = run_loop(run(args.url, concurrency=args.concurrency, duration=args.duration, warmup=args.warmup,
                             stream=args.stream, model=args.model, max_tokens=args.max_tokens,
                             api_key=args.api_key, unique_seed=args.unique_seed))
    sys.stdout.write(orjson.dumps(result).decode() + "\n")


if __name__ == "__main__":
    main()
