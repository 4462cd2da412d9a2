"""The upstream HTTP client alone: one streamed chat request after another against the fake upstream.

Times request → response headers and headers → end of body per client, in one run:
the gateway's own client (`gateway.backends.http_client`), aiohttp and httpx when they
are installed. This is the measurement behind the choice of transport (README, "Transport").

    .venv/bin/python bench/bench_upstream_client.py [--requests 3000]
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import time
from pathlib import Path

import orjson
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_proxy import free_port, wait_ready  # noqa: E402
from gateway.backends.http_client import ConnectionPool  # noqa: E402

BODY = orjson.dumps({"model": "fake-model", "stream": True, "stream_options": {"include_usage": True},
                     "max_tokens": 16, "messages": [{"role": "user", "content": "Write one sentence."}]})
HEADERS = {"Content-Type": "application/json"}


async def ours(url: str, n: int) -> tuple[float, float]:
    pool = ConnectionPool(url, max_connections=8, connect_timeout=5, read_timeout=60, keepalive_seconds=4)

    async def one() -> tuple[float, float]:
        t0 = time.perf_counter()
        response = await pool.request("POST", "/v1/chat/completions", BODY, HEADERS)
        t1 = time.perf_counter()
        async for _ in response.iter_chunks():
            pass
        response.release()
        return t1 - t0, time.perf_counter() - t1

    return await _repeat(one, n)


async def with_aiohttp(url: str, n: int) -> tuple[float, float]:
    import aiohttp

    timeout = aiohttp.ClientTimeout(total=None, sock_connect=5, sock_read=60)
    async with aiohttp.ClientSession(timeout=timeout, trust_env=False) as session:
        async def one() -> tuple[float, float]:
            t0 = time.perf_counter()
            response = await session.post(url + "/v1/chat/completions", data=BODY, headers=HEADERS)
            t1 = time.perf_counter()
            async for _ in response.content.iter_any():
                pass
            response.release()
            return t1 - t0, time.perf_counter() - t1

        return await _repeat(one, n)


async def with_httpx(url: str, n: int) -> tuple[float, float]:
    import httpx

    async with httpx.AsyncClient(base_url=url, timeout=60) as client:
        async def one() -> tuple[float, float]:
            t0 = time.perf_counter()
            async with client.stream("POST", "/v1/chat/completions", content=BODY, headers=HEADERS) as response:
                t1 = time.perf_counter()
                async for _ in response.aiter_raw():
                    pass
            return t1 - t0, time.perf_counter() - t1

        return await _repeat(one, n)


async def _repeat(one, n: int) -> tuple[float, float]:
    for _ in range(min(200, n)):  # warm the pool and the code paths
        await one()
    head = body = 0.0
    for _ in range(n):
        a, b = await one()
        head, body = head + a, body + b
    return head / n, body / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=3000)
    args = parser.parse_args()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    upstream = subprocess.Popen([sys.executable, str(ROOT / "bench" / "fake_upstream.py"), "--port", str(port)])
    try:
        wait_ready(url + "/v1/models", 30, upstream)
        try:
            import uvloop
            run = uvloop.run
        except ImportError:
            run = asyncio.run
        table = Table(title=f"One streamed request at a time ({args.requests} requests, 18 SSE events each; µs)")
        for column in ("client", "request → headers", "headers → end", "total"):
            table.add_column(column, justify="right")
        for name, measure in (("gateway http_client", ours), ("aiohttp", with_aiohttp), ("httpx", with_httpx)):
            try:
                head, body = run(measure(url, args.requests))
            except ImportError:
                table.add_row(name, "not installed", "", "")
                continue
            table.add_row(name, f"{head * 1e6:.0f}", f"{body * 1e6:.0f}", f"{(head + body) * 1e6:.0f}")
        Console(width=120).print(table)
    finally:
        upstream.terminate()
        upstream.wait(10)


if __name__ == "__main__":
    main()
