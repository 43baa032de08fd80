r"""Episodic few-shot training and evaluation as a :class:`~onebit.training.Task`.

The :class:`~onebit.training.Trainer` loop is unchanged: a training batch is **one episode**
and the per-sample loss is the loss of each query,

.. math:: \ell_j = -\log P(y = \hat y_j \mid \hat x_j, S),

so the trainer's mean over the batch is the usual episode loss.

Two batch layouts (tuples of tensors, so the trainer can move them to a device):

- training, one episode: ``(support (S, C, H, W), support_labels (S,), query (Q, C, H, W),
  query_labels (Q,))``; the model is called as ``model(support, support_labels, query)``.
- evaluation, many episodes over one image table: ``(images (M, C, H, W), support_index
  (E, S), support_labels (E, S), query_index (E, Q), query_labels (E, Q))``. Every image of
  the table is embedded **once** (eval mode, in chunks) and each episode gathers its
  embeddings: thousands of evaluation episodes cost one pass over the pool. Valid because an
  eval-mode encoder maps each image independently and deterministically (batch norm uses its
  running statistics, binary neurons threshold); neurons that sample at eval are refused.

Evaluation episodes are drawn with fixed seeds, independent of the run's seed, so every row
and seed is scored on the same episodes; training episodes come from the generator the
trainer passes each epoch (a resumed run sees the same episodes as an uninterrupted one).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..data.episodes import ClassPool, EpisodeSampler
from ..quantizers import BinaryNeuron
from .tasks import BatchResult

__all__ = ["EpisodeSetting", "EpisodicTask", "LakeRunSet"]


@dataclass(frozen=True)
class EpisodeSetting:
    """An N-way K-shot evaluation protocol: ``episodes`` episodes of ``way`` classes with
    ``shot`` support and ``queries`` query images per class, drawn with ``seed``."""

    way: int
    shot: int
    queries: int
    episodes: int
    seed: int = 0

    @property
    def key(self) -> str:
        """Name in results: ``"5way1shot"``."""
        return f"{self.way}way{self.shot}shot"


@dataclass
class LakeRunSet:
    """Fixed episodes given as tensors, e.g. Lake et al.'s 20 runs of 20-way one-shot
    classification (:func:`onebit.data.load_lake_runs`): ``support (E, S, C, H, W)``,
    ``support_labels (E, S)``, ``query (E, Q, C, H, W)``, ``query_labels (E, Q)``, uint8 images."""

    support: Tensor
    support_labels: Tensor
    query: Tensor
    query_labels: Tensor

    @classmethod
    def from_runs(cls, runs: Sequence) -> LakeRunSet:
        """Stack :class:`~onebit.data.LakeRun` s."""
        if not runs:
            raise ValueError("no runs given")
        return cls(*(torch.stack([getattr(r, f) for r in runs])
                     for f in ("support", "support_labels", "query", "query_labels")))


def _episode_indices(pool: ClassPool, setting: EpisodeSetting) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Draw ``setting.episodes`` episodes from ``pool`` as indices into ``pool.images.flatten(0, 1)``:
    ``(support_index (E, S), support_labels (E, S), query_index (E, Q), query_labels (E, Q))``."""
    ids = torch.arange(pool.num_classes * pool.per_class).view(pool.num_classes, pool.per_class, 1, 1, 1)
    sampler = EpisodeSampler(ClassPool(ids, pool.classes), setting.way, setting.shot, setting.queries,
                             episodes=setting.episodes, seed=setting.seed)
    episodes = list(sampler)
    if not episodes:
        raise ValueError(f"setting {setting} has no episodes")
    return (torch.stack([e.support.flatten() for e in episodes]), torch.stack([e.support_labels for e in episodes]),
            torch.stack([e.query.flatten() for e in episodes]), torch.stack([e.query_labels for e in episodes]))


def _unwrap(model: nn.Module) -> nn.Module:
    return getattr(model, "module", model)  # DistributedDataParallel


def _check_deterministic(model: nn.Module) -> None:
    for name, module in model.named_modules():
        if isinstance(module, BinaryNeuron) and module.mode == "stochastic" and module.sample_at_eval:
            raise ValueError(f"{name} samples at eval time; few-shot evaluation embeds every image once and "
                             "needs a deterministic eval-mode encoder (set sample_at_eval=False)")


@torch.no_grad()
def _embed(model: nn.Module, images: Tensor, chunk: int) -> Tensor:
    """Embeddings of ``images`` in chunks, on the model's device (CPU for a model without
    parameters, such as one whose encoder was swapped for a packed one)."""
    device = next(model.parameters(), torch.empty(0)).device
    return torch.cat([model.embed(images[i : i + chunk].to(device)) for i in range(0, len(images), chunk)])


def _episode_logits(model: nn.Module, emb: Tensor, support_index: Tensor, support_labels: Tensor,
                    query_index: Tensor, way: int, chunk: int = 64) -> Tensor:
    """Logits ``(E, Q, way)`` of episodes given by indices into the embeddings ``emb (M, D)``."""
    device = emb.device
    support_index, support_labels, query_index = (t.to(device) for t in (support_index, support_labels, query_index))
    return torch.cat([
        model.classify(emb[support_index[i : i + chunk]], support_labels[i : i + chunk],
                       emb[query_index[i : i + chunk]], way)
        for i in range(0, len(support_index), chunk)
    ])


def _accuracy_ci(per_episode: Tensor) -> tuple[float, float]:
    r"""Mean accuracy and the half-width of its normal 95% confidence interval,
    :math:`1.96\, s / \sqrt{E}` with :math:`s` the standard deviation over the ``E >= 2`` episodes."""
    acc = per_episode.double()
    n = acc.numel()
    return float(acc.mean()), 1.96 * float(acc.std(unbiased=True)) / math.sqrt(n)


class EpisodicTask:
    r"""N-way K-shot episodes from class pools, for the trainer.

    Args:
        pools: ``{"train", "val", "test"}`` -> :class:`~onebit.data.ClassPool` (disjoint classes,
            e.g. :func:`onebit.data.omniglot_splits`).
        way, shot, queries: training episodes (``queries`` query images per class).
        episodes_per_epoch: training episodes per epoch.
        val: the validation protocol (model selection, every epoch).
        test: the protocols of :meth:`final_evaluation`; the **first** is also the trainer's
            ``test`` split (so ``test_acc`` in ``final.json`` equals its accuracy).
        lake: optional fixed episodes evaluated by :meth:`final_evaluation` as ``lake_key``.
        lake_key: result name of ``lake``.
        mean, std: pixel normalization, in [0, 1] units, applied as ``(x / 255 - mean) / std``.
        embed_chunk: images per encoder call in evaluation.
    """

    def __init__(
        self,
        pools: dict[str, ClassPool],
        *,
        way: int = 5,
        shot: int = 1,
        queries: int = 15,
        episodes_per_epoch: int = 100,
        val: EpisodeSetting = EpisodeSetting(5, 1, 15, 500, seed=1),
        test: Sequence[EpisodeSetting] = (EpisodeSetting(5, 1, 15, 1000, seed=2),),
        lake: LakeRunSet | None = None,
        lake_key: str = "lake20",
        mean: float = 0.0,
        std: float = 1.0,
        embed_chunk: int = 512,
    ) -> None:
        missing = {"train", "val", "test"} - set(pools)
        if missing:
            raise ValueError(f"EpisodicTask needs train, val and test pools; missing {sorted(missing)}")
        if episodes_per_epoch < 1:
            raise ValueError(f"episodes_per_epoch must be >= 1, got {episodes_per_epoch}")
        if not test:
            raise ValueError("give at least one test setting")
        too_few = [s for s in (val, *test) if s.episodes < 2]
        if lake is not None and len(lake.support) < 2:
            too_few.append(f"lake ({len(lake.support)} episode)")
        if too_few:
            raise ValueError("every protocol needs at least 2 episodes (for a confidence interval); "
                             f"too few in {too_few}")
        keys = [s.key for s in test] + ([lake_key] if lake is not None else [])
        if len(set(keys)) != len(keys):
            raise ValueError(f"evaluation names must be distinct, got {keys}")
        # Validate every protocol against its pool now, not after hours of training.
        EpisodeSampler(pools["train"], way, shot, queries)
        for split, setting in [("val", val), *(("test", s) for s in test)]:
            EpisodeSampler(pools[split], setting.way, setting.shot, setting.queries)
        self.pools = pools
        self.way, self.shot, self.queries = way, shot, queries
        self.episodes_per_epoch = episodes_per_epoch
        self.val, self.test = val, tuple(test)
        self.lake, self.lake_key = lake, lake_key
        self.mean, self.std = mean, std
        self.embed_chunk = embed_chunk
        self._indices: dict[tuple[str, EpisodeSetting], tuple[Tensor, ...]] = {}

    def _normalize(self, images: Tensor) -> Tensor:
        return (images.float() / 255 - self.mean) / self.std

    # -- the Task protocol ---------------------------------------------------------------
    def num_train_batches(self, world_size: int = 1) -> int:
        return max(1, self.episodes_per_epoch // world_size)

    def train_batches(self, generator: torch.Generator, rank: int = 0, world_size: int = 1) -> Iterator:
        """One epoch of training episodes. The episode sampler is seeded from ``generator``;
        with several processes, process ``rank`` takes every ``world_size``-th episode."""
        seed = int(torch.randint(0, 2**62, (1,), generator=generator))
        sampler = EpisodeSampler(self.pools["train"], self.way, self.shot, self.queries, seed=seed)
        for _ in range(self.num_train_batches(world_size)):
            for r in range(world_size):
                episode = sampler.sample()
                if r == rank:
                    yield (self._normalize(episode.support), episode.support_labels,
                           self._normalize(episode.query), episode.query_labels)

    def eval_batches(self, split: str) -> Iterator:
        """``"val"``: the validation episodes; ``"test"``: the first test setting's episodes.
        One batch in the evaluation layout (the pool's images and every episode's indices)."""
        if split not in ("val", "test"):
            raise ValueError(f"unknown split {split!r}; choose val or test")
        setting = self.val if split == "val" else self.test[0]
        yield (self.pool_images(split), *self._episodes(split, setting))

    def step(self, model: nn.Module, batch: tuple[Tensor, ...]) -> BatchResult:
        """Per-query losses ``(Q,)`` (training episode) or ``(E * Q,)`` (evaluation batch)."""
        if len(batch) == 4:
            support, support_labels, query, query_labels = batch
            logits = model(support, support_labels, query, way=self.way)  # known way: no .item() in the graph
        elif len(batch) == 5:
            images, support_index, support_labels, query_index, query_labels = batch
            net = _unwrap(model)
            _check_deterministic(net)
            emb = _embed(net, images, self.embed_chunk)
            way = int(support_labels.max()) + 1
            logits = _episode_logits(net, emb, support_index, support_labels, query_index, way)
        else:
            raise ValueError(f"an episodic batch has 4 or 5 tensors, got {len(batch)}")
        logits, labels = logits.reshape(-1, logits.shape[-1]), query_labels.reshape(-1)
        loss = F.cross_entropy(logits, labels, reduction="none")
        return BatchResult(loss, int((logits.argmax(-1) == labels).sum()))

    # -- final evaluation ----------------------------------------------------------------
    @torch.no_grad()
    def final_evaluation(self, model: nn.Module) -> dict[str, dict]:
        """Accuracy with a 95% confidence interval over episodes for every test setting (and
        ``lake``): ``{key: {"acc", "ci95", "episodes", "way", "shot", "queries"}}``.

        ``acc`` is the mean over episodes of the fraction of correct queries; ``ci95`` is the
        half-width :math:`1.96\\,s/\\sqrt{E}` (s: standard deviation of the per-episode accuracy).
        """
        net = _unwrap(model)
        was_training = net.training
        net.eval()
        _check_deterministic(net)
        try:
            results = {}
            emb = _embed(net, self.pool_images("test"), self.embed_chunk)
            for setting in self.test:
                s_idx, s_lab, q_idx, q_lab = self._episodes("test", setting)
                logits = _episode_logits(net, emb, s_idx, s_lab, q_idx, setting.way)
                per_episode = (logits.argmax(-1).cpu() == q_lab).double().mean(-1)
                results[setting.key] = self._summary(per_episode, setting.way, setting.shot, setting.queries)
            if self.lake is not None:
                lake = self.lake
                episodes, shots = lake.support.shape[:2]
                emb_s = _embed(net, self._normalize(lake.support.flatten(0, 1)), self.embed_chunk)
                emb_q = _embed(net, self._normalize(lake.query.flatten(0, 1)), self.embed_chunk)
                way = int(lake.support_labels.max()) + 1
                logits = net.classify(emb_s.view(episodes, shots, -1), lake.support_labels.to(emb_s.device),
                                      emb_q.view(episodes, lake.query.shape[1], -1), way)
                per_episode = (logits.argmax(-1).cpu() == lake.query_labels).double().mean(-1)
                queries = lake.query.shape[1] // way if lake.query.shape[1] % way == 0 else lake.query.shape[1]
                results[self.lake_key] = self._summary(per_episode, way, shots // way, queries)
        finally:
            net.train(was_training)
        return results

    @staticmethod
    def _summary(per_episode: Tensor, way: int, shot: int, queries: int) -> dict:
        acc, ci95 = _accuracy_ci(per_episode)
        return {"acc": acc, "ci95": ci95, "episodes": per_episode.numel(), "way": way, "shot": shot,
                "queries": queries}

    # -- helpers ---------------------------------------------------------------------------
    def pool_images(self, split: str) -> Tensor:
        """Every image of split ``split``'s class pool, normalized: ``(classes * images, 1, H, W)``."""
        pool = self.pools[split]
        return self._normalize(pool.images.flatten(0, 1))

    def _episodes(self, split: str, setting: EpisodeSetting) -> tuple[Tensor, ...]:
        key = (split, setting)
        if key not in self._indices:
            self._indices[key] = _episode_indices(self.pools[split], setting)
        return self._indices[key]

    def __repr__(self) -> str:
        return (f"EpisodicTask(train={self.way}-way {self.shot}-shot {self.queries} queries x "
                f"{self.episodes_per_epoch} episodes/epoch, val={self.val}, test={list(self.test)}, "
                f"lake={self.lake is not None})")

