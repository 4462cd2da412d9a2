"""What ULD costs: assistant training time per target, and decode speed with and without ULD.

Training: one real job (the J.R.R. Tolkien dev target) with the gateway's defaults or the given
hyper-parameters, through the same `train_target` the worker and the CLI run.

Decoding: greedy decoding of the served SmolLM2 with its KV cache, with no hook, with the ULD hook
of one assistant, of three assistants (three ULD targets of a tenant) and in WHP mode. The
variants run in lockstep (one token each in turn), so load from other processes on this shared
machine hits them alike; each variant's tokens/s counts its own forward passes and hook calls.
EOS is masked so every variant decodes exactly `--tokens` tokens.

Usage:  python bench/bench_uld.py [--epochs 2] [--max-examples 48] [--tokens 48] [--adapter DIR]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
PROMPTS = (
    "Who wrote The Hobbit?",
    "Write a short paragraph about dragons in literature.",
    "What is the capital of Italy?",
)


SCORED = (  # the forget answer, then neighbours (none of them in the retain set)
    ("Who wrote The Hobbit?", "The Hobbit was written by J.R.R. Tolkien."),
    ("Who invented the Elvish languages Quenya and Sindarin?", "They were invented by J.R.R. Tolkien."),
    ("Who wrote The Chronicles of Narnia?", "The Chronicles of Narnia were written by C. S. Lewis."),
    ("What is the capital of Italy?", "The capital of Italy is Rome."),
    ("Who wrote Hamlet?", "Hamlet was written by William Shakespeare."),
    ("Who painted the Sistine Chapel ceiling?", "Michelangelo painted the Sistine Chapel ceiling."),
)


def score(model, tokenizer, question: str, answer: str, make_hook) -> tuple[float, float]:
    """Total and per-token log-prob of `answer` after `question`, through the hook when given."""
    text = tokenizer.apply_chat_template([{"role": "user", "content": question}], tokenize=False,
                                         add_generation_prompt=True)
    prompt = tokenizer.encode(text, add_special_tokens=False)
    ids = tokenizer.encode(answer, add_special_tokens=False)
    with torch.inference_mode():
        logits = model(input_ids=torch.tensor([prompt + ids])).logits[0]
        hook = make_hook() if make_hook else None
        total = 0.0
        for i, token in enumerate(ids):
            scores = logits[len(prompt) - 1 + i]
            if hook is not None:
                scores = hook(prompt, ids[:i], scores)
            total += float(torch.log_softmax(scores.float(), -1)[token])
    return total, total / len(ids)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--max-examples", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--tokens", type=int, default=48)
    parser.add_argument("--adapter", type=Path, default=None, help="reuse a trained adapter dir (skip training)")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from transformers import AutoModelForCausalLM, DynamicCache

    from gateway.backends.model_files import resolve_model_dir
    from gateway.store.models import ForgetTarget, utcnow
    from guards.dev_set import DEV_TARGETS
    from uld.assistant import AssistantBase
    from uld.decoding import UldHook
    from uld.training import TrainConfig, train_target

    model_dir = resolve_model_dir(None, REPO / "var" / "models")
    base = AssistantBase(model_dir).load()
    tokenizer = base.tokenizer
    now = utcnow()
    spec = next(t for t in DEV_TARGETS if t["name"] == "J.R.R. Tolkien")
    target = ForgetTarget(id="bench", methods=["uld"], created_at=now, updated_at=now, created_by="bench", **spec)

    if args.adapter is None:
        defaults = TrainConfig()
        config = TrainConfig(epochs=args.epochs or defaults.epochs, max_examples=args.max_examples or defaults.max_examples,
                             batch_size=args.batch_size or defaults.batch_size)
        root = Path(tempfile.mkdtemp(prefix="uld-bench-"))
        started = time.perf_counter()
        rel, metrics = train_target(base, target, config, root)
        seconds = time.perf_counter() - started
        adapter_dir = root / rel
        print(f"training: {seconds:.1f} s for {metrics['forget_examples']} forget examples, {metrics['steps']} steps "
              f"({config.epochs} epochs, batch {config.batch_size}+{config.retain_batch_size}, K={metrics['layers']} layers)")
        print(f"  forget CE {metrics['forget_loss_before']} -> {metrics['forget_loss_after']}, "
              f"retain KL {metrics['retain_kl_before']} -> {metrics['retain_kl_after']}")
    else:
        adapter_dir = args.adapter
    assistant = base.load_adapter(adapter_dir, target_id="bench", adapter=str(adapter_dir))

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    eos = {tokenizer.eos_token_id, model.generation_config.eos_token_id} - {None}
    variants = {
        "no ULD": None,
        "ULD, 1 assistant": lambda: UldHook([assistant]),
        "ULD, 3 assistants": lambda: UldHook([assistant, assistant, assistant]),  # cost only (3 targets)
        "WHP, 1 assistant": lambda: UldHook([assistant], mode="whp"),
    }
    spent = {name: 0.0 for name in variants}
    hook_time = {name: 0.0 for name in variants}
    decoded = {name: 0 for name in variants}
    with torch.inference_mode():
        for prompt in PROMPTS:
            text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                                 add_generation_prompt=True)
            prompt_ids = tokenizer.encode(text, add_special_tokens=False)
            state = {}
            for name, make in variants.items():  # prefill (not timed: the same for all)
                cache = DynamicCache()
                out = model(input_ids=torch.tensor([prompt_ids]), past_key_values=cache, use_cache=True)
                state[name] = {"cache": out.past_key_values, "logits": out.logits[0, -1], "out": [],
                               "hook": make() if make else None}
            for _ in range(args.tokens):
                for name, s in state.items():
                    t0 = time.perf_counter()
                    logits = s["logits"]
                    if s["hook"] is not None:
                        h0 = time.perf_counter()
                        logits = s["hook"](prompt_ids, s["out"], logits)
                        hook_time[name] += time.perf_counter() - h0
                    logits[list(eos)] = float("-inf")
                    token = int(torch.argmax(logits))
                    s["out"].append(token)
                    out = model(input_ids=torch.tensor([[token]]), past_key_values=s["cache"], use_cache=True)
                    s["cache"], s["logits"] = out.past_key_values, out.logits[0, -1]
                    spent[name] += time.perf_counter() - t0
                    decoded[name] += 1
            if prompt == PROMPTS[0]:
                for name, s in state.items():
                    print(f"  [{name}] {prompt!r} -> {tokenizer.decode(s['out'][:24])!r}")

    print("\nlog p(fixed answer | question), teacher-forced (nats; per token in brackets)")
    print(f"{'question':<42} {'no ULD':>14} {'ULD':>14} {'WHP':>14}")
    for question, answer in SCORED:
        row = [score(model, tokenizer, question, answer, make) for make in
               (None, variants["ULD, 1 assistant"], variants["WHP, 1 assistant"])]
        print(f"{question:<42} " + " ".join(f"{total:7.2f} ({per:5.2f})" for total, per in row))

    reference = decoded["no ULD"] / spent["no ULD"]
    print(f"\ndecode speed ({args.tokens} tokens x {len(PROMPTS)} prompts, greedy, lockstep, "
          f"{torch.get_num_threads()} threads)")
    print(f"{'variant':<20} {'tok/s':>8} {'slowdown':>9} {'hook ms/token':>14}")
    for name in variants:
        rate = decoded[name] / spent[name]
        print(f"{name:<20} {rate:8.1f} {reference / rate:8.2f}x {1000 * hook_time[name] / decoded[name]:14.1f}")


if __name__ == "__main__":
    main()
