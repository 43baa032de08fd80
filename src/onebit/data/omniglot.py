"""Omniglot (Lake et al. 2015): 1,623 handwritten characters from 50 alphabets, 20 drawings each.

Files, in ``data_root(root) / "omniglot"`` (downloaded from the canonical
``brendenlake/omniglot`` repository if missing):

* ``images_background.zip``: 30 alphabets, 964 characters, 19,280 drawings;
* ``images_evaluation.zip``: 20 alphabets, 659 characters, 13,180 drawings;
* ``one_shot_all_runs.zip``: Lake et al.'s 20 runs of 20-way one-shot classification
  (``all_runs.zip`` in the canonical repository).

A download is checked against the canonical checksum. A file that is already on disk is
checked by its *structure* instead (every expected alphabet, character and drawing is
there), because re-made zips with byte-identical images have other checksums.

**Preprocessing.** Each 105x105 1-bit PNG is converted to 8-bit grey, resized to
``image_size`` (28 by default, as in the few-shot literature) with Pillow's Lanczos
filter (anti-aliased), and **inverted**: strokes are bright (255) on a black (0)
background, so that zero padding in convolutions matches the background. The result is
cached as ``.npy`` plus a JSON index, keyed by the SHA-256 of the zip and the image size
(a changed zip or size makes a new cache). The cache goes beside the zips if that folder
is writable, else to ``~/.cache/onebit/omniglot`` (or ``$XDG_CACHE_HOME/onebit/omniglot``).
Decoding all 32,460 images takes a few seconds, once.

**Few-shot splits** (:func:`omniglot_splits`) follow Lake et al.'s background/evaluation
division: test classes are the 659 evaluation characters, and whole background alphabets
are held out for validation, so that validation, like test, measures transfer to unseen
alphabets. Note that Vinyals et al. (2016) used a different split (1,200 characters for
training, the other 423 for test, mixing both parts) and augmented *all* classes, training
and test, with rotations by multiples of 90 degrees.
"""

from __future__ import annotations

import io
import json
import os
import re
import stat
import warnings
import zipfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from .download import CorruptDatasetError, Resource, cache_dir, data_root, fetch, file_digest
from .episodes import ClassPool
from .imageset import ImageSet

__all__ = [
    "MEAN",
    "STD",
    "LakeRun",
    "OmniglotData",
    "OmniglotPart",
    "load_lake_runs",
    "load_omniglot",
    "omniglot_splits",
]

# The canonical repository, served by two GitHub hosts (tried in order).
_MIRRORS = (
    "https://raw.githubusercontent.com/brendenlake/omniglot/master/python/",
    "https://github.com/brendenlake/omniglot/raw/master/python/",
)
_DRAWINGS = 20
_LAKE_RUNS = 20
_LAKE_WAY = 20
#: Input normalization of the Omniglot runs (strokes bright on black, in [0, 1] units; every run records it):
#: within 0.002 of the pixel statistics of the whole background set as this module loads it (mean 0.0815,
#: standard deviation 0.2359; tests/test_data_imagefolder.py measures them).
MEAN = (0.0830,)
STD = (0.2377,)
# Bump when the preprocessing changes, so that old caches are ignored.
_CACHE_FORMAT = 1


def _urls(name: str) -> tuple[str, ...]:
    return tuple(mirror + name for mirror in _MIRRORS)


@dataclass(frozen=True)
class _Part:
    """One canonical zip: its download and the alphabets it must hold (name -> characters)."""

    name: str
    resource: Resource
    alphabets: dict[str, int]

    @property
    def folder(self) -> str:
        return self.resource.filename.removesuffix(".zip")


_PARTS = {
    "background": _Part(
        "background",
        Resource("images_background.zip", _urls("images_background.zip"), "md5", "68d2efa1b9178cc56df9314c21c6e718"),
        {
            "Alphabet_of_the_Magi": 20, "Anglo-Saxon_Futhorc": 29, "Arcadian": 26, "Armenian": 41,
            "Asomtavruli_(Georgian)": 40, "Balinese": 24, "Bengali": 46,
            "Blackfoot_(Canadian_Aboriginal_Syllabics)": 14, "Braille": 26, "Burmese_(Myanmar)": 34,
            "Cyrillic": 33, "Early_Aramaic": 22, "Futurama": 26, "Grantha": 43, "Greek": 24,
            "Gujarati": 48, "Hebrew": 22, "Inuktitut_(Canadian_Aboriginal_Syllabics)": 16,
            "Japanese_(hiragana)": 52, "Japanese_(katakana)": 47, "Korean": 40, "Latin": 26,
            "Malay_(Jawi_-_Arabic)": 40, "Mkhedruli_(Georgian)": 41, "N_Ko": 33,
            "Ojibwe_(Canadian_Aboriginal_Syllabics)": 14, "Sanskrit": 42, "Syriac_(Estrangelo)": 23,
            "Tagalog": 17, "Tifinagh": 55,
        },
    ),
    "evaluation": _Part(
        "evaluation",
        Resource("images_evaluation.zip", _urls("images_evaluation.zip"), "md5", "6b91aef0f799c5bb55b94e3f2daec811"),
        {
            "Angelic": 20, "Atemayar_Qelisayer": 26, "Atlantean": 26, "Aurek-Besh": 26, "Avesta": 26,
            "Ge_ez": 26, "Glagolitic": 45, "Gurmukhi": 45, "Kannada": 41, "Keble": 26, "Malayalam": 47,
            "Manipuri": 40, "Mongolian": 30, "Old_Church_Slavonic_(Cyrillic)": 45, "Oriya": 46,
            "Sylheti": 28, "Syriac_(Serto)": 23, "Tengwar": 25, "Tibetan": 42, "ULOG": 26,
        },
    ),
}

# The canonical file is python/one-shot-classification/all_runs.zip. No published checksum is
# known; this is the SHA-256 of the local copy, whose zip metadata (2015 Info-ZIP entries) look
# like the untouched original. The content is checked run by run as well.
_LAKE_RESOURCE = Resource(
    "one_shot_all_runs.zip",
    _urls("one-shot-classification/all_runs.zip"),
    "sha256",
    "437c1eeab0af8484112e1b4cc0f3d541ec727f7c47b9b202da738af9dfd6c325",
)


class OmniglotPart(ImageSet):
    """One Omniglot part (background or evaluation) as an :class:`ImageSet`.

    Attributes:
        images: ``(N, 1, S, S)`` uint8, strokes bright (255) on black (0); ``S`` is the
            ``image_size`` asked for (28 by default).
        labels: ``(N,)`` int64, the character index of each image; images are ordered by
            character, 20 drawings each.
        classes: character names ``"Alphabet/characterNN"``, sorted.
        source: the zip the images were decoded from.
    """

    @property
    def alphabets(self) -> list[str]:
        """Alphabet of each character: ``alphabets[k]`` is the alphabet of ``classes[k]``."""
        return [name.split("/")[0] for name in self.classes]

    def class_pool(self) -> ClassPool:
        """The images grouped by character: a pool of shape ``(num_characters, 20, 1, S, S)``."""
        counts = torch.bincount(self.labels, minlength=len(self.classes))
        if not bool((counts == _DRAWINGS).all()):
            raise ValueError(f"class_pool() needs all {_DRAWINGS} drawings of every character")
        images = self.images[torch.argsort(self.labels, stable=True)]
        return ClassPool(images.reshape(len(self.classes), _DRAWINGS, *images.shape[1:]), list(self.classes))


@dataclass
class OmniglotData:
    """Both Omniglot parts (see :func:`load_omniglot`)."""

    background: OmniglotPart
    evaluation: OmniglotPart


@dataclass
class LakeRun:
    """One of Lake et al.'s 20-way one-shot classification runs (all 20 characters of a run
    come from one evaluation alphabet).

    Attributes:
        name: ``"run01"`` ... ``"run20"``.
        support: ``(20, 1, S, S)`` uint8, one drawing per class (``training/classKK.png``,
            in order), preprocessed like :func:`load_omniglot`.
        support_labels: ``(20,)`` int64, ``0..19``.
        query: ``(20, 1, S, S)`` uint8, the test drawings (``test/itemKK.png``, in order).
        query_labels: ``(20,)`` int64; ``query_labels[i]`` is the index of the support
            image of the same character as ``query[i]``.
    """

    name: str
    support: torch.Tensor
    support_labels: torch.Tensor
    query: torch.Tensor
    query_labels: torch.Tensor


def load_omniglot(
    root: str | os.PathLike[str] | None = None, *, download: bool = True, image_size: int = 28
) -> OmniglotData:
    """Load both Omniglot parts, decoding the zips once and caching the result.

    Args:
        root: Data root (the zips are in ``<root>/omniglot``); defaults to ``$ONEBIT_DATA``,
            then ``~/.cache/onebit``.
        download: Download missing zips.
        image_size: Side of the square images (105 keeps the original size).

    Returns:
        :class:`OmniglotData` with ``background`` (964 characters, 19,280 images) and
        ``evaluation`` (659 characters, 13,180 images), images ``(N, 1, S, S)`` uint8.

    Raises:
        DatasetNotFoundError: A zip is missing and could not be downloaded.
        CorruptDatasetError: A zip is not a valid zip, has unreadable images, or lacks
            alphabets, characters or drawings (the message names them).
    """
    if image_size < 1:
        raise ValueError(f"image_size must be >= 1, got {image_size}")
    directory = data_root(root) / "omniglot"
    return OmniglotData(
        background=_load_part(_PARTS["background"], directory, download, image_size),
        evaluation=_load_part(_PARTS["evaluation"], directory, download, image_size),
    )


def omniglot_splits(
    root: str | os.PathLike[str] | None = None,
    *,
    rotations: bool = True,
    rotate_test: bool = False,
    val_alphabets: int | Sequence[str] = 5,
    seed: int = 0,
    download: bool = True,
    image_size: int = 28,
) -> dict[str, ClassPool]:
    """Few-shot class splits: ``{"train", "val", "test"}`` -> :class:`ClassPool`.

    * ``test``: the 659 evaluation characters (Lake et al.'s split).
    * ``val``: the characters of ``val_alphabets`` whole background alphabets.
    * ``train``: the other background characters.

    Every class has 20 images, so each pool has shape ``(classes, 20, 1, S, S)``.

    Args:
        root: Data root, as for :func:`load_omniglot`.
        rotations: Add each training character rotated by 90, 180 and 270 degrees as three
            new classes (see :meth:`ClassPool.with_rotations`), as is usual since Santoro et
            al. (2016) and Vinyals et al. (2016).
        rotate_test: Add rotated classes to ``val`` and ``test`` too. Vinyals et al. did (on
            their own 1,200/423 character split), so their numbers count rotated characters
            as test classes; Lake et al.'s evaluation does not.
        val_alphabets: How many background alphabets to hold out for validation, drawn at
            random with ``seed`` (default 5, a sixth of the characters on average), or their names.
        seed: Seed of the choice of validation alphabets.
        download: Download missing zips.
        image_size: Side of the square images.

    Returns:
        With the defaults (seed 0: Grantha, Greek, Mkhedruli, Syriac (Estrangelo) and Tifinagh
        held out): train 3,112 classes (778 characters x 4 rotations), val 186 and test 659
        classes. Other seeds draw other alphabets, hence other counts.
    """
    data = load_omniglot(root, download=download, image_size=image_size)
    background = data.background.class_pool()
    alphabets = data.background.alphabets
    val_names = _pick_alphabets(sorted(set(alphabets)), val_alphabets, seed)
    is_val = torch.tensor([alphabet in val_names for alphabet in alphabets], dtype=torch.bool)

    def select(mask: torch.Tensor) -> ClassPool:
        keep = mask.nonzero().flatten().tolist()
        return ClassPool(background.images[mask], [background.classes[i] for i in keep])

    train, val, test = select(~is_val), select(is_val), data.evaluation.class_pool()
    if rotations:
        train = train.with_rotations()
    if rotate_test:
        val, test = val.with_rotations(), test.with_rotations()
    return {"train": train, "val": val, "test": test}


def load_lake_runs(
    root: str | os.PathLike[str] | None = None, *, download: bool = True, image_size: int = 28
) -> list[LakeRun]:
    """Load Lake et al.'s (2015) 20 runs of 20-way one-shot classification within an alphabet.

    Args:
        root: Data root (the zip is ``<root>/omniglot/one_shot_all_runs.zip``).
        download: Download the zip if it is missing.
        image_size: Side of the square images, preprocessed as in :func:`load_omniglot`.

    Returns:
        20 :class:`LakeRun` s, ``run01`` to ``run20``.

    Raises:
        DatasetNotFoundError: The zip is missing and could not be downloaded.
        CorruptDatasetError: The zip is invalid or lacks runs, images or answers.
    """
    path = fetch(_LAKE_RESOURCE, data_root(root) / "omniglot", download=download)
    names = [f"run{r:02d}" for r in range(1, _LAKE_RUNS + 1)]
    supports = [[f"{run}/training/class{k:02d}.png" for k in range(1, _LAKE_WAY + 1)] for run in names]
    queries = [[f"{run}/test/item{k:02d}.png" for k in range(1, _LAKE_WAY + 1)] for run in names]
    with _open_zip(path) as archive:
        present = set(archive.namelist())
        missing = [m for run in supports + queries for m in run if m not in present]
        missing += [f"{run}/class_labels.txt" for run in names if f"{run}/class_labels.txt" not in present]
        if missing:
            _raise_incomplete(path, [f"missing {len(missing)} files: {_listing(missing)}"])
        answers = [_read_answers(archive, path, *run) for run in zip(names, supports, queries)]
        members = [m for support, query in zip(supports, queries) for m in support + query]
        images = _decode_pngs(archive, path, members, image_size, progress=False)
    images = torch.from_numpy(images).reshape(_LAKE_RUNS, 2 * _LAKE_WAY, 1, image_size, image_size)
    return [
        LakeRun(
            name=name,
            support=images[r, :_LAKE_WAY],
            support_labels=torch.arange(_LAKE_WAY),
            query=images[r, _LAKE_WAY:],
            query_labels=torch.tensor(answers[r]),
        )
        for r, name in enumerate(names)
    ]


def _read_answers(archive: zipfile.ZipFile, path: Path, run: str, support: list[str], query: list[str]) -> list[int]:
    """Parse ``runXX/class_labels.txt`` (lines ``runXX/test/itemKK.png runXX/training/classJJ.png``)
    into the support index of each query."""
    text = _read_member(archive, path, f"{run}/class_labels.txt").decode("utf-8", errors="replace")
    answer_of = dict(line.split() for line in text.splitlines() if len(line.split()) == 2)
    wrong = [q for q in query if answer_of.get(q) not in support]
    if wrong:
        _raise_incomplete(path, [f"{run}/class_labels.txt has no valid answer for {_listing(wrong)}"])
    return [support.index(answer_of[q]) for q in query]


def _pick_alphabets(alphabets: list[str], choice: int | Sequence[str], seed: int) -> set[str]:
    """The validation alphabets: ``choice`` drawn at random with ``seed``, or the ones named."""
    if isinstance(choice, int):
        if not 0 <= choice <= len(alphabets):
            raise ValueError(f"val_alphabets must be in [0, {len(alphabets)}], got {choice}")
        order = torch.randperm(len(alphabets), generator=torch.Generator().manual_seed(seed))
        return {alphabets[i] for i in order[:choice].tolist()}
    if isinstance(choice, str):
        choice = [choice]
    unknown = sorted(set(choice) - set(alphabets))
    if unknown:
        raise ValueError(f"unknown background alphabets {unknown}; choose from {alphabets}")
    return set(choice)


def _load_part(part: _Part, directory: Path, download: bool, image_size: int) -> OmniglotPart:
    """Return one part from the cache, decoding the zip (and caching it) on a miss."""
    path = fetch(part.resource, directory, download=download)
    digest = file_digest(path, "sha256")
    stem = f"omniglot-{part.name}-{image_size}px-v{_CACHE_FORMAT}-{digest[:16]}"
    cache_dirs = list(dict.fromkeys([directory, cache_dir() / "omniglot"]))
    for folder in cache_dirs:
        cached = _read_cache(folder / stem, digest, image_size)
        if cached is not None:
            images, characters, labels = cached
            break
    else:
        images, characters, labels = _decode_part(path, part, image_size)
        index = {
            "format": _CACHE_FORMAT,
            "source": path.name,
            "source_sha256": digest,
            "image_size": image_size,
            "characters": characters,
            "labels": labels.tolist(),
        }
        _write_cache(cache_dirs, stem, images, index)
    return OmniglotPart(
        images=torch.from_numpy(images),
        labels=torch.from_numpy(labels),
        classes=characters,
        source=str(path),
    )


def _decode_part(path: Path, part: _Part, image_size: int) -> tuple[np.ndarray, list[str], np.ndarray]:
    """Check the layout of a part's zip and decode it.

    Returns:
        ``(images (N, 1, S, S) uint8, character names, labels (N,) int64)``, ordered by
        character name, then by file name.
    """
    with _open_zip(path) as archive:
        layout = _layout(archive.namelist(), path, part)
        members = [m for _, drawings in layout for m in drawings]
        images = _decode_pngs(archive, path, members, image_size, progress=True)
    labels = np.repeat(np.arange(len(layout), dtype=np.int64), [len(drawings) for _, drawings in layout])
    return images, [character for character, _ in layout], labels


def _layout(names: list[str], path: Path, part: _Part) -> list[tuple[str, list[str]]]:
    """Group a part's PNG entries by character, checking that nothing is missing or extra.

    Args:
        names: The zip's member names.
        path: The zip (for messages).
        part: What the zip must hold.

    Returns:
        ``[("Alphabet/characterNN", [member, ...]), ...]`` sorted by character, each with
        its 20 drawings sorted by name.

    Raises:
        CorruptDatasetError: Listing every missing or unexpected alphabet, character and drawing.
    """
    pattern = re.compile(rf"{re.escape(part.folder)}/([^/]+)/([^/]+)/[^/]+\.png")
    found: dict[str, dict[str, list[str]]] = {}
    for name in names:
        if match := pattern.fullmatch(name):
            found.setdefault(match[1], {}).setdefault(match[2], []).append(name)
    if not found:
        _raise_incomplete(path, [f"it holds no {part.folder}/<alphabet>/<character>/<drawing>.png entries"])

    problems = _compare("it", "alphabets", set(found), set(part.alphabets))
    for alphabet in sorted(set(found) & set(part.alphabets)):
        characters = found[alphabet]
        expected = {f"character{k:02d}" for k in range(1, part.alphabets[alphabet] + 1)}
        problems += _compare(alphabet, "characters", set(characters), expected)
        for character in sorted(set(characters) & expected):
            drawings = characters[character]
            numbers = {m[1] for d in drawings if (m := re.search(r"_(\d+)\.png$", d))}
            absent = [f"_{k:02d}" for k in range(1, _DRAWINGS + 1) if f"{k:02d}" not in numbers]
            if len(drawings) != _DRAWINGS or absent:
                problem = f"{alphabet}/{character} has {len(drawings)} drawings, expected {_DRAWINGS}"
                problems.append(problem + (f"; missing: {_listing(absent)}" if absent else ""))
    if problems:
        _raise_incomplete(path, problems)
    return [
        (f"{alphabet}/{character}", sorted(found[alphabet][character]))
        for alphabet in sorted(found)
        for character in sorted(found[alphabet])
    ]


def _compare(subject: str, what: str, found: set[str], expected: set[str]) -> list[str]:
    """``["<subject> has 29 alphabets, expected 30; missing: Greek"]``, or ``[]`` if found == expected."""
    if found == expected:
        return []
    message = f"{subject} has {len(found)} {what}, expected {len(expected)}"
    if missing := sorted(expected - found):
        message += f"; missing: {_listing(missing)}"
    if unexpected := sorted(found - expected):
        message += f"; unexpected: {_listing(unexpected)}"
    return [message]


def _listing(items: list[str], limit: int = 10) -> str:
    more = f", ... ({len(items) - limit} more)" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more


def _redo(path: Path) -> str:
    return f"Delete {path} and run again to re-download it, or replace it with a good copy."


def _raise_incomplete(path: Path, problems: list[str], limit: int = 10) -> None:
    lines = [f"\n  - {p}" for p in problems[:limit]]
    if len(problems) > limit:
        lines.append(f"\n  - ... and {len(problems) - limit} more problems")
    raise CorruptDatasetError(f"{path} is incomplete or not the canonical file:{''.join(lines)}\n{_redo(path)}")


def _open_zip(path: Path) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(path)
    except (zipfile.BadZipFile, EOFError) as err:
        raise CorruptDatasetError(f"{path} is not a valid zip file ({err}). {_redo(path)}") from err


def _read_member(archive: zipfile.ZipFile, path: Path, member: str) -> bytes:
    try:
        return archive.read(member)
    except (zipfile.BadZipFile, zlib.error, EOFError) as err:
        raise CorruptDatasetError(f"{path}: cannot read {member} ({err}). {_redo(path)}") from err


def _decode_pngs(
    archive: zipfile.ZipFile, path: Path, members: list[str], image_size: int, *, progress: bool
) -> np.ndarray:
    """Decode PNG members into ``(len(members), 1, S, S)`` uint8, preprocessed as described in the
    module docstring (grey, Lanczos resize to ``S = image_size``, inverted)."""
    out = np.empty((len(members), 1, image_size, image_size), dtype=np.uint8)
    with tqdm(members, desc=f"Decoding {path.name}", unit="img", disable=None if progress else True) as bar:
        for i, member in enumerate(bar):
            data = _read_member(archive, path, member)
            try:
                with Image.open(io.BytesIO(data)) as image:
                    grey = image.convert("L")
            except (OSError, ValueError) as err:  # PIL.UnidentifiedImageError is an OSError
                raise CorruptDatasetError(f"{path}: {member} is not a readable image ({err}). {_redo(path)}") from err
            if grey.size != (image_size, image_size):
                grey = grey.resize((image_size, image_size), Image.Resampling.LANCZOS)
            out[i, 0] = 255 - np.asarray(grey, dtype=np.uint8)
    return out


def _read_cache(stem: Path, digest: str, image_size: int) -> tuple[np.ndarray, list[str], np.ndarray] | None:
    """Return ``(images, characters, labels)`` from ``<stem>.npy`` and ``<stem>.json``, or
    ``None`` if they are missing, unreadable or do not belong to this zip and size."""
    try:
        index = json.loads(stem.with_suffix(".json").read_text())
        images = np.load(stem.with_suffix(".npy"), allow_pickle=False)
        labels = np.asarray(index["labels"], dtype=np.int64)
        characters = [str(c) for c in index["characters"]]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    valid = (
        index.get("format") == _CACHE_FORMAT
        and index.get("source_sha256") == digest
        and images.dtype == np.uint8
        and images.shape == (len(labels), 1, image_size, image_size)
        and (len(labels) == 0 or 0 <= labels.min() <= labels.max() < len(characters))
    )
    return (images, characters, labels) if valid else None


def _write_cache(folders: list[Path], stem: str, images: np.ndarray, index: dict) -> None:
    """Write ``<stem>.npy`` and ``<stem>.json`` atomically into the first writable folder.

    A folder whose permission bits allow nobody to write (a read-only shared copy) is
    skipped even for root, who could write there anyway.
    """
    for folder in folders:
        tmp = [folder / f".{stem}.{suffix}.{os.getpid()}.tmp" for suffix in ("npy", "json")]
        try:
            folder.mkdir(parents=True, exist_ok=True)
            if not stat.S_IMODE(folder.stat().st_mode) & 0o222 or not os.access(folder, os.W_OK):
                continue
            with open(tmp[0], "wb") as f:
                np.save(f, images, allow_pickle=False)
            tmp[1].write_text(json.dumps(index))
            os.replace(tmp[0], folder / f"{stem}.npy")
            os.replace(tmp[1], folder / f"{stem}.json")
            return
        except OSError:
            for t in tmp:
                t.unlink(missing_ok=True)
    warnings.warn(
        f"Could not write the decoded Omniglot cache {stem} to any of {[str(f) for f in folders]}; "
        "the zip will be decoded again next time.",
        stacklevel=3,
    )
