"""An exclusive lock on a run directory: two processes never train (or reset) the same run.

Two writers of one run directory interleave their ``metrics.jsonl`` and checkpoints into a run
that neither of them trained, without any error. :func:`run_dir_lock` makes the second one fail
at once instead, naming the process that holds the directory. The lock is an ``flock`` on the
file ``.lock`` in the run directory: the operating system releases it when its holder exits,
however it exits, so a killed run never leaves a stale lock behind. Where ``fcntl`` does not
exist (Windows) no lock is taken.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows: no advisory locks through fcntl
    fcntl = None

__all__ = ["LOCK_NAME", "RunDirBusy", "run_dir_lock"]

#: Name of the lock file inside a run directory (git-ignored in committed results).
LOCK_NAME = ".lock"


class RunDirBusy(RuntimeError):
    """Another process holds the run directory."""


@contextmanager
def run_dir_lock(run_dir: str | os.PathLike) -> Iterator[None]:
    """Hold ``run_dir`` exclusively for the duration of the ``with`` block (creating it).

    Raises:
        RunDirBusy: another process holds it; the message names that process.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / LOCK_NAME, "a+", encoding="utf-8") as lock:
        if fcntl is not None:
            try:
                fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                lock.seek(0)
                holder = lock.read().strip() or "another process"
                raise RunDirBusy(
                    f"{run_dir} is in use by {holder}: wait for that run to finish or stop it, "
                    "or train into another --out directory"
                ) from None
        lock.truncate(0)
        lock.write(f"process {os.getpid()} on {socket.gethostname()}\n")
        lock.flush()
        try:
            yield
        finally:
            lock.truncate(0)
