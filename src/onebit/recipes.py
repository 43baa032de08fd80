"""Named binarization recipes: which quantizers a model's hidden layers use.

A recipe says how the *hidden* layers of a model are binarized. Models decide the rest, the
way the papers do: the first layer sees real-valued inputs (pixels), and the last layer's
output is real-valued (logits).

============================ ==================== ==================== ==================
name                         weights              hidden activations   scaling
============================ ==================== ==================== ==================
``float``                    fp32                 fp32 (model's own)   --
``binaryconnect``            sign                 fp32                 --
``binaryconnect-stochastic`` stochastic sign      fp32                 --
``bnn``                      sign                 sign                 --
``xnor``                     sign                 sign                 alpha = mean abs W
``binary-activations``       fp32                 sign                 --
============================ ==================== ==================== ==================

``binary-activations`` is the first step of two-step training (Martinez et al. 2020, "Training
binary neural networks with real-to-binary convolutions"; Liu et al. 2020, ReActNet): a network
with binary activations and real weights trains first, then initializes the same network under
``bnn`` or ``xnor`` (a row's ``init_from``, see :class:`onebit.experiments.registry.Row`). Its
models have no packed form: their hidden layers multiply real weights by signs.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Recipe", "get", "names"]


@dataclass(frozen=True)
class Recipe:
    """Quantizer names for the layers of a model (see :func:`onebit.quantizers.get`)."""

    name: str
    weight_quantizer: str | None
    activation_quantizer: str | None
    scaling: str | None
    description: str

    @property
    def binary_weights(self) -> bool:
        """Whether the recipe's layers binarize their weights."""
        return self.weight_quantizer is not None

    @property
    def binary_activations(self) -> bool:
        """Whether the recipe's layers binarize their inputs (all but the first layer's)."""
        return self.activation_quantizer is not None

    def layer_kwargs(self, binary_input: bool) -> dict:
        """Keyword arguments for :class:`~onebit.nn.BinaryLinear` / ``BinaryConv2d``;
        ``binary_input=False`` for a layer fed real values (the first layer)."""
        return {
            "weight_quantizer": self.weight_quantizer,
            "input_quantizer": self.activation_quantizer if binary_input else None,
            "scaling": self.scaling,
        }


_RECIPES = {
    r.name: r
    for r in (
        Recipe("float", None, None, None, "full-precision baseline"),
        Recipe("binaryconnect", "sign", None, None, "BinaryConnect: binary weights, real activations"),
        Recipe(
            "binaryconnect-stochastic",
            "stochastic-sign",
            None,
            None,
            "BinaryConnect with stochastic weight binarization (sign at eval)",
        ),
        Recipe("bnn", "sign", "sign", None, "BNN (Hubara et al. 2016): binary weights and activations"),
        Recipe("xnor", "sign", "sign", "xnor", "XNOR-Net: BNN with per-channel weight scaling"),
        Recipe("binary-activations", None, "sign", None,
               "binary activations, real weights: the first step of two-step training"),
    )
}


def names() -> list[str]:
    """The recipe names, in definition order."""
    return list(_RECIPES)


def get(name: str | Recipe) -> Recipe:
    """Resolve a recipe by name; raises ``ValueError`` listing valid names."""
    if isinstance(name, Recipe):
        return name
    if name not in _RECIPES:
        raise ValueError(f"unknown recipe {name!r}; valid recipes: {', '.join(_RECIPES)}")
    return _RECIPES[name]
