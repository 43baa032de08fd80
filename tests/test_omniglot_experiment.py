"""The omniglot experiment: its grid, the generic evaluation aggregation, and `onebit run
omniglot --quick` end to end on the real data."""

import json

import pytest
import torch

from onebit.cli import main
from onebit.data import dataset
from onebit.experiments import get
from onebit.experiments.aggregate import aggregate_evaluations
from onebit.experiments.omniglot import omniglot_task
from onebit.experiments.runner import run_configs
from onebit.experiments.runs import build_model
from onebit.quantizers import BinaryNeuron, SignSTE

KEYS = ["5way1shot", "5way5shot", "20way1shot", "20way5shot", "lake20"]
STUDY_B_ROWS = ["float", "binary-block1", "binary-block2", "binary-block3", "binary-block4"]


def test_grid_has_the_issue_rows_with_binary_blocks_where_named():
    experiment = get("omniglot")
    names = [r.name for r in experiment.rows]
    assert names[:7] == STUDY_B_ROWS + ["binary-all", "binary-all-hamming"]
    assert {"protonet-float", "protonet-binary-all", "protonet-binary-all-hamming"} <= set(names)
    for config in run_configs(experiment, seeds=1):
        model = build_model(config)
        acts = [type(block.act) for block in model.encoder.blocks]
        row = config["row"].removeprefix("protonet-")
        if row == "float":
            assert not any(issubclass(a, (BinaryNeuron, SignSTE)) for a in acts)
        elif row.startswith("binary-block"):
            block = int(row[-1])
            assert [a is BinaryNeuron for a in acts] == [b == block for b in (1, 2, 3, 4)]
            assert config["train"]["slope_schedule"] == "linear"  # study B: annealed straight-through
        elif row == "binary-all":
            assert acts == [BinaryNeuron] * 4
        else:
            assert acts == [SignSTE] * 4 and model.distance == "hamming"
            assert model.encoder.weight_quantizer == "sign"
        # a binary embedding (last block binary) learns its similarity scale; a real one has it in its last BN
        binary_embedding = acts[-1] in (BinaryNeuron, SignSTE)
        assert isinstance(model.log_scale, torch.nn.Parameter) == binary_embedding == model.learn_scale
        protonet = config["row"].startswith("protonet")
        assert type(model).__name__ == ("PrototypicalNetwork" if protonet else "MatchingNetwork")
        assert config.get("task") == ({"shot": 5, "queries": 3} if protonet else None)
        assert config["train"]["batch_size"] == 1
        json.dumps(config)  # config.json round-trips (lists, not tuples)
        assert json.loads(json.dumps(config)) == config


def test_one_episode_per_step():
    with pytest.raises(ValueError, match="batch_size must be 1"):
        omniglot_task(dataset("omniglot"), True, 64)
    with pytest.raises(ValueError, match="unknown training episode options"):
        omniglot_task(dataset("omniglot"), True, 1, shots=5)


def test_trains_on_omniglot_only():
    """The few-shot task has no other data: `onebit run omniglot --data mnist` is refused before any run."""
    from onebit.experiments.runner import run_configs

    with pytest.raises(ValueError, match="few-shot episodes of Omniglot"):
        omniglot_task(dataset("mnist"), True, 1)
    with pytest.raises(ValueError, match="image-classification experiments only"):
        run_configs(get("omniglot"), seeds=1, data=dataset("mnist"))


def test_a_row_trains_on_its_own_episodes(shared_datasets):
    """protonet-* rows train 5-shot episodes; evaluation episodes stay the same for every row."""
    import torch

    experiment = get("omniglot")
    configs = run_configs(experiment, quick=True, seeds=1, rows=["float", "protonet-float"])
    tasks = [experiment.task_of(c) for c in configs]
    (support, _, query, _), (support5, _, query5, _) = (
        next(t.train_batches(torch.Generator().manual_seed(0))) for t in tasks)
    assert len(support) == 5 and len(support5) == 25 and len(query5) == 5 * 3  # quick: 5-way
    assert tasks[0].val == tasks[1].val and tasks[0].test == tasks[1].test


def test_aggregate_evaluations_over_seeds():
    finals = [
        {"evaluations": {"5way1shot": {"acc": 0.9, "ci95": 0.02, "episodes": 10, "way": 5},
                         "lake20": {"acc": 0.5, "ci95": 0.1}}},
        {"evaluations": {"5way1shot": {"acc": 0.8, "ci95": 0.04, "episodes": 10, "way": 5}}},
    ]
    out = aggregate_evaluations(finals)
    assert list(out) == ["5way1shot"]  # only settings every seed has
    e = out["5way1shot"]
    assert e["acc"] == [0.9, 0.8] and e["acc_mean"] == pytest.approx(0.85)
    assert e["acc_std"] == pytest.approx(0.0707107, abs=1e-6) and e["ci95"] == pytest.approx(0.03)
    assert e["episodes"] == 10 and e["way"] == 5
    assert aggregate_evaluations([{"test_acc": 0.9}]) == {}  # classification runs: nothing to add


@pytest.mark.slow
def test_quick_run_writes_every_evaluation_key(shared_datasets, tmp_path):
    out = tmp_path / "runs"
    assert main(["run", "omniglot", "--quick", "--out", str(out), "--no-progress"]) == 0
    exp_dir = out / "omniglot"
    results = json.loads((exp_dir / "results.json").read_text())
    assert [r["name"] for r in results["rows"]] == [r.name for r in get("omniglot").rows]
    for row in results["rows"]:
        assert row["evaluations"] == KEYS
        for key in KEYS:
            e = row[key]
            assert 0 <= e["acc_mean"] <= 1 and 0 <= e["ci95"] <= 1 and e["acc"] == [e["acc_mean"]]
        assert row["test_acc_mean"] == pytest.approx(row["5way1shot"]["acc_mean"])  # same test episodes
        assert row["lake20"]["way"] == 20 and row["lake20"]["episodes"] == 2
        final = json.loads((exp_dir / row["name"] / "seed0" / "final.json").read_text())
        assert set(final["evaluations"]) == set(KEYS)
    markdown = (exp_dir / "results.md").read_text()
    assert "| row | 5way1shot | 5way5shot | 20way1shot | 20way5shot | lake20 |" in markdown
    assert (exp_dir / "curves.png").stat().st_size > 0
    heatmaps = {p.name for p in (exp_dir / "heatmaps").glob("*.png")}
    assert "binary-block3__encoder.blocks.block3.act.png" in heatmaps
    assert {f"binary-all-hamming__encoder.blocks.block{b}.act.png" for b in (1, 2, 3, 4)} <= heatmaps
    assert not any(h.startswith("float__") for h in heatmaps)
    # the Hamming rows have binary weights: their packed encoders, under the same head and
    # episodes, give the PyTorch model's accuracy on every protocol
    by_name = {r["name"]: r for r in results["rows"]}
    packed = {name for name, r in by_name.items() if "packed" in r}
    assert packed == {name for name in by_name if name.endswith("binary-all-hamming")} and packed
    for name in packed:
        p = by_name[name]["packed"]
        assert "error" not in p and set(p["accuracy"]) == set(KEYS)
        # Hamming distances between packed codes are integers: the same embeddings, exactly
        assert p["agreement"] == 1.0 and p["max_output_diff"] == 0.0
        for a in p["accuracy"].values():
            assert a["torch"] == a["packed"]
    assert "Packed inference" in markdown
