"""Named experiments, the runner that trains them, and the report that tabulates them."""

from .registry import Experiment, Row, get, names
from .report import write_report
from .runner import run_experiment

__all__ = ["Experiment", "Row", "get", "names", "run_experiment", "write_report"]
