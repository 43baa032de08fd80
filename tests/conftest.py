import contextlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from onebit.deploy import targets


@pytest.fixture(autouse=True)
def _checkpoints_in_run_directories(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests see run directories as a default setup does: a user's $ONEBIT_CHECKPOINTS (kept
    checkpoints of real runs) neither moves the tests' checkpoints nor collects them."""
    monkeypatch.delenv("ONEBIT_CHECKPOINTS", raising=False)


def skip_or_fail(reason: str) -> None:
    """Skip the test for ``reason``, or fail it when the environment says ``CI=true``: CI must run
    every test."""
    if os.environ.get("CI") == "true":
        pytest.fail(reason)
    pytest.skip(reason)


@pytest.fixture(autouse=True)
def _experiments_registered_by_a_test_are_forgotten(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts from the built-in experiments: what it registers is gone after it."""
    from onebit.experiments import registry

    monkeypatch.setattr(registry, "_EXPERIMENTS", dict(registry._EXPERIMENTS))


@pytest.fixture
def killed_after_epoch(monkeypatch: pytest.MonkeyPatch) -> Callable[[int], contextlib.AbstractContextManager]:
    """``with killed_after_epoch(n): trainer.fit()``: training dies as a killed process would, right
    after writing the checkpoint of epoch ``n``; the block expects that death."""
    from onebit.training import Trainer

    @contextlib.contextmanager
    def killed(epoch: int) -> Iterator[None]:
        save = Trainer._save

        def save_then_die(self: Trainer) -> None:
            save(self)
            if self.state.epoch == epoch:
                raise KeyboardInterrupt

        monkeypatch.setattr(Trainer, "_save", save_then_die)
        with pytest.raises(KeyboardInterrupt):
            yield
        monkeypatch.setattr(Trainer, "_save", save)

    return killed


@pytest.fixture(scope="session")
def shared_datasets_dir() -> Path:
    """The local dataset copies: $ONEBIT_DATA, else ../shared/datasets beside the repo.
    Skips the test if the folder is absent (fails it under ``CI=true``)."""
    env = os.environ.get("ONEBIT_DATA")
    path = Path(env) if env else Path(__file__).resolve().parents[1].parent / "shared" / "datasets"
    if not path.is_dir():
        skip_or_fail(f"local dataset copies not found at {path}; set ONEBIT_DATA=/path/to/datasets")
    return path


@pytest.fixture
def shared_datasets(shared_datasets_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """:func:`shared_datasets_dir`, also set as ONEBIT_DATA for the test."""
    monkeypatch.setenv("ONEBIT_DATA", str(shared_datasets_dir))
    return shared_datasets_dir


@pytest.fixture(scope="session")
def mnist_small(shared_datasets_dir: Path):
    """A small MNIST classification task: 1,200 train / 300 val / 2,000 test images, batch 32."""
    from onebit.data.mnist import MEAN, STD, load_mnist
    from onebit.training import ClassificationTask

    train, val = load_mnist("train", shared_datasets_dir).subset(range(1500)).split(300, seed=0)
    test = load_mnist("test", shared_datasets_dir).subset(range(2000))
    return ClassificationTask({"train": train, "val": val, "test": test}, 32, MEAN, STD)


@pytest.fixture
def train_briefly(tmp_path_factory):
    """``train(model, task) -> model``: one seeded epoch of Adam, returned in eval mode."""
    import torch

    from onebit.training import TrainConfig, Trainer

    def train(model, task):
        torch.manual_seed(0)
        config = TrainConfig(epochs=1, lr=3e-3, device="cpu", progress=False)
        trainer = Trainer(model, task, config, tmp_path_factory.mktemp("run"))
        trainer.fit()
        return trainer.model.eval()

    return train


@pytest.fixture
def one_thread():
    """Tiny models gain nothing from threads, and lose a lot on a busy machine."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def require_tools():
    """``require_tools(*tools)`` skips the test if a tool is not on PATH, or fails it when the
    environment says ``CI=true`` (CI must run every target)."""

    def require(*tools: str) -> None:
        for tool in tools:
            try:
                targets.require_tool(tool)
            except targets.MissingToolError as e:
                skip_or_fail(str(e))

    return require


@pytest.fixture
def draw_shapes():
    """``draw_shapes(root, {"train": 12, "test": 4}, size=(24, 24), mode="L", suffix="png")`` writes
    an image folder of drawn shapes (see :func:`_draw_shapes`) and returns ``root``."""
    return _draw_shapes


def _draw_shapes(root: Path, splits: dict[str, int], *, size: tuple[int, int] = (24, 24), mode: str = "L",
                suffix: str = "png", classes: tuple[str, ...] = ("circle", "square", "triangle"),
                seed: int = 0) -> Path:
    """An image folder ``root/<split>/<class>/<k>.<suffix>`` of drawn shapes, ``splits[split]`` images
    per class: a bright circle, square or triangle of random size and place on a dark background.
    ``size`` is ``(height, width)``; ``mode`` a Pillow mode ("L", "RGB")."""
    import random

    from PIL import Image, ImageDraw

    rng = random.Random(seed)
    height, width = size
    for split, count in splits.items():
        for name in classes:
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for k in range(count):
                image = Image.new(mode, (width, height), "black")
                draw = ImageDraw.Draw(image)
                side = rng.randint(min(size) // 2, min(size) - 4)
                x, y = rng.randint(1, width - side - 1), rng.randint(1, height - side - 1)
                color = rng.choice(["white", "yellow", "cyan"]) if mode == "RGB" else rng.randint(160, 255)
                if name == "circle":
                    draw.ellipse((x, y, x + side, y + side), fill=color)
                elif name == "square":
                    draw.rectangle((x, y, x + side, y + side), fill=color)
                else:
                    draw.polygon([(x, y + side), (x + side, y + side), (x + side // 2, y)], fill=color)
                image.save(folder / f"{k:03d}.{suffix}")
    return root
