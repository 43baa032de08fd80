"""Matching / Prototypical Networks with binary activations, and the episodic task."""

import json
import math

import pytest
import torch
import torch.nn.functional as F

from onebit import models
from onebit.data import ClassPool
from onebit.inspect import binary_activations
from onebit.models.matching_net import ConvEncoder, MatchingNetwork, PrototypicalNetwork
from onebit.nn import BinaryConv2d
from onebit.quantizers import BinaryNeuron, SignSTE
from onebit.training import TrainConfig, Trainer
from onebit.training.fewshot import EpisodeSetting, EpisodicTask, LakeRunSet, _accuracy_ci

SMALL = {"hidden": 8, "image_size": 16}  # 16 -> 8 -> 4 -> 2 -> 1: 8-d embeddings


def pm_one(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 2, shape, generator=g).float() * 2 - 1


def episode_embeddings(episodes=3, way=4, shot=2, queries=5, dim=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    support = torch.randn(episodes, way * shot, dim, generator=g)
    labels = torch.arange(way).repeat_interleave(shot).repeat(episodes, 1)
    labels = torch.stack([row[torch.randperm(len(row), generator=g)] for row in labels])  # any order
    query = torch.randn(episodes, way * queries, dim, generator=g)
    return support, labels, query


# -- encoder ---------------------------------------------------------------------------------
def test_encoder_shapes_and_binary_blocks():
    enc = ConvEncoder(binary_blocks=[2, 4])
    assert enc.embedding_dim == 64
    assert enc(torch.randn(3, 1, 28, 28)).shape == (3, 64)
    acts = [type(block.act) for block in enc.blocks]
    assert acts == [torch.nn.ReLU, BinaryNeuron, torch.nn.ReLU, BinaryNeuron]
    emb = enc(torch.randn(6, 1, 28, 28))
    assert set(emb.unique().tolist()) <= {0.0, 1.0}  # block 4 binary -> {0, 1} embedding
    assert ConvEncoder("all").binary_blocks == (1, 2, 3, 4)
    assert ConvEncoder("none").binary_blocks == ()


def test_fully_binary_encoder_gives_sign_bits_and_trains_through_ste():
    model = MatchingNetwork("all", quantizer="sign", weight_quantizer="sign", distance="hamming", **SMALL)
    assert all(isinstance(b.conv, BinaryConv2d) and isinstance(b.act, SignSTE) for b in model.encoder.blocks)
    x = torch.randn(10, 1, 16, 16)
    assert set(model(x).unique().tolist()) <= {-1.0, 1.0}
    logits = model(x[:4], torch.arange(4), x[4:])
    F.cross_entropy(logits, torch.tensor([0, 1, 2, 3, 0, 1])).backward()
    grad = model.encoder.blocks.block1.conv.weight.grad
    assert grad is not None and grad.abs().sum() > 0  # straight-through reaches the first layer


@pytest.mark.parametrize("kwargs,match", [
    ({"binary_blocks": [0]}, "binary_blocks"),
    ({"binary_blocks": [5]}, "binary_blocks"),
    ({"binary_blocks": "first"}, "binary_blocks"),
    ({"binary_blocks": [1, 1]}, "binary_blocks"),
    ({"binary_blocks": [1], "quantizer": "sgn"}, "unknown quantizer 'sgn'; valid names"),
    ({"binary_blocks": [1], "quantizer_kwargs": {"mode": "random"}}, "unknown mode"),
    ({"distance": "manhattan"}, "unknown distance 'manhattan'"),
    ({"distance": "hamming"}, "quantizer='sign'"),  # float encoder: no sign bits
    ({"binary_blocks": [4], "distance": "hamming"}, "quantizer='sign'"),  # {0, 1} neurons
    ({"binary_blocks": [4], "quantizer": "sign", "distance": "hamming", "fce": True}, "fce"),
    ({"weight_quantizer": "sign-ish"}, "unknown quantizer"),
])
def test_bad_config_names_are_clear_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        models.build("matching_net", **kwargs)


def test_unknown_model_name_lists_few_shot_models():
    with pytest.raises(ValueError, match="matching_net.*protonet"):
        models.build("matchingnet")


# -- heads -----------------------------------------------------------------------------------
@pytest.mark.parametrize("fce", [False, True])
@pytest.mark.parametrize("distance", ["cosine", "sqeuclidean"])
def test_attention_sums_to_one_and_gives_class_probabilities(fce, distance):
    torch.manual_seed(0)
    model = MatchingNetwork(distance=distance, fce=fce, **SMALL)
    support, labels, query = episode_embeddings()
    a = model.attention(support, query)
    assert a.shape == (3, 20, 8)
    assert torch.allclose(a.sum(-1), torch.ones(3, 20), atol=1e-6)
    assert (a >= 0).all()
    log_p = model.classify(support, labels, query)
    assert log_p.shape == (3, 20, 4)
    expected = torch.bmm(a, F.one_hot(labels, 4).float())  # P(k) = sum_i a_i 1[y_i = k]
    assert torch.allclose(log_p.exp(), expected, atol=1e-6)
    # one episode without the leading dimension
    assert torch.allclose(model.attention(support[0], query[0]), a[0], atol=1e-6)
    assert torch.allclose(model.classify(support[0], labels[0], query[0]), log_p[0], atol=1e-5)


def test_matching_log_probabilities_are_finite_for_far_apart_classes():
    model = MatchingNetwork(scale=1e4, **SMALL)
    support, labels, query = episode_embeddings()
    log_p = model.classify(support, labels, query)
    assert torch.isfinite(log_p).all()  # a naive log(softmax @ onehot) gives -inf here
    assert torch.allclose(log_p.logsumexp(-1), torch.zeros(3, 20), atol=1e-5)


def test_forward_on_images_matches_classify_on_embeddings():
    torch.manual_seed(0)
    model = MatchingNetwork(**SMALL).eval()
    support, query = torch.randn(2, 6, 1, 16, 16), torch.randn(2, 9, 1, 16, 16)
    labels = torch.tensor([[0, 0, 1, 1, 2, 2], [2, 1, 0, 2, 1, 0]])
    logits = model(support, labels, query)
    assert logits.shape == (2, 9, 3)
    emb_s, emb_q = model(support.flatten(0, 1)).view(2, 6, -1), model(query.flatten(0, 1)).view(2, 9, -1)
    assert torch.allclose(logits, model.classify(emb_s, labels, emb_q), atol=1e-5)
    assert model(support[0], labels[0], query[0]).shape == (9, 3)
    with pytest.raises(ValueError, match="support, support_labels and query"):
        model(support[0], labels[0])


def test_protonet_prototypes_are_class_means():
    model = PrototypicalNetwork(**SMALL)
    support, labels, query = episode_embeddings(shot=3)
    protos = model.prototypes(support, labels)
    assert protos.shape == (3, 4, 8)
    for e in range(3):
        for k in range(4):
            assert torch.allclose(protos[e, k], support[e][labels[e] == k].mean(0), atol=1e-6)
    logits = model.classify(support, labels, query)
    expected = -torch.cdist(query, protos).pow(2)
    assert torch.allclose(logits, expected, atol=1e-4)
    with pytest.raises(ValueError, match="at least one support example"):
        model.prototypes(support[0], labels[0], way=5)


def test_protonet_head_compiles_without_graph_breaks():
    """The support check is a host sync: compiled training steps must not break the graph on it."""
    model = PrototypicalNetwork(**SMALL)
    support, labels, query = episode_embeddings(shot=3)
    compiled = torch.compile(model.classify, backend="eager", fullgraph=True)
    torch.testing.assert_close(compiled(support, labels, query, 4), model.classify(support, labels, query, 4))


def test_hamming_heads_equal_hamming_distance_computed_by_hand():
    kwargs = dict(binary_blocks="all", quantizer="sign", distance="hamming", scale=0.5, **SMALL)
    matching, proto = MatchingNetwork(**kwargs), PrototypicalNetwork(**kwargs)
    way, shot, dim = 3, 2, 8
    support, query = pm_one(way * shot, dim, seed=1), pm_one(7, dim, seed=2)
    labels = torch.arange(way).repeat_interleave(shot)
    by_hand = torch.tensor([[float((q != s).sum()) for s in support] for q in query])  # (7, 6) bits
    assert torch.equal(matching.hamming(query[None], support[None])[0], by_hand)
    # matching head: softmax attention over -scale * d_H, summed per class
    expected = torch.log(torch.softmax(-0.5 * by_hand, -1) @ F.one_hot(labels, way).float())
    assert torch.allclose(matching.classify(support, labels, query), expected, atol=1e-5)
    # prototypical head: mean Hamming distance to the class's support images
    mean_d = torch.stack([by_hand[:, labels == k].mean(1) for k in range(way)], 1)
    assert torch.allclose(proto.classify(support, labels, query), -0.5 * mean_d, atol=1e-5)
    # one shot: nearest support in Hamming distance
    one = torch.arange(way)
    assert torch.equal(matching.classify(support[::shot], one, query).argmax(-1), by_hand[:, ::shot].argmin(-1))


def test_learnable_scale_is_a_parameter():
    model = MatchingNetwork(scale=2.0, learn_scale=True, **SMALL)
    assert any(p is model.log_scale for p in model.parameters())
    assert model.scale.item() == pytest.approx(2.0)
    assert "log_scale" in dict(MatchingNetwork(**SMALL).named_buffers())
    assert "distance='sqeuclidean'" in repr(model) and "binary_blocks=[]" in repr(model)


def test_report_finds_standalone_binary_activations_not_weight_quantizers():
    model = MatchingNetwork("all", quantizer="sign", weight_quantizer="sign", distance="hamming", **SMALL)
    assert sorted(binary_activations(model)) == [f"encoder.blocks.block{b}.act" for b in (1, 2, 3, 4)]
    assert list(binary_activations(MatchingNetwork([3], **SMALL))) == ["encoder.blocks.block3.act"]


# -- the episodic task -----------------------------------------------------------------------
def synthetic_pools(classes=(12, 6, 6), per_class=8, size=16, seed=0):
    """Classes are bright squares at class-specific positions, plus noise."""
    g = torch.Generator().manual_seed(seed)
    pools = {}
    for split, n in zip(("train", "val", "test"), classes):
        images = torch.randint(0, 60, (n, per_class, 1, size, size), generator=g, dtype=torch.uint8)
        for c in range(n):
            r, col = divmod((c * 5 + {"train": 0, "val": 1, "test": 2}[split]) % 16, 4)
            images[c, :, :, 4 * r : 4 * r + 4, 4 * col : 4 * col + 4] += 150
        pools[split] = ClassPool(images, [f"{split}{c}" for c in range(n)])
    return pools


def small_task(**kwargs):
    settings = dict(way=3, shot=1, queries=2, episodes_per_epoch=6, val=EpisodeSetting(3, 1, 2, 8, seed=1),
                    test=(EpisodeSetting(3, 1, 2, 10, seed=2), EpisodeSetting(4, 2, 3, 6, seed=3)))
    return EpisodicTask(synthetic_pools(), **{**settings, **kwargs})


def test_train_batches_are_episodes_seeded_by_the_trainer_generator():
    task = small_task()
    batches = list(task.train_batches(torch.Generator().manual_seed(7)))
    assert len(batches) == task.num_train_batches() == 6
    support, support_labels, query, query_labels = batches[0]
    assert support.shape == (3, 1, 16, 16) and query.shape == (6, 1, 16, 16)
    assert support.dtype == torch.float32
    assert support_labels.tolist() == [0, 1, 2] and query_labels.tolist() == [0, 0, 1, 1, 2, 2]
    again = list(task.train_batches(torch.Generator().manual_seed(7)))
    assert all(torch.equal(a, b) for x, y in zip(batches, again) for a, b in zip(x, y))
    other = list(task.train_batches(torch.Generator().manual_seed(8)))
    assert not all(torch.equal(x[0], y[0]) for x, y in zip(batches, other))
    # two processes split the episodes of one global stream
    shares = [list(task.train_batches(torch.Generator().manual_seed(7), r, 2)) for r in (0, 1)]
    assert len(shares[0]) == len(shares[1]) == task.num_train_batches(2) == 3
    assert torch.equal(shares[0][0][0], batches[0][0]) and torch.equal(shares[1][0][0], batches[1][0])


def test_step_gives_the_trainer_per_query_losses():
    torch.manual_seed(0)
    task, model = small_task(), MatchingNetwork(**SMALL)
    batch = next(task.train_batches(torch.Generator().manual_seed(0)))
    result = task.step(model, batch)
    assert result.per_sample_loss.shape == (6,)  # one loss per query
    logits = model(batch[0], batch[1], batch[2])
    assert torch.allclose(result.per_sample_loss, F.cross_entropy(logits, batch[3], reduction="none"), atol=1e-5)
    assert result.correct == int((logits.argmax(1) == batch[3]).sum())
    assert result.per_sample_loss.requires_grad


def test_cached_evaluation_equals_episode_by_episode_forward():
    torch.manual_seed(0)
    task, model = small_task(), MatchingNetwork(**SMALL)
    model.train()
    for batch in task.train_batches(torch.Generator().manual_seed(0)):  # give batch norm statistics
        model(batch[0], batch[1], batch[2])
    model.eval()
    (batch,) = task.eval_batches("test")
    images, s_idx, s_lab, q_idx, q_lab = batch
    assert s_idx.shape == (10, 3) and q_idx.shape == (10, 6)
    with torch.no_grad():
        result = task.step(model, batch)
        assert result.per_sample_loss.shape == (60,)
        slow = torch.cat([F.cross_entropy(model(images[s], lab, images[q]), y, reduction="none")
                          for s, lab, q, y in zip(s_idx, s_lab, q_idx, q_lab)])
    assert torch.allclose(result.per_sample_loss, slow, atol=1e-4)
    with pytest.raises(ValueError, match="val or test"):
        next(task.eval_batches("train"))


def test_trainer_runs_episodes_and_writes_evaluations(tmp_path):
    pools = synthetic_pools()
    lake = LakeRunSet(pools["test"].images[:4, :2].transpose(0, 1), torch.arange(4).repeat(2, 1),
                      pools["test"].images[:4, 2:4].transpose(0, 1), torch.tensor([[0, 1, 2, 3], [3, 2, 1, 0]]))
    task = small_task(lake=lake)
    config = TrainConfig(epochs=2, batch_size=1, lr=3e-3, seed=0, device="cpu", progress=False)
    torch.manual_seed(0)
    final = Trainer(PrototypicalNetwork(**SMALL), task, config, tmp_path / "run").fit()
    evaluations = final["evaluations"]
    assert list(evaluations) == ["3way1shot", "4way2shot", "lake20"]
    assert evaluations["3way1shot"]["acc"] == pytest.approx(final["test_acc"])  # same test episodes
    for e in evaluations.values():
        assert 0 <= e["acc"] <= 1 and e["ci95"] >= 0
    assert evaluations["4way2shot"] | {"acc": 0, "ci95": 0} == {"acc": 0, "ci95": 0, "episodes": 6, "way": 4,
                                                                 "shot": 2, "queries": 3}
    assert evaluations["lake20"]["episodes"] == 2 and evaluations["lake20"]["way"] == 4
    assert json.loads((tmp_path / "run" / "final.json").read_text())["evaluations"] == evaluations
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 2 and "val_acc" in lines[0]


def test_accuracy_ci_is_the_normal_interval_of_the_episode_mean():
    per_episode = torch.tensor([0.5, 0.75, 1.0, 0.75])  # mean 0.75, unbiased std sqrt(1/24)
    assert _accuracy_ci(per_episode) == pytest.approx((0.75, 1.96 * math.sqrt(1 / 24) / 2))
    assert _accuracy_ci(torch.full((5,), 0.6)) == pytest.approx((0.6, 0.0))


def test_task_checks_protocols_against_pools():
    with pytest.raises(ValueError, match="20-way episodes need 20 classes"):
        small_task(test=(EpisodeSetting(20, 1, 1, 5),))
    with pytest.raises(ValueError, match="images per class"):
        small_task(val=EpisodeSetting(3, 5, 5, 5))
    with pytest.raises(ValueError, match="at least 2 episodes"):
        small_task(val=EpisodeSetting(3, 1, 2, 1))
    with pytest.raises(ValueError, match="distinct"):
        small_task(test=(EpisodeSetting(3, 1, 2, 5, seed=0), EpisodeSetting(3, 1, 3, 5, seed=1)))


def test_resumed_episodic_run_equals_uninterrupted(tmp_path, killed_after_epoch):
    def fit(name, resume=False):
        torch.manual_seed(0)
        config = TrainConfig(epochs=3, batch_size=1, lr=3e-3, seed=0, device="cpu", progress=False)
        return Trainer(MatchingNetwork("all", **SMALL), small_task(), config, tmp_path / name).fit(resume=resume)

    uninterrupted = fit("full")
    with killed_after_epoch(1):
        fit("killed")
    resumed = fit("killed", resume=True)
    drop = ("train_seconds", "train_cpu_seconds")
    assert {k: v for k, v in resumed.items() if k not in drop} == {k: v for k, v in uninterrupted.items()
                                                                    if k not in drop}
