"""Metrics read from live objects at scrape time: the engine's queue, the store's health, job states.

A value that changes with every step (queue depth, tokens) or with the clock (staleness) costs
nothing on the hot path this way. Sources are attached after the app is built and read only
through small public attributes, so this module imports nothing from the rest of the gateway.
In multiprocess mode (`--workers`, upstream backend only) these series are not exported.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

JOB_STATES = ("queued", "running", "ready", "failed")


class LiveCollector(Collector):
    def __init__(self) -> None:
        self.engine: Any = None
        """Has `queued`, `running` and `generated_tokens` (the embedded engine); None for an upstream."""
        self.snapshots: Any = None
        """Has `loaded` (a snapshot with `targets`), `store_ok` and `last_store_success` (epoch seconds)."""
        self.job_methods: tuple[str, ...] = ()
        self._jobs_of: tuple[Any, dict[tuple[str, str], int]] = (None, {})

    def watch(self, *, engine: Any, snapshots: Any, job_methods: Iterable[str]) -> None:
        self.engine = engine if all(hasattr(engine, a) for a in ("queued", "running", "generated_tokens")) else None
        self.snapshots = snapshots
        self.job_methods = tuple(job_methods)

    def collect(self) -> Iterator[Metric]:
        engine = self.engine
        if engine is not None:
            yield GaugeMetricFamily("unlearn_engine_queue_depth", "Sequences waiting for a decode slot",
                                    value=engine.queued)
            yield GaugeMetricFamily("unlearn_engine_running_sequences", "Sequences decoding now",
                                    value=engine.running)
            yield CounterMetricFamily("unlearn_engine_generated_tokens", "Tokens the embedded engine generated",
                                      value=engine.generated_tokens)
        snapshots = self.snapshots
        if snapshots is None:
            return
        last = snapshots.last_store_success
        yield GaugeMetricFamily("unlearn_store_up", "1 when the last read of the target store succeeded",
                                value=1 if snapshots.store_ok else 0)
        stale = 0.0 if snapshots.store_ok else time.time() - last if last else float("nan")
        yield GaugeMetricFamily(
            "unlearn_store_staleness_seconds",
            "Seconds the enforced targets may lag the store: 0 while reads succeed, else since the last good read",
            value=stale)
        yield GaugeMetricFamily("unlearn_store_last_success_timestamp_seconds",
                                "When a read of the target store last succeeded", value=last or 0)
        jobs = GaugeMetricFamily("unlearn_method_jobs", "Targets by the state of a method's background job "
                                 "(ULD training)", labels=["method", "status"])
        for (method, status), count in sorted(self._job_counts(snapshots.loaded).items()):
            jobs.add_metric([method, status], count)
        yield jobs

    def _job_counts(self, snapshot: Any) -> dict[tuple[str, str], int]:
        """Per (method, status), computed once per snapshot object (O(targets) only after a change)."""
        if snapshot is None:
            return {(m, s): 0 for m in self.job_methods for s in JOB_STATES}
        seen, counts = self._jobs_of
        if seen is not snapshot:
            counts = {(m, s): 0 for m in self.job_methods for s in JOB_STATES}
            for target in snapshot.targets:
                for method, derived in target.derived.items():
                    status = derived.get("status") if isinstance(derived, dict) else None
                    if method in self.job_methods and status in JOB_STATES:
                        counts[(method, status)] += 1
            self._jobs_of = (snapshot, counts)
        return counts
