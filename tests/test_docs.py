"""The code blocks of docs/training.md run as written."""

import re
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parent.parent / "docs" / "training.md"
BLOCKS = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)


def test_the_guide_has_code():
    assert len(BLOCKS) >= 5


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_training_guide_block_runs(index, shared_datasets, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # blocks that train write their runs here
    exec(compile(BLOCKS[index], f"{DOC.name} block {index}", "exec"), {"__name__": "__doc_block__"})
