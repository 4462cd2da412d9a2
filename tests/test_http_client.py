"""The upstream HTTP client: keep-alive reuse, a stale pooled connection, limits, timeouts, breakage.

A raw asyncio server plays the upstream, so each test decides byte for byte what the
client sees and when.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from gateway.backends.http_client import ConnectFailed, ConnectionBroken, ConnectionPool, Timeout
from gateway_server import free_port

OK = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}"
CHUNKED_HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter, int], Awaitable[None]]


async def read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                   if line.lower().startswith(b"content-length:")), 0)
    return head + await reader.readexactly(length)


class Upstream:
    """Counts connections; `handler(reader, writer, n)` serves the n-th one."""

    def __init__(self, handler: Handler):
        self.handler = handler
        self.connections = 0

    async def __aenter__(self) -> str:
        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.connections += 1
            try:
                await self.handler(reader, writer, self.connections)
            except (asyncio.IncompleteReadError, ConnectionError):
                pass
            finally:
                writer.close()

        self.server = await asyncio.start_server(serve, "127.0.0.1", 0)
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def __aexit__(self, *exc) -> None:
        self.server.close()


def pool(url: str, **overrides) -> ConnectionPool:
    settings = {"max_connections": 4, "connect_timeout": 2.0, "read_timeout": 2.0, "keepalive_seconds": 4.0}
    return ConnectionPool(url, **{**settings, **overrides})


async def keep_answering(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
    while True:
        await read_request(reader)
        writer.write(OK)


async def test_sequential_requests_reuse_one_connection() -> None:
    upstream = Upstream(keep_answering)
    async with upstream as url:
        client = pool(url)
        for _ in range(5):
            response = await client.request("POST", "/v1/x", b'{"a": 1}', {"Content-Type": "application/json"})
            assert (response.status, await response.read()) == (200, b"{}")
            response.release()
        await client.close()
    assert upstream.connections == 1


async def test_a_stale_pooled_connection_is_retried_on_a_new_one() -> None:
    async def one_answer_then_close(reader, writer, n):
        await read_request(reader)
        writer.write(OK)
        await writer.drain()  # then the server closes the kept-alive connection

    upstream = Upstream(one_answer_then_close)
    async with upstream as url:
        client = pool(url)
        for pause in (0, 0.05, 0, 0.05):  # the request goes before or after the close reached the client
            response = await client.request("GET", "/v1/models", None, {})
            assert await response.read() == b"{}"
            response.release()
            await asyncio.sleep(pause)
        await client.close()
    assert upstream.connections == 4


async def test_chunked_body_arrives_as_it_is_sent() -> None:
    sent = asyncio.Event()

    async def stream(reader, writer, n):
        await read_request(reader)
        writer.write(CHUNKED_HEAD + b"5\r\nhello\r\n")
        await writer.drain()
        await sent.wait()
        writer.write(b"6\r\n world\r\n0\r\n\r\n")

    async with Upstream(stream) as url:
        client = pool(url)
        response = await client.request("POST", "/v1/x", b"{}", {})
        parts = response.iter_chunks()
        assert await anext(parts) == b"hello"  # before the rest was even written
        sent.set()
        assert b"".join([p async for p in parts]) == b" world" and response.at_eof
        response.release()
        await client.close()


async def test_failures_are_typed() -> None:
    with pytest.raises(ConnectFailed):
        await pool(f"http://127.0.0.1:{free_port()}").request("GET", "/", None, {})

    async def silent(reader, writer, n):
        await asyncio.sleep(10)

    async with Upstream(silent) as url:
        with pytest.raises(Timeout):
            await pool(url, read_timeout=0.2).request("GET", "/", None, {})

    async def cut_short(reader, writer, n):
        await read_request(reader)
        writer.write(CHUNKED_HEAD + b"5\r\nhello\r\n")  # and then the connection ends

    async with Upstream(cut_short) as url:
        response = await pool(url).request("GET", "/", None, {})
        with pytest.raises(ConnectionBroken):
            await response.read()
        response.release()

    async def garbage(reader, writer, n):
        await read_request(reader)
        writer.write(b"this is not HTTP\r\n\r\n")

    async with Upstream(garbage) as url:
        with pytest.raises(ConnectionBroken):
            await pool(url).request("GET", "/", None, {})


async def test_at_most_max_connections_requests_at_a_time() -> None:
    release = asyncio.Event()

    async def slow(reader, writer, n):
        await read_request(reader)
        await release.wait()
        writer.write(OK)

    async with Upstream(slow) as url:
        client = pool(url, max_connections=1, read_timeout=0.3)
        first = asyncio.ensure_future(client.request("GET", "/", None, {}, timeout=5))
        await asyncio.sleep(0.05)
        with pytest.raises(Timeout):  # no connection frees up within the read timeout
            await client.request("GET", "/", None, {})
        release.set()
        response = await first
        assert await response.read() == b"{}"
        response.release()
        await client.close()


async def test_the_read_timeout_counts_from_the_last_bytes_received() -> None:
    async def trickle_then_stall(reader, writer, n):
        await read_request(reader)
        writer.write(CHUNKED_HEAD)
        for _ in range(6):  # 0.6 s of data, never more than 0.1 s apart
            await asyncio.sleep(0.1)
            writer.write(b"1\r\nx\r\n")
            await writer.drain()
        await asyncio.sleep(5)  # then nothing

    async with Upstream(trickle_then_stall) as url:
        response = await pool(url, read_timeout=0.3).request("GET", "/", None, {})
        received = b""
        started = asyncio.get_running_loop().time()
        with pytest.raises(Timeout):
            async for part in response.iter_chunks():
                received += part
        assert received == b"x" * 6  # a slow but steady stream is not cut off
        assert 0.8 < asyncio.get_running_loop().time() - started < 2.0  # the stall is, 0.3 s after the last byte
        response.release()
