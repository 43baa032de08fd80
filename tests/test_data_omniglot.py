"""Omniglot loader tests.

Decoding the real zips takes seconds, so the loader is tested on tiny zips built here with the
canonical layout; the real local copies are only checked for structure (their file lists),
and the small Lake runs zip is loaded for real.
"""

import dataclasses
import io
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from onebit.data import omniglot
from onebit.data.download import CorruptDatasetError, DatasetNotFoundError
from onebit.data.episodes import EpisodeSampler

# Tiny stand-ins for the two parts: alphabet -> number of characters.
SMALL_LAYOUT = {
    "background": {"Alpha": 2, "Beta": 2, "Gamma": 1},
    "evaluation": {"Delta": 2},
}


def drawing(seed: int) -> bytes:
    """A 105x105 1-bit PNG like Omniglot's: a black block (the "stroke") on white."""
    image = Image.new("1", (105, 105), 1)
    x, y = 5 + (seed * 7) % 60, 5 + (seed * 13) % 60
    image.paste(0, (x, y, x + 30, y + 20))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def write_part(path: Path, folder: str, layout: dict[str, int], skip: tuple[str, ...] = ()) -> None:
    """Write a zip in the canonical layout ``<folder>/<Alphabet>/characterNN/<id>_<kk>.png``;
    members whose name contains any string of ``skip`` are left out."""
    with zipfile.ZipFile(path, "w") as archive:
        ident = 0
        for alphabet, characters in layout.items():
            for c in range(1, characters + 1):
                ident += 1
                for k in range(1, 21):
                    name = f"{folder}/{alphabet}/character{c:02d}/{ident:04d}_{k:02d}.png"
                    if not any(s in name for s in skip):
                        archive.writestr(name, drawing(ident * 20 + k))


@pytest.fixture
def small_omniglot(tmp_path, monkeypatch):
    """A data root with tiny background/evaluation zips; the expected layout patched to match."""
    parts = {
        name: dataclasses.replace(part, alphabets=SMALL_LAYOUT[name]) for name, part in omniglot._PARTS.items()
    }
    monkeypatch.setattr(omniglot, "_PARTS", parts)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    folder = tmp_path / "data" / "omniglot"
    folder.mkdir(parents=True)
    for part in parts.values():
        write_part(folder / part.resource.filename, part.folder, part.alphabets)
    return tmp_path / "data"


# ---------------------------------------------------------------- real local copies


def test_real_zips_have_the_canonical_structure(shared_datasets_dir):
    total = 0
    for name, characters in [("background", 964), ("evaluation", 659)]:
        part = omniglot._PARTS[name]
        path = shared_datasets_dir / "omniglot" / part.resource.filename
        with zipfile.ZipFile(path) as archive:
            layout = omniglot._layout(archive.namelist(), path, part)
        assert len(layout) == characters
        assert all(len(drawings) == 20 for _, drawings in layout)
        assert len({character.split("/")[0] for character, _ in layout}) == len(part.alphabets)
        total += sum(len(drawings) for _, drawings in layout)
    assert total == 32_460


def test_lake_runs(shared_datasets_dir):
    runs = omniglot.load_lake_runs(shared_datasets_dir, download=False)
    assert [run.name for run in runs] == [f"run{r:02d}" for r in range(1, 21)]
    accuracy = []
    for run in runs:
        assert run.support.shape == run.query.shape == (20, 1, 28, 28)
        assert run.support.dtype == torch.uint8
        assert run.support_labels.tolist() == list(range(20))
        # Each run tests every one of its 20 classes once.
        assert sorted(run.query_labels.tolist()) == list(range(20))
        distances = torch.cdist(run.query.flatten(1).float(), run.support.flatten(1).float())
        accuracy.append((distances.argmin(1) == run.query_labels).float().mean().item())
    # Pixel-space 1-NN is weak but far above chance (1/20) only if labels match the images.
    assert np.mean(accuracy) > 0.12
    # Lake's answer for run01/test/item01.png is run01/training/class08.png.
    assert runs[0].query_labels[0] == 7


def test_lake_runs_incomplete_zip_names_missing_file(shared_datasets_dir, tmp_path):
    source = shared_datasets_dir / "omniglot" / "one_shot_all_runs.zip"
    (tmp_path / "omniglot").mkdir()
    with zipfile.ZipFile(source) as src, zipfile.ZipFile(tmp_path / "omniglot" / source.name, "w") as dst:
        for info in src.infolist():
            if info.filename != "run07/test/item03.png":
                dst.writestr(info, src.read(info))
    with pytest.raises(CorruptDatasetError, match="run07/test/item03.png"):
        omniglot.load_lake_runs(tmp_path, download=False)


# ---------------------------------------------------------------- loader on tiny zips


def test_load_small(small_omniglot):
    data = omniglot.load_omniglot(small_omniglot, download=False)
    bg, ev = data.background, data.evaluation
    assert bg.images.shape == (5 * 20, 1, 28, 28) and bg.images.dtype == torch.uint8
    assert ev.images.shape == (2 * 20, 1, 28, 28)
    assert bg.classes == [
        "Alpha/character01", "Alpha/character02", "Beta/character01", "Beta/character02", "Gamma/character01",
    ]
    assert bg.alphabets == ["Alpha", "Alpha", "Beta", "Beta", "Gamma"]
    assert bg.labels.tolist() == [k for k in range(5) for _ in range(20)]
    # Inverted: the background is black, the block (the "stroke") bright.
    corners = bg.images[:, 0, [0, 0, -1, -1], [0, -1, 0, -1]]
    assert (corners == 0).all()
    assert (bg.images.flatten(1).max(1).values == 255).all()
    pool = bg.class_pool()
    assert pool.images.shape == (5, 20, 1, 28, 28)
    assert torch.equal(pool.images[3, 7], bg.images[3 * 20 + 7])
    with pytest.raises(ValueError, match="all 20 drawings"):
        bg.subset(torch.arange(30)).class_pool()


def test_full_size_keeps_original_pixels_inverted(small_omniglot):
    image = omniglot.load_omniglot(small_omniglot, download=False, image_size=105).background.images[0, 0]
    expected = 255 - np.asarray(Image.open(io.BytesIO(drawing(21))).convert("L"))
    assert np.array_equal(image.numpy(), expected)


def test_cache_is_used_and_invalidated_by_a_changed_zip(small_omniglot, monkeypatch):
    first = omniglot.load_omniglot(small_omniglot, download=False)
    folder = small_omniglot / "omniglot"
    assert len(list(folder.glob("omniglot-background-28px-*.npy"))) == 1
    assert len(list(folder.glob("omniglot-*.json"))) == 2

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded although a cache exists")

    monkeypatch.setattr(omniglot, "_decode_pngs", no_decoding)
    again = omniglot.load_omniglot(small_omniglot, download=False)
    assert torch.equal(again.background.images, first.background.images)
    assert again.background.classes == first.background.classes

    with zipfile.ZipFile(folder / "images_background.zip", "a") as archive:
        archive.writestr("images_background/README.txt", "same images, different zip")
    with pytest.raises(AssertionError, match="decoded although"):
        omniglot.load_omniglot(small_omniglot, download=False)


def test_cache_falls_back_to_user_cache_when_data_is_read_only(small_omniglot, tmp_path):
    folder = small_omniglot / "omniglot"
    folder.chmod(0o555)
    try:
        omniglot.load_omniglot(small_omniglot, download=False)
    finally:
        folder.chmod(0o755)
    assert not list(folder.glob("*.npy"))
    assert len(list((tmp_path / "xdg" / "onebit" / "omniglot").glob("*.npy"))) == 2


# ---------------------------------------------------------------- errors


def test_missing_zip(tmp_path, monkeypatch):
    monkeypatch.delenv("ONEBIT_DATA", raising=False)
    with pytest.raises(DatasetNotFoundError) as info:
        omniglot.load_omniglot(tmp_path, download=False)
    message = str(info.value)
    assert str(tmp_path / "omniglot" / "images_background.zip") in message
    assert "ONEBIT_DATA" in message and "--data" in message


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_corrupt_zip(small_omniglot, damage):
    path = small_omniglot / "omniglot" / "images_background.zip"
    content = path.read_bytes()
    path.write_bytes(b"<html>not found</html>" if damage == "garbage" else content[: len(content) // 2])
    with pytest.raises(CorruptDatasetError, match="images_background.zip is not a valid zip") as info:
        omniglot.load_omniglot(small_omniglot, download=False)
    assert "Delete" in str(info.value)


def test_corrupt_member(small_omniglot):
    path = small_omniglot / "omniglot" / "images_evaluation.zip"
    with zipfile.ZipFile(path, "a") as archive:
        archive.writestr("images_evaluation/Delta/character02/0002_21.png", b"not a png")
    # 21 drawings: caught by the layout check before decoding.
    with pytest.raises(CorruptDatasetError, match="Delta/character02 has 21 drawings, expected 20"):
        omniglot.load_omniglot(small_omniglot, download=False)
    write_part(path, "images_evaluation", {"Delta": 2})
    with zipfile.ZipFile(path) as archive:
        members = {info.filename: archive.read(info) for info in archive.infolist()}
    members["images_evaluation/Delta/character02/0002_05.png"] = b"not a png"
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    with pytest.raises(CorruptDatasetError, match="0002_05.png is not a readable image"):
        omniglot.load_omniglot(small_omniglot, download=False)


@pytest.mark.parametrize(
    ("skip", "expected"),
    [
        (("/Beta/",), "it has 2 alphabets, expected 3; missing: Beta"),
        (("/Alpha/character02/",), "Alpha has 1 characters, expected 2; missing: character02"),
        (("0003_07.png", "0003_12.png"), "Beta/character01 has 18 drawings, expected 20; missing: _07, _12"),
    ],
)
def test_incomplete_zip_names_what_is_missing(small_omniglot, skip, expected):
    path = small_omniglot / "omniglot" / "images_background.zip"
    write_part(path, "images_background", SMALL_LAYOUT["background"], skip=skip)
    with pytest.raises(CorruptDatasetError) as info:
        omniglot.load_omniglot(small_omniglot, download=False)
    assert expected in str(info.value)
    assert str(path) in str(info.value)


def test_wrong_zip(small_omniglot):
    write_part(small_omniglot / "omniglot" / "images_background.zip", "something_else", {"Alpha": 1})
    with pytest.raises(CorruptDatasetError, match="holds no images_background/<alphabet>"):
        omniglot.load_omniglot(small_omniglot, download=False)


# ---------------------------------------------------------------- few-shot splits


def test_splits(small_omniglot):
    pools = omniglot.omniglot_splits(small_omniglot, val_alphabets=1, seed=3, download=False)
    train, val, test = pools["train"], pools["val"], pools["test"]
    val_alphabets = {name.split("/")[0] for name in val.classes}
    train_alphabets = {name.split("/")[0] for name in train.classes}
    assert len(val_alphabets) == 1 and not val_alphabets & train_alphabets
    assert train_alphabets | val_alphabets == {"Alpha", "Beta", "Gamma"}
    # Train has rotations, val and test do not (rotate_test=False).
    assert train.num_classes == 4 * (5 - val.num_classes)
    assert test.classes == ["Delta/character01", "Delta/character02"]
    assert test.images.shape == (2, 20, 1, 28, 28)
    assert not any("/rot" in name for name in val.classes + test.classes)

    same = omniglot.omniglot_splits(small_omniglot, val_alphabets=1, seed=3, download=False)
    assert same["val"].classes == val.classes
    seeds = {
        tuple(omniglot.omniglot_splits(small_omniglot, val_alphabets=1, seed=s, download=False)["val"].classes)
        for s in range(10)
    }
    assert len(seeds) > 1


def test_rotated_classes_are_rotated_copies(small_omniglot):
    pools = omniglot.omniglot_splits(small_omniglot, val_alphabets=["Gamma"], rotate_test=True, download=False)
    assert pools["val"].num_classes == 4 and pools["test"].num_classes == 8
    train = pools["train"]
    index = {name: i for i, name in enumerate(train.classes)}
    assert len(index) == train.num_classes == 16
    original = train.images[index["Beta/character02"]]
    for degrees in (90, 180, 270):
        rotated = train.images[index[f"Beta/character02/rot{degrees}"]]
        assert torch.equal(rotated, torch.rot90(original, degrees // 90, dims=(-2, -1)))
    assert not torch.equal(train.images[index["Beta/character02/rot90"]], original)


def test_splits_without_rotations_and_bad_alphabets(small_omniglot):
    pools = omniglot.omniglot_splits(small_omniglot, rotations=False, val_alphabets="Alpha", download=False)
    assert pools["train"].classes == ["Beta/character01", "Beta/character02", "Gamma/character01"]
    with pytest.raises(ValueError, match="unknown background alphabets"):
        omniglot.omniglot_splits(small_omniglot, val_alphabets=["Klingon"], download=False)
    with pytest.raises(ValueError, match="val_alphabets must be in"):
        omniglot.omniglot_splits(small_omniglot, val_alphabets=4, download=False)


def test_episodes_from_splits(small_omniglot):
    train = omniglot.omniglot_splits(small_omniglot, val_alphabets=1, download=False)["train"]
    episode = next(iter(EpisodeSampler(train, way=5, shot=1, queries=5, seed=0)))
    assert episode.support.shape == (5, 1, 28, 28) and episode.query.shape == (25, 1, 28, 28)
