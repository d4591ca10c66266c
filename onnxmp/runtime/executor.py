"""Work spread over processes: local ones (``--workers``) or a Ray cluster (``--backend ray``).

Generic: a job is a picklable function, or a worker state built once per process from a payload
(``map_with_state``), applied to items. Nothing here knows what the work is; Phase 1 and AdaRound
call it. Results come back in the items' order, whatever process computed what.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import logging
import multiprocessing
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

from onnxmp.errors import ConfigError
from onnxmp.runtime.session import THREADS_VARIABLE

logger = logging.getLogger(__name__)

BACKENDS = ("local", "ray")
T = TypeVar("T")
R = TypeVar("R")
# the worker state's task, called on each item: built by ``setup(payload)`` once per worker
Setup = Callable[[bytes], Callable[[Any], Any]]
Done = Callable[[int, Any], None]  # (how many are done, the item just done)

_ONE_THREAD = {name: "1" for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}


@contextlib.contextmanager
def process_pool(workers: int, initializer=None, initargs: tuple = ()) -> Iterator[concurrent.futures.Executor]:
    """Spawned worker processes (a fork would copy onnxruntime's thread state), each with one
    BLAS thread and its share of the cores for onnxruntime: the processes are the parallelism."""
    limits = {**_ONE_THREAD, THREADS_VARIABLE: str(max(1, (os.cpu_count() or 1) // workers))}
    saved = {name: os.environ.get(name) for name in limits}
    os.environ.update(limits)
    try:
        with _main_not_rerun(), concurrent.futures.ProcessPoolExecutor(
                workers, mp_context=multiprocessing.get_context("spawn"), initializer=initializer,
                initargs=initargs) as pool:
            yield pool
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@contextlib.contextmanager
def _main_not_rerun() -> Iterator[None]:
    """Meanwhile, a spawned process does not run the caller's main script first (as it does for
    an interactive session): every worker task is in onnxmp's modules, and a script calling
    ``optimize(..., workers=2)`` without an ``if __name__ == "__main__":`` guard would start its
    whole run again in each worker, which multiprocessing refuses there, while the pool waited for
    those workers forever."""
    main = sys.modules.get("__main__")
    if main is None:
        yield
        return
    saved = {name: main.__dict__[name] for name in ("__file__", "__spec__") if name in main.__dict__}
    main.__dict__.pop("__file__", None)
    main.__spec__ = None
    try:
        yield
    finally:
        main.__dict__.pop("__spec__", None)
        main.__dict__.update(saved)


def parallel_map(fn: Callable[..., T], jobs: list[tuple], workers: int) -> Iterator[T]:
    """``fn(*job)`` for every job, in order, in this process or in ``workers`` processes."""
    if workers <= 1:
        yield from (fn(*job) for job in jobs)
        return
    with process_pool(workers) as pool:
        futures = [pool.submit(fn, *job) for job in jobs]
        for future in futures:
            yield future.result()


def map_with_state(setup: Setup, payload: bytes, items: Sequence[Any], workers: int, backend: str = "local",
                   done: Done | None = None) -> list[Any]:
    """``task(item)`` for every item, in ``workers`` local processes or Ray actors, each of which
    builds its ``task = setup(payload)`` once. ``done`` hears of each finished item (local: as
    they finish; Ray: in order)."""
    if backend == "ray":
        return _map_on_ray(setup, payload, items, workers, done)
    with process_pool(workers, _start_worker, (setup, payload)) as pool:
        futures = {pool.submit(_run_in_worker, item): index for index, item in enumerate(items)}
        for count, future in enumerate(concurrent.futures.as_completed(futures), 1):
            if done:
                done(count, items[futures[future]])
        by_index = {futures[f]: f.result() for f in futures}
    return [by_index[i] for i in range(len(items))]


_task: Callable[[Any], Any] | None = None  # one per worker process


def _start_worker(setup: Setup, payload: bytes) -> None:
    global _task
    _task = setup(payload)


def _run_in_worker(item: Any) -> Any:
    assert _task is not None, "worker not started"
    return _task(item)


def _map_on_ray(setup: Setup, payload: bytes, items: Sequence[Any], workers: int, done: Done | None) -> list[Any]:
    """The same tasks on Ray actors (``pip install 'onnxmp[ray]'``): joins the cluster named by
    RAY_ADDRESS when set, else starts a local one."""
    try:
        import ray
        from ray.util.actor_pool import ActorPool
    except ImportError as exc:
        raise ConfigError("--backend ray needs Ray: pip install 'onnxmp[ray]'") from exc
    if not ray.is_initialized():
        ray.init(address=None, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
    actor = ray.remote(num_cpus=1)(_RayWorker)
    shared = ray.put(payload)
    pool = ActorPool([actor.remote(setup, shared) for _ in range(max(1, workers))])
    results = []
    for count, (item, result) in enumerate(zip(items, pool.map(lambda a, x: a.run.remote(x), list(items)),
                                                strict=True), 1):
        results.append(result)
        if done:
            done(count, item)
    return results


class _RayWorker:
    def __init__(self, setup: Setup, payload: bytes) -> None:
        os.environ[THREADS_VARIABLE] = "1"  # an actor holds one CPU (its own process)
        self.task = setup(payload)

    def run(self, item: Any) -> Any:
        return self.task(item)
