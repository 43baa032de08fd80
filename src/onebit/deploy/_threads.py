"""The packed engine's threads: one persistent pool of plain Python threads, shared by the
kernels (:func:`run_workers`: a ``nogil`` kernel taking work items from a shared counter) and
by whole-network forward passes (:func:`run_tasks`: one slice of the batch per thread).

Idle pool threads block instead of spinning, and no OpenMP runtime is involved, so the pool
does not compete with the one torch ships. Code running inside :func:`run_tasks` is *serial*
(:func:`in_task`): the kernels it calls run on its thread alone, since every core already has
a slice of the batch. :func:`blas_threads` bounds the threads of the BLAS that numpy's float
layers call (threadpoolctl), so that BLAS threads do not compete with the engine's either.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from typing import TypeVar

__all__ = ["blas_threads", "in_task", "run_tasks", "run_workers"]

T = TypeVar("T")

_POOL: ThreadPoolExecutor | None = None
_POOL_SIZE = 0
_POOL_LOCK = threading.Lock()
_LOCAL = threading.local()


def _forget_pool() -> None:
    """In a forked child: the parent's pool threads do not exist there, so start afresh."""
    global _POOL, _POOL_SIZE, _POOL_LOCK
    _POOL, _POOL_SIZE, _POOL_LOCK = None, 0, threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pool)


def _submit(calls: Sequence[tuple[Callable[..., object], tuple]]) -> list[Future]:
    """Submit ``fn(*args)`` for each call to the shared pool, grown to at least ``len(calls)``
    threads first (a replaced pool finishes the jobs it has, then its threads exit). Returns
    fewer futures (possibly none) if the interpreter is shutting down."""
    global _POOL, _POOL_SIZE
    futures: list[Future] = []
    with _POOL_LOCK:  # grow and submit in one step: no submission can reach a pool being replaced
        if _POOL is None or _POOL_SIZE < len(calls):
            old, _POOL, _POOL_SIZE = _POOL, ThreadPoolExecutor(len(calls), thread_name_prefix="onebit"), len(calls)
            if old is not None:
                old.shutdown(wait=False)
        try:
            for fn, args in calls:
                futures.append(_POOL.submit(fn, *args))
        except RuntimeError:  # interpreter shutdown: the calling thread does the work alone
            pass
    return futures


def _join(futures: list[Future]) -> None:
    """Cancel the helpers that have not started, wait for the others, raise the first error."""
    for future in futures:
        future.cancel()
    wait(futures)
    for future in futures:
        if not future.cancelled() and future.exception() is not None:
            raise future.exception()


def run_workers(nthreads: int, worker: Callable[..., None], *args) -> None:
    """Run ``worker(counter, *args)`` on the calling thread and ``nthreads - 1`` pool threads.

    ``worker`` is a ``nogil`` kernel that takes work items from the shared ``counter`` (a
    one-element int64 array) until none are left, so the calling thread alone finishes the
    job if the helpers are late (busy with another caller's job, or descheduled); helpers
    that had not started by then are cancelled.  Returns only when no helper is still
    running, and raises the first error of any of them.  Safe to call from several Python
    threads at once.
    """
    import numpy as np

    counter = np.zeros(1, np.int64)
    if nthreads <= 1:  # no pool, no futures: the per-call cost of a small GEMM is the kernel's
        worker(counter, *args)
        return
    futures = _submit([(worker, (counter, *args))] * (nthreads - 1))
    try:
        worker(counter, *args)
    finally:
        _join(futures)


def in_task() -> bool:
    """True on a thread running one of :func:`run_tasks`' tasks: kernels called there run serially."""
    return getattr(_LOCAL, "serial", False)


def _serial(task: Callable[[], T]) -> T:
    outer, _LOCAL.serial = in_task(), True
    try:
        return task()
    finally:
        _LOCAL.serial = outer


def run_tasks(tasks: Sequence[Callable[[], T]]) -> list[T]:
    """Results of ``tasks``: the first runs on the calling thread, the others on pool threads at
    the same time, each serially (:func:`in_task`); a task no pool thread has started by the time
    the calling thread is free runs on the calling thread. Returns when every task has finished
    and raises the first error of any of them."""
    futures = _submit([(_serial, (task,)) for task in tasks[1:]])
    results: list[T] = []
    try:
        results.append(_serial(tasks[0]))
        for task, future in zip(tasks[1:], futures):
            results.append(_serial(task) if future.cancel() else future.result())
        results += [_serial(task) for task in tasks[1 + len(futures):]]
    finally:
        _join(futures)
    return results


_BLAS = None  # threadpoolctl's controller of the BLAS libraries loaded at its first use


def _cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


@contextlib.contextmanager
def blas_threads(limit: int) -> Iterator[None]:
    """Run the block with the process's BLAS libraries (numpy's OpenBLAS, MKL, ...) using at most
    ``limit`` threads each, restored afterwards; nothing to do when ``limit`` covers every CPU
    (the libraries' default). The limit is process-wide while the block runs."""
    global _BLAS
    if limit >= _cpus():
        yield
        return
    if _BLAS is None:
        from threadpoolctl import ThreadpoolController

        _BLAS = ThreadpoolController().select(user_api="blas")
    with _BLAS.limit(limits=limit):
        yield
