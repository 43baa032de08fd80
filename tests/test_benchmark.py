"""The benchmark helpers say what they measured against."""

from __future__ import annotations

import time

from onebit.deploy import benchmark


def test_numpy_blas_names_a_forced_openblas_core(monkeypatch):
    monkeypatch.setenv("OPENBLAS_CORETYPE", "Haswell")
    assert "forced by OPENBLAS_CORETYPE=Haswell" in benchmark.numpy_blas()
    monkeypatch.delenv("OPENBLAS_CORETYPE")
    text = benchmark.numpy_blas()
    assert text and "forced" not in text


def test_compare_returns_each_functions_time_in_order():
    fast, slow = benchmark.compare([lambda: None, lambda: time.sleep(0.002)], repeats=3, min_seconds=0.004)
    assert 0 <= fast < 0.001 < 0.002 <= slow < 0.05
