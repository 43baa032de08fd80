import hashlib
from pathlib import Path

import pytest

from onebit.data import CorruptDatasetError, DatasetNotFoundError, Resource, data_root, fetch
from onebit.data.download import file_digest


@pytest.fixture
def payload(tmp_path: Path) -> Path:
    """A 3 MiB file to serve through file:// URLs (several download chunks)."""
    source = tmp_path / "mirror" / "blob.bin"
    source.parent.mkdir()
    source.write_bytes(bytes(range(256)) * (3 * 4096) + b"tail")
    return source


def test_data_root_precedence(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv("ONEBIT_DATA", raising=False)
    assert data_root() == tmp_path / "xdg" / "onebit"
    monkeypatch.setenv("ONEBIT_DATA", str(tmp_path / "env"))
    assert data_root() == tmp_path / "env"
    assert data_root(tmp_path / "arg") == tmp_path / "arg"
    assert data_root(str(tmp_path / "arg")) == tmp_path / "arg"


def test_data_root_default_without_xdg(monkeypatch):
    monkeypatch.delenv("ONEBIT_DATA", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    assert data_root() == Path.home() / ".cache" / "onebit"


def test_data_root_is_absolute(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ONEBIT_DATA", "relative/datasets")
    assert data_root() == tmp_path / "relative" / "datasets"


def test_file_digest_matches_hashlib(payload):
    data = payload.read_bytes()
    assert file_digest(payload) == hashlib.sha256(data).hexdigest()
    assert file_digest(payload, "md5") == hashlib.md5(data).hexdigest()


def test_fetch_downloads_from_file_url_after_a_failing_mirror(payload, tmp_path):
    resource = Resource(
        filename="blob.bin",
        urls=((tmp_path / "no-such-mirror" / "blob.bin").as_uri(), payload.as_uri()),
        algorithm="sha256",
        digest=file_digest(payload).upper(),  # digests are case-insensitive
    )
    target_dir = tmp_path / "data" / "sub"
    path = fetch(resource, target_dir)
    assert path == target_dir / "blob.bin"
    assert path.read_bytes() == payload.read_bytes()
    assert sorted(p.name for p in target_dir.iterdir()) == ["blob.bin"]  # no temp files left


def test_fetch_returns_existing_file_without_download(tmp_path):
    (tmp_path / "here.bin").write_bytes(b"local copy")
    resource = Resource("here.bin", (), "sha256", "0" * 64)  # no URL, wrong digest: never used
    assert fetch(resource, tmp_path, download=False) == tmp_path / "here.bin"


def test_fetch_wrong_checksum_leaves_nothing(payload, tmp_path):
    resource = Resource("blob.bin", (payload.as_uri(),), "md5", "0" * 32)
    target_dir = tmp_path / "data"
    with pytest.raises(CorruptDatasetError) as info:
        fetch(resource, target_dir)
    message = str(info.value)
    assert payload.as_uri() in message
    assert hashlib.md5(payload.read_bytes()).hexdigest() in message  # the actual checksum
    assert "ONEBIT_DATA" in message
    assert list(target_dir.iterdir()) == []  # the bad temp file was deleted


def test_fetch_failure_says_where_it_looked_and_how_to_fix(tmp_path):
    urls = tuple((tmp_path / f"mirror{i}" / "blob.bin").as_uri() for i in range(2))
    resource = Resource("blob.bin", urls, "sha256", "0" * 64)
    with pytest.raises(DatasetNotFoundError) as info:
        fetch(resource, tmp_path / "mnist")
    message = str(info.value)
    assert str(tmp_path / "mnist" / "blob.bin") in message
    assert all(url in message for url in urls)
    assert "ONEBIT_DATA=" in message and "--data" in message and "mnist/blob.bin" in message
    assert isinstance(info.value, FileNotFoundError)


def test_fetch_without_download_does_not_try(payload, tmp_path):
    resource = Resource("blob.bin", (payload.as_uri(),), "sha256", file_digest(payload))
    with pytest.raises(DatasetNotFoundError, match="download=False"):
        fetch(resource, tmp_path / "data", download=False)
    assert not (tmp_path / "data").exists()


def test_resource_rejects_unknown_algorithm():
    with pytest.raises(ValueError, match="sha999"):
        Resource("x", (), "sha999", "00")
