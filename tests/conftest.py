import os
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def shared_datasets_dir() -> Path:
    """The local dataset copies: $ONEBIT_DATA, else ../shared/datasets beside the repo.
    Skips the test if the folder is absent."""
    env = os.environ.get("ONEBIT_DATA")
    path = Path(env) if env else Path(__file__).resolve().parents[1].parent / "shared" / "datasets"
    if not path.is_dir():
        pytest.skip(f"local dataset copies not found at {path}; set ONEBIT_DATA=/path/to/datasets")
    return path


@pytest.fixture
def shared_datasets(shared_datasets_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """:func:`shared_datasets_dir`, also set as ONEBIT_DATA for the test."""
    monkeypatch.setenv("ONEBIT_DATA", str(shared_datasets_dir))
    return shared_datasets_dir
