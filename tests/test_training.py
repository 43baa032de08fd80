import itertools
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from onebit._cpu import cpu_label
from onebit.data import ImageSet
from onebit.nn import BinaryLinear
from onebit.quantizers import BinaryNeuron
from onebit.training import ClassificationTask, TrainConfig, Trainer, TrainingDiverged
from onebit.training.trainer import resolve_precision


def synthetic_task(n=256, batch_size=32, seed=0):
    """Four classes of 6x6 images: class k brightens quadrant k."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 4, (n,), generator=g)
    images = torch.randint(0, 100, (n, 1, 6, 6), generator=g, dtype=torch.uint8)
    for k, (r, c) in enumerate([(0, 0), (0, 3), (3, 0), (3, 3)]):
        images[labels == k, :, r : r + 3, c : c + 3] += 120
    data = ImageSet(images, labels, list("abcd"))
    train, rest = data.split(n // 2, seed=0)
    val, test = rest.split(n // 4, seed=1)
    return ClassificationTask({"train": train, "val": val, "test": test}, batch_size, (0.3,), (0.3,))


def tiny_model(reinforce=False):
    return nn.Sequential(
        nn.Flatten(), BinaryLinear(36, 16), nn.BatchNorm1d(16),
        BinaryNeuron("stochastic", "reinforce" if reinforce else "st"),
        nn.Linear(16, 4),
    )


def fit(tmp_path, name, epochs=3, reinforce=False, **overrides):
    torch.manual_seed(0)
    model = tiny_model(reinforce)
    config = TrainConfig(epochs=epochs, lr=0.01, seed=0, device="cpu", progress=False,
                         lr_schedule="cosine", slope_schedule="linear", **overrides)
    trainer = Trainer(model, synthetic_task(), config, tmp_path / name)
    return trainer, trainer.fit()


def without_timing(final):
    return {k: v for k, v in final.items() if k not in ("train_seconds", "train_cpu_seconds")}


def test_training_learns_and_writes_run_files(tmp_path):
    trainer, final = fit(tmp_path, "run", epochs=4)
    run = tmp_path / "run"
    assert {"metrics.jsonl", "final.json", "checkpoint.pt"} <= {p.name for p in run.iterdir()}
    assert any((run / "tensorboard").iterdir())
    history = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in history] == [1, 2, 3, 4]
    assert [h["slope"] for h in history] == pytest.approx([1.0, 1.04, 1.08, 1.12])  # linear annealing
    cosine = [0.01 * 0.5 * (1 + math.cos(math.pi * e / 4)) for e in range(4)]
    assert [h["lr"] for h in history] == pytest.approx(cosine)
    assert [g["lr"] for g in trainer.optimizer.param_groups] == pytest.approx([cosine[-1]])  # what the steps used
    assert final["test_acc"] > 0.5  # chance is 0.25
    assert 0 < final["train_cpu_seconds"] and 0 < final["train_seconds"]
    assert final["cpu"] == cpu_label()  # which machine the record comes from
    assert json.loads((run / "final.json").read_text()) == final


def test_same_seed_same_metrics(tmp_path):
    _, a = fit(tmp_path, "a", reinforce=True)
    _, b = fit(tmp_path, "b", reinforce=True)
    assert without_timing(a) == without_timing(b)
    assert (tmp_path / "a" / "metrics.jsonl").read_text().count("val_acc") == 3


@pytest.mark.parametrize("options", [{}, {"bn_recalibration_batches": 2}, {"optimizer": "bop", "bop_gamma": 1e-3}])
def test_resumed_run_equals_uninterrupted(tmp_path, killed_after_epoch, options):
    _, uninterrupted = fit(tmp_path, "full", epochs=4, reinforce=True, **options)
    with killed_after_epoch(2):
        fit(tmp_path, "killed", epochs=4, reinforce=True, **options)

    torch.manual_seed(123)  # a fresh process would initialize differently: the checkpoint must win
    config = TrainConfig(epochs=4, lr=0.01, seed=0, device="cpu", progress=False,
                         lr_schedule="cosine", slope_schedule="linear", **options)
    resumed = Trainer(tiny_model(True), synthetic_task(), config, tmp_path / "killed").fit(resume=True)
    for key in ("test_acc", "test_loss", "best_epoch", "best_val_acc"):
        assert resumed[key] == uninterrupted[key]
    full = [json.loads(line) for line in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    again = [json.loads(line) for line in (tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()]
    drop = lambda rows: [{k: v for k, v in r.items() if k != "epoch_seconds"} for r in rows]  # noqa: E731
    assert drop(full) == drop(again)


def test_nan_loss_stops_with_epoch_and_step(tmp_path):
    torch.manual_seed(0)
    model = tiny_model()
    with torch.no_grad():
        model[4].weight.fill_(float("nan"))
    config = TrainConfig(epochs=2, seed=0, device="cpu", progress=False)
    with pytest.raises(TrainingDiverged, match="epoch 1, step 1"):
        Trainer(model, synthetic_task(), config, tmp_path / "nan").fit()


def test_latent_weights_are_clipped_after_each_step(tmp_path):
    trainer, _ = fit(tmp_path, "clip", epochs=1, clip_latent=0.05)
    assert trainer.model[1].weight.abs().max() <= 0.05
    assert trainer.model[4].weight.abs().max() > 0.05  # float layer untouched


@pytest.mark.parametrize("grad_clip", [None, 0.1])
def test_grad_clip_bounds_the_norm_of_every_step(tmp_path, grad_clip):
    torch.manual_seed(0)
    config = TrainConfig(epochs=1, lr=0.01, seed=0, device="cpu", progress=False, optimizer="sgd", grad_clip=grad_clip)
    trainer = Trainer(tiny_model(), synthetic_task(), config, tmp_path / "gc")
    norms = []
    step = trainer.optimizer.step

    def record_then_step(*args, **kwargs):
        norms.append(float(torch.linalg.vector_norm(torch.stack(
            [torch.linalg.vector_norm(p.grad) for p in trainer.model.parameters() if p.grad is not None]))))
        return step(*args, **kwargs)

    trainer.optimizer.step = record_then_step
    trainer.fit()
    assert len(norms) == trainer.task.num_train_batches(1)
    if grad_clip is None:
        assert max(norms) > 0.1  # so the clipped run has something to clip
    else:
        assert max(norms) <= 0.1 * (1 + 1e-5)


def test_unknown_options(tmp_path):
    with pytest.raises(ValueError, match="unknown training options"):
        TrainConfig.from_dict({"epochs": 1, "learning_rate": 0.1})
    with pytest.raises(ValueError, match="optimizer"):
        Trainer(tiny_model(), synthetic_task(), TrainConfig(optimizer="lbfgs", device="cpu"), tmp_path / "x")


def test_several_bit_samples_with_leave_one_out_baseline(tmp_path):
    _, final = fit(tmp_path, "loo", epochs=2, reinforce=True, reinforce_baseline="leave-one-out",
                   reinforce_samples=3)
    assert final["test_acc"] > 0.4
    with pytest.raises(ValueError, match="leave-one-out"):
        Trainer(tiny_model(True), synthetic_task(), TrainConfig(reinforce_samples=3, device="cpu"), tmp_path / "x")
    with pytest.raises(ValueError, match="reinforce_baseline"):
        Trainer(tiny_model(True), synthetic_task(), TrainConfig(reinforce_baseline="median", device="cpu"),
                tmp_path / "y")


def test_bf16_precision_trains_in_bfloat16_and_evaluates_in_fp32(tmp_path):
    torch.manual_seed(0)
    model = tiny_model()
    seen = []
    model[1].register_forward_hook(lambda module, inputs, output: seen.append((module.training, output.dtype)))
    config = TrainConfig(epochs=2, lr=0.01, device="cpu", progress=False, precision="bf16")
    final = Trainer(model, synthetic_task(), config, tmp_path / "run").fit()
    assert {dtype for training, dtype in seen if training} == {torch.bfloat16}
    assert {dtype for training, dtype in seen if not training} == {torch.float32}
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert final["test_acc"] > 0.5
    with pytest.raises(ValueError, match="precision"):
        Trainer(tiny_model(), synthetic_task(), TrainConfig(precision="fp8", device="cpu"), tmp_path / "x")


@pytest.mark.parametrize("native_bf16", [True, False])
def test_auto_precision_is_bf16_only_where_the_cpu_computes_it_natively(tmp_path, monkeypatch, native_bf16):
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: native_bf16)
    expected = "bf16" if native_bf16 else "fp32"
    assert resolve_precision("auto", torch.device("cpu")) == expected
    assert resolve_precision("fp32", torch.device("cpu")) == "fp32"  # explicit choices stand
    assert resolve_precision("bf16", torch.device("cpu")) == "bf16"
    _, final = fit(tmp_path, "run", epochs=1, precision="auto")
    assert final["precision"] == expected


def test_bf16_with_reinforce_neurons_keeps_parameters_finite(tmp_path):
    trainer, final = fit(tmp_path, "run", epochs=2, reinforce=True, precision="bf16")
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())
    assert final["test_acc"] > 0.5


@pytest.mark.slow
def test_compiled_training_learns_and_is_reproducible(tmp_path):
    _, a = fit(tmp_path, "a", compile=True, precision="bf16")
    _, b = fit(tmp_path, "b", compile=True, precision="bf16")
    assert without_timing(a) == without_timing(b)
    assert a["test_acc"] > 0.5


def _stochastic_weight_net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), BinaryLinear(36, 16, weight_quantizer="stochastic-sign"), nn.BatchNorm1d(16),
                         nn.ReLU(), BinaryLinear(16, 4, weight_quantizer="stochastic-sign"), nn.BatchNorm1d(4))


def test_glorot_latent_lr_scale_speeds_up_latent_weights_only(tmp_path):
    finals = {}
    for scale in (None, "glorot"):
        model = _stochastic_weight_net()
        config = TrainConfig(epochs=4, lr=0.01, device="cpu", progress=False, latent_lr_scale=scale)
        trainer = Trainer(model, synthetic_task(), config, tmp_path / str(scale))
        finals[scale] = trainer.fit()
    lrs = {id(p): g["lr"] for g in trainer.optimizer.param_groups for p in g["params"]}
    assert lrs[id(model[1].weight)] == pytest.approx(0.01 / math.sqrt(1.5 / (36 + 16)))
    assert lrs[id(model[4].weight)] == pytest.approx(0.01 / math.sqrt(1.5 / (16 + 4)))
    assert lrs[id(model[2].weight)] == pytest.approx(0.01) and lrs[id(model[1].bias)] == pytest.approx(0.01)
    # stochastic binary weights are noise until their latent weights leave 0: the scale gets them there sooner
    assert finals["glorot"]["best_val_acc"] > finals[None]["best_val_acc"] + 0.1
    with pytest.raises(ValueError, match="latent_lr_scale"):
        Trainer(tiny_model(), synthetic_task(), TrainConfig(latent_lr_scale="he", device="cpu"), tmp_path / "x")


def test_a_run_directory_trains_in_one_process_at_a_time(tmp_path):
    """A second trainer of a run directory fails at once, naming the holder, instead of
    interleaving its metrics and checkpoints with the first one's."""
    from onebit.training import RunDirBusy, run_dir_lock

    run = tmp_path / "run"
    with run_dir_lock(run):
        trainer = Trainer(tiny_model(), synthetic_task(), TrainConfig(epochs=1, device="cpu", progress=False), run)
        with pytest.raises(RunDirBusy, match=rf"in use by process {os.getpid()} on "):
            trainer.fit()
        assert not (run / "metrics.jsonl").exists()
    _, final = fit(tmp_path, "run", epochs=1)  # free again once the holder is done
    assert json.loads((run / "final.json").read_text()) == final and final["epochs"] == 1


@pytest.mark.slow
def test_processes_under_torchrun_train_one_model_and_share_its_evaluation(tmp_path):
    """Two gloo processes, each with its own seed and its half of every batch, end with the same
    parameters: gradients are averaged across them (processes training apart would differ). Each
    evaluates its share of the validation batches, and both get the whole split's figures."""
    worker = Path(__file__).with_name("ddp_worker.py")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29534",
           str(worker), str(tmp_path)]
    result = subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert ranks[0]["digest"] == ranks[1]["digest"]
    assert [r["evaluated"] for r in ranks] == [24 + 16, 24]  # batches 0 and 2, batch 1
    for r in ranks:
        assert r["distributed"] == pytest.approx(r["whole"], rel=1e-6)


def test_batch_norm_recalibration_measures_the_eval_mode_network(tmp_path):
    """Running statistics become the average batch statistics of the network as it evaluates
    (sign weights, not samples), over seeded training batches, without touching the global RNG."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), BinaryLinear(36, 16, weight_quantizer="stochastic-sign"), nn.BatchNorm1d(16),
                          nn.Linear(16, 4))
    with torch.no_grad():
        model[1].weight.uniform_(-0.5, 0.5)  # samples and signs differ: the statistics tell them apart
    task = synthetic_task()
    trainer = Trainer(model, task, TrainConfig(device="cpu", progress=False), tmp_path / "run")
    rng = torch.get_rng_state()
    trainer.recalibrate_batch_norm(3, seed=7)
    assert torch.equal(torch.get_rng_state(), rng)
    bn = model[2]
    assert model.training and bn.training and bn.momentum == 0.1 and int(bn.num_batches_tracked) == 3

    model.eval()
    with torch.no_grad():
        batches = itertools.islice(task.train_batches(torch.Generator().manual_seed(7)), 3)
        inputs = [model[1](model[0](x)) for x, _ in batches]
    torch.testing.assert_close(bn.running_mean, torch.stack([h.mean(0) for h in inputs]).mean(0))
    torch.testing.assert_close(bn.running_var, torch.stack([h.var(0) for h in inputs]).mean(0))
    with pytest.raises(ValueError, match="bn_recalibration_batches must be >= 0"):
        Trainer(tiny_model(), task, TrainConfig(bn_recalibration_batches=-1, device="cpu"), tmp_path / "bad")


def test_evaluation_builds_no_autograd_graph(tmp_path):
    task = synthetic_task()
    grad_enabled = []
    step = task.step
    task.step = lambda model, batch: (grad_enabled.append(torch.is_grad_enabled()), step(model, batch))[1]
    Trainer(tiny_model(), task, TrainConfig(device="cpu", progress=False), tmp_path / "run").evaluate("val")
    assert grad_enabled and not any(grad_enabled)


def test_label_smoothing_trains_on_smoothed_targets_and_evaluates_plain_cross_entropy():
    task = synthetic_task()
    eps = 0.2
    smoothed = ClassificationTask(task.splits, 32, (0.3,), (0.3,), label_smoothing=eps)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(36, 4))
    x, y = next(task.eval_batches("val"))
    log_p = torch.log_softmax(model(x), 1)
    target = torch.full_like(log_p, eps / 4).scatter(1, y[:, None], 1 - eps + eps / 4)
    model.train()
    torch.testing.assert_close(smoothed.step(model, (x, y)).per_sample_loss, -(target * log_p).sum(1))
    model.eval()
    torch.testing.assert_close(smoothed.step(model, (x, y)).per_sample_loss, -log_p.gather(1, y[:, None])[:, 0])
    with pytest.raises(ValueError, match="label_smoothing"):
        ClassificationTask(task.splits, 32, (0.3,), (0.3,), label_smoothing=1.0)


def test_distillation_loss_is_the_weighted_kl_to_the_teacher_and_evaluation_stays_plain():
    from onebit.training import DistillationTask

    task = synthetic_task()
    torch.manual_seed(0)
    student, teacher = nn.Sequential(nn.Flatten(), nn.Linear(36, 4)), nn.Sequential(nn.Flatten(), nn.Linear(36, 4))
    x, y = next(task.eval_batches("val"))
    z, t = student(x), teacher(x).detach()
    for weight, temperature in ((1.0, 1.0), (0.3, 4.0), (0.0, 2.0)):
        distilled = DistillationTask(task, teacher, weight, temperature)
        student.train()
        loss = distilled.step(student, (x, y)).per_sample_loss
        p_t = torch.softmax(t / temperature, 1)
        kl = (p_t * (p_t.log() - torch.log_softmax(z / temperature, 1))).sum(1) * temperature**2
        ce = nn.functional.cross_entropy(z, y, reduction="none")
        torch.testing.assert_close(loss, (1 - weight) * ce + weight * kl)
        student.eval()  # validation and test report the labels' cross-entropy
        torch.testing.assert_close(distilled.step(student, (x, y)).per_sample_loss, ce)
    assert not any(p.requires_grad for p in teacher.parameters()) and not teacher.training
    # the labels' part follows the task's label smoothing
    smoothed = ClassificationTask(task.splits, 32, (0.3,), (0.3,), label_smoothing=0.2)
    student.train()
    loss = DistillationTask(smoothed, teacher, 0.25, 1.0).step(student, (x, y)).per_sample_loss
    p_t = torch.softmax(t, 1)
    kl = (p_t * (p_t.log() - torch.log_softmax(z, 1))).sum(1)
    ce = nn.functional.cross_entropy(z, y, reduction="none", label_smoothing=0.2)
    torch.testing.assert_close(loss, 0.75 * ce + 0.25 * kl)
    student.train()
    DistillationTask(task, teacher).step(student, (x, y)).per_sample_loss.mean().backward()
    assert student[1].weight.grad is not None and teacher[1].weight.grad is None
    for bad in ({"weight": 1.5}, {"temperature": 0.0}):
        with pytest.raises(ValueError, match="weight|temperature"):
            DistillationTask(task, teacher, **bad)


def test_a_student_trained_on_a_teachers_predictions_alone_learns_the_task(tmp_path):
    """Weight 1: no label reaches the loss, yet the student learns what the teacher knows."""
    from onebit.training import DistillationTask

    _, teacher_final = fit(tmp_path, "teacher", epochs=4)
    teacher = tiny_model()
    teacher.load_state_dict(torch.load(tmp_path / "teacher" / "checkpoint.pt", weights_only=False)["best_model"])
    torch.manual_seed(1)
    config = TrainConfig(epochs=4, lr=0.01, seed=1, device="cpu", progress=False, lr_schedule="cosine")
    labels_gone = synthetic_task()
    labels_gone.splits["train"].labels.random_(0, 4)  # the labels carry nothing: only the teacher teaches
    final = Trainer(tiny_model(), DistillationTask(labels_gone, teacher.eval()), config, tmp_path / "student").fit()
    assert teacher_final["test_acc"] > 0.5 and final["test_acc"] > 0.5  # chance is 0.25
