"""What GUARD's trie restriction costs per decoded token on the embedded SmolLM2 engine.

Why: the hook runs once per token inside the decode loop, so its cost must stay
negligible next to a forward pass and must not grow with the number of targets.
The table compares greedy decoding with no hook, with the trie of one target
and with the trie of 100 targets.  The three run in lockstep (one token each in
turn), so load from other processes hits them alike.  The hook is also timed
directly: inside the decode loop, as a share of decode time, and in isolation
(replaying the same outputs without the model, free of its thread-pool noise).

Usage:  python bench/bench_guard_decode.py [--tokens 64] [--repeats 3] [--threads N]
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from guards.token_trie import TokenTrie, TrieRestriction

REPO = Path(__file__).resolve().parents[1]
PROMPTS = (
    "Who wrote The Lord of the Rings?",
    "Tell me about the author of The Hobbit.",
    "Name three famous fantasy novelists and one book by each.",
    "Write a short paragraph about dragons in literature.",
)
TARGET = ("J.R.R. Tolkien", "Tolkien")
# 99 more realistic targets: real authors, so their tokens overlap English like real targets do.
OTHER_NAMES = """
Agatha Christie; Ernest Hemingway; Virginia Woolf; Gabriel Garcia Marquez; Toni Morrison; Haruki Murakami;
Chinua Achebe; Margaret Atwood; Salman Rushdie; Isabel Allende; Leo Tolstoy; Fyodor Dostoevsky; Jane Austen;
Mark Twain; Emily Bronte; Charles Dickens; Franz Kafka; Octavia Butler; Ursula K. Le Guin; Kazuo Ishiguro;
George Orwell; Aldous Huxley; Ray Bradbury; Isaac Asimov; Arthur C. Clarke; Philip K. Dick; Frank Herbert;
C.S. Lewis; J.K. Rowling; George R.R. Martin; Terry Pratchett; Neil Gaiman; Stephen King; Dan Brown;
Suzanne Collins; Rick Riordan; Roald Dahl; Lewis Carroll; Mary Shelley; Bram Stoker; Edgar Allan Poe;
H.P. Lovecraft; Oscar Wilde; James Joyce; Samuel Beckett; William Faulkner; F. Scott Fitzgerald;
John Steinbeck; Harper Lee; J.D. Salinger; Kurt Vonnegut; Joseph Heller; Cormac McCarthy; Don DeLillo;
Thomas Pynchon; Zadie Smith; Chimamanda Ngozi Adichie; Jhumpa Lahiri; Arundhati Roy; Orhan Pamuk;
Umberto Eco; Italo Calvino; Jorge Luis Borges; Julio Cortazar; Pablo Neruda; Mario Vargas Llosa;
Albert Camus; Jean-Paul Sartre; Simone de Beauvoir; Victor Hugo; Alexandre Dumas; Jules Verne;
Gustave Flaubert; Marcel Proust; Thomas Mann; Hermann Hesse; Gunter Grass; Milan Kundera;
Vladimir Nabokov; Anton Chekhov; Mikhail Bulgakov; Alexander Pushkin; Ivan Turgenev; Nikolai Gogol;
Herman Melville; Nathaniel Hawthorne; Walt Whitman; Emily Dickinson; Sylvia Plath; Maya Angelou;
Langston Hughes; James Baldwin; Ralph Ellison; Zora Neale Hurston; Alice Walker; Louisa May Alcott;
Robert Louis Stevenson; Rudyard Kipling; Daphne du Maurier
"""


def other_targets() -> list[tuple[str, ...]]:
    """Each extra target as the phrases a caller would pass: full name plus surname."""
    names = [n.strip() for n in OTHER_NAMES.replace("\n", " ").split(";") if n.strip()]
    assert len(names) == 99, len(names)
    return [(name, name.split()[-1]) for name in names]


@dataclass
class Run:
    tokens: int = 0
    seconds: float = 0.0
    hook_ns: list[int] = field(default_factory=list)
    outputs: list[list[int]] = field(default_factory=list)


def model_dir() -> Path:
    found = sorted(p for p in (REPO / "var" / "models").glob("SmolLM2-135M-Instruct*") if (p / "config.json").is_file())
    if found:
        return found[0]
    from gateway.backends.model_files import resolve_model_dir

    return resolve_model_dir(None, REPO / "var" / "models")


class Decoder:
    """One greedy sequence, advanced one token per `step()` so configurations can run in lockstep."""

    def __init__(self, model: Any, prompt: list[int], trie: TokenTrie | None, max_new: int, eos: int, run: Run):
        self.model, self.prompt, self.max_new, self.eos, self.run = model, prompt, max_new, eos, run
        self.hook = TrieRestriction(trie) if trie is not None else None
        self.output: list[int] = []
        with torch.inference_mode():
            self.out = model(input_ids=torch.tensor([prompt]), use_cache=True)  # prefill: not timed
        self.done = False

    def step(self) -> None:
        started = time.perf_counter()
        with torch.inference_mode():
            logits = self.out.logits[0, -1]
            if self.hook is not None:
                t0 = time.perf_counter_ns()
                logits = self.hook(self.prompt, self.output, logits)
                self.run.hook_ns.append(time.perf_counter_ns() - t0)
            token = int(torch.argmax(logits))
            self.output.append(token)
            self.done = token == self.eos or len(self.output) >= self.max_new
            if not self.done:
                ids = torch.tensor([[token]])
                self.out = self.model(input_ids=ids, past_key_values=self.out.past_key_values, use_cache=True)
        self.run.seconds += time.perf_counter() - started
        self.run.tokens += 1
        if self.done:
            self.run.outputs.append(self.output)


def isolated_hook_us(trie: TokenTrie, prompts: list[list[int]], outputs: list[list[int]], vocab: int) -> float:
    """Mean µs per hook call replaying recorded outputs on a fixed logits row, 20 rounds."""
    logits = torch.zeros(vocab)
    calls, elapsed = 0, 0
    with torch.inference_mode():
        for _ in range(20):
            for prompt, output in zip(prompts, outputs):
                hook = TrieRestriction(trie)
                t0 = time.perf_counter_ns()
                for i in range(len(output)):
                    hook(prompt, output[:i], logits)
                elapsed += time.perf_counter_ns() - t0
                calls += len(output)
    return elapsed / max(calls, 1) / 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3, help="passes over the prompts")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = model_dir()
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    prompts = [
        tokenizer.encode(
            tokenizer.apply_chat_template([{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True),
            add_special_tokens=False,
        )
        for q in PROMPTS
    ]

    configs: dict[str, tuple[TokenTrie | None, float]] = {"no hook": (None, 0.0)}
    for label, phrases in (("1 target", list(TARGET)), ("100 targets", [*TARGET, *(p for t in other_targets() for p in t)])):
        t0 = time.perf_counter()
        trie = TokenTrie.build(tokenizer, phrases)
        configs[label] = (trie, time.perf_counter() - t0)

    # Lockstep: per prompt, every configuration decodes its next token in turn, so a change in
    # machine load (other processes) hits all configurations alike.
    Decoder(model, prompts[0], None, 4, tokenizer.eos_token_id, Run()).step()  # warm-up
    runs = {label: Run() for label in configs}
    for _ in range(args.repeats):
        for prompt in prompts:
            decoders = [Decoder(model, prompt, trie, args.tokens, tokenizer.eos_token_id, runs[label])
                        for label, (trie, _) in configs.items()]
            while not all(d.done for d in decoders):
                for d in decoders:
                    if not d.done:
                        d.step()

    print(f"SmolLM2-135M-Instruct, greedy, <= {args.tokens} new tokens x {len(prompts)} prompts x {args.repeats} "
          f"repeats, configurations in lockstep, torch threads {torch.get_num_threads()}")
    header = (f"{'config':<12} {'seqs':>6} {'nodes':>6} {'build ms':>9} {'tokens':>6} {'tok/s':>7} "
              f"{'slowdown':>9} {'hook µs/step':>13} {'hook p95':>9} {'hook share':>11} {'isolated µs':>12}")
    print(header)
    print("-" * len(header))
    base_rate = 0.0
    for label, (trie, build_s) in configs.items():
        run = runs[label]
        rate = run.tokens / run.seconds
        base_rate = base_rate or rate
        if trie is None:
            print(f"{label:<12} {'-':>6} {'-':>6} {'-':>9} {run.tokens:>6} {rate:>7.1f} {'-':>9} {'-':>13} {'-':>9} "
                  f"{'-':>11} {'-':>12}")
            continue
        mean_us = statistics.fmean(run.hook_ns) / 1000
        p95_us = statistics.quantiles(run.hook_ns, n=20)[-1] / 1000
        share = 100.0 * sum(run.hook_ns) / 1e9 / run.seconds
        isolated = isolated_hook_us(trie, prompts, run.outputs[: len(prompts)], model.config.vocab_size)
        slowdown = 100.0 * (base_rate / rate - 1.0)
        print(f"{label:<12} {len(trie):>6} {trie.num_nodes:>6} {build_s * 1000:>9.0f} {run.tokens:>6} {rate:>7.1f} "
              f"{slowdown:>8.1f}% {mean_us:>13.1f} {p95_us:>9.1f} {share:>10.2f}% {isolated:>12.1f}")
    print("\nguarded answer (100 targets):", repr(tokenizer.decode(runs["100 targets"].outputs[0], skip_special_tokens=True)))


if __name__ == "__main__":
    main()
