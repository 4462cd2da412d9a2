"""The realistic prompt generator of the proxy benchmark: every prompt different, a few near targets."""

from __future__ import annotations

import itertools

from bench.prompts import NEAR, unique_prompts


def test_prompts_never_repeat_and_a_small_share_is_near_the_dev_targets() -> None:
    prompts = list(itertools.islice(unique_prompts(seed=3), 20_000))  # more than one lap of the combinations
    assert len(set(prompts)) == len(prompts)
    near = sum(any(p.endswith(q) for q in NEAR) for p in prompts) / len(prompts)
    assert 0.03 < near < 0.08
    assert list(itertools.islice(unique_prompts(seed=3), 50)) == prompts[:50]  # seeded: runs are comparable
    assert list(itertools.islice(unique_prompts(seed=4), 50)) != prompts[:50]
