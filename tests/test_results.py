"""Every committed results directory rebuilds from its run records alone."""

import shutil
from pathlib import Path

import pytest

from onebit.cli import main

RESULTS = Path(__file__).resolve().parents[1] / "results"

#: Committed directories whose table cannot be rebuilt from their records yet, and why. The marks are
#: strict: the day the records and the rebuilt table land, the test passes, which fails it as an
#: unexpected pass until the entry here is removed.
RETRAINING = {
    "mnist-cnn": "its runs are being retrained with records: the committed table has none (no experiment.json)",
    "mnist-mlp": "its float and bnn runs are being retrained with records: the committed table still shows "
                 "those rows, carried over from an earlier report without records",
}


def _committed_directories():
    for path in sorted(p for p in RESULTS.iterdir() if p.is_dir()):
        marks = [pytest.mark.xfail(strict=True, reason=RETRAINING[path.name])] if path.name in RETRAINING else []
        yield pytest.param(path, id=path.name, marks=marks)


@pytest.mark.parametrize("committed", _committed_directories())
def test_committed_report_rebuilds_from_its_records(committed: Path, tmp_path: Path, monkeypatch) -> None:
    """`onebit report results/<exp> --stored-packed` on a fresh clone (no checkpoints, no datasets)
    rewrites ``results.md`` and ``results.json`` byte for byte."""
    assert (committed / "experiment.json").exists(), (
        f"{committed} holds a table without the run records it comes from (no experiment.json)")
    copy = tmp_path / committed.name
    shutil.copytree(committed, copy)
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("ONEBIT_DATA", str(empty))
    monkeypatch.setenv("ONEBIT_CHECKPOINTS", str(empty))
    assert main(["report", str(copy), "--stored-packed"]) == 0
    for name in ("results.md", "results.json"):
        rebuilt, kept = (copy / name).read_text(), (committed / name).read_text()
        assert rebuilt == kept, f"results/{committed.name}/{name} is not what its records give: " \
                                f"rebuild it with `onebit report results/{committed.name} --stored-packed`"
        assert (copy / name).read_bytes() == (committed / name).read_bytes()
