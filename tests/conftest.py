import os
from pathlib import Path

import pytest


@pytest.fixture
def shared_datasets(monkeypatch: pytest.MonkeyPatch) -> Path:
    """The local dataset copies ($ONEBIT_DATA, else ../shared/datasets beside the repo).

    Sets ONEBIT_DATA to that folder for the test; skips the test if the folder is absent.
    """
    env = os.environ.get("ONEBIT_DATA")
    path = Path(env) if env else Path(__file__).resolve().parents[1].parent / "shared" / "datasets"
    if not path.is_dir():
        pytest.skip(f"local dataset copies not found at {path}; set ONEBIT_DATA=/path/to/datasets")
    monkeypatch.setenv("ONEBIT_DATA", str(path))
    return path
