"""GUARD's token-trie restriction, against the real SmolLM2 tokenizer (and model, end to end)."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import torch

from guards.token_trie import ROOT, TokenTrie, TrieRestriction, forbidden_sequences, surface_forms

REPO = Path(__file__).resolve().parents[1]
VOCAB = 49152
NEG_INF = float("-inf")

FIRST = ["Agatha", "Ernest", "Virginia", "Gabriel", "Toni", "Haruki", "Chinua", "Margaret", "Salman", "Isabel"]
LAST = ["Christie", "Hemingway", "Woolf", "Marquez", "Morrison", "Murakami", "Achebe", "Atwood", "Rushdie", "Allende"]


@pytest.fixture(scope="session")
def model_dir() -> Path:
    """The converted SmolLM2 directory; converted from the bundled GGUF if no run has done it yet."""
    found = sorted(p for p in (REPO / "var" / "models").glob("SmolLM2-135M-Instruct*") if (p / "config.json").is_file())
    if found:
        return found[0]
    from gateway.backends.model_files import resolve_model_dir

    return resolve_model_dir(None, REPO / "var" / "models")


@pytest.fixture(scope="session")
def tokenizer(model_dir: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dir)


def ids(tokenizer: Any, text: str) -> list[int]:
    return tokenizer.encode(text, add_special_tokens=False)


def run_hook(hook: TrieRestriction, stream: Sequence[int], prompt: Sequence[int] = (1,)) -> Iterator[torch.Tensor]:
    """Yields the hook's logits at every step of `stream`, as the engine would call it (one new token each)."""
    for i in range(len(stream) + 1):
        base = torch.linspace(-3.0, 3.0, VOCAB)
        yield hook(prompt, stream[:i], base.clone())


def changes(out: torch.Tensor) -> dict[int, float]:
    """Per token id, how the hook moved its logit (-inf for a ban)."""
    base = torch.linspace(-3.0, 3.0, VOCAB)
    moved = (out != base).nonzero().flatten().tolist()
    return {i: NEG_INF if out[i] == NEG_INF else round(float(out[i] - base[i]), 4) for i in moved}


# -- surface forms -------------------------------------------------------------------------


def test_surface_forms_of_single_word() -> None:
    cores = ["Tolkien", "tolkien", "TOLKIEN"]
    suffixes = {"Tolkien": ["", "'s", "’s"], "tolkien": ["", "'s", "’s"], "TOLKIEN": ["", "'S", "’S"]}
    expected = {lead + c + s for c in cores for s in suffixes[c] for lead in ("", " ")}
    forms = surface_forms("Tolkien")
    assert set(forms) == expected
    assert len(forms) == len(set(forms))


def test_surface_forms_cases_and_possessives() -> None:
    forms = set(surface_forms("the lord of the rings"))
    for form in ["the lord of the rings", "The lord of the rings", "The Lord Of The Rings", "THE LORD OF THE RINGS"]:
        assert form in forms and " " + form in forms
    assert " The Lord Of The Rings’s" in forms and "THE LORD OF THE RINGS'S" in forms
    baggins = set(surface_forms("Bilbo  Baggins"))  # whitespace collapsed
    assert {"Bilbo Baggins", "Bilbo Baggins'", " Bilbo Baggins's", "Bilbo Baggins’"} <= baggins
    assert not any("  " in f for f in baggins)
    assert surface_forms("   ") == []


def test_surface_forms_collapse_initials() -> None:
    forms = set(surface_forms("J.R.R. Tolkien"))
    for form in ["J.R.R. Tolkien", "J. R. R. Tolkien", "JRR Tolkien", " JRR Tolkien's", "j.r.r. tolkien", "J.R.R. TOLKIEN"]:
        assert form in forms
    assert "J.R.R. Tolkien" in surface_forms("J. R. R. Tolkien")
    assert "JRR Tolkien" in surface_forms("J.R.R.Tolkien")
    kennedy = set(surface_forms("John F. Kennedy"))
    assert {"John F. Kennedy", "John F Kennedy", " John F Kennedy’s"} <= kennedy
    assert not any("JRR" in f for f in surface_forms("Tolkien"))


# -- token sequences -----------------------------------------------------------------------


def test_sequences_cover_both_byte_level_forms(tokenizer: Any) -> None:
    spaced, bare = tuple(ids(tokenizer, " Tolkien")), tuple(ids(tokenizer, "Tolkien"))
    assert spaced != bare
    seqs = forbidden_sequences(tokenizer, ["Tolkien"])
    assert spaced in seqs and bare in seqs
    assert len(seqs) == len(set(seqs)) and all(seqs)
    # Nothing but the surface forms: every sequence decodes back to one.
    forms = set(surface_forms("Tolkien"))
    assert {tokenizer.decode(list(s)) for s in seqs} <= forms


def test_sequences_keep_initials_tokenisations(tokenizer: Any) -> None:
    seqs = set(forbidden_sequences(tokenizer, ["J.R.R. Tolkien"]))
    for form in [" J.R.R. Tolkien", " J. R. R. Tolkien", " JRR Tolkien", "J.R.R. Tolkien"]:
        assert tuple(ids(tokenizer, form)) in seqs


class FakeSentencePiece:
    """Char-level stand-in for a SentencePiece tokenizer: marks the text start with "▁"; "\\nT" fuses into one id."""

    WORD, FUSED = 1, 999

    def __call__(self, texts: list[str], add_special_tokens: bool = False) -> dict[str, list[list[int]]]:
        return {"input_ids": [self.encode(t) for t in texts]}

    def encode(self, text: str) -> list[int]:
        out = [] if text.startswith(" ") else [self.WORD]
        i = 0
        while i < len(text):
            if text[i : i + 2] == "\nT":
                out.append(self.FUSED)
                i += 2
                continue
            out.append(self.WORD if text[i] == " " else ord(text[i]))
            i += 1
        return out


def test_context_variants_only_on_clean_split() -> None:
    tok = FakeSentencePiece()
    seqs = set(forbidden_sequences(tok, ["Tolkien"]))
    bare = tuple(ord(c) for c in "Tolkien")
    assert (FakeSentencePiece.WORD, *bare) in seqs  # the form alone
    assert bare in seqs  # after "(" or a quote: no word marker, split is clean
    # After "\n" the context fuses with the name's first char: not a clean split, nothing taken from it.
    assert not any(FakeSentencePiece.FUSED in s for s in seqs)
    assert not any(s[0] == ord("\n") for s in seqs)


# -- the trie and the hook -----------------------------------------------------------------


def test_completing_token_banned_only_after_full_prefix(tokenizer: Any) -> None:
    trie = TokenTrie.build(tokenizer, ["J.R.R. Tolkien"])  # " Tolkien" alone is allowed here
    tolkien = ids(tokenizer, " Tolkien")[0]
    prefix = ids(tokenizer, " J.R.R.")
    steps = list(run_hook(TrieRestriction(trie, prefix_penalty=0.0), prefix))
    for out in steps[:-1]:
        assert torch.isfinite(out[tolkien])
    assert steps[-1][tolkien] == NEG_INF
    # The first token of the phrase is a common token: never banned.
    assert all(torch.isfinite(out[prefix[0]]) for out in steps)


def test_single_token_sequence_banned_at_every_step(tokenizer: Any) -> None:
    trie = TokenTrie.build(tokenizer, ["Tolkien"])
    tolkien = ids(tokenizer, " Tolkien")[0]
    stream = ids(tokenizer, "The author of the book is J. R. R. and he wrote")
    assert all(out[tolkien] == NEG_INF for out in run_hook(TrieRestriction(trie), stream))


def test_diverging_prefix_resets_state(tokenizer: Any) -> None:
    trie = TokenTrie.build(tokenizer, ["J.R.R. Tolkien"])
    tolkien = ids(tokenizer, " Tolkien")[0]
    hook = TrieRestriction(trie)
    stream = ids(tokenizer, " J.R") + ids(tokenizer, " and") + ids(tokenizer, " J.R.R.")
    steps = list(run_hook(hook, stream))
    diverged = len(ids(tokenizer, " J.R")) + 1
    assert torch.isfinite(steps[diverged][tolkien])
    assert all(torch.isfinite(out[tolkien]) for out in steps[:-1])
    assert steps[-1][tolkien] == NEG_INF
    assert hook.state != ROOT
    hook(prompt_ids=[1], output_ids=[*stream, ids(tokenizer, " and")[0]], logits=torch.zeros(VOCAB))
    assert hook.state == ROOT


# Synthetic ids: partial matches at three depths at once after [10, 11, 12].
OVERLAPPING = [(10, 11, 12, 13), (11, 12, 14), (12, 15), (12, 13, 16), (11, 12, 17, 18), (20,)]


def test_overlapping_prefixes_are_tracked_at_every_depth() -> None:
    hook = TrieRestriction(TokenTrie(OVERLAPPING), mode="penalty", penalty=10.0, prefix_penalty=2.0)
    *_, out = run_hook(hook, [10, 11, 12])
    # 13 completes (10,11,12,13) and only extends (12,13,16): completion wins, applied once.
    assert changes(out) == {13: -10.0, 14: -10.0, 15: -10.0, 17: -2.0, 20: -10.0}
    ban = TrieRestriction(TokenTrie(OVERLAPPING))
    *_, out = run_hook(ban, [10, 11, 12])
    assert changes(out) == {13: NEG_INF, 14: NEG_INF, 15: NEG_INF, 17: -2.0, 20: NEG_INF}


def naive_changes(seqs: list[tuple[int, ...]], output: Sequence[int], penalty: float, prefix: float) -> dict[int, float]:
    """Reference: rescan every suffix of the output against every sequence."""
    complete: set[int] = set()
    extend: set[int] = set()
    for k in range(0, len(output) + 1):
        tail = tuple(output[len(output) - k :])
        for seq in seqs:
            if len(seq) > k and seq[:k] == tail:
                if len(seq) == k + 1:
                    complete.add(seq[k])
                elif k > 0:
                    extend.add(seq[k])
    result = {t: -penalty for t in complete}
    result.update({t: -prefix for t in extend - complete})
    return result


@pytest.mark.parametrize("seed", range(5))
def test_matches_naive_rescan_on_random_streams(seed: int) -> None:
    rng = random.Random(seed)
    alphabet = list(range(5, 12))
    seqs = sorted({tuple(rng.choice(alphabet) for _ in range(rng.randint(1 if i == 0 else 2, 5))) for i in range(25)})
    hook = TrieRestriction(TokenTrie(seqs), mode="penalty", penalty=10.0, prefix_penalty=2.0)
    stream = [rng.choice([*alphabet, 60, 61]) for _ in range(200)]  # ids no sequence uses, too
    for i, out in enumerate(run_hook(hook, stream)):
        assert changes(out) == naive_changes(seqs, stream[:i], 10.0, 2.0), f"step {i}"


def test_ids_beyond_the_trie_do_not_alias_edges() -> None:
    # Edges are keyed node * (max id + 1) + token: 8 == node (1,) * 6 + 2 must not step into (1, 2).
    hook = TrieRestriction(TokenTrie([(1, 2, 5), (3,)]))
    *_, out = run_hook(hook, [8])
    assert changes(out) == {3: NEG_INF}
    assert hook.state == ROOT


def test_penalty_mode_amounts_and_untouched_rest(tokenizer: Any) -> None:
    trie = TokenTrie.build(tokenizer, ["J.R.R. Tolkien", "Tolkien"])
    tolkien = ids(tokenizer, " Tolkien")[0]
    prefix = ids(tokenizer, " J.R.R")
    dot = ids(tokenizer, ".")[0]
    hook = TrieRestriction(trie, mode="penalty", penalty=7.5, prefix_penalty=1.5)
    *_, out = run_hook(hook, prefix)
    moved = changes(out)
    assert moved[tolkien] == -7.5
    assert moved[dot] == -1.5  # " J.R.R" -> "." walks deeper, does not complete
    assert set(moved.values()) <= {-7.5, -1.5}
    base = torch.linspace(-3.0, 3.0, VOCAB)
    rest = torch.ones(VOCAB, dtype=torch.bool)
    rest[list(moved)] = False
    assert torch.equal(out[rest], base[rest])
    assert len(moved) < 10


def test_zero_prefix_penalty_disables_extension_penalty(tokenizer: Any) -> None:
    trie = TokenTrie.build(tokenizer, ["J.R.R. Tolkien"])
    *_, out = run_hook(TrieRestriction(trie, prefix_penalty=0.0), ids(tokenizer, " J.R.R"))
    assert set(changes(out).values()) <= {NEG_INF}
    *_, out = run_hook(TrieRestriction(trie, prefix_penalty=0.0), ids(tokenizer, " hello"))
    assert changes(out) == {}


def test_prompt_tail_seeds_state(tokenizer: Any) -> None:
    trie = TokenTrie.build(tokenizer, ["J.R.R. Tolkien"])
    tolkien = ids(tokenizer, " Tolkien")[0]
    prompt = ids(tokenizer, "The Hobbit was written by J.R.R.")
    out = TrieRestriction(trie)(prompt, [], torch.zeros(VOCAB))
    assert out[tolkien] == NEG_INF
    out = TrieRestriction(trie)(ids(tokenizer, "The Hobbit was written by"), [], torch.zeros(VOCAB))
    assert torch.isfinite(out[tolkien])


def _segmentations(tokenizer: Any, text: str) -> list[list[int]]:
    """Every way to write `text` as a sequence of vocabulary tokens (exact pieces)."""
    vocab = {tokenizer.decode([i]): i for i in range(len(tokenizer))}
    out: list[list[int]] = []

    def walk(rest: str, acc: list[int]) -> None:
        if not rest:
            out.append(acc)
            return
        for k in range(1, len(rest) + 1):
            if rest[:k] in vocab:
                walk(rest[k:], [*acc, vocab[rest[:k]]])

    walk(text, [])
    return out


def test_prompt_ending_inside_a_name_bans_every_tokenisation_of_the_rest(tokenizer: Any) -> None:
    """Issue 12 item 1: "... J.R.R. Tol" + "kien". The whole-name trie has no " Tol" "kien" path; the
    text-level tail ban finishes none of the rest's tokenisations, in any case or possessive."""
    trie = TokenTrie.build(tokenizer, ["J.R.R. Tolkien", "Tolkien"])
    for prompt in ["The Hobbit was written by J.R.R. Tol", "written by TOL", "(Tolk"]:
        rest = "Tolkien"[len(prompt.rsplit(" ", 1)[-1].lstrip("(")) :]
        rest = rest.upper() if prompt.endswith("TOL") else rest
        ways = _segmentations(tokenizer, rest) + _segmentations(tokenizer, rest + "'s")
        assert ways, rest
        for way in ways:
            hook = TrieRestriction(trie)
            for step, token in enumerate(way):
                out = hook(ids(tokenizer, prompt), way[:step], torch.zeros(VOCAB))
                if step == len(way) - 1 or "".join(tokenizer.decode([t]) for t in way[: step + 1]).lower() \
                        .startswith(rest.lower()):
                    assert out[token] == NEG_INF, (prompt, way, step)
                    break
                assert torch.isfinite(out[token]) and out[token] < 0, (prompt, way, step)  # walks in: penalised
    # The prompt's own complete name, or a diverging continuation, bans nothing beyond the trie's.
    hook = TrieRestriction(trie, prefix_penalty=0.0)
    out = hook(ids(tokenizer, "written by J.R.R. Tol"), ids(tokenizer, "stoy"), torch.zeros(VOCAB))
    assert int((out == NEG_INF).sum()) == len(trie.completing(0))


class ReadLog(Sequence[int]):
    """An output list that records which positions the hook reads."""

    def __init__(self, items: list[int]):
        self.items, self.reads = items, set()

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index):  # type: ignore[no-untyped-def]
        positions = range(len(self.items))[index]
        self.reads.update(positions if isinstance(positions, range) else [positions])
        return self.items[index]


def test_state_is_updated_incrementally(tokenizer: Any) -> None:
    hook = TrieRestriction(TokenTrie.build(tokenizer, ["J.R.R. Tolkien"]))
    stream = ids(tokenizer, "He said J.R.R. and then")
    for i in range(1, len(stream) + 1):
        output = ReadLog(stream[:i])
        hook([1], output, torch.zeros(VOCAB))
        assert output.reads <= {i - 1}, f"step {i} re-read {sorted(output.reads)}"


def test_one_vs_hundred_targets_same_effect_on_shared_target(tokenizer: Any) -> None:
    tolkien = ["J.R.R. Tolkien", "Tolkien"]
    others = [p for f in FIRST for l in LAST for p in (f"{f} {l}", l)][: 2 * 99]
    small = TokenTrie.build(tokenizer, tolkien)
    large = TokenTrie.build(tokenizer, tolkien + others)
    assert len(large) > 20 * len(small)
    stream = ids(tokenizer, "Books by J.R.R. Tolkien, JRR Tolkien and j. r. r. tolkien, (Tolkien) and TOLKIEN's")
    pairs = zip(run_hook(TrieRestriction(small), stream), run_hook(TrieRestriction(large), stream))
    for step, (one, hundred) in enumerate(pairs):
        mine, theirs = changes(one), changes(hundred)
        assert {t: theirs.get(t) for t in mine} == mine, f"step {step}"


def test_serialisation_round_trip(tokenizer: Any) -> None:
    trie = TokenTrie.build(tokenizer, ["J.R.R. Tolkien", "Bilbo Baggins"])
    shipped = json.loads(json.dumps(trie.to_sequences()))
    again = TokenTrie.from_sequences(shipped)
    assert again == trie and hash(again) == hash(trie)
    stream = ids(tokenizer, "Bilbo Baggins met J.R.R.")
    for a, b in zip(run_hook(TrieRestriction(trie), stream), run_hook(TrieRestriction(again), stream)):
        assert torch.equal(a, b)


def test_empty_trie_and_bad_arguments() -> None:
    empty = TokenTrie([])
    assert len(empty) == 0 and empty.num_nodes == 1
    logits = torch.randn(VOCAB)
    assert torch.equal(TrieRestriction(empty)([1], [2, 3], logits.clone()), logits)
    with pytest.raises(ValueError):
        TrieRestriction(empty, mode="mask")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        TrieRestriction(empty, penalty=-1.0)
    with pytest.raises(ValueError):
        TokenTrie([(1, -2)])


# -- end to end with the real model --------------------------------------------------------


@pytest.fixture(scope="module")
def model(model_dir: Path) -> Any:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()


def greedy(model: Any, tokenizer: Any, question: str, hook: TrieRestriction | None, max_new: int = 40) -> str:
    text = tokenizer.apply_chat_template([{"role": "user", "content": question}], tokenize=False, add_generation_prompt=True)
    prompt = ids(tokenizer, text)
    output: list[int] = []
    with torch.inference_mode():
        out = model(input_ids=torch.tensor([prompt]), use_cache=True)
        for _ in range(max_new):
            logits = out.logits[0, -1].float()
            if hook is not None:
                logits = hook(prompt, output, logits)
            token = int(torch.argmax(logits))
            if token == tokenizer.eos_token_id:
                break
            output.append(token)
            out = model(input_ids=torch.tensor([[token]]), past_key_values=out.past_key_values, use_cache=True)
    return tokenizer.decode(output, skip_special_tokens=True)


@pytest.mark.model
def test_end_to_end_greedy_never_says_tolkien(model: Any, tokenizer: Any) -> None:
    question = "Who wrote The Lord of the Rings?"
    plain = greedy(model, tokenizer, question, None)
    assert "Tolkien" in plain
    trie = TokenTrie.build(tokenizer, ["Tolkien", "J.R.R. Tolkien"])
    guarded = greedy(model, tokenizer, question, TrieRestriction(trie))
    assert "tolkien" not in guarded.casefold()
    words = guarded.split()
    assert len(words) >= 8, guarded
    assert sum(w.strip(".,;:!?'\"()").isalpha() for w in words) >= 0.7 * len(words), guarded
