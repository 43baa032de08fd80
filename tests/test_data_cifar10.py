import io
import os
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from onebit.data import CorruptDatasetError, DatasetNotFoundError, augment, cifar10, load_cifar10
from onebit.data.cifar10 import CLASSES

SPLITS = {"train": 2, "test": 1}  # images per class in the tiny copies


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch) -> Path:
    """Keep the decoded-array cache of every test in its own temporary folder."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv("ONEBIT_DATA", raising=False)
    return tmp_path / "xdg" / "onebit" / "decoded"


def expected_image(split: str, label: int, index: int) -> np.ndarray:
    """Deterministic noise (incompressible, so a cut archive really lacks data), (32, 32, 3)."""
    seed = 1000 * label + 10 * index + (split == "test")
    return np.random.default_rng(seed).integers(0, 256, (32, 32, 3), dtype=np.uint8)


def encode(array: np.ndarray, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=fmt)
    return buffer.getvalue()


def folder_files(classes=CLASSES, suffix: str = ".png") -> dict[str, bytes]:
    """``{<split>/<class>/<i><suffix>: encoded image}`` for a tiny image-folder copy."""
    fmt = "JPEG" if suffix == ".jpg" else "PNG"
    return {
        f"{split}/{name}/{i}{suffix}": encode(expected_image(split, label, i), fmt)
        for split, per_class in SPLITS.items()
        for label, name in enumerate(classes)
        for i in range(per_class)
    }


def write_tar(path: Path, files: dict[str, bytes]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def folder_tar(root: Path, **kwargs) -> Path:
    return write_tar(root / "cifar10" / "tiny.tar.gz", folder_files(**kwargs))


# ---------------------------------------------------------------------- image folder


@pytest.mark.parametrize("split", ["train", "test"])
def test_image_folder_tar_decodes(tmp_path, split):
    folder_tar(tmp_path)
    data = load_cifar10(split, tmp_path, download=False)
    per_class = SPLITS[split]
    assert data.images.shape == (10 * per_class, 3, 32, 32) and data.images.dtype == torch.uint8
    assert data.labels.dtype == torch.int64
    assert data.labels.tolist() == [label for label in range(10) for _ in range(per_class)]
    assert data.classes == list(CLASSES)
    assert data.source == "tiny.tar.gz (image folder)"
    for k in (0, len(data) - 1):  # PNG is lossless: exact pixels, channels first
        label, index = divmod(k, per_class)
        assert np.array_equal(data.images[k].permute(1, 2, 0).numpy(), expected_image(split, label, index))


def test_extracted_image_folder(tmp_path):
    for name, data in folder_files().items():
        path = tmp_path / "cifar10" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    data = load_cifar10("test", tmp_path, download=False)
    assert len(data) == 10 and data.source == "cifar10/ (image folder)"
    assert np.array_equal(data.images[3].permute(1, 2, 0).numpy(), expected_image("test", 3, 0))


def test_jpeg_copy_is_reported_as_lossy(tmp_path):
    write_tar(tmp_path / "cifar10" / "cifar10-jpg.tar.gz", folder_files(suffix=".jpg"))
    data = load_cifar10("train", tmp_path, download=False)
    assert data.source == "cifar10-jpg.tar.gz (lossy JPEG re-encode)"
    assert data.images.shape == (20, 3, 32, 32)


def test_decoded_cache_is_reused_and_invalidated(tmp_path, monkeypatch, isolated_cache):
    archive = folder_tar(tmp_path)
    first = load_cifar10("train", tmp_path, download=False)
    assert len(list(isolated_cache.iterdir())) == 1

    def no_decoding(path):
        raise AssertionError("decoded again instead of using the cache")

    monkeypatch.setattr(cifar10, "_decode_folder", no_decoding)
    again = load_cifar10("train", tmp_path, download=False)
    assert torch.equal(again.images, first.images) and torch.equal(again.labels, first.labels)
    assert again.source == first.source
    assert len(load_cifar10("test", tmp_path, download=False)) == 10  # both splits were cached

    stat = archive.stat()
    os.utime(archive, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # a changed source
    with pytest.raises(AssertionError, match="decoded again"):
        load_cifar10("train", tmp_path, download=False)


def test_unreadable_cache_says_what_to_do(tmp_path, isolated_cache):
    folder_tar(tmp_path)
    load_cifar10("train", tmp_path, download=False)
    (cached,) = isolated_cache.iterdir()
    (cached / "train_images.npy").write_bytes(b"garbage")
    with pytest.raises(CorruptDatasetError, match="delete that folder"):
        load_cifar10("train", tmp_path, download=False)


def test_wrong_image_size_names_file_and_size(tmp_path):
    files = folder_files()
    files["train/cat/1.png"] = encode(np.zeros((32, 31, 3), np.uint8))
    write_tar(tmp_path / "cifar10" / "tiny.tar.gz", files)
    with pytest.raises(CorruptDatasetError, match=r"train/cat/1\.png .* 31x32 pixels"):
        load_cifar10("train", tmp_path, download=False)


def test_missing_class_folder_is_named(tmp_path):
    folder_tar(tmp_path, classes=CLASSES[:-1])  # no truck
    with pytest.raises(CorruptDatasetError, match="no images in train/truck/"):
        load_cifar10("train", tmp_path, download=False)


def test_unexpected_class_folder_is_named(tmp_path):
    files = folder_files()
    files["test/plane/0.png"] = files.pop("test/airplane/0.png")
    write_tar(tmp_path / "cifar10" / "tiny.tar.gz", files)
    with pytest.raises(CorruptDatasetError, match="unexpected class folder test/plane/"):
        load_cifar10("train", tmp_path, download=False)


def test_undecodable_image_is_named(tmp_path):
    files = folder_files()
    files["test/dog/0.png"] = files["test/dog/0.png"][:100]
    write_tar(tmp_path / "cifar10" / "tiny.tar.gz", files)
    with pytest.raises(CorruptDatasetError, match="test/dog/0.png"):
        load_cifar10("train", tmp_path, download=False)


def test_truncated_archive(tmp_path):
    archive = folder_tar(tmp_path)
    data = archive.read_bytes()
    archive.write_bytes(data[: len(data) // 2])
    with pytest.raises(CorruptDatasetError, match="truncated") as info:
        load_cifar10("train", tmp_path, download=False)
    assert str(archive) in str(info.value)


# ---------------------------------------------------------------------- binary release


def binary_release(root: Path, records: dict[str, int]) -> dict[str, np.ndarray]:
    """A fake cifar-10-binary.tar.gz with ``records[batch]`` records per batch file."""
    rng = np.random.default_rng(0)
    tables = {
        name: np.concatenate([rng.integers(0, 10, (n, 1)), rng.integers(0, 256, (n, 3072))], axis=1).astype(np.uint8)
        for name, n in records.items()
    }
    write_tar(root / "cifar10" / "cifar-10-binary.tar.gz",
              {f"cifar-10-batches-bin/{name}": table.tobytes() for name, table in tables.items()}
              | {"cifar-10-batches-bin/batches.meta.txt": "\n".join(CLASSES).encode()})
    return tables


BATCHES = {**{f"data_batch_{i}.bin": 2 for i in range(1, 6)}, "test_batch.bin": 3}


def test_binary_release_is_preferred_and_decoded(tmp_path):
    tables = binary_release(tmp_path, BATCHES)
    folder_tar(tmp_path)  # an image-folder copy beside it is ignored
    train = load_cifar10("train", tmp_path, download=False)
    assert train.source == "cifar-10-binary.tar.gz (canonical binary release)"
    expected = np.concatenate([tables[f"data_batch_{i}.bin"] for i in range(1, 6)])
    assert train.labels.tolist() == expected[:, 0].tolist()
    # Each record: label byte, then the 1024 red, 1024 green and 1024 blue pixels, row-major.
    assert np.array_equal(train.images[3, 1].numpy(), expected[3, 1025:2049].reshape(32, 32))
    assert np.array_equal(train.images.numpy().reshape(10, -1), expected[:, 1:])
    test = load_cifar10("test", tmp_path, download=False)
    assert test.images.shape == (3, 3, 32, 32)
    assert test.labels.tolist() == tables["test_batch.bin"][:, 0].tolist()


def test_binary_release_missing_batch(tmp_path):
    binary_release(tmp_path, {name: n for name, n in BATCHES.items() if name != "data_batch_4.bin"})
    with pytest.raises(CorruptDatasetError, match="lacks data_batch_4.bin"):
        load_cifar10("test", tmp_path, download=False)


def test_binary_release_partial_record(tmp_path):
    tables = binary_release(tmp_path, BATCHES)
    files = {f"cifar-10-batches-bin/{name}": table.tobytes() for name, table in tables.items()}
    files["cifar-10-batches-bin/test_batch.bin"] = files["cifar-10-batches-bin/test_batch.bin"][:-7]
    write_tar(tmp_path / "cifar10" / "cifar-10-binary.tar.gz", files)
    with pytest.raises(CorruptDatasetError, match="test_batch.bin .* not a whole number of 3073-byte records"):
        load_cifar10("test", tmp_path, download=False)


def test_missing_copy_says_where_and_how_to_fix(tmp_path):
    with pytest.raises(DatasetNotFoundError) as info:
        load_cifar10("train", tmp_path, download=False)
    message = str(info.value)
    assert str(tmp_path / "cifar10" / "cifar-10-binary.tar.gz") in message
    assert "ONEBIT_DATA=" in message and "--data" in message and "train/<class>/" in message


def test_bad_split(tmp_path):
    with pytest.raises(ValueError, match="split"):
        load_cifar10("val", tmp_path)


# ---------------------------------------------------------------------- augment


def test_augment_keeps_shape_dtype_and_is_seeded():
    images = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8)
    out = augment(images, torch.Generator().manual_seed(0))
    assert out.shape == images.shape and out.dtype == torch.uint8
    assert torch.equal(out, augment(images, torch.Generator().manual_seed(0)))
    assert not torch.equal(out, augment(images, torch.Generator().manual_seed(1)))
    as_float = augment(images.float() / 255, torch.Generator().manual_seed(0))
    assert as_float.dtype == torch.float32 and torch.allclose(as_float, out.float() / 255)


def test_augment_outputs_are_padded_crops_or_their_mirror_images():
    images = torch.randint(1, 256, (32, 2, 8, 8), dtype=torch.uint8)  # no zeros: padding is visible
    out = augment(images, torch.Generator().manual_seed(0), padding=2)
    padded = torch.nn.functional.pad(images, (2, 2, 2, 2))
    moved = flipped = 0
    for k in range(len(images)):
        matches = [
            (dy, dx, flip)
            for dy in range(5) for dx in range(5) for flip in (False, True)
            if torch.equal(out[k], (lambda c: c.flip(-1) if flip else c)(padded[k, :, dy:dy + 8, dx:dx + 8]))
        ]
        assert matches, f"image {k} is not a crop of the padded input"
        moved += (2, 2, False) not in matches
        flipped += any(flip for _, _, flip in matches)
    assert moved > 20 and 4 < flipped < 28  # offsets 9/25 unlikely unmoved; flips about half


def test_augment_without_padding_only_flips():
    images = torch.randint(0, 256, (64, 3, 4, 4), dtype=torch.uint8)
    out = augment(images, torch.Generator().manual_seed(0), padding=0)
    same = (out == images).flatten(1).all(1)
    mirrored = (out == images.flip(-1)).flatten(1).all(1)
    assert bool((same | mirrored).all())
    assert 10 < int(mirrored.sum()) < 54


def test_cutout_zeroes_one_square_per_image_clipped_at_the_border():
    images = torch.randint(1, 256, (200, 3, 10, 12), dtype=torch.uint8)  # no zeros: the square is visible
    generator = torch.Generator().manual_seed(0)
    out = augment(images, generator, padding=0, flip=False, cutout=4)
    zero = out == 0
    assert bool((zero.all(1) | ~zero.any(1)).all())  # every channel of a pixel, or none
    assert torch.equal(out[~zero], images[~zero])  # the rest untouched
    whole = clipped = 0
    for k in range(len(images)):
        rows, cols = zero[k, 0].any(1).nonzero().flatten(), zero[k, 0].any(0).nonzero().flatten()
        assert len(rows) and len(cols), f"image {k} has no square"
        assert 1 <= len(rows) <= 4 and 1 <= len(cols) <= 4
        assert int(zero[k, 0].sum()) == len(rows) * len(cols)  # one rectangle: the square inside the image
        assert rows[-1] - rows[0] == len(rows) - 1 and cols[-1] - cols[0] == len(cols) - 1
        whole += len(rows) == len(cols) == 4
        clipped += len(rows) < 4 or len(cols) < 4
    assert whole > 50 and clipped > 50  # centres anywhere in the image: both cases are common
    assert torch.equal(augment(images, torch.Generator().manual_seed(0), padding=0, flip=False, cutout=0), images)
    with pytest.raises(ValueError, match="cutout"):
        augment(images, generator, cutout=-3)


def test_augment_without_flip_only_shifts():
    images = torch.randint(1, 256, (32, 1, 8, 8), dtype=torch.uint8)
    out = augment(images, torch.Generator().manual_seed(0), padding=2, flip=False)
    padded = torch.nn.functional.pad(images, (2, 2, 2, 2))
    for k in range(len(images)):
        assert any(torch.equal(out[k], padded[k, :, dy:dy + 8, dx:dx + 8]) for dy in range(5) for dx in range(5))
    assert not torch.equal(out, images)
