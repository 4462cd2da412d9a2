"""A real, throw-away redis-server for tests.

Tests run against the actual server rather than a fake, so MULTI/EXEC, WATCH and
connection loss behave as in production. The server keeps nothing on disk
(`--save "" --appendonly no`), so `restart()` comes back empty on the same port,
which is how tests simulate "the store went down and came back".
"""

from __future__ import annotations

import atexit
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

DEFAULT_BINARY = "/usr/bin/redis-server"
BINARY_ENV = "UNLEARN_TEST_REDIS_BIN"


def redis_binary() -> str:
    """The redis-server to run: $UNLEARN_TEST_REDIS_BIN, else /usr/bin/redis-server."""
    return os.environ.get(BINARY_ENV) or DEFAULT_BINARY


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def send_commands(port: int, *commands: tuple[str, ...], timeout: float = 2.0) -> list[bytes]:
    """Send RESP commands over one socket; return each one-line reply (enough for PING/SELECT/FLUSHDB)."""
    payload = b""
    for cmd in commands:
        payload += f"*{len(cmd)}\r\n".encode()
        for arg in cmd:
            data = arg.encode()
            payload += f"${len(data)}\r\n".encode() + data + b"\r\n"
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(payload)
        reply = b""
        while reply.count(b"\r\n") < len(commands):
            chunk = sock.recv(4096)
            if not chunk:
                break
            reply += chunk
    return reply.split(b"\r\n")[: len(commands)]


class RedisServer:
    """One redis-server process on 127.0.0.1; start(), stop(), restart() and use `url`."""

    def __init__(self, binary: str | None = None, *, databases: int = 16) -> None:
        self.binary = binary or redis_binary()
        self.databases = databases
        self.port = 0
        self._dir: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._next_db = 0
        atexit.register(self.stop)  # last line of defence against a leaked server

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout: float = 10.0) -> None:
        """Start on a free port (the same port again after stop()) and wait for PING."""
        if self.running:
            return
        if not (os.path.isfile(self.binary) and os.access(self.binary, os.X_OK)):
            raise RuntimeError(
                f"redis-server not found or not executable at {self.binary!r}; install redis-server "
                f"or point {BINARY_ENV} at the binary (the redis tests need a real server)"
            )
        if self._dir is None:
            self._dir = Path(tempfile.mkdtemp(prefix="unlearn-redis-"))
        for _ in range(5):
            self.port = self.port or free_port()
            if self._launch(timeout):
                return
            self.port = 0  # probably lost a race for the port: pick another
        raise RuntimeError(f"redis-server at {self.binary} did not come up; see {self._dir}/redis.log")

    def _launch(self, timeout: float) -> bool:
        assert self._dir is not None
        log = self._dir / "redis.log"
        self._proc = subprocess.Popen(
            [
                self.binary,
                "--port", str(self.port),
                "--bind", "127.0.0.1",
                "--dir", str(self._dir),
                "--save", "",
                "--appendonly", "no",
                "--databases", str(self.databases),
                "--logfile", str(log),
                "--daemonize", "no",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                self._proc = None
                return False
            try:
                if send_commands(self.port, ("PING",), timeout=1.0) == [b"+PONG"]:
                    return True
            except OSError:
                pass
            time.sleep(0.02)
        self._kill()
        return False

    def _kill(self) -> None:
        if self._proc is None:
            return
        if self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(timeout=5)
        self._proc = None

    def stop(self) -> None:
        """Stop the server; the port and folder are kept so restart() comes back at the same URL."""
        self._kill()

    def restart(self) -> None:
        self.stop()
        self.start()

    def close(self) -> None:
        """Stop for good and remove the temp folder."""
        self.stop()
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None
        atexit.unregister(self.stop)

    def flush_db(self, db: int) -> None:
        """Empty one database (SELECT is per connection, hence one socket for both)."""
        replies = send_commands(self.port, ("SELECT", str(db)), ("FLUSHDB",))
        if replies != [b"+OK", b"+OK"]:
            raise RuntimeError(f"could not flush redis db {db}: {replies!r}")

    def fresh_db(self) -> int:
        """A flushed database number, rotating so consecutive tests rarely reuse one."""
        db = self._next_db % self.databases
        self._next_db += 1
        self.flush_db(db)
        return db

    def __enter__(self) -> RedisServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
