"""What CPU this process runs on, for run records and benchmark headers.

Training and kernel speed depend on the vector extensions more than on the model name
(bfloat16 is native with AMX or AVX512-BF16, emulated elsewhere), and virtual machines often
report generic names such as ``AMD EPYC``: both functions name the family and the features.
"""

from __future__ import annotations

import platform

__all__ = ["cpu_name", "cpu_label"]

#: Extensions that set the speed of bf16 training, best first, and how :func:`cpu_label` names them.
_TIERS = (("amx_bf16", "AMX"), ("avx512_bf16", "AVX512-BF16"), ("avx512f", "AVX-512"), ("avx2", "AVX2"))


def _cpuinfo() -> dict[str, str] | None:
    """The first processor's fields of ``/proc/cpuinfo``, or None where there is none (not Linux)."""
    try:
        with open("/proc/cpuinfo") as f:
            text = f.read()
    except OSError:
        return None
    fields: dict[str, str] = {}
    for line in text.split("\n\n", 1)[0].splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields[key.strip()] = value.strip()
    return fields


def _platform_name() -> str:
    """What Python knows of the CPU where ``/proc/cpuinfo`` is missing."""
    return platform.processor() or platform.machine()


def _model(info: dict[str, str]) -> str:
    """Model name, with the family and model numbers when the name carries none (``AMD EPYC``)."""
    name = info.get("model name", "?")
    if any(c.isdigit() for c in name) or "cpu family" not in info:
        return name
    return f"{name} family {info['cpu family']} model {info.get('model', '?')}"


def cpu_name() -> str:
    """The model and its AVX2 / AVX-512 / AMX flags, e.g. ``AMD EPYC family 26 model 2; avx2
    avx512_bf16 avx512f ...``; :func:`platform.processor` where ``/proc/cpuinfo`` is missing."""
    info = _cpuinfo()
    if info is None:
        return _platform_name()
    flags = sorted(f for f in info.get("flags", "").split() if f == "avx2" or f.startswith(("avx512", "amx")))
    return f"{_model(info)}; {' '.join(flags)}"


def cpu_label() -> str:
    """A short name for run records: the model and its best bf16-relevant extension, e.g.
    ``AMD EPYC family 26 model 2 (AVX512-BF16)``."""
    info = _cpuinfo()
    if info is None:
        return _platform_name()
    flags = set(info.get("flags", "").split())
    tier = next((label for flag, label in _TIERS if flag in flags), None)
    return f"{_model(info)} ({tier})" if tier else _model(info)
