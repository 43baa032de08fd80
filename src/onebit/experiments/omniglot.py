"""Study B's Omniglot experiment: Matching Networks with binary activations after conv block
1, 2, 3 or 4, and beyond it, all blocks binary and a fully binary encoder with a Hamming head.

Every row trains on the same episodes (seeded by the run's seed) and is scored on the same
fixed evaluation episodes: 5-way and 20-way, 1-shot and 5-shot, over the 659 characters of
Lake et al.'s evaluation alphabets, plus Lake et al.'s 20 within-alphabet 20-way one-shot runs.
"""

from __future__ import annotations

import functools
from pathlib import Path

from ..data import Dataset, data_root
from ..data.episodes import ClassPool
from ..training.fewshot import EpisodeSetting, EpisodicTask, LakeRunSet
from .registry import Experiment, Row

#: Training episodes: way, shot, queries per class, episodes per epoch (full mode).
TRAIN_EPISODES = {"way": 20, "shot": 1, "queries": 5, "episodes_per_epoch": 500}
EPOCHS = 32
#: Validation (model selection, every epoch) on the held-out background alphabets.
VAL = EpisodeSetting(5, 1, 15, 1000, seed=1)
#: Final evaluation protocols on the evaluation alphabets; the first is also ``test_acc``.
TEST = (
    EpisodeSetting(5, 1, 15, 1000, seed=2),
    EpisodeSetting(5, 5, 15, 1000, seed=3),
    EpisodeSetting(20, 1, 15, 1000, seed=4),
    EpisodeSetting(20, 5, 15, 1000, seed=5),
)
#: Quick (smoke) mode: a narrow encoder, a few small episodes, 20 validation and test classes of
#: 10 images, 5 queries per class, 2 Lake runs. The numbers mean nothing.
QUICK = {"way": 5, "shot": 1, "queries": 5, "episodes_per_epoch": 20, "eval_episodes": 20, "classes": 20,
         "images": 10, "lake_runs": 2}
QUICK_MODEL = {"hidden": 16}


def _head(pool: ClassPool, classes: int, images: int) -> ClassPool:
    return ClassPool(pool.images[:classes, :images], pool.classes[:classes])


@functools.lru_cache(maxsize=1)
def _load(directory: Path) -> tuple[dict[str, ClassPool], LakeRunSet]:
    """Class pools and Lake runs, loaded once per process (the runner trains rows in turn)."""
    from ..data.omniglot import load_lake_runs, omniglot_splits

    return omniglot_splits(directory), LakeRunSet.from_runs(load_lake_runs(directory))


def omniglot_task(dataset: Dataset, quick: bool, batch_size: int, **train_episodes: int) -> EpisodicTask:
    """The episodic task of every row (see the module constants and :data:`QUICK`), on the few-shot
    class pools of ``dataset`` (Omniglot), normalized with its mean and std; ``train_episodes``
    replaces entries of :data:`TRAIN_EPISODES` (``way``, ``shot``, ``queries``) for a row, in quick
    runs too. Evaluation episodes are the same for every row."""
    if dataset.name != "omniglot":
        raise ValueError(f"the omniglot experiment trains on few-shot episodes of Omniglot's alphabets, not on "
                         f"{dataset.name}; --data takes another dataset for image-classification experiments only")
    if batch_size != 1:
        raise ValueError(f"omniglot trains on one episode per optimizer step: batch_size must be 1, got {batch_size}")
    unknown = set(train_episodes) - {"way", "shot", "queries"}
    if unknown:
        raise ValueError(f"unknown training episode options {sorted(unknown)}; valid: way, shot, queries")
    pools, lake = _load(data_root(dataset.root))
    train, val, test = TRAIN_EPISODES, VAL, TEST
    if quick:
        pools = {"train": pools["train"], "val": _head(pools["val"], QUICK["classes"], QUICK["images"]),
                 "test": _head(pools["test"], QUICK["classes"], QUICK["images"])}
        runs = QUICK["lake_runs"]
        lake = LakeRunSet(lake.support[:runs], lake.support_labels[:runs], lake.query[:runs], lake.query_labels[:runs])
        train = {k: QUICK[k] for k in TRAIN_EPISODES}
        val, *test = (EpisodeSetting(s.way, s.shot, QUICK["queries"], QUICK["eval_episodes"], s.seed)
                      for s in (VAL, *TEST))
    (mean,), (std,) = dataset.normalization
    return EpisodicTask(pools, **{**train, **train_episodes}, val=val, test=test, lake=lake, lake_key="lake20",
                        mean=mean, std=std)


#: Training episodes of the protonet-* rows: 5-shot, matching the 5-shot test protocols as Snell et
#: al. (2017) do, so that they do not train like their Matching Network twins (with one support
#: image per class both heads compute the same function); 3 queries per class keep an episode
#: at 160 images against the Matching Network rows' 120.
PROTONET_EPISODES = {"shot": 5, "queries": 3}


def _model(name: str, binary_blocks: list[int] | None = None, **options) -> dict:
    """A row's model spec. An encoder whose last block (the embedding) is binary gets a learned
    similarity scale (the softmax temperature): its distances are bit counts of fixed range, while
    a real embedding learns its scale through the last batch norm (see the experiment's notes)."""
    if not binary_blocks:
        return {"name": name, **options}
    learn_scale = {"learn_scale": True} if 4 in binary_blocks else {}
    return {"name": name, "binary_blocks": binary_blocks, **options, **learn_scale}


def _rows(prefix: str, model: str, task: dict | None = None) -> list[Row]:
    """float, binary-block1..4, binary-all, binary-all-hamming for one model."""
    task = task or {}
    annealed = {"slope_schedule": "linear"}  # study B: deterministic straight-through, slope annealing
    rows = [Row(f"{prefix}float", _model(model), task=task)]
    rows += [Row(f"{prefix}binary-block{b}", _model(model, [b]), annealed, task) for b in (1, 2, 3, 4)]
    rows.append(Row(f"{prefix}binary-all", _model(model, [1, 2, 3, 4]), annealed, task))
    rows.append(Row(f"{prefix}binary-all-hamming", _model(model, [1, 2, 3, 4], quantizer="sign",
                                                          weight_quantizer="sign", distance="hamming"), task=task))
    return rows


ROWS = _rows("", "matching_net")
ROWS += [r for r in _rows("protonet-", "protonet", PROTONET_EPISODES)
         if r.name.split("-", 1)[1] in ("float", "binary-all", "binary-all-hamming")]

_STUDY_B = {"float": 84.4, "binary-block1": 79.6, "binary-block2": 79.6, "binary-block3": 64.8, "binary-block4": 53.6}
PUBLISHED = {k: f"{v:.1f} (study B, 5-way 1-shot)" for k, v in _STUDY_B.items()}
PUBLISHED["float"] += "; 98.1 (Vinyals et al. 2016)"

OMNIGLOT = Experiment(
    name="omniglot",
    description="Study B: Matching Networks on Omniglot with binary activations per conv block; "
                "Prototypical Networks and a fully binary Hamming encoder",
    rows=tuple(ROWS),
    train={"epochs": EPOCHS, "optimizer": "adam", "lr": 1e-3, "lr_schedule": "cosine", "batch_size": 1,
           "precision": "auto", "compile": True},
    dataset="omniglot",
    make_task=omniglot_task,
    quick_model=QUICK_MODEL,
    published=PUBLISHED,
    targets={"float": 0.98, "binary-block1": 0.96, "binary-block4": 0.93},  # 5-way 1-shot test accuracy
    notes=(
        "Encoder: 4 x [Conv3x3(64)-BN-act-MaxPool2] on 28x28 images -> 64-d embedding; act is ReLU, "
        "or a deterministic binary neuron (outputs {0, 1}, straight-through through the hard sigmoid, "
        "slope annealed by min(5, 1 + 0.04 epoch)) in the binary blocks. Squared-l2 attention, no full "
        "context embeddings (as study B). Rows whose last block is binary (binary-block4, binary-all*, "
        "protonet-binary-all*) learn the similarity scale (the softmax temperature, "
        "`learn_scale=True`): a binary embedding's distances are bit counts with no scale of their own, "
        "which a real embedding learns through its last batch norm. binary-all-hamming: "
        "binary (sign) weights in every conv and sign activations in every block; the embedding is 64 sign "
        "bits and the attention uses the "
        "Hamming distance (straight-through estimator). protonet-*: the same encoders with a "
        "Prototypical Networks head (class means; with Hamming, the mean Hamming distance to the "
        "class's support images).",
        f"Training: {TRAIN_EPISODES['way']}-way {TRAIN_EPISODES['shot']}-shot episodes with "
        f"{TRAIN_EPISODES['queries']} queries per class, {TRAIN_EPISODES['episodes_per_epoch']} episodes "
        f"per epoch x {EPOCHS} epochs, Adam 1e-3 with cosine decay, on the 30 background alphabets minus "
        "5 held out for validation (778 characters x 4 rotations = 3,112 classes). Model selection on "
        f"{VAL.episodes} {VAL.key} episodes of the 5 held-out alphabets; test on the 20 evaluation "
        "alphabets (659 characters, not rotated), touched once. Study B trained on only 100 episodes "
        "and scored 50 episodes with 1 query each (about +-2.5%).",
        "CPU budget: 40 CPU-minutes per row, one thread per run, through torch.compile with bfloat16 "
        "autocast where the CPU computes bf16 natively (fp32 validation and test); `--jobs 2` trains two "
        "rows side by side on a 2-core machine.",
        "protonet-* rows train on 20-way 5-shot episodes with 3 queries per class (Snell et al. 2017 "
        "match the training shot to the test shot): with one support image per class a Prototypical "
        "Network computes the same function as a Matching Network, so 1-shot training would only "
        "repeat the Matching Network rows.",
        "Test protocols: 1,000 fixed episodes each with 15 queries per class (same episodes for every "
        "row); lake20: Lake et al.'s 20 runs of within-alphabet 20-way 1-shot (400 queries). Vinyals et "
        "al. used a different class split (1,200 / 423 characters, test classes rotated too), so their "
        "figures are close but not identical protocols.",
    ),
)
