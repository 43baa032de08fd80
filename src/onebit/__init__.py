"""onebit: binary neural networks in PyTorch, from training to bit-packed deployment."""

from . import quantizers, recipes, reinforce
from .nn import clip_latent_weights
from .summary import ModelSummary, summary

__version__ = "0.1.0"

__all__ = ["quantizers", "recipes", "reinforce", "clip_latent_weights", "summary", "ModelSummary", "__version__"]
