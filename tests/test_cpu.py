"""CPU descriptions in run records and benchmark headers."""

import pytest

from onebit import _cpu

GENERIC_AMD = {"model name": "AMD EPYC", "cpu family": "26", "model": "2",
               "flags": "fpu sse avx2 avx512f avx512_bf16 avx512_vpopcntdq"}
XEON_AMX = {"model name": "Intel(R) Xeon(R) Platinum 8488C", "cpu family": "6", "model": "143",
            "flags": "avx2 avx512f avx512_bf16 amx_bf16 amx_tile amx_int8"}


@pytest.mark.parametrize("info, label", [
    (GENERIC_AMD, "AMD EPYC family 26 model 2 (AVX512-BF16)"),  # a generic name gets its family
    (XEON_AMX, "Intel(R) Xeon(R) Platinum 8488C (AMX)"),        # the best bf16 path wins
    ({"model name": "Intel(R) Core(TM) i7-4770", "flags": "sse avx avx2"}, "Intel(R) Core(TM) i7-4770 (AVX2)"),
    ({"model name": "Old CPU 1", "flags": "sse sse2"}, "Old CPU 1"),
])
def test_cpu_label_names_model_and_best_extension(monkeypatch, info, label):
    monkeypatch.setattr(_cpu, "_cpuinfo", lambda: info)
    assert _cpu.cpu_label() == label


def test_cpu_name_lists_vector_flags_only(monkeypatch):
    monkeypatch.setattr(_cpu, "_cpuinfo", lambda: XEON_AMX)
    assert _cpu.cpu_name() == ("Intel(R) Xeon(R) Platinum 8488C; amx_bf16 amx_int8 amx_tile avx2 avx512_bf16 "
                               "avx512f")


def test_without_cpuinfo_falls_back_to_platform(monkeypatch):
    monkeypatch.setattr(_cpu, "_cpuinfo", lambda: None)
    monkeypatch.setattr(_cpu.platform, "processor", lambda: "")
    monkeypatch.setattr(_cpu.platform, "machine", lambda: "arm64")
    assert _cpu.cpu_label() == _cpu.cpu_name() == "arm64"


def test_cpuinfo_reads_the_first_processor(tmp_path, monkeypatch):
    text = "processor\t: 0\nmodel name\t: CPU A\nflags\t\t: avx2\n\nprocessor\t: 1\nmodel name\t: CPU B\n"
    path = tmp_path / "cpuinfo"
    path.write_text(text)
    real_open = open
    monkeypatch.setattr("builtins.open", lambda p, *a, **k: real_open(path if p == "/proc/cpuinfo" else p, *a, **k))
    assert _cpu._cpuinfo() == {"processor": "0", "model name": "CPU A", "flags": "avx2"}
