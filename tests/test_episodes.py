import pytest
import torch

from onebit.data.episodes import ClassPool, Episode, EpisodeSampler


def make_pool(num_classes: int = 12, per_class: int = 20) -> ClassPool:
    """Every image is constant: class * 1000 + image index, so we can tell exactly which
    image of which class an episode picked."""
    ids = torch.arange(num_classes)[:, None] * 1000 + torch.arange(per_class)[None, :]
    images = ids[:, :, None, None, None].expand(num_classes, per_class, 1, 3, 3).clone()
    return ClassPool(images=images, classes=[f"c{i}" for i in range(num_classes)])


def image_ids(x: torch.Tensor) -> torch.Tensor:
    return x[:, 0, 0, 0]


def test_shapes_dtypes_and_labels():
    pool = make_pool()
    ep = next(iter(EpisodeSampler(pool, way=5, shot=3, queries=4, seed=1)))
    assert isinstance(ep, Episode)
    assert ep.support.shape == (15, 1, 3, 3) and ep.query.shape == (20, 1, 3, 3)
    assert ep.support.dtype == pool.images.dtype
    assert ep.support_labels.dtype == ep.query_labels.dtype == torch.int64
    assert ep.support_labels.tolist() == [k for k in range(5) for _ in range(3)]
    assert ep.query_labels.tolist() == [k for k in range(5) for _ in range(4)]


def test_episode_properties_hold_over_many_episodes():
    pool = make_pool()
    way, shot, queries = 5, 2, 6
    for ep in EpisodeSampler(pool, way, shot, queries, episodes=200, seed=0):
        assert ep.classes.unique().numel() == way
        s_ids, q_ids = image_ids(ep.support), image_ids(ep.query)
        # Labels point at the class the image really comes from.
        assert torch.equal(s_ids // 1000, ep.classes[ep.support_labels])
        assert torch.equal(q_ids // 1000, ep.classes[ep.query_labels])
        # No image twice, and support and query are disjoint.
        all_ids = torch.cat([s_ids, q_ids])
        assert all_ids.unique().numel() == way * (shot + queries)


def test_all_classes_and_images_get_drawn():
    pool = make_pool(num_classes=6, per_class=5)
    seen = torch.cat(
        [image_ids(ep.support) for ep in EpisodeSampler(pool, way=2, shot=1, queries=0, episodes=500)]
    )
    assert seen.unique().numel() == 6 * 5


def test_seeding():
    pool = make_pool()

    def draw(seed: int) -> list[torch.Tensor]:
        return [ep.query for ep in EpisodeSampler(pool, 5, 1, 3, episodes=5, seed=seed)]

    a, b, c = draw(0), draw(0), draw(1)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not all(torch.equal(x, y) for x, y in zip(a, c))


def test_global_rng_untouched_and_reiteration_continues_stream():
    pool = make_pool()
    sampler = EpisodeSampler(pool, 5, 1, 1, episodes=3, seed=0)
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    first = [ep.classes for ep in sampler]
    assert torch.equal(torch.rand(3), expected)
    second = [ep.classes for ep in sampler]
    assert not all(torch.equal(x, y) for x, y in zip(first, second))


def test_len_and_infinite():
    pool = make_pool()
    assert len(EpisodeSampler(pool, 5, 1, 1, episodes=7)) == 7
    assert len(list(EpisodeSampler(pool, 5, 1, 1, episodes=7))) == 7
    infinite = EpisodeSampler(pool, 5, 1, 1)
    with pytest.raises(TypeError):
        len(infinite)
    it = iter(infinite)
    assert len([next(it) for _ in range(50)]) == 50


@pytest.mark.parametrize(
    ("way", "shot", "queries", "match"),
    [
        (13, 1, 1, "only 12"),
        (5, 15, 6, "only 20 images per class"),
        (0, 1, 1, "way >= 1"),
        (5, 0, 1, "shot >= 1"),
    ],
)
def test_invalid_arguments(way, shot, queries, match):
    with pytest.raises(ValueError, match=match):
        EpisodeSampler(make_pool(), way, shot, queries)


def test_pool_validation():
    with pytest.raises(ValueError, match="num_classes, per_class"):
        ClassPool(torch.zeros(3, 20, 28, 28, dtype=torch.uint8), ["a", "b", "c"])
    with pytest.raises(ValueError, match="2 class names"):
        ClassPool(torch.zeros(3, 20, 1, 28, 28, dtype=torch.uint8), ["a", "b"])


def test_with_rotations():
    images = torch.arange(2 * 3 * 1 * 2 * 2, dtype=torch.uint8).reshape(2, 3, 1, 2, 2)
    rotated = ClassPool(images, ["a", "b"]).with_rotations()
    assert rotated.classes == ["a", "b", "a/rot90", "b/rot90", "a/rot180", "b/rot180", "a/rot270", "b/rot270"]
    assert rotated.images.shape == (8, 3, 1, 2, 2)
    assert torch.equal(rotated.images[:2], images)
    for k in (1, 2, 3):
        assert torch.equal(rotated.images[2 * k : 2 * k + 2], torch.rot90(images, k, dims=(-2, -1)))
    with pytest.raises(ValueError, match="square"):
        ClassPool(torch.zeros(2, 3, 1, 2, 4), ["a", "b"]).with_rotations()
