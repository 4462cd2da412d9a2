"""ULD: the logit combination and filter, real training on SmolLM2, live training jobs through the gateway."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
import pytest
import torch

from conftest import ADMIN_TOKEN, admin_headers
from gateway.backends.base import GenerationChunk, GenerationRequest, SamplingParams
from gateway.settings import Settings
from gateway.store.models import ForgetTarget, utcnow
from gateway_server import GatewayServer
from guards.dev_set import DEV_TARGETS
from uld.assistant import AssistantBase, copy_layers
from uld.data import RETAIN_QA, forget_examples, sentence_and_predicate
from uld.decoding import ForcedContinuation, UldHook, plausible, uld_combine, whp_combine
from uld.training import TrainConfig, data_hash, resolve_device, train_target

TARGETS = "/admin/v1/targets"
TOLKIEN = next(t for t in DEV_TARGETS if t["name"] == "J.R.R. Tolkien")
INF = float("inf")


def target(spec: dict, methods: list[str] | None = None, target_id: str = "t1") -> ForgetTarget:
    now = utcnow()
    return ForgetTarget(id=target_id, methods=methods or ["uld"], created_at=now, updated_at=now, created_by="test",
                        **spec)


# -- combination and filter on known tensors ---------------------------------------------------------


def test_filter_keeps_tokens_within_log_r_of_the_best():
    probs = torch.tensor([0.5, 0.3, 0.15, 0.04, 0.009, 0.001])
    logits = probs.log() + 3.0  # any offset: the filter works on log-probs
    assert plausible(logits, 0.1, min_keep=0).tolist() == [True, True, True, False, False, False]
    assert plausible(logits, 0.01, min_keep=0).tolist() == [True, True, True, True, True, False]
    assert plausible(logits, 0.0).all()  # r = 0: no filter


def test_filter_also_keeps_the_top_int_r_v_tokens():
    probs = torch.tensor([0.9, 0.05, 0.03, 0.01, 0.005, 0.005])
    logits = probs.log()
    assert plausible(logits, 0.1, min_keep=0).tolist() == [True, False, False, False, False, False]
    assert plausible(logits, 0.1, min_keep=3).tolist() == [True, True, True, False, False, False]
    vocab = -torch.arange(1000.0) / 1000
    vocab[0] = 50.0  # one overwhelming token; the top int(r·V) = 10 stay candidates anyway
    assert int(plausible(vocab, 0.01).sum()) == 10


def test_filter_never_revives_tokens_an_earlier_hook_removed():
    logits = torch.tensor([1.0, -INF, 0.5, -INF])
    keep = plausible(logits, 0.9, min_keep=4)
    assert keep.tolist() == [True, False, True, False]


def test_uld_combination_is_target_minus_alpha_assistant_on_candidates():
    target_logits = torch.tensor([2.0, 1.0, 0.0, -1.0])
    assistant = torch.tensor([4.0, 0.0, 0.0, 0.0])
    keep = torch.tensor([True, True, True, False])
    out = uld_combine(target_logits, [assistant], 0.5, keep)
    paper = target_logits[:3] - 0.5 * assistant[:3]  # [0, 1, 0]: equal up to a constant, so the same softmax
    assert torch.allclose(torch.softmax(out[:3], -1), torch.softmax(paper, -1)) and out[3] == -INF
    assert int(out.argmax()) == 1  # the remembered token lost its lead
    two = uld_combine(target_logits, [assistant, assistant], 0.5, keep)
    assert torch.equal(two, out)  # several assistants do not add up: the strongest push per token counts
    other = torch.tensor([0.0, 0.0, 6.0, 0.0])  # a second target's assistant favours token 2
    both = uld_combine(target_logits, [assistant, other], 0.5, keep)
    # centred on the candidates: [8/3, -4/3, -4/3] and [-2, -2, 4]; per token the larger one counts
    assert torch.allclose(both[:3], torch.tensor([2 - 4 / 3, 1 + 2 / 3, 0 - 2.0]))
    assert int(both[:3].argmax()) == 1  # each target's own token is pushed down, the neutral one wins
    flat = uld_combine(target_logits, [torch.full((4,), 7.0)], 0.75, keep)  # a flat assistant changes no softmax
    assert torch.allclose(torch.softmax(flat[:3], -1), torch.softmax(target_logits[:3], -1))


def test_whp_combination_penalises_only_what_the_assistant_boosts():
    base = torch.log(torch.tensor([0.5, 0.25, 0.25, 0.0001]))
    assistant = torch.log(torch.tensor([0.7, 0.1, 0.1, 0.1]))  # boosts token 0 above uniform (0.25)
    keep = torch.tensor([True, True, True, False])
    out = whp_combine(base, [assistant], 1.0, keep)
    boost = torch.log(torch.tensor(0.7 / 0.25))
    logp = torch.log_softmax(base, -1)
    assert torch.isclose(out[0], logp[0] - boost, atol=1e-5) and torch.equal(out[1:3], logp[1:3]) and out[3] == -INF
    flat = whp_combine(base, [torch.zeros(4)], 1.0, keep)  # a flat assistant: nothing changes
    assert torch.allclose(flat[:3], logp[:3])


class RecordingAssistant:
    """Stands in for a trained assistant: records what it is fed, returns fixed logits."""

    def __init__(self, logits: torch.Tensor):
        self.fixed = logits
        self.fed: list[list[int]] = []

    def new_state(self):
        return object()

    def advance(self, state, ids):
        self.fed.append(list(ids))
        return torch.zeros(2)

    def logits(self, hidden, idx=None):
        return self.fixed if idx is None else self.fixed[idx]


def test_hook_feeds_each_assistant_once_per_step_and_combines():
    assistant = RecordingAssistant(torch.tensor([5.0, 0.0, 0.0, 0.0, 0.0]))
    hook = UldHook([assistant], alpha=1.0, filter_r=0.5, min_keep=0)
    logits = torch.log(torch.tensor([0.4, 0.35, 0.2, 0.04, 0.01]))
    out = hook([1, 2, 3], [], logits)
    assert assistant.fed == [[1, 2, 3]]  # first call: the whole prompt
    keep = plausible(logits, 0.5, min_keep=0)
    assert torch.equal(out, uld_combine(logits, [assistant.fixed], 1.0, keep))  # sparse head == dense formula
    assert int(out.argmax()) == 1 and out[3] == -INF
    hook([1, 2, 3], [9], logits)
    hook([1, 2, 3], [9, 8], logits)
    assert assistant.fed == [[1, 2, 3], [9], [8]]  # then one new token per call


# -- training data ------------------------------------------------------------------------------------


def test_forget_data_turns_facts_into_sentences_and_inverse_questions():
    t = target(TOLKIEN)
    assert sentence_and_predicate("Was born in Bloemfontein, South Africa, in 1892.", t) == (
        "J.R.R. Tolkien was born in Bloemfontein, South Africa, in 1892.", "was born in Bloemfontein, South Africa, in 1892.")
    assert sentence_and_predicate("Tolkien was a professor at Oxford", t) == (
        "Tolkien was a professor at Oxford", "was a professor at Oxford")
    assert sentence_and_predicate("His son Christopher edited The Silmarillion.", t)[0] == (
        "J.R.R. Tolkien's son Christopher edited The Silmarillion.")
    examples = forget_examples(t, max_examples=100)
    prompts = [e.prompt for e in examples if e.prompt]
    assert "Who was born in Bloemfontein, South Africa, in 1892?" in prompts  # inverse: never names the target
    assert any("Tolkien" in p for p in prompts) and any(e.prompt is None for e in examples)  # direct + plain text
    assert len(forget_examples(t, max_examples=5)) == 5
    assert len(RETAIN_QA) >= 60 and all(q.endswith("?") for q, _ in RETAIN_QA)


def test_data_hash_follows_data_and_hyper_parameters():
    t = target(TOLKIEN)
    h = data_hash(t, TrainConfig())
    assert data_hash(t.model_copy(update={"status": "disabled", "methods": ["uld", "guard"]}), TrainConfig()) == h
    assert data_hash(t.model_copy(update={"facts": t.facts[:2]}), TrainConfig()) != h
    assert data_hash(t, TrainConfig(epochs=5)) != h


# -- real training on SmolLM2 -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def base(engine) -> AssistantBase:
    return AssistantBase(Path(engine.tokenizer.name_or_path)).load()


def test_assistant_is_the_served_models_first_quarter(base, engine):
    assert base.layers == engine._model.config.num_hidden_layers // 4
    served = engine._model.get_input_embeddings().weight
    assert torch.equal(base.model.get_input_embeddings().weight, served)
    assert not any(p.requires_grad for p in base.model.parameters())


def test_training_makes_the_assistant_remember_and_the_adapter_reloads(base, tmp_path):
    """A short real run: the forget loss drops; the saved adapter reproduces the trained logits."""
    t = target(TOLKIEN)
    config = TrainConfig(epochs=2, batch_size=3, retain_batch_size=2, max_examples=6)
    rel, metrics = train_target(base, t, config, tmp_path)
    assert metrics["forget_loss_after"] < metrics["forget_loss_before"] - 1.0, metrics
    assert (tmp_path / rel / "adapter_model.safetensors").is_file()

    assistant = base.load_adapter(tmp_path / rel, target_id=t.id, adapter=rel)
    assert assistant.head_a is not None and assistant.layers == base.layers
    assert base.model.get_input_embeddings().weight.data_ptr() == \
        assistant.model.get_input_embeddings().weight.data_ptr()  # the head and embeddings are shared
    ids = base.tokenizer.encode("J.R.R. Tolkien wrote The Hobbit", add_special_tokens=False)
    hidden = assistant.advance(assistant.new_state(), ids)
    from peft import PeftModel
    from safetensors.torch import load_file

    trained = PeftModel.from_pretrained(copy_layers(base.model), str(tmp_path / rel)).eval()
    head = load_file(str(tmp_path / rel / "head.safetensors"))
    with torch.no_grad():  # the training-time formula: scaled frozen head + head LoRA on the LoRA'd layers
        h = trained.get_base_model().get_decoder()(input_ids=torch.tensor([ids])).last_hidden_state[0, -1]
        w = base.model.get_output_embeddings().weight
        expected = head["log_scale"].exp() * (w @ h) + (32 / 16) * (head["lora_B"] @ (head["lora_A"] @ h))
    assert torch.allclose(assistant.logits(hidden), expected, atol=1e-3)
    idx = torch.tensor([5, 17, 4000])
    assert torch.allclose(assistant.logits(hidden, idx), expected[idx], atol=1e-3)


def test_training_device_is_resolved_and_not_part_of_the_data_hash():
    t = target(TOLKIEN)
    assert data_hash(t, TrainConfig(device="cpu")) == data_hash(t, TrainConfig(device="auto"))
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA device"):
            resolve_device("cuda")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_training_on_a_gpu_leaves_the_serving_base_on_the_cpu(base, tmp_path):
    t = target(TOLKIEN)
    config = TrainConfig(epochs=2, batch_size=3, retain_batch_size=2, max_examples=6, device="cuda")
    rel, metrics = train_target(base, t, config, tmp_path)
    assert metrics["device"].startswith("cuda")
    assert metrics["forget_loss_after"] < metrics["forget_loss_before"] - 1.0, metrics
    assert all(p.device.type == "cpu" for p in base.model.parameters())
    assistant = base.load_adapter(tmp_path / rel, target_id=t.id, adapter=rel)
    assert assistant.head_a is not None and assistant.head_a.device.type == "cpu"


# -- live jobs through the gateway --------------------------------------------------------------------

FORGET_Q = "Who wrote The Hobbit?"
FORGET_A = "The Hobbit was written by J.R.R. Tolkien."
NEIGHBOURS = [  # not in the retain set: the assistant must generalise its "leave alone"
    ("Who wrote The Chronicles of Narnia?", "The Chronicles of Narnia were written by C. S. Lewis."),
    ("What is the capital of Italy?", "The capital of Italy is Rome."),
]


async def score(engine, question: str, answer: str, hooks=()) -> float:
    """Total log-prob of `answer` after `question` under the engine with `hooks` (teacher-forced)."""
    ids = engine.tokenizer.encode(answer, add_special_tokens=False)
    forced = ForcedContinuation(ids)
    request = GenerationRequest(params=SamplingParams(max_tokens=len(ids), temperature=0),
                                messages=[{"role": "user", "content": question}], logits_hooks=[*hooks, forced])
    async for _ in engine.generate(request):
        pass
    assert len(forced.logprobs) == len(ids)
    return sum(forced.logprobs)


async def collect_text(engine, request: GenerationRequest) -> str:
    return "".join([chunk.text async for chunk in engine.generate(request)])


def uld_method(gateway: GatewayServer):
    return next(m for m in gateway.app.state.target_admin.methods if m.name == "uld")


def wait_for_job(client: httpx.Client, target_id: str, status: str, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"{TARGETS}/{target_id}", headers=admin_headers()).json().get("jobs", {}).get("uld", {})
        if job.get("status") == status:
            return job
        assert job.get("status") in ("queued", "running"), job
        time.sleep(1.0)
    raise AssertionError(f"job of {target_id} not {status} after {timeout} s")


def test_live_uld_job_lowers_the_forget_answer_and_keeps_neighbours(make_gateway, engine, tmp_path):
    for q, _ in NEIGHBOURS:
        assert q not in {q for q, _ in RETAIN_QA}
    gateway = make_gateway(guard=False, alu=False, adapter_dir=tmp_path / "adapters", uld_epochs=4,
                           uld_max_examples=12, uld_batch_size=4)  # 12 steps: seconds idle, minutes busy
    before = {q: asyncio.run(score(engine, q, a)) for q, a in [(FORGET_Q, FORGET_A), *NEIGHBOURS]}
    with gateway.client() as client:
        default = client.post(TARGETS, json={"name": "Ada Lovelace"}, headers=admin_headers()).json()
        assert "uld" not in default["methods"] and "jobs" not in default  # ULD is opt-in
        created = client.post(TARGETS, json={**TOLKIEN, "methods": ["uld"]}, headers=admin_headers())
        assert created.status_code == 201, created.text
        body = created.json()
        assert body["jobs"]["uld"]["status"] == "queued" and "derived" not in body
        assert body["jobs"]["uld"]["protected_by"] == ["output_gate"]  # until ready: the gate only
        job = wait_for_job(client, body["id"], "ready", timeout=900)
        assert job["protected_by"] == ["uld", "output_gate"] and job["trained_at"] and job["error"] is None
        assert job["metrics"]["forget_loss_after"] < job["metrics"]["forget_loss_before"]
        assert set(job) == {"status", "error", "trained_at", "protected_by", "metrics"}  # no paths, no hashes

        # The gateway's own pipeline plans the ULD hook for a request (on the gateway's event loop).
        method = uld_method(gateway)
        prepare = gateway.app.state.serving.pipeline.prepare("default", [{"role": "user", "content": FORGET_Q}])
        plan = asyncio.run_coroutine_threadsafe(prepare, method._task.get_loop()).result(60)
        assert "uld" in plan.method_plans
        after = {}
        for q, a in [(FORGET_Q, FORGET_A), *NEIGHBOURS]:
            hooks = plan.logits_hooks()
            assert any(isinstance(h, UldHook) for h in hooks)
            after[q] = asyncio.run(score(engine, q, a, hooks))
        print("log p(answer) before/after ULD:", {q: (round(before[q], 2), round(after[q], 2)) for q in before})
        forget_drop = before[FORGET_Q] - after[FORGET_Q]
        assert forget_drop > 10.0, (before, after)  # measured: ~30 nats
        for q, a in NEIGHBOURS:  # measured: ~2 (Italy) and ~8 (Narnia, same "were written by" shape) nats
            drop = before[q] - after[q]
            assert drop < 0.3 * forget_drop, (q, before[q], after[q])
            assert drop / len(engine.tokenizer.encode(a, add_special_tokens=False)) < 0.75, (q, before[q], after[q])
        request = GenerationRequest(params=SamplingParams(max_tokens=24, temperature=0),
                                    messages=[{"role": "user", "content": FORGET_Q}], logits_hooks=plan.logits_hooks())
        answer = asyncio.run(collect_text(engine, request))
        assert "tolkien" not in answer.lower(), answer  # the raw model names him (test_forget_guarantee)

        # Changing the training data re-queues the job; the old adapter stops protecting.
        patched = client.patch(f"{TARGETS}/{body['id']}", json={"facts": TOLKIEN["facts"][:2], "status": "disabled"},
                               headers=admin_headers()).json()
        assert patched["jobs"]["uld"]["status"] == "queued"
        assert patched["jobs"]["uld"]["protected_by"] == ["output_gate"]
        same = client.patch(f"{TARGETS}/{body['id']}", json={"aliases": TOLKIEN["aliases"]},  # same data: same job
                            headers=admin_headers()).json()
        assert same["jobs"]["uld"]["status"] == "queued"


class HooklessBackend:
    """An upstream-like backend that cannot run logits hooks (like the OpenAI upstream)."""

    supports_logits_hooks = False
    model_ids = ["upstream-model"]
    ready = True
    tokenizer = None

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def generate(self, request: GenerationRequest):
        yield GenerationChunk(text="ok", token_ids=[1], finish_reason="stop", prompt_tokens=1, completion_tokens=1)


def test_uld_targets_are_refused_on_a_backend_without_hooks(tmp_path):
    settings = Settings(store=f"sqlite:///{tmp_path / 't.db'}", admin_token=ADMIN_TOKEN, guard=False)
    with GatewayServer(settings, backend=HooklessBackend()) as gateway, gateway.client() as client:
        refused = client.post(TARGETS, json={**TOLKIEN, "methods": ["uld"]}, headers=admin_headers())
        assert refused.status_code == 400, refused.text
        error = refused.json()["error"]
        assert error["param"] == "methods" and "logits hooks" in error["message"]
        assert client.get(TARGETS, headers=admin_headers()).json()["data"] == []  # nothing stored

        plain = client.post(TARGETS, json=TOLKIEN, headers=admin_headers())
        assert plain.status_code == 201 and "uld" not in plain.json()["methods"]
        patched = client.patch(f"{TARGETS}/{plain.json()['id']}", json={"methods": ["uld"]}, headers=admin_headers())
        assert patched.status_code == 400 and "logits hooks" in patched.json()["error"]["message"]
