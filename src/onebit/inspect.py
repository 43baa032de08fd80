"""What the binary units of any model do: which modules output binary activations
(:func:`binary_activations`) and how often each unit fires (:func:`firing_rates`)."""

from __future__ import annotations

import torch
from torch import nn

from .nn import QuantizedLayer
from .quantizers import Quantizer

__all__ = ["binary_activations", "firing_rates"]


def binary_activations(model: nn.Module) -> dict[str, nn.Module]:
    """The modules of ``model`` whose output is a binary activation, by name in network order:
    binary neurons, activation quantizers used as modules of their own, and the input
    quantizers of binary layers (named ``<layer>.input``). Weight quantizers are not
    activations. Empty for a model without binary activations."""
    owned = {id(q) for m in model.modules() if isinstance(m, QuantizedLayer)
             for q in (m.weight_quantizer, m.input_quantizer) if q is not None}
    found = {}
    for name, module in model.named_modules():
        if isinstance(module, Quantizer) and id(module) not in owned:  # BinaryNeuron included
            found[name] = module
        elif isinstance(module, QuantizedLayer) and module.has_binary_input:
            found[f"{name}.input"] = module.input_quantizer
    return found


@torch.no_grad()
def firing_rates(model: nn.Module, images: torch.Tensor) -> dict[str, torch.Tensor]:
    """How often each binary unit of ``model`` fires: for every module of
    :func:`binary_activations`, the fraction of ``images`` for which each of its units outputs
    its high value (1 or +1). Puts ``model`` in eval mode and runs it in batches of 500.

    Args:
        model: any model; its binary activations are found by :func:`binary_activations`.
        images: ``(N, *input_shape)`` inputs as the model takes them, e.g. ``(N, C, H, W)``.

    Returns:
        ``{name: rates}``, where ``rates`` has the shape of one sample's activation, e.g.
        ``(C, H, W)`` after a convolution or ``(F,)`` after a dense layer, float32 in [0, 1].
    """
    sums: dict[str, torch.Tensor] = {}

    def hook(name):
        def record(module, inputs, output):
            sums[name] = sums.get(name, 0) + (output > 0).double().sum(0)

        return record

    handles = [m.register_forward_hook(hook(n)) for n, m in binary_activations(model).items()]
    model.eval()
    try:
        for start in range(0, len(images), 500):
            model(images[start : start + 500])
    finally:
        for h in handles:
            h.remove()
    return {k: (v / len(images)).float() for k, v in sums.items()}
