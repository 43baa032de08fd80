import dataclasses
import gzip
import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch

from onebit.data import CorruptDatasetError, DatasetNotFoundError, ImageSet, load_mnist, mnist

# Published class counts of the canonical MNIST splits.
MNIST_COUNTS = {
    "train": [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949],
    "test": [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009],
}
PREFIX = {"train": "train", "test": "t10k"}


def write_idx(path: Path, array: np.ndarray, magic: int | None = None) -> Path:
    """Write ``array`` (uint8) as an IDX file, gzip-compressed if ``path`` ends in .gz."""
    magic = (0x0800 | array.ndim) if magic is None else magic
    data = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape) + array.tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(data, compresslevel=1) if path.suffix == ".gz" else data)
    return path


def fashion_files(root: Path, n_images: int = 5, n_labels: int = 5, seed: int = 0):
    """Synthetic Fashion-MNIST train files in ``root/fashion-mnist``."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n_images, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, n_labels, dtype=np.uint8)
    directory = root / "fashion-mnist"
    write_idx(directory / "train-images-idx3-ubyte.gz", images)
    write_idx(directory / "train-labels-idx1-ubyte.gz", labels)
    return images, labels


# ---------------------------------------------------------------------- real MNIST


@pytest.mark.parametrize("split", ["train", "test"])
def test_load_real_mnist(shared_datasets, split):
    data = load_mnist(split, download=False)  # root from $ONEBIT_DATA (set by the fixture)
    n = sum(MNIST_COUNTS[split])
    assert data.images.shape == (n, 1, 28, 28) and data.images.dtype == torch.uint8
    assert data.labels.shape == (n,) and data.labels.dtype == torch.int64
    assert data.labels.bincount(minlength=10).tolist() == MNIST_COUNTS[split]
    assert data.classes == [str(d) for d in range(10)]
    assert "canonical" in data.source

    # Independent decoding of the same file with gzip + numpy.
    raw = gzip.decompress((shared_datasets / "mnist" / f"{PREFIX[split]}-images-idx3-ubyte.gz").read_bytes())
    pixels = np.frombuffer(raw, np.uint8, offset=16)
    assert data.images.numpy().sum(dtype=np.int64) == pixels.sum(dtype=np.int64)
    assert np.array_equal(data.images[-1, 0].numpy(), pixels[-784:].reshape(28, 28))


@pytest.fixture
def mnist_test_raw(shared_datasets, tmp_path) -> tuple[Path, bytes, bytes]:
    """tmp_path/mnist with nothing in it, and the decompressed canonical test files."""
    src = shared_datasets / "mnist"
    images = gzip.decompress((src / "t10k-images-idx3-ubyte.gz").read_bytes())
    labels = gzip.decompress((src / "t10k-labels-idx1-ubyte.gz").read_bytes())
    (tmp_path / "mnist").mkdir()
    return tmp_path / "mnist", images, labels


def test_uncompressed_files_are_accepted(mnist_test_raw):
    directory, images, labels = mnist_test_raw
    (directory / "t10k-images-idx3-ubyte").write_bytes(images)
    (directory / "t10k-labels-idx1-ubyte").write_bytes(labels)
    data = load_mnist("test", directory.parent, download=False)
    assert len(data) == 10_000
    assert data.labels[:5].tolist() == list(np.frombuffer(labels, np.uint8, offset=8)[:5])


def test_modified_mnist_fails_checksum(mnist_test_raw):
    directory, images, labels = mnist_test_raw
    modified = bytearray(images)
    modified[16 + 14 * 28 + 14] ^= 0xFF  # one pixel; the structure stays valid
    (directory / "t10k-images-idx3-ubyte").write_bytes(modified)
    (directory / "t10k-labels-idx1-ubyte").write_bytes(labels)
    with pytest.raises(CorruptDatasetError) as info:
        load_mnist("test", directory.parent, download=False)
    message = str(info.value)
    assert str(directory / "t10k-images-idx3-ubyte") in message
    assert "differs from the canonical" in message and "re-download" in message
    assert hashlib.sha256(modified).hexdigest() in message


def test_truncated_gzip_stream(mnist_test_raw, shared_datasets):
    directory, images, _ = mnist_test_raw
    (directory / "t10k-images-idx3-ubyte").write_bytes(images)
    gz = (shared_datasets / "mnist" / "t10k-labels-idx1-ubyte.gz").read_bytes()
    (directory / "t10k-labels-idx1-ubyte.gz").write_bytes(gz[: len(gz) // 2])
    with pytest.raises(CorruptDatasetError, match="not a complete gzip file") as info:
        load_mnist("test", directory.parent, download=False)
    assert str(directory / "t10k-labels-idx1-ubyte.gz") in str(info.value)


# ---------------------------------------------------------------------- structure (synthetic files)


def test_synthetic_fashion_mnist_roundtrip(tmp_path):
    images, labels = fashion_files(tmp_path)
    data = load_mnist("train", tmp_path, variant="fashion-mnist", download=False)
    assert torch.equal(data.images, torch.from_numpy(images).unsqueeze(1))
    assert data.labels.tolist() == labels.tolist()
    assert data.classes[0] == "T-shirt/top" and data.classes[9] == "Ankle boot"


def test_wrong_magic_names_file_and_expected_magic(tmp_path):
    fashion_files(tmp_path)
    path = write_idx(tmp_path / "fashion-mnist" / "train-images-idx3-ubyte.gz",
                     np.zeros((5, 28, 28), np.uint8), magic=2049)
    with pytest.raises(CorruptDatasetError) as info:
        load_mnist("train", tmp_path, variant="fashion-mnist", download=False)
    assert str(path) in str(info.value) and "expected 2051" in str(info.value)


def test_file_shorter_than_its_header(tmp_path):
    fashion_files(tmp_path)
    path = tmp_path / "fashion-mnist" / "train-images-idx3-ubyte.gz"
    full = gzip.decompress(path.read_bytes())
    path.write_bytes(gzip.compress(full[:-100]))  # a valid gzip stream of a cut IDX file
    with pytest.raises(CorruptDatasetError, match="truncated") as info:
        load_mnist("train", tmp_path, variant="fashion-mnist", download=False)
    assert "(5, 28, 28)" in str(info.value)


def test_truncated_header(tmp_path):
    fashion_files(tmp_path)
    path = tmp_path / "fashion-mnist" / "train-labels-idx1-ubyte.gz"
    path.write_bytes(gzip.compress((2049).to_bytes(4, "big") + b"\x00\x00"))
    with pytest.raises(CorruptDatasetError, match="header"):
        load_mnist("train", tmp_path, variant="fashion-mnist", download=False)


def test_image_label_count_mismatch(tmp_path):
    fashion_files(tmp_path, n_images=5, n_labels=4)
    with pytest.raises(CorruptDatasetError, match="5 images but .* 4 labels"):
        load_mnist("train", tmp_path, variant="fashion-mnist", download=False)


def test_label_out_of_range(tmp_path):
    fashion_files(tmp_path)
    write_idx(tmp_path / "fashion-mnist" / "train-labels-idx1-ubyte.gz", np.array([0, 1, 2, 3, 10], np.uint8))
    with pytest.raises(CorruptDatasetError, match="label 10"):
        load_mnist("train", tmp_path, variant="fashion-mnist", download=False)


def test_missing_files_say_where_and_how_to_fix(tmp_path):
    with pytest.raises(DatasetNotFoundError) as info:
        load_mnist("train", tmp_path / "empty", download=False)
    message = str(info.value)
    assert str(tmp_path / "empty" / "mnist" / "train-images-idx3-ubyte.gz") in message
    assert "ONEBIT_DATA=" in message and "--data" in message


def test_download_through_the_mirror_list(tmp_path, monkeypatch):
    """load_mnist fetches missing files from the variant's mirrors and checks their md5."""
    mirror = tmp_path / "mirror"
    images, labels = fashion_files(mirror)
    served = mirror / "fashion-mnist"
    md5 = {p.name.removesuffix(".gz"): hashlib.md5(p.read_bytes()).hexdigest() for p in served.iterdir()}
    variant = dataclasses.replace(mnist._VARIANTS["fashion-mnist"],
                                  mirrors=(served.as_uri() + "/",), gz_md5=md5)
    monkeypatch.setitem(mnist._VARIANTS, "fashion-mnist", variant)
    data = load_mnist("train", tmp_path / "root", variant="fashion-mnist")
    assert data.labels.tolist() == labels.tolist()
    assert (tmp_path / "root" / "fashion-mnist" / "train-images-idx3-ubyte.gz").is_file()


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="split"):
        load_mnist("val", tmp_path)
    with pytest.raises(ValueError, match="variant"):
        load_mnist("train", tmp_path, variant="kmnist")


# ---------------------------------------------------------------------- ImageSet


def make_set(n: int = 100) -> ImageSet:
    images = torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1).expand(n, 1, 2, 2).contiguous()
    return ImageSet(images, torch.arange(n) % 10, [str(k) for k in range(10)], source="synthetic")


def test_split_is_deterministic_disjoint_and_complete():
    data = make_set()
    train, val = data.split(20, seed=3)
    assert (len(train), len(val)) == (80, 20)
    ids_train, ids_val = train.images[:, 0, 0, 0].tolist(), val.images[:, 0, 0, 0].tolist()
    assert not set(ids_train) & set(ids_val)
    assert sorted(ids_train + ids_val) == list(range(100))
    assert ids_val == sorted(ids_val)  # original order kept
    assert torch.equal(train.labels, torch.tensor(ids_train) % 10)  # labels follow their images
    again_train, again_val = make_set().split(20, seed=3)
    assert torch.equal(again_val.images, val.images) and torch.equal(again_train.images, train.images)
    _, other_val = data.split(20, seed=4)
    assert not torch.equal(other_val.images, val.images)
    assert val.source == "synthetic" and val.classes == data.classes


def test_split_rejects_bad_sizes():
    with pytest.raises(ValueError):
        make_set(10).split(11, seed=0)
    with pytest.raises(ValueError):
        make_set(10).split(-1, seed=0)


def test_subset_and_validation():
    data = make_set(10)
    sub = data.subset([7, 2])
    assert sub.images[:, 0, 0, 0].tolist() == [7, 2] and sub.labels.tolist() == [7, 2]
    assert len(data.subset(data.labels < 3)) == 3
    with pytest.raises(ValueError, match="uint8"):
        ImageSet(data.images.float(), data.labels, data.classes)
    with pytest.raises(ValueError, match="labels"):
        ImageSet(data.images, data.labels[:5], data.classes)
