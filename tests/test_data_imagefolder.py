"""Image folders through the one dataset loader: layout, decoding, cache, and every bad input."""

import os

import numpy as np
import pytest
import torch
from PIL import Image

from onebit.data import CorruptDatasetError, DatasetNotFoundError
from onebit.data.datasets import NAMES, channel_stats, dataset, from_spec
from onebit.data.decode import Preprocess, read_image
from onebit.data.imagefolder import CACHE_FOLDER, load_image_folder


def _cache_files(root):
    return sorted((root / CACHE_FOLDER).glob("*.npz"))


def test_a_folder_loads_as_torchvision_lays_it_out(tmp_path, draw_shapes):
    root = draw_shapes(tmp_path / "shapes", {"train": 10, "test": 3})
    data = dataset(root).load()
    assert data.info.classes == ("circle", "square", "triangle")  # sorted class folders
    assert data.info.input_size == (1, 24, 24)  # the common size; grayscale kept
    assert data.sizes() == {"train": 27, "val": 3, "test": 9}  # 10% of train/ held out (seeded)
    assert data.held_out == "10%, seed 0" and data.eval_split == "test"
    test = data.splits["test"]
    assert test.images.dtype == torch.uint8 and test.labels.tolist() == [0] * 3 + [1] * 3 + [2] * 3
    # normalization from the training split
    mean, std = channel_stats(data.splits["train"].images)
    assert data.info.normalization == (mean, std) and 0 < mean[0] < 0.5 < std[0] + 0.5
    assert np.allclose(data.test_arrays()[0].mean(), ((test.images.float() / 255 - mean[0]) / std[0]).mean(), atol=1e-5)
    assert data.test_arrays(raw=True)[0].dtype == np.uint8
    # the same held-out split every time, and a val/ folder instead of it
    assert torch.equal(dataset(root).load().splits["val"].images, data.splits["val"].images)
    draw_shapes(root, {"val": 2})
    with_val = dataset(root).load()
    assert with_val.sizes() == {"train": 30, "val": 6, "test": 9} and with_val.held_out == ""
    assert "no test split" not in with_val.describe() and "6 validation" in with_val.describe()


def test_without_test_the_data_says_so(tmp_path, draw_shapes):
    root = draw_shapes(tmp_path / "shapes", {"train": 10})
    data = dataset(root, val_fraction=0.2).load()
    assert "test" not in data.splits and data.eval_split == "val" and data.sizes()["val"] == 6
    assert "no test split" in data.describe()
    assert data.test_arrays()[0].shape == (6, 1, 24, 24)  # what a model is evaluated on: validation


def test_color_resizing_and_the_spec_a_run_records(tmp_path, draw_shapes):
    root = draw_shapes(tmp_path / "shapes", {"train": 6}, size=(20, 30), mode="RGB", suffix="jpg")
    draw_shapes(root, {"test": 2}, size=(20, 30), mode="L", suffix="bmp", seed=1)
    data = dataset(root).load()
    assert data.info.input_size == (3, 20, 30)  # one RGB image makes every image RGB
    resized = dataset(root, image_size=16)
    assert resized.load().info.input_size == (3, 16, 16)
    assert resized.spec == {"name": str(root.absolute()), "image_size": [16, 16]}
    assert from_spec(resized.spec).load().info == resized.load().info
    assert dataset(root, image_size=(8, 12)).info.input_size == (3, 8, 12)


def test_the_cache_is_reused_and_invalidated_when_a_file_changes(tmp_path, draw_shapes, monkeypatch):
    root = draw_shapes(tmp_path / "shapes", {"train": 5, "test": 2})
    first = load_image_folder(root)
    cached = _cache_files(root)
    assert len(cached) == 1
    from onebit.data import imagefolder

    decoded = []
    monkeypatch.setattr(imagefolder, "read_image", lambda *args: decoded.append(args) or read_image(*args))
    again = load_image_folder(root)
    assert decoded == [] and torch.equal(again.splits["train"].images, first.splits["train"].images)

    changed = root / "train" / "circle" / "000.png"
    Image.new("L", (24, 24), 255).save(changed)
    stat = changed.stat()
    os.utime(changed, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # a later modification time
    reloaded = load_image_folder(root)
    assert len(decoded) == 21  # every image decoded again
    assert bool((reloaded.splits["train"].images[0] == 255).all())
    assert _cache_files(root) != cached and len(_cache_files(root)) == 1  # the stale cache is gone
    decoded.clear()
    (root / "test" / "square" / "001.png").unlink()  # a file removed
    assert len(load_image_folder(root).splits["test"]) == 5 and len(decoded) == 20
    decoded.clear()
    load_image_folder(root, image_size=12)  # another size: another cache entry, beside the first
    assert len(decoded) == 20 and len(_cache_files(root)) == 2
    load_image_folder(root)
    assert len(decoded) == 20


def test_a_read_only_folder_caches_in_the_user_cache(tmp_path, draw_shapes, monkeypatch):
    root = draw_shapes(tmp_path / "shapes", {"train": 3})
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    (root / CACHE_FOLDER).write_text("not a folder")  # the cache cannot go inside
    load_image_folder(root)
    assert len(list((tmp_path / "cache" / "onebit" / "image-folders").glob("*/*.npz"))) == 1


def _error(root, match, **options):
    """The message of the error loading ``root`` raises; bad images and layouts leave nothing written."""
    with pytest.raises((CorruptDatasetError, DatasetNotFoundError, ValueError)) as error:
        dataset(root, **options).load()
    assert match in str(error.value), str(error.value)
    assert not (root / CACHE_FOLDER).exists()
    return str(error.value)


def test_unreadable_image_names_the_file(tmp_path, draw_shapes):
    root = draw_shapes(tmp_path / "shapes", {"train": 3})
    bad = root / "train" / "square" / "broken.png"
    bad.write_bytes(b"not an image")
    message = _error(root, str(bad))
    assert "replace it with a valid PNG, JPEG or BMP file, or delete it" in message
    bad.unlink()
    truncated = root / "train" / "square" / "cut.jpg"
    Image.new("RGB", (24, 24), "red").save(truncated)
    truncated.write_bytes(truncated.read_bytes()[:200])
    _error(root, str(truncated))


def test_class_folder_without_images(tmp_path, draw_shapes):
    root = draw_shapes(tmp_path / "shapes", {"train": 3})
    (root / "train" / "hexagon").mkdir()
    (root / "train" / "hexagon" / "notes.txt").write_text("no images here")
    assert "remove the folder" in _error(root, str(root / "train" / "hexagon"))


def test_single_class(tmp_path, draw_shapes):
    root = draw_shapes(tmp_path / "shapes", {"train": 3}, classes=("circle",))
    assert "at least two classes" in _error(root, "single class folder (circle/)")


def test_mixed_sizes_need_an_image_size(tmp_path, draw_shapes):
    root = draw_shapes(tmp_path / "shapes", {"train": 3})
    draw_shapes(root, {"train": 1}, size=(30, 40), classes=("square",), seed=5)  # overwrites square/000.png
    message = _error(root, "--image-size")
    assert "2 different sizes" in message and "train/square/000.png" in message
    assert dataset(root, image_size=24).load().info.input_size == (1, 24, 24)


def test_empty_test_folder(tmp_path, draw_shapes):
    root = draw_shapes(tmp_path / "shapes", {"train": 3})
    (root / "test").mkdir()
    assert "report validation accuracy only" in _error(root, f"{root / 'test'}/ holds no images")
    (root / "test" / "circle").mkdir()
    _error(root, f"{root / 'test' / 'circle'}/ holds no images")


def test_layout_errors(tmp_path, draw_shapes):
    _error(tmp_path / "missing", "unknown dataset")
    root = tmp_path / "flat"
    root.mkdir()
    assert "no train/ folder" in _error(root, "ImageFolder layout")
    (root / "mnist").mkdir()
    assert "--data-root" in _error(root, "looks like a dataset root")
    (root / "train").mkdir()
    Image.new("L", (8, 8)).save(root / "train" / "a.png")
    _error(root, "move them into one folder per class")
    shapes = draw_shapes(tmp_path / "shapes", {"train": 3, "test": 1})
    draw_shapes(shapes, {"test": 1}, classes=("star",))
    _error(shapes, f"{shapes / 'test' / 'star'}/ is not a class")
    tiny = draw_shapes(tmp_path / "tiny", {"train": 1}, classes=("a", "b"))
    _error(tiny, "between 0 and 1", val_fraction=1.5)
    with pytest.raises(ValueError, match="too few to hold out"):
        dataset(tiny, val_fraction=0.9).load()
    with pytest.raises(ValueError, match="apply to image folders"):
        dataset("mnist", image_size=32)


def test_preprocess_converts_like_the_loader(tmp_path):
    image = Image.new("RGB", (40, 20), (255, 0, 0))
    path = tmp_path / "red.png"
    image.save(path)
    gray = read_image(path, Preprocess("L", (10, 20)))
    assert gray.shape == (1, 10, 20) and gray.dtype == np.uint8
    assert read_image(path, Preprocess("RGB", (20, 40))).tolist() == np.asarray(image).transpose(2, 0, 1).tolist()
    assert int(read_image(path, Preprocess("L", (10, 20), invert=True))[0, 0, 0]) == 255 - int(gray[0, 0, 0])
    assert Preprocess.from_json(Preprocess("L", (10, 20), "lanczos", True).to_json()) == Preprocess(
        "L", (10, 20), "lanczos", True)


def test_builtin_names_need_no_loading_for_their_info():
    for name in ("mnist", "fashion-mnist", "cifar10"):
        info = dataset(name, "/nonexistent").info
        assert len(info.classes) == 10 and info.input_size in ((1, 28, 28), (3, 32, 32))
    assert dataset("omniglot", "/nonexistent").normalization == ((0.0830,), (0.2377,))
    assert NAMES == ("mnist", "fashion-mnist", "cifar10", "omniglot")


@pytest.mark.slow
def test_builtin_datasets_split_as_the_experiments_train(shared_datasets):
    mnist = dataset("mnist").load()
    assert mnist.sizes() == {"train": 55_000, "val": 5_000, "test": 10_000}
    assert dataset("mnist").load() is mnist  # read once per process
    omniglot = dataset("omniglot").load()
    assert omniglot.sizes() == {"train": 964 * 14, "val": 964 * 2, "test": 964 * 4}
    assert len(omniglot.info.classes) == 964 and omniglot.info.preprocess.invert
    # the normalization constants are the pixel statistics of the data (Omniglot's: the whole background set)
    for name, splits, tolerance in (("mnist", [mnist.splits["train"]], 1e-3),
                                    ("omniglot", list(omniglot.splits.values()), 2e-3)):
        pixels = torch.cat([split.images.flatten() for split in splits]).double() / 255
        (mean,), (std,) = dataset(name).normalization
        assert (float(pixels.mean()), float(pixels.std())) == pytest.approx((mean, std), abs=tolerance), name

