"""Embedded engine throughput at concurrency 1 / 4 / 8, with GUARD's decode hook, next to llama.cpp's server.

Why: the engine batches its active sequences into one forward pass per step
(`gateway/backends/decode_batch.py`); before, it decoded them round-robin and
concurrency added no throughput. Each row runs closed-loop clients (a new request
as soon as one ends, 64 tokens each, temperature 0, every prompt different) for a
fixed time and reports aggregate tokens/s, the ratio to c=1 of the same thread
setting, and the p50 time per answer. Every request carries GUARD's trie hook over
100 author names (the always-on floor), so the per-row hook cost is included.

`--llama` adds llama-cpp-python's OpenAI server on the same GGUF (the upstream
tests' peer, Q4_1 weights in C++ against the engine's float32 torch) at the same
concurrencies, over loopback HTTP. It decodes one request at a time (requests queue;
its default would cut the running request short instead), so it is the
single-stream reference, not a batching one.

Usage:  python bench/bench_engine.py [--threads 1,2] [--seconds 20] [--llama]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from bench_guard_decode import OTHER_NAMES, TARGET  # noqa: E402

from gateway.backends.base import GenerationRequest, SamplingParams  # noqa: E402
from gateway.backends.local import LocalEngine  # noqa: E402
from gateway.backends.model_files import default_gguf  # noqa: E402
from guards.token_trie import TokenTrie, TrieRestriction  # noqa: E402

TOPICS = ("rivers", "bread", "volcanoes", "chess", "bicycles", "tea", "owls", "glass", "bridges", "jazz",
          "comets", "cheese", "kites", "maps", "coral", "clocks")
FORMS = ("Write two sentences about {}.", "What is interesting about {}?", "Explain {} to a child.",
         "Give me a fun fact about {}.")
CONCURRENCY = (1, 4, 8)
TOKENS = 64


def prompts():
    """An endless stream of distinct prompts (no two requests share a prefix cache)."""
    for n in itertools.count():
        topic, form = TOPICS[n % len(TOPICS)], FORMS[(n // len(TOPICS)) % len(FORMS)]
        yield f"{form.format(topic)} (#{n})"


async def _closed_loop(generate, concurrency: int, seconds: float) -> tuple[int, list[float]]:
    source = prompts()
    deadline = time.perf_counter() + seconds
    tokens = 0
    answers: list[float] = []

    async def client():
        nonlocal tokens
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            count, finished = await generate(next(source), deadline)
            tokens += count
            if finished:
                answers.append(time.perf_counter() - started)

    await asyncio.gather(*(client() for _ in range(concurrency)))
    return tokens, answers


def _p50(answers: list[float]) -> float:
    return statistics.median(answers) if answers else float("nan")


def engine_rows(threads: int, seconds: float) -> list[tuple]:
    engine = LocalEngine(None, REPO / "var" / "models", max_num_seqs=max(CONCURRENCY), threads=threads)
    asyncio.run(engine.start())
    names = [TARGET[0], *[n.strip() for n in OTHER_NAMES.replace("\n", " ").split(";") if n.strip()]]
    trie = TokenTrie.build(engine.tokenizer, names)

    async def generate(prompt: str, deadline: float) -> tuple[int, bool]:
        """Tokens streamed before the deadline (an answer cut by it counts what it produced)."""
        request = GenerationRequest(params=SamplingParams(temperature=0.0, max_tokens=TOKENS),
                                    messages=[{"role": "user", "content": prompt}],
                                    logits_hooks=[TrieRestriction(trie)])
        count = 0
        stream = engine.generate(request)
        async for chunk in stream:
            if time.perf_counter() > deadline:
                await stream.aclose()
                return count, False
            count = chunk.completion_tokens
        return count, True

    rows = []
    try:
        for c in CONCURRENCY:
            tokens, answers = asyncio.run(_closed_loop(generate, c, seconds))
            rows.append((f"engine, {threads} thread(s)", c, tokens / seconds, _p50(answers), len(answers)))
    finally:
        asyncio.run(engine.close())
    return rows


def llama_rows(threads: int, seconds: float) -> list[tuple]:
    import socket

    import httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "llama_cpp.server", "--model", str(default_gguf()), "--host", "127.0.0.1",
         "--port", str(port), "--n_threads", str(threads), "--n_ctx", "2048",
         "--interrupt_requests", "False"],  # by default a new request cuts the running one short
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    base = f"http://127.0.0.1:{port}/v1"
    try:
        for _ in range(600):
            try:
                if httpx.get(f"{base}/models", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        rows = []
        for c in CONCURRENCY:
            async def run():
                async with httpx.AsyncClient(timeout=600) as client:
                    async def generate(prompt: str, deadline: float) -> tuple[int, bool]:
                        count = 0
                        async with client.stream("POST", f"{base}/chat/completions", json={
                                "messages": [{"role": "user", "content": prompt}], "max_tokens": TOKENS,
                                "temperature": 0, "stream": True}) as r:
                            async for line in r.aiter_lines():
                                if time.perf_counter() > deadline:
                                    return count, False
                                count += line.startswith("data: {") and '"content": "' in line
                        return count, True
                    return await _closed_loop(generate, c, seconds)

            tokens, answers = asyncio.run(run())
            rows.append((f"llama.cpp server, {threads} thread(s)", c, tokens / seconds, _p50(answers), len(answers)))
        return rows
    finally:
        proc.terminate()
        proc.wait(10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", default="1,2", help="comma-separated torch thread counts to compare")
    parser.add_argument("--seconds", type=float, default=20.0, help="closed-loop time per row")
    parser.add_argument("--llama", action="store_true", help="also measure llama.cpp's server on the same GGUF")
    args = parser.parse_args()
    rows = []
    for threads in (int(t) for t in args.threads.split(",")):
        rows += engine_rows(threads, args.seconds)
        if args.llama:
            rows += llama_rows(threads, args.seconds)
    print(f"\n{TOKENS}-token answers, temperature 0, distinct prompts, {args.seconds:.0f} s per row, "
          f"{os.cpu_count()} CPUs, torch {torch.__version__}\n")
    print("| server | conc | tokens/s | × c=1 | p50 s/answer | answers |")
    print("|---|---|---|---|---|---|")
    base = {}
    for name, c, rate, p50, n in rows:
        base.setdefault(name, rate)
        print(f"| {name} | {c} | {rate:.1f} | {rate / base[name]:.2f} | {p50:.2f} | {n} |")


if __name__ == "__main__":
    main()
