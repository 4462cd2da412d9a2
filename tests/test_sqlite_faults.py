"""A SQLite store whose files turn immutable (`chattr +i`) or read-only must cost a 503, never the
process (issue #12, item 7).

SQLite maps the WAL index (`-shm`) shared and writable; after a write (frames left in the WAL by a
concurrent reader) and a writeback (clean, write-protected pages), the next read stamps a read
mark into the mapping, and the kernel answers that write to an immutable file with SIGBUS. The
gateway runs in a child process so that a SIGBUS shows up as its exit status, not as a dead pytest.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent

CHILD = r'''
import json, os, sqlite3, subprocess, sys
from pathlib import Path

from fake_backend import FAKE_MODEL, FakeBackend
from gateway_server import GatewayServer
from gateway.settings import Settings

db = Path(sys.argv[1]) / "targets.db"
settings = Settings(store=f"sqlite:///{db}", admin_token="admin", guard_semantic=False, alu=False, uld=False)
server = GatewayServer(settings, backend=FakeBackend()).start()
chat = {"model": FAKE_MODEL, "messages": [{"role": "user", "content": "hi"}]}
admin = {"Authorization": "Bearer admin"}
out = {}


def chattr(flag):
    for path in sorted(db.parent.glob("targets.db*")):
        subprocess.run(["chattr", flag, str(path)], check=True)


with server.client() as client:
    out["before"] = client.post("/v1/chat/completions", json=chat).status_code  # opens the version reader
    reader = sqlite3.connect(db, isolation_level=None)  # a concurrent reader keeps the write below in the WAL
    reader.execute("BEGIN")
    reader.execute("SELECT count(*) FROM targets").fetchall()
    out["create"] = client.post("/admin/v1/targets", headers=admin, json={"name": "Zorblax Quintavern"}).status_code
    reader.execute("COMMIT")
    reader.close()
    out["files"] = sorted(p.name for p in db.parent.glob("targets.db*"))
    os.sync()  # written back: the -shm pages are clean again, so the next write to one faults
    chattr("+i")
    try:
        out["readyz"] = client.get("/readyz").status_code
        answer = client.post("/v1/chat/completions", json=chat)
        out["chat"] = [answer.status_code, answer.json()["error"]["code"]]
        listed = client.get("/admin/v1/targets", headers=admin)
        out["admin_list"] = listed.status_code
        metrics = client.get("/metrics").text
        out["store_errors"] = [line for line in metrics.splitlines() if line.startswith("unlearn_store_errors_total")]
    finally:
        chattr("-i")
    out["after"] = client.post("/v1/chat/completions", json=chat).status_code
    out["readyz_after"] = client.get("/readyz").status_code
server.stop()
print("RESULT " + json.dumps(out), flush=True)
'''


def _can_set_immutable(folder: Path) -> bool:
    probe = folder / "probe"
    probe.write_text("x")
    ok = shutil.which("chattr") is not None and subprocess.run(
        ["chattr", "+i", str(probe)], capture_output=True).returncode == 0
    if ok:
        subprocess.run(["chattr", "-i", str(probe)], check=True)
    probe.unlink()
    return ok


def test_immutable_store_files_answer_503_and_the_process_lives(tmp_path: Path) -> None:
    if not _can_set_immutable(tmp_path):
        pytest.skip("needs root and a filesystem with the immutable attribute (chattr +i), e.g. ext4")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), str(TESTS.parent)])}
    try:
        child = subprocess.run([sys.executable, "-c", CHILD, str(tmp_path)], capture_output=True, text=True,
                               timeout=120, env=env, cwd=tmp_path)
    finally:
        for path in tmp_path.glob("targets.db*"):
            subprocess.run(["chattr", "-i", str(path)], check=False)
    assert child.returncode != -signal.SIGBUS, "the gateway died of SIGBUS:\n" + child.stderr[-3000:]
    assert child.returncode == 0, child.stderr[-3000:]
    out = json.loads(child.stdout.split("RESULT ", 1)[1])
    assert out["before"] == 200 and out["create"] == 201
    assert "targets.db-shm" in out["files"] and "targets.db-wal" in out["files"], out  # WAL mode, frames pending
    assert out["readyz"] == 503
    assert out["chat"] == [503, "service_unavailable"]
    assert out["admin_list"] == 503
    assert out["store_errors"] and float(out["store_errors"][0].split()[-1]) >= 1, out
    assert out["after"] == 200 and out["readyz_after"] == 200, out  # writable again: serving again
