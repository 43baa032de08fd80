r"""Few-shot metric learners on a 4-block convolutional encoder, with binary activations and
weights where asked: Matching Networks (Vinyals et al. 2016) and Prototypical Networks (Snell
et al. 2017).

Both models embed images with :class:`ConvEncoder` and classify a query by comparing its
embedding :math:`f(\hat x)` with the embeddings :math:`g(x_i)` of a labelled support set
:math:`S = \{(x_i, y_i)\}_{i=1}^{s}` (``way`` classes, ``shot`` images each):

- :class:`MatchingNetwork`: :math:`P(y = k \mid \hat x, S) = \sum_i a(\hat x, x_i)\,
  \mathbb{1}[y_i = k]` with attention :math:`a(\hat x, x_i) = \mathrm{softmax}_i\,
  \lambda\,\mathrm{sim}(f(\hat x), g(x_i))`, optionally with full context embeddings.
- :class:`PrototypicalNetwork`: :math:`P(y = k \mid \hat x, S) = \mathrm{softmax}_k\,
  \lambda\,\mathrm{sim}(f(\hat x), c_k)` with prototypes :math:`c_k = \frac{1}{|S_k|}
  \sum_{i \in S_k} g(x_i)`.

Similarities (``distance``), with scale :math:`\lambda` (``scale``):

- ``"cosine"``: :math:`\mathrm{sim}(q, s) = \frac{q \cdot s}{\max(\lVert q\rVert \lVert s\rVert, \epsilon)}`
  (Vinyals et al.);
- ``"sqeuclidean"``: :math:`\mathrm{sim}(q, s) = -\lVert q - s\rVert^2` (Snell et al.; study B);
- ``"hamming"``: :math:`\mathrm{sim}(q, s) = -d_H(q, s)` on embeddings in :math:`\{-1, +1\}^D`,
  where :math:`d_H(q, s) = \#\{j : q_j \ne s_j\} = (D - q \cdot s) / 2`: an XOR and a popcount of
  two :math:`D`-bit words on an edge device. Needs an encoder whose last block outputs
  :math:`\pm 1` (a ``"sign"``-type quantizer); training reaches the encoder through the
  straight-through estimator of that quantizer.

Calling a model with one tensor returns embeddings (so :func:`onebit.summary` and the report's
activation heatmaps work on it); with a support set and queries it returns logits.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import quantizers
from ..nn import BinaryConv2d

__all__ = ["ConvEncoder", "FullContextEmbedding", "FewShotNetwork", "MatchingNetwork", "PrototypicalNetwork",
           "DISTANCES"]

DISTANCES = ("cosine", "sqeuclidean", "hamming")


def _parse_blocks(binary_blocks: Any, blocks: int) -> tuple[int, ...]:
    """``binary_blocks`` as a sorted tuple of 1-based block indices."""
    if binary_blocks is None or binary_blocks == "none":
        return ()
    if binary_blocks == "all":
        return tuple(range(1, blocks + 1))
    if isinstance(binary_blocks, int) and not isinstance(binary_blocks, bool):
        binary_blocks = [binary_blocks]
    valid = isinstance(binary_blocks, Sequence) and not isinstance(binary_blocks, str)
    if valid:
        valid = all(isinstance(b, int) and not isinstance(b, bool) and 1 <= b <= blocks for b in binary_blocks)
    if not valid or len(set(binary_blocks)) != len(binary_blocks):
        raise ValueError(
            f"binary_blocks must be 'all', 'none' or distinct block numbers in 1..{blocks}, got {binary_blocks!r}"
        )
    return tuple(sorted(binary_blocks))


class ConvEncoder(nn.Module):
    r"""The few-shot encoder of Vinyals et al. (2016): ``blocks`` x [Conv3x3(hidden, pad 1)-BN-act-MaxPool2].

    ``act`` is ReLU, or a binary quantizer in the blocks listed in ``binary_blocks``. A
    28x28 Omniglot image shrinks 28 -> 14 -> 7 -> 3 -> 1, so the embedding has
    ``hidden = 64`` dimensions. The convolutions have no bias (batch norm follows them).

    Binary activations come from :mod:`onebit.quantizers` by name (one fresh module per block):

    - ``"binary-neuron"`` (default): :class:`~onebit.quantizers.BinaryNeuron`, outputs in
      {0, 1} from :math:`p = \mathrm{clamp}((a x + 1)/2, 0, 1)`; ``quantizer_kwargs`` chooses
      ``mode`` ("deterministic" / "stochastic") and ``estimator`` ("st" / "reinforce"); the
      trainer anneals its slope :math:`a` (study B: deterministic, straight-through, annealed);
    - ``"sign"``, ``"stochastic-sign"``, ``"approx-sign"``, ...: outputs in {-1, +1}.

    Since the thresholds are monotone, a deterministic binary activation commutes with max
    pooling: the pooled output of a binary block is binary.

    Args:
        binary_blocks: 1-based indices of the blocks with a binary activation, ``"all"`` or
            ``"none"``.
        quantizer: quantizer name for binary activations (see :func:`onebit.quantizers.names`).
        quantizer_kwargs: constructor arguments of that quantizer.
        weight_quantizer: ``None`` (float convolutions) or a quantizer name for the conv
            weights of **every** block, which then become :class:`~onebit.nn.BinaryConv2d`
            (latent fp32 weights, e.g. ``"sign"``).
        in_channels: image channels.
        hidden: channels of every block.
        blocks: number of blocks.
        image_size: side of the square input (to compute :attr:`embedding_dim`).

    Shape:
        - Input: ``(N, in_channels, image_size, image_size)``
        - Output: ``(N, embedding_dim)``
    """

    def __init__(
        self,
        binary_blocks: Sequence[int] | str | None = (),
        quantizer: str = "binary-neuron",
        quantizer_kwargs: dict[str, Any] | None = None,
        weight_quantizer: str | None = None,
        *,
        in_channels: int = 1,
        hidden: int = 64,
        blocks: int = 4,
        image_size: int = 28,
    ) -> None:
        super().__init__()
        if blocks < 1 or hidden < 1 or in_channels < 1:
            raise ValueError(f"need blocks, hidden and in_channels >= 1, got {blocks=}, {hidden=}, {in_channels=}")
        if image_size < 2**blocks:
            raise ValueError(f"image_size {image_size} is too small for {blocks} max-pooling blocks")
        self.binary_blocks = _parse_blocks(binary_blocks, blocks)
        self.quantizer = quantizer
        self.quantizer_kwargs = dict(quantizer_kwargs or {})
        self.weight_quantizer = weight_quantizer
        layers = []
        size = image_size
        for b in range(1, blocks + 1):
            fan_in = in_channels if b == 1 else hidden
            if weight_quantizer is None:
                conv = nn.Conv2d(fan_in, hidden, 3, padding=1, bias=False)
            else:
                conv = BinaryConv2d(fan_in, hidden, 3, padding=1, bias=False, weight_quantizer=weight_quantizer)
            if b in self.binary_blocks:
                act = quantizers.get(quantizer, **self.quantizer_kwargs)
            else:
                act = nn.ReLU()
            block = nn.Sequential(OrderedDict(conv=conv, bn=nn.BatchNorm2d(hidden), act=act, pool=nn.MaxPool2d(2)))
            layers.append((f"block{b}", block))
            size //= 2
        self.blocks = nn.Sequential(OrderedDict(layers))
        self.embedding_dim = hidden * size * size

    @property
    def output_levels(self) -> tuple[float, float] | None:
        """The two values the embedding takes if the last block is binary, else ``None``."""
        act = self.blocks[-1].act
        return tuple(act.levels) if isinstance(act, quantizers.Quantizer) else None

    def forward(self, x: Tensor) -> Tensor:
        return self.blocks(x).flatten(1)

    def extra_repr(self) -> str:
        s = f"binary_blocks={list(self.binary_blocks)}"
        if self.binary_blocks:
            s += f", quantizer={self.quantizer!r}"
        if self.weight_quantizer is not None:
            s += f", weight_quantizer={self.weight_quantizer!r}"
        return s + f", embedding_dim={self.embedding_dim}"


class FullContextEmbedding(nn.Module):
    r"""Full context embeddings of Vinyals et al. (2016), appendix A.

    Support set (bidirectional LSTM over the support embeddings :math:`g'(x_i)`, in order):

    .. math:: g(x_i, S) = \overrightarrow{h}_i + \overleftarrow{h}_i + g'(x_i)

    Queries (attention LSTM, ``steps`` = :math:`K` read steps over :math:`g(S)`), starting from
    :math:`h_0 = f'(\hat x)`, :math:`c_0 = 0`:

    .. math::
        a_{k,i} = \mathrm{softmax}_i\, h_{k-1}^\top g(x_i), \qquad
        r_{k-1} = \sum_i a_{k,i}\, g(x_i), \\
        \hat h_k, c_k = \mathrm{LSTM}\big([f'(\hat x), r_{k-1}],\ (h_{k-1}, c_{k-1})\big), \qquad
        h_k = \hat h_k + f'(\hat x)

    and :math:`f(\hat x, S) = h_K`. (The paper feeds :math:`r_{k-1}` through the LSTM's hidden
    state, :math:`[h_{k-1}, r_{k-1}]`; feeding it as input is the same family of gates.)

    Args:
        dim: embedding size :math:`D`.
        steps: read steps :math:`K`.

    Shape:
        - support ``(E, S, D)``, query ``(E, Q, D)``
        - Output: ``(g, f)`` of shapes ``(E, S, D)`` and ``(E, Q, D)``
    """

    def __init__(self, dim: int, steps: int = 5) -> None:
        super().__init__()
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        self.dim = dim
        self.steps = steps
        self.support_lstm = nn.LSTM(dim, dim, batch_first=True, bidirectional=True)
        self.query_cell = nn.LSTMCell(2 * dim, dim)

    def forward(self, support: Tensor, query: Tensor) -> tuple[Tensor, Tensor]:
        out, _ = self.support_lstm(support)
        g = out[..., : self.dim] + out[..., self.dim :] + support
        episodes, queries, dim = query.shape
        f0 = query.reshape(episodes * queries, dim)
        h, c = f0, torch.zeros_like(f0)
        for _ in range(self.steps):
            a = torch.softmax(torch.bmm(h.view(episodes, queries, dim), g.transpose(1, 2)), dim=-1)
            r = torch.bmm(a, g).reshape(episodes * queries, dim)
            h, c = self.query_cell(torch.cat([f0, r], dim=1), (h, c))
            h = h + f0
        return g, h.view(episodes, queries, dim)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, steps={self.steps}"


def _class_logsumexp(z: Tensor, labels: Tensor, way: int) -> Tensor:
    r""":math:`\log \sum_{i: y_i = k} e^{z_i}` for every class ``k``, stably.

    ``z``: ``(E, Q, S)``, ``labels``: ``(E, S)`` in ``0..way-1``; returns ``(E, Q, way)``
    (``-inf`` for a class without support examples).
    """
    index = labels.unsqueeze(1).expand_as(z)
    peak = torch.full((*z.shape[:-1], way), float("-inf"), dtype=z.dtype, device=z.device)
    peak = peak.scatter_reduce(-1, index, z.detach(), "amax").detach()
    total = torch.zeros_like(peak).scatter_add(-1, index, torch.exp(z - peak.gather(-1, index)))
    return peak + torch.log(total)


class FewShotNetwork(nn.Module):
    r"""Base of the few-shot models: a :class:`ConvEncoder` and a similarity.

    Subclasses implement :meth:`classify` on embeddings. ``forward`` accepts one episode
    (``support (S, C, H, W)``, ``support_labels (S,)``, ``query (Q, C, H, W)`` -> logits
    ``(Q, way)``), a batch of ``E`` episodes (a leading ``E`` on every argument -> ``(E, Q, way)``)
    or images alone (``(N, C, H, W)`` -> embeddings ``(N, D)``). Support and query pass through
    the encoder together (one batch-norm batch in training).

    The logits are log-probabilities up to a per-query constant, so
    ``F.cross_entropy(logits, query_labels)`` is the episode's loss.

    Args:
        binary_blocks, quantizer, quantizer_kwargs, weight_quantizer, in_channels, hidden,
            image_size: as :class:`ConvEncoder`.
        distance: ``"cosine"``, ``"sqeuclidean"`` or ``"hamming"`` (see the module docstring).
        scale: :math:`\lambda`, multiplies the similarities.
        learn_scale: make :math:`\lambda` a parameter (stored as :math:`\log\lambda`).
    """

    def __init__(
        self,
        binary_blocks: Sequence[int] | str | None = (),
        quantizer: str = "binary-neuron",
        quantizer_kwargs: dict[str, Any] | None = None,
        weight_quantizer: str | None = None,
        distance: str = "sqeuclidean",
        scale: float = 1.0,
        learn_scale: bool = False,
        *,
        in_channels: int = 1,
        hidden: int = 64,
        image_size: int = 28,
    ) -> None:
        super().__init__()
        if distance not in DISTANCES:
            raise ValueError(f"unknown distance {distance!r}; choose one of {', '.join(map(repr, DISTANCES))}")
        if not scale > 0:
            raise ValueError(f"scale must be positive, got {scale}")
        self.encoder = ConvEncoder(binary_blocks, quantizer, quantizer_kwargs, weight_quantizer,
                                   in_channels=in_channels, hidden=hidden, image_size=image_size)
        if distance == "hamming" and self.encoder.output_levels != (-1.0, 1.0):
            raise ValueError(
                "distance='hamming' compares sign bits: the encoder's last block needs a binary "
                "activation with outputs in {-1, +1}, e.g. binary_blocks including "
                f"{len(self.encoder.blocks)} and quantizer='sign' (got output levels "
                f"{self.encoder.output_levels})"
            )
        self.distance = distance
        log_scale = torch.tensor(float(scale)).log()
        if learn_scale:
            self.log_scale = nn.Parameter(log_scale)
        else:
            self.register_buffer("log_scale", log_scale)
        self.learn_scale = learn_scale

    @property
    def embedding_dim(self) -> int:
        return self.encoder.embedding_dim

    @property
    def scale(self) -> Tensor:
        return self.log_scale.exp()

    def embed(self, x: Tensor) -> Tensor:
        """Encoder embeddings: ``(N, C, H, W) -> (N, D)``."""
        return self.encoder(x)

    def similarity(self, query: Tensor, keys: Tensor) -> Tensor:
        r"""Scaled similarities :math:`\lambda\,\mathrm{sim}(q, k)`: ``query (E, Q, D)``,
        ``keys (E, K, D)`` -> ``(E, Q, K)``."""
        if self.distance == "cosine":
            dots = torch.bmm(query, keys.transpose(1, 2))
            norms = query.norm(dim=-1).unsqueeze(-1) * keys.norm(dim=-1).unsqueeze(-2)
            sim = dots / norms.clamp_min(1e-8)
        elif self.distance == "sqeuclidean":
            dots = torch.bmm(query, keys.transpose(1, 2))
            sq = query.pow(2).sum(-1).unsqueeze(-1) + keys.pow(2).sum(-1).unsqueeze(-2)
            sim = -(sq - 2 * dots).clamp_min(0)
        else:
            sim = -self.hamming(query, keys)
        return self.scale * sim

    @staticmethod
    def hamming(query: Tensor, keys: Tensor) -> Tensor:
        r"""Hamming distances :math:`d_H = (D - q \cdot k) / 2` between :math:`\pm 1` vectors
        (for averages of :math:`\pm 1` vectors, the mean distance to the averaged ones):
        ``(E, Q, D)``, ``(E, K, D)`` -> ``(E, Q, K)``."""
        return 0.5 * (query.shape[-1] - torch.bmm(query, keys.transpose(1, 2)))

    def classify(self, support: Tensor, support_labels: Tensor, query: Tensor, way: int | None = None) -> Tensor:
        """Logits from embeddings: ``support (E, S, D)``, ``support_labels (E, S)``, ``query
        (E, Q, D)`` -> ``(E, Q, way)`` (the leading ``E`` may be absent on all three)."""
        raise NotImplementedError

    def forward(self, support: Tensor, support_labels: Tensor | None = None, query: Tensor | None = None,
                way: int | None = None) -> Tensor:
        if support_labels is None and query is None:
            return self.embed(support)
        if support_labels is None or query is None:
            raise ValueError("pass images alone (embeddings), or support, support_labels and query (logits)")
        batched = support.dim() == 5
        if not batched:
            support, support_labels, query = support.unsqueeze(0), support_labels.unsqueeze(0), query.unsqueeze(0)
        episodes, shots, queries = support.shape[0], support.shape[1], query.shape[1]
        images = torch.cat([support.flatten(0, 1), query.flatten(0, 1)])
        emb = self.embed(images)
        s = emb[: episodes * shots].view(episodes, shots, -1)
        q = emb[episodes * shots :].view(episodes, queries, -1)
        logits = self.classify(s, support_labels, q, way)
        return logits if batched else logits.squeeze(0)

    @staticmethod
    def _batch(support: Tensor, query: Tensor, labels: Tensor | None = None):
        """Add the episode dimension if absent; returns ``(support, query, labels, batched)``."""
        batched = support.dim() == 3
        if not batched:
            support, query = support.unsqueeze(0), query.unsqueeze(0)
            labels = None if labels is None else labels.unsqueeze(0)
        if support.dim() != 3 or query.dim() != 3 or (labels is not None and labels.shape != support.shape[:2]):
            raise ValueError(
                "expected support embeddings (E, S, D), support_labels (E, S) and query embeddings (E, Q, D) "
                f"(or all without E), got {tuple(support.shape)}, "
                f"{None if labels is None else tuple(labels.shape)}, {tuple(query.shape)}"
            )
        return support, query, labels, batched

    @staticmethod
    def _way(support_labels: Tensor, way: int | None) -> int:
        return int(support_labels.max()) + 1 if way is None else way

    def extra_repr(self) -> str:
        return f"distance={self.distance!r}, scale={float(self.scale.detach()):g}, learn_scale={self.learn_scale}"


class MatchingNetwork(FewShotNetwork):
    r"""Matching Networks (Vinyals et al. 2016) on a :class:`ConvEncoder`.

    .. math::
        a(\hat x, x_i) = \frac{\exp \lambda\,\mathrm{sim}(f(\hat x), g(x_i))}
                              {\sum_j \exp \lambda\,\mathrm{sim}(f(\hat x), g(x_j))}, \qquad
        \log P(y = k \mid \hat x, S) = \log \sum_{i: y_i = k} a(\hat x, x_i)

    computed stably as a per-class log-sum-exp. Without full context embeddings
    :math:`f = g =` the encoder; with ``fce=True``, :class:`FullContextEmbedding`.

    Args:
        fce: use full context embeddings (not with ``distance="hamming"``, whose embeddings
            must stay sign bits).
        fce_steps: read steps :math:`K` of the attention LSTM.
        **kwargs: as :class:`FewShotNetwork` (encoder, ``distance``, ``scale``, ``learn_scale``).

    Shape:
        - ``forward(support (S, C, H, W), support_labels (S,), query (Q, C, H, W))``:
          ``(Q, way)`` logits; with a leading episode dimension ``E`` on all: ``(E, Q, way)``.
        - ``forward(x (N, C, H, W))``: ``(N, D)`` embeddings.
    """

    def __init__(self, *args: Any, fce: bool = False, fce_steps: int = 5, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if fce and self.distance == "hamming":
            raise ValueError("fce=True is not available with distance='hamming' (context embeddings are real-valued)")
        self.fce = FullContextEmbedding(self.embedding_dim, fce_steps) if fce else None

    def attention(self, support: Tensor, query: Tensor) -> Tensor:
        """Attention weights :math:`a(\\hat x, x_i)` over the support: ``support (E, S, D)``,
        ``query (E, Q, D)`` -> ``(E, Q, S)``, each row summing to 1 (no ``E``: ``(Q, S)``)."""
        support, query, _, batched = self._batch(support, query)
        a = torch.softmax(self._attention_logits(support, query), dim=-1)
        return a if batched else a.squeeze(0)

    def _attention_logits(self, support: Tensor, query: Tensor) -> Tensor:
        if self.fce is not None:
            support, query = self.fce(support, query)
        return self.similarity(query, support)

    def classify(self, support: Tensor, support_labels: Tensor, query: Tensor, way: int | None = None) -> Tensor:
        support, query, support_labels, batched = self._batch(support, query, support_labels)
        z = self._attention_logits(support, query)
        log_p = _class_logsumexp(z, support_labels, self._way(support_labels, way)) - z.logsumexp(-1, keepdim=True)
        return log_p if batched else log_p.squeeze(0)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", fce={self.fce is not None}"


class PrototypicalNetwork(FewShotNetwork):
    r"""Prototypical Networks (Snell et al. 2017) on a :class:`ConvEncoder`.

    .. math::
        c_k = \frac{1}{|S_k|} \sum_{i: y_i = k} g(x_i), \qquad
        \mathrm{logit}_k(\hat x) = \lambda\,\mathrm{sim}(f(\hat x), c_k)

    With ``distance="hamming"`` the prototype of :math:`\pm 1` embeddings is their mean and
    :math:`(D - q \cdot c_k)/2` is the **mean Hamming distance** from the query to the class's
    support examples: an edge device sums popcounts and picks the smallest sum.

    Args:
        **kwargs: as :class:`FewShotNetwork`.

    Shape: as :class:`MatchingNetwork`.
    """

    def prototypes(self, support: Tensor, support_labels: Tensor, way: int | None = None) -> Tensor:
        """Class means: ``support (E, S, D)``, ``support_labels (E, S)`` -> ``(E, way, D)``
        (no ``E``: ``(way, D)``)."""
        support, _, support_labels, batched = self._batch(support, support, support_labels)
        way = self._way(support_labels, way)
        onehot = F.one_hot(support_labels, way).to(support.dtype)  # (E, S, way)
        counts = onehot.sum(1).unsqueeze(-1)  # (E, way, 1)
        # eager calls check their input; compiled training steps skip the host sync (the episode
        # sampler gives every class its shots)
        if not torch.compiler.is_compiling() and bool((counts == 0).any()):
            raise ValueError("every class 0..way-1 needs at least one support example")
        protos = torch.bmm(onehot.transpose(1, 2), support) / counts
        return protos if batched else protos.squeeze(0)

    def classify(self, support: Tensor, support_labels: Tensor, query: Tensor, way: int | None = None) -> Tensor:
        support, query, support_labels, batched = self._batch(support, query, support_labels)
        logits = self.similarity(query, self.prototypes(support, support_labels, way))
        return logits if batched else logits.squeeze(0)
