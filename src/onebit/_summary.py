"""Model summary by precision: parameters, memory float32 vs packed, MACs binary vs float.

In the spirit of ``larq.models.summary``. Conventions:

- A *binary parameter* is a weight of a layer with a weight quantizer (1 bit when packed).
  Every other parameter (biases, batch norm, float layers, XNOR scales are derived, not stored
  as parameters) is a float parameter (32 bits).
- Packed bytes = binary parameters / 8 + 4 * float parameters (per-layer rounding up to whole
  bytes is ignored). Buffers such as batch-norm running statistics are not counted.
- A *binary MAC* is a multiply-accumulate of a layer whose weights **and** inputs are binary
  (an XNOR-popcount on hardware); every other MAC of a linear or convolution layer is a float
  MAC. MACs are counted for one example.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from .nn.layers import QuantizedLayer, computing_layers

__all__ = ["LayerSummary", "ModelSummary", "summary"]


@dataclass
class LayerSummary:
    """One computing layer: its parameters and multiply-accumulates (one input) by precision.

    Attributes:
        name: the module's qualified name (its class name for an unnamed root).
        kind: the module's class name.
        output_shape: the shape of its output for the example input (batch dimension included).
        binary_params, float_params: parameters stored as one bit (binarized weights) and as
            float32 (everything else: biases, batch norm, real-valued layers).
        binary_macs, float_macs: multiply-accumulates per input of binary weights and of real ones.
    """

    name: str
    kind: str
    output_shape: tuple[int, ...]
    binary_params: int
    float_params: int
    binary_macs: int
    float_macs: int

    @property
    def params(self) -> int:
        """All parameters."""
        return self.binary_params + self.float_params

    @property
    def float32_bytes(self) -> int:
        """Bytes with every parameter as float32."""
        return 4 * self.params

    @property
    def packed_bytes(self) -> float:
        """Bytes with binary parameters packed 8 to a byte and the others as float32."""
        return self.binary_params / 8 + 4 * self.float_params


@dataclass
class ModelSummary:
    """Per-layer rows and totals. ``str(summary)`` is a table.

    Its properties ``binary_params``, ``float_params``, ``params``, ``binary_macs``,
    ``float_macs``, ``float32_bytes`` and ``packed_bytes`` sum those of its
    :class:`LayerSummary` rows.
    """

    layers: list[LayerSummary] = field(default_factory=list)

    def _total(self, attr: str):
        return sum(getattr(layer, attr) for layer in self.layers)

    @property
    def binary_params(self) -> int:
        return self._total("binary_params")

    @property
    def float_params(self) -> int:
        return self._total("float_params")

    @property
    def params(self) -> int:
        return self._total("params")

    @property
    def binary_macs(self) -> int:
        return self._total("binary_macs")

    @property
    def float_macs(self) -> int:
        return self._total("float_macs")

    @property
    def float32_bytes(self) -> int:
        return self._total("float32_bytes")

    @property
    def packed_bytes(self) -> float:
        return self._total("packed_bytes")

    @property
    def compression_ratio(self) -> float:
        """float32 bytes / packed bytes."""
        return self.float32_bytes / self.packed_bytes if self.packed_bytes else 1.0

    def as_dict(self) -> dict:
        """The totals and the compression ratio, as a run record stores them."""
        keys = ("binary_params", "float_params", "binary_macs", "float_macs", "float32_bytes", "packed_bytes")
        return {k: getattr(self, k) for k in keys} | {"compression_ratio": self.compression_ratio}

    def __str__(self) -> str:
        header = ("Layer", "Kind", "Output shape", "Binary params", "Float params", "Binary MACs", "Float MACs")
        rows = [
            (layer.name, layer.kind, str(tuple(layer.output_shape)), f"{layer.binary_params:,}",
             f"{layer.float_params:,}", f"{layer.binary_macs:,}", f"{layer.float_macs:,}")
            for layer in self.layers
        ]
        rows.append(("Total", "", "", f"{self.binary_params:,}", f"{self.float_params:,}",
                     f"{self.binary_macs:,}", f"{self.float_macs:,}"))
        widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

        def fmt(row):
            return "  ".join(c.ljust(w) if i < 3 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))

        rule = "-" * len(fmt(header))
        lines = [fmt(header), rule, *map(fmt, rows[:-1]), rule, fmt(rows[-1]), ""]
        lines.append(f"Memory as float32: {_human_bytes(self.float32_bytes)}")
        lines.append(f"Memory packed (1 bit per binary weight): {_human_bytes(self.packed_bytes)}")
        lines.append(f"Compression ratio: {self.compression_ratio:.2f}x")
        return "\n".join(lines)

    _repr_pretty_ = lambda self, p, cycle: p.text(str(self))  # noqa: E731  (IPython display)


def _human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:,.2f} {unit}" if unit != "B" else f"{n:,.0f} B"
        n /= 1024
    raise AssertionError("unreachable")


def _macs(module: nn.Module, output: torch.Tensor) -> int:
    if isinstance(module, nn.Linear):
        return module.in_features * output[0].numel()
    if isinstance(module, nn.Conv2d):
        kh, kw = module.kernel_size
        return (module.in_channels // module.groups) * kh * kw * output[0].numel()
    return 0


def summary(model: nn.Module, input_size: Sequence[int], *, dtype: torch.dtype = torch.float32) -> ModelSummary:
    """Summarize ``model`` layer by layer for one input of shape ``input_size``.

    Args:
        model: the model. It is run once in eval mode on zeros (its mode is restored).
        input_size: shape of **one example, without the batch dimension**, e.g. ``(1, 28, 28)``.
        dtype: input dtype.

    Returns:
        :class:`ModelSummary`; ``print()`` it for a table.

    Example::

        >>> print(onebit.summary(model, (784,)))
    """
    if any(int(s) <= 0 for s in input_size):
        raise ValueError(f"input_size must be positive sizes without the batch dimension, got {tuple(input_size)}")
    result = ModelSummary()
    counted: set[int] = set()  # modules whose parameters are already in a row (shared layers)

    def record(name: str):
        def hook(module: nn.Module, inputs, output) -> None:
            binary_weight = isinstance(module, QuantizedLayer) and module.has_binary_weight
            total = 0 if id(module) in counted else sum(p.numel() for p in module.parameters())
            binary = module.weight.numel() if binary_weight and id(module) not in counted else 0
            counted.add(id(module))
            macs = _macs(module, output)
            binary_macs = macs if binary_weight and module.has_binary_input else 0
            shape = tuple(output.shape[1:]) if torch.is_tensor(output) else ()
            result.layers.append(
                LayerSummary(name, type(module).__name__, shape, binary, total - binary, binary_macs,
                             macs - binary_macs)
            )

        return hook

    hooks = [m.register_forward_hook(record(name or type(m).__name__)) for name, m in computing_layers(model)]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, *input_size, dtype=dtype))
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    missing = sum(p.numel() for p in model.parameters()) - result.params
    if missing:
        result.layers.append(LayerSummary("(parameters of modules not called)", "", (), 0, missing, 0, 0))
    return result

