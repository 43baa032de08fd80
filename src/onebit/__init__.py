"""onebit: binary neural networks in PyTorch, from training to bit-packed deployment.

Submodules and top-level names load lazily, so the numpy-only deploy runtime
(``onebit.deploy.load``) never imports torch.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_SUBMODULES = {"quantizers", "recipes", "reinforce", "nn", "data", "models", "training", "experiments",
               "schedules", "deploy", "inspect", "optim", "predict"}
_ATTRIBUTES = {
    "clip_latent_weights": "onebit.nn",
    "summary": "onebit._summary",
    "ModelSummary": "onebit._summary",
}

__all__ = sorted(_SUBMODULES | set(_ATTRIBUTES) | {"__version__"})


def __getattr__(name: str):
    if name in _SUBMODULES:
        return importlib.import_module(f"onebit.{name}")
    if name in _ATTRIBUTES:
        return getattr(importlib.import_module(_ATTRIBUTES[name]), name)
    raise AttributeError(f"module 'onebit' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
