"""Locating, downloading and verifying dataset files.

Every dataset in :mod:`onebit.data` lives in a folder under one *data root*
(see :func:`data_root`), e.g. ``<root>/mnist/train-images-idx3-ubyte.gz``.
Files that are missing are downloaded with :func:`fetch` from the dataset's
canonical mirrors and checked against the canonical checksum.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import tempfile
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

__all__ = [
    "DATA_ENV_VAR",
    "CorruptDatasetError",
    "DatasetNotFoundError",
    "Resource",
    "cache_dir",
    "data_root",
    "fetch",
    "file_digest",
]

#: Environment variable that selects the data root when no explicit root is given.
DATA_ENV_VAR = "ONEBIT_DATA"

_CHUNK = 1 << 20
_TIMEOUT_S = 60


class DatasetNotFoundError(FileNotFoundError):
    """A dataset file is neither on disk nor downloadable.

    The message says where it was looked for, which downloads failed and how
    to point onebit at a local copy.
    """


class CorruptDatasetError(ValueError):
    """A dataset file exists but its content is wrong (bad checksum, truncated, malformed).

    The message names the file and says what to do (usually: delete it and
    download it again).
    """


def cache_dir() -> Path:
    """Return the per-user cache directory of onebit.

    Returns:
        ``$XDG_CACHE_HOME/onebit`` if ``XDG_CACHE_HOME`` is set, else ``~/.cache/onebit``
        (an absolute path; it is not created).
    """
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base.absolute() / "onebit"


def data_root(root: str | os.PathLike[str] | None = None) -> Path:
    """Return the directory that holds the datasets.

    The first of these that is set wins:

    1. the explicit ``root`` argument (e.g. a ``--data-root`` command-line option),
    2. the environment variable ``ONEBIT_DATA``,
    3. the per-user cache directory (:func:`cache_dir`, ``~/.cache/onebit``).

    Args:
        root: Explicit data root, or ``None``.

    Returns:
        The data root as an absolute path (it need not exist).
    """
    if root is not None:
        return Path(root).expanduser().absolute()
    env = os.environ.get(DATA_ENV_VAR)
    if env:
        return Path(env).expanduser().absolute()
    return cache_dir()


def file_digest(path: str | os.PathLike[str], algorithm: str = "sha256") -> str:
    """Compute the hex digest of a file, reading it in 1 MiB chunks.

    Args:
        path: File to hash.
        algorithm: Any :mod:`hashlib` algorithm name, e.g. ``"sha256"`` or ``"md5"``.

    Returns:
        The lowercase hexadecimal digest.
    """
    digest = hashlib.new(algorithm, usedforsecurity=False)
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class Resource:
    """A downloadable dataset file.

    Args:
        filename: Name of the file on disk, e.g. ``"train-images-idx3-ubyte.gz"``.
        urls: Full download URLs, tried in order (mirrors of the same file).
        algorithm: :mod:`hashlib` name of the checksum, e.g. ``"md5"``.
        digest: Hex digest of the canonical download.
    """

    filename: str
    urls: tuple[str, ...]
    algorithm: str
    digest: str

    def __post_init__(self) -> None:
        if self.algorithm not in hashlib.algorithms_available:
            raise ValueError(f"unknown checksum algorithm {self.algorithm!r}")
        object.__setattr__(self, "urls", tuple(self.urls))
        object.__setattr__(self, "digest", self.digest.lower())


def _fix_hint(target: Path) -> str:
    return (
        f"To fix: put {target.name} at {target}, or set {DATA_ENV_VAR}=/path/to/datasets "
        f"(or pass --data-root /path/to/datasets) to a directory that holds "
        f"{target.parent.name}/{target.name}."
    )


def _failure_list(failures: Sequence[str]) -> str:
    return "".join(f"\n  - {failure}" for failure in failures)


def fetch(resource: Resource, directory: str | os.PathLike[str], *, download: bool = True) -> Path:
    """Return the path of ``resource`` in ``directory``, downloading it if it is missing.

    A file that is already there is returned as is (it is not re-hashed). A missing
    file is downloaded from each URL of ``resource`` in turn into a temporary file
    in ``directory``; the first download whose checksum matches is renamed
    atomically to its final name.

    Args:
        resource: The file to get.
        directory: Directory that holds (or will hold) the file; created if needed.
        download: If ``False``, never touch the network.

    Returns:
        Path of the file, ``directory / resource.filename``.

    Raises:
        DatasetNotFoundError: The file is missing and could not be downloaded. The
            message lists the path looked at and each URL that failed, and why.
        CorruptDatasetError: The file is missing and the mirrors that answered all
            served content with the wrong checksum (nothing is left on disk).
    """
    target = Path(directory).absolute() / resource.filename
    if target.is_file():
        return target
    if not download:
        raise DatasetNotFoundError(
            f"{target.name} not found at {target} (download=False, so no download was tried).\n"
            + _fix_hint(target)
        )
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise DatasetNotFoundError(
            f"{target.name} not found at {target}, and cannot download it there: {err}.\n"
            + _fix_hint(target)
        ) from err

    failures: list[str] = []
    bad_checksums: list[str] = []
    for url in resource.urls:
        try:
            _download(url, target, resource)
            return target
        except CorruptDatasetError as err:
            bad_checksums.append(f"{url}: {err}")
        except (OSError, ValueError, http.client.HTTPException) as err:  # URLError, timeouts, cut connections
            failures.append(f"{url}: {err}")

    if bad_checksums:
        raise CorruptDatasetError(
            f"Every mirror that answered served a wrong {target.name} "
            f"(expected {resource.algorithm} {resource.digest}); nothing was saved to {target}."
            + _failure_list(bad_checksums + failures)
            + "\nThe mirror may be serving an error page or a changed file. " + _fix_hint(target)
        )
    raise DatasetNotFoundError(
        f"{target.name} not found at {target}, and downloading it failed:"
        + _failure_list(failures or ["(no download URL is known for this file)"])
        + "\n" + _fix_hint(target)
    )


def _download(url: str, target: Path, resource: Resource) -> None:
    """Download ``url`` to ``target`` via a temporary file; verify before renaming."""
    request = urllib.request.Request(url, headers={"User-Agent": "onebit"})
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(request, timeout=_TIMEOUT_S) as response:
            length = response.headers.get("Content-Length")
            with tqdm(
                total=int(length) if length else None, unit="B", unit_scale=True,
                unit_divisor=1024, desc=target.name, disable=None,
            ) as bar:
                while chunk := response.read(_CHUNK):
                    out.write(chunk)
                    bar.update(len(chunk))
        actual = file_digest(tmp, resource.algorithm)
        if actual != resource.digest:
            raise CorruptDatasetError(f"{resource.algorithm} is {actual}, expected {resource.digest}")
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
