"""Work spread over processes: Phase 1 over local ones (``--workers``) or a Ray cluster, AdaRound
layers over local ones.

Each worker builds its own simulator from the same ingredients and measures whole groups;
``sensitivity.measure_group`` depends only on the group, so the results are the same whatever
process measured what, and in whatever order.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import logging
import multiprocessing
import os
import pickle
from collections.abc import Callable, Iterator
from typing import TypeVar

from onnxmp.candidates import Candidate
from onnxmp.groups import QuantizerGroup
from onnxmp.partial import DEFAULT_MAX_MEMORY
from onnxmp.sensitivity import GroupResult, Progress, measure_group
from onnxmp.session import THREADS_VARIABLE
from onnxmp.simulate import Simulator

logger = logging.getLogger(__name__)

BACKENDS = ("local", "ray")
T = TypeVar("T")


class GroupMeasurer:
    """A simulator holding the baseline's cut cache, measuring one group per call."""

    def __init__(self, simulator: Simulator, allowed: dict[int, tuple[Candidate, ...]], base_nsr: float,
                 max_memory: int | None) -> None:
        self.simulator = simulator
        self.allowed = allowed
        self.base_nsr = base_nsr
        self.groups = {g.gid: g for g in simulator.plan.groups}
        highest = next(iter(allowed.values()))[-1]
        budget = DEFAULT_MAX_MEMORY if max_memory is None else max_memory
        if budget > 0:  # --max-memory 0: every evaluation runs the whole graph
            simulator.keep_baseline({g: highest for g in self.groups}, budget)

    @classmethod
    def from_payload(cls, payload: bytes) -> GroupMeasurer:
        ingredients, allowed, base_nsr, max_memory = pickle.loads(payload)
        return cls(Simulator(*ingredients), allowed, base_nsr, max_memory)

    def __call__(self, gid: int) -> GroupResult:
        return measure_group(self.simulator, self.groups[gid], self.allowed[gid], self.base_nsr)


_measurer: GroupMeasurer | None = None  # one per worker process


def _start_worker(payload: bytes) -> None:
    global _measurer
    _measurer = GroupMeasurer.from_payload(payload)


def _measure_in_worker(gid: int) -> GroupResult:
    assert _measurer is not None, "worker not started"
    return _measurer(gid)


def measure_groups(simulator: Simulator, groups: tuple[QuantizerGroup, ...],
                   allowed: dict[int, tuple[Candidate, ...]], base_nsr: float, workers: int = 1, max_memory: int | None = None,
                   progress: Progress | None = None, backend: str = "local") -> list[GroupResult]:
    """Every group's Phase 1 results, in group order (``allowed``: each group's candidates)."""
    if workers <= 1 and backend == "local":
        measurer = GroupMeasurer(simulator, allowed, base_nsr, max_memory)
        try:
            results = []
            for done, group in enumerate(groups, 1):
                results.append(measurer(group.gid))
                _report(progress, done, len(groups), group)
            return results
        finally:
            simulator.drop_baseline()
    share = (max_memory if max_memory is not None else DEFAULT_MAX_MEMORY) // max(1, workers)  # a total budget
    payload = pickle.dumps((simulator.ingredients(), allowed, base_nsr, share))
    results = (_measure_on_ray if backend == "ray" else _measure_in_processes)(payload, groups, workers, progress)
    simulator.evaluations += sum(r.evaluations for r in results)
    return results


def _measure_in_processes(payload: bytes, groups: tuple[QuantizerGroup, ...], workers: int,
                          progress: Progress | None) -> list[GroupResult]:
    with process_pool(workers, _start_worker, (payload,)) as pool:
        futures = {pool.submit(_measure_in_worker, g.gid): g for g in groups}
        for done, future in enumerate(concurrent.futures.as_completed(futures), 1):
            _report(progress, done, len(groups), futures[future])
        by_gid = {futures[f].gid: f.result() for f in futures}
    return [by_gid[g.gid] for g in groups]


_ONE_THREAD = {name: "1" for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}


@contextlib.contextmanager
def process_pool(workers: int, initializer=None, initargs: tuple = ()) -> Iterator[concurrent.futures.Executor]:
    """Spawned worker processes (a fork would copy onnxruntime's thread state), each with one
    BLAS thread and its share of the cores for onnxruntime: the processes are the parallelism."""
    limits = {**_ONE_THREAD, THREADS_VARIABLE: str(max(1, (os.cpu_count() or 1) // workers))}
    saved = {name: os.environ.get(name) for name in limits}
    os.environ.update(limits)
    try:
        with concurrent.futures.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                                    initializer=initializer, initargs=initargs) as pool:
            yield pool
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def parallel_map(fn: Callable[..., T], jobs: list[tuple], workers: int) -> Iterator[T]:
    """``fn(*job)`` for every job, in order, in this process or in ``workers`` processes."""
    if workers <= 1:
        yield from (fn(*job) for job in jobs)
        return
    with process_pool(workers) as pool:
        futures = [pool.submit(fn, *job) for job in jobs]
        for future in futures:
            yield future.result()


def _report(progress: Progress | None, done: int, total: int, group: QuantizerGroup) -> None:
    if progress:
        progress(done, total, group.label)


def _measure_on_ray(payload: bytes, groups: tuple[QuantizerGroup, ...], workers: int,
                    progress: Progress | None) -> list[GroupResult]:
    """The same tasks on Ray actors (``pip install 'onnxmp[ray]'``): joins the cluster named by
    RAY_ADDRESS when set, else starts a local one."""
    from onnxmp.errors import ConfigError

    try:
        import ray
        from ray.util.actor_pool import ActorPool
    except ImportError as exc:
        raise ConfigError("--backend ray needs Ray: pip install 'onnxmp[ray]'") from exc
    if not ray.is_initialized():
        ray.init(address=None, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
    actor = ray.remote(num_cpus=1)(_RayMeasurer)
    shared = ray.put(payload)
    pool = ActorPool([actor.remote(shared) for _ in range(max(1, workers))])
    results = []
    for done, (group, result) in enumerate(zip(groups, pool.map(lambda a, gid: a.measure.remote(gid),
                                                                  [g.gid for g in groups]), strict=True), 1):
        results.append(result)
        _report(progress, done, len(groups), group)
    return results


class _RayMeasurer:
    def __init__(self, payload: bytes) -> None:
        os.environ[THREADS_VARIABLE] = "1"  # an actor holds one CPU (its own process)
        self.measurer = GroupMeasurer.from_payload(payload)

    def measure(self, gid: int) -> GroupResult:
        return self.measurer(gid)
