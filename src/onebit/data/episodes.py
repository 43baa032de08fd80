"""Few-shot episodes: N-way K-shot classification tasks drawn from a pool of classes.

A :class:`ClassPool` stores every class's images in one tensor of shape
``(num_classes, per_class, C, H, W)``, so drawing an episode is pure tensor indexing: pick
``way`` distinct classes with one ``randperm``, pick ``shot + queries`` distinct images of
each with one batched ``argsort`` of uniform noise, and gather them with one advanced index.
No Python loop runs over classes or images.

Example::

    pools = onebit.data.omniglot_splits()
    sampler = EpisodeSampler(pools["train"], way=5, shot=1, queries=15, episodes=100, seed=0)
    for episode in sampler:
        x_support = episode.support.float() / 255   # (5, 1, 28, 28)
        ...
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch

__all__ = ["ClassPool", "Episode", "EpisodeSampler"]


@dataclass
class ClassPool:
    """Images grouped by class, the same number per class.

    Attributes:
        images: ``(num_classes, per_class, C, H, W)`` tensor (uint8 for the datasets in
            :mod:`onebit.data`); ``images[c]`` holds every image of class ``c``.
        classes: ``num_classes`` class names, e.g. ``"Greek/character05"`` or
            ``"Greek/character05/rot90"``.
    """

    images: torch.Tensor
    classes: list[str]

    def __post_init__(self) -> None:
        if self.images.ndim != 5:
            raise ValueError(
                "ClassPool.images must have shape (num_classes, per_class, C, H, W), "
                f"got {tuple(self.images.shape)}"
            )
        if len(self.classes) != self.images.shape[0]:
            raise ValueError(
                f"ClassPool has {self.images.shape[0]} classes of images but "
                f"{len(self.classes)} class names"
            )

    @property
    def num_classes(self) -> int:
        """The number of classes in the pool."""
        return self.images.shape[0]

    @property
    def per_class(self) -> int:
        """Number of images of each class."""
        return self.images.shape[1]

    def with_rotations(self) -> ClassPool:
        """Add each class rotated by 90, 180 and 270 degrees as three new classes.

        Returns:
            A pool of ``4 * num_classes`` classes: first the originals, then all rotated by
            90 degrees counter-clockwise (``torch.rot90(x, 1, dims=(-2, -1))``), then by 180,
            then by 270; the names get a ``"/rot90"``, ``"/rot180"`` or ``"/rot270"`` suffix.
        """
        if self.images.shape[-1] != self.images.shape[-2]:
            raise ValueError(f"rotating classes needs square images, got {tuple(self.images.shape[-2:])}")
        quarter_turns = (1, 2, 3)
        images = torch.cat([self.images] + [torch.rot90(self.images, k, dims=(-2, -1)) for k in quarter_turns])
        classes = self.classes + [f"{name}/rot{90 * k}" for k in quarter_turns for name in self.classes]
        return ClassPool(images=images, classes=classes)

    def __repr__(self) -> str:
        return (
            f"ClassPool(num_classes={self.num_classes}, per_class={self.per_class}, "
            f"image_shape={tuple(self.images.shape[2:])}, dtype={self.images.dtype})"
        )


@dataclass
class Episode:
    """One N-way K-shot task. Labels are episode-local: ``0..way-1``.

    Both sets are ordered class by class: ``support_labels`` is
    ``[0]*shot + [1]*shot + ...`` and ``query_labels`` is ``[0]*queries + [1]*queries + ...``.

    Attributes:
        support: ``(way * shot, C, H, W)``, same dtype as the pool's images.
        support_labels: ``(way * shot,)`` int64.
        query: ``(way * queries, C, H, W)``; no image is in both sets.
        query_labels: ``(way * queries,)`` int64.
        classes: ``(way,)`` int64; ``classes[k]`` is the pool index of episode label ``k``.
    """

    support: torch.Tensor
    support_labels: torch.Tensor
    query: torch.Tensor
    query_labels: torch.Tensor
    classes: torch.Tensor


class EpisodeSampler:
    """Iterable of random :class:`Episode` s from a :class:`ClassPool`.

    Each episode draws ``way`` distinct classes uniformly, then ``shot + queries`` distinct
    images of each class uniformly; the first ``shot`` go to the support set, the rest to the
    query set.

    Args:
        pool: classes to draw from.
        way: classes per episode (N).
        shot: support images per class (K).
        queries: query images per class (0 allowed).
        episodes: number of episodes per iteration; ``None`` iterates forever (and the
            sampler then has no ``len()``).
        seed: seeds the sampler's own ``torch.Generator``; the global RNG is not touched.

    The generator lives as long as the sampler, like a seeded ``DataLoader``: iterating a
    second time continues the random stream (fresh training episodes every epoch), and
    two samplers built with the same arguments yield the same sequence. For a fixed
    evaluation set, build a new sampler with a fixed seed for each evaluation.
    """

    def __init__(
        self,
        pool: ClassPool,
        way: int,
        shot: int,
        queries: int,
        *,
        episodes: int | None = None,
        seed: int = 0,
    ) -> None:
        if way < 1 or shot < 1 or queries < 0:
            raise ValueError(f"need way >= 1, shot >= 1, queries >= 0; got {way=}, {shot=}, {queries=}")
        if way > pool.num_classes:
            raise ValueError(f"{way}-way episodes need {way} classes, but the pool has only {pool.num_classes}")
        if shot + queries > pool.per_class:
            raise ValueError(
                f"shot + queries = {shot} + {queries} = {shot + queries} images per class, "
                f"but the pool has only {pool.per_class} images per class"
            )
        if episodes is not None and episodes < 0:
            raise ValueError(f"episodes must be >= 0 or None, got {episodes}")
        self.pool = pool
        self.way = way
        self.shot = shot
        self.queries = queries
        self.episodes = episodes
        self.seed = seed
        self._generator = torch.Generator().manual_seed(seed)
        self._support_labels = torch.arange(way).repeat_interleave(shot)
        self._query_labels = torch.arange(way).repeat_interleave(queries)

    def __len__(self) -> int:
        if self.episodes is None:
            raise TypeError("EpisodeSampler(episodes=None) is infinite and has no len()")
        return self.episodes

    def __iter__(self) -> Iterator[Episode]:
        count = 0
        while self.episodes is None or count < self.episodes:
            yield self.sample()
            count += 1

    def sample(self) -> Episode:
        """Draw one episode."""
        g = self._generator
        classes = torch.randperm(self.pool.num_classes, generator=g)[: self.way]
        # A uniformly random permutation of each class's images, all classes at once.
        noise = torch.rand(self.way, self.pool.per_class, generator=g)
        picks = noise.argsort(dim=1)[:, : self.shot + self.queries]
        images = self.pool.images[classes[:, None], picks]  # (way, shot + queries, C, H, W)
        image_shape = images.shape[2:]
        return Episode(
            support=images[:, : self.shot].reshape(-1, *image_shape),
            support_labels=self._support_labels.clone(),
            query=images[:, self.shot :].reshape(-1, *image_shape),
            query_labels=self._query_labels.clone(),
            classes=classes,
        )

    def __repr__(self) -> str:
        return (
            f"EpisodeSampler({self.pool!r}, way={self.way}, shot={self.shot}, "
            f"queries={self.queries}, episodes={self.episodes}, seed={self.seed})"
        )
