"""Atomic checkpoint files."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch


def _atomic_write(path: Path, write) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_checkpoint(state: dict[str, Any], path: Path) -> None:
    """Write ``state`` with :func:`torch.save` atomically: temp file, fsync, rename. A run killed
    mid-write leaves the previous checkpoint intact."""
    _atomic_write(path, lambda f: torch.save(state, f))


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint` (tensors and plain data only)."""
    return torch.load(path, map_location="cpu", weights_only=True)


def write_json(obj: Any, path: Path) -> None:
    """Write JSON atomically."""
    _atomic_write(path, lambda f: f.write((json.dumps(obj, indent=2) + "\n").encode()))
