"""The ``.onebit`` file: a JSON header and raw little-endian arrays, checksummed. No pickle.

Layout::

    offset  size  content
    0       8     magic b"ONEBIT\\x00\\x01"
    8       4     format version, uint32 little-endian
    12      8     header length H, uint64 little-endian
    20      32    SHA-256 of everything after these 52 bytes (header + data)
    52      H     UTF-8 JSON header: {"meta": {...}, "arrays": {name: {"dtype", "shape",
                  "offset", "nbytes"}}}; offsets are relative to the data section
    52 + H  ...   data section: arrays, each starting on a 64-byte boundary

Loading checks the magic, the version, the sizes and the checksum before parsing anything,
accepts only plain numeric dtypes, and never executes code from the file.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["FORMAT_VERSION", "InvalidModelFile", "write", "read"]

MAGIC = b"ONEBIT\x00\x01"
FORMAT_VERSION = 1
_PREFIX = struct.Struct("<8sIQ32s")
_ALIGN = 64
_DTYPES = {"uint64", "uint8", "int32", "int64", "float32", "float64", "bool"}


class InvalidModelFile(ValueError):
    """The file is not a valid ``.onebit`` model (truncated, tampered, foreign or too new)."""


def write(path: str | os.PathLike, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
    """Write ``meta`` (JSON-serializable) and named numpy ``arrays`` to ``path`` atomically."""
    entries, chunks, offset = {}, [], 0
    for name, array in arrays.items():
        array = np.ascontiguousarray(array)
        if array.dtype.name not in _DTYPES:
            raise TypeError(f"array {name!r} has unsupported dtype {array.dtype}")
        pad = -offset % _ALIGN
        chunks.append(b"\x00" * pad)
        offset += pad
        data = array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes()
        entries[name] = {"dtype": array.dtype.name, "shape": list(array.shape), "offset": offset, "nbytes": len(data)}
        chunks.append(data)
        offset += len(data)
    header = json.dumps({"meta": meta, "arrays": entries}, separators=(",", ":")).encode()
    body = header + b"".join(chunks)
    prefix = _PREFIX.pack(MAGIC, FORMAT_VERSION, len(header), hashlib.sha256(body).digest())
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        f.write(prefix)
        f.write(body)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Read and verify a file written by :func:`write`; returns ``(meta, arrays)``.

    Raises:
        InvalidModelFile: wrong magic (not a .onebit file), unsupported version, truncated or
            modified content (checksum mismatch), or a malformed header.
    """
    path = Path(path)
    raw = path.read_bytes()
    if len(raw) < _PREFIX.size:
        raise InvalidModelFile(f"{path}: {len(raw)} bytes is too short for a .onebit model file")
    magic, version, header_len, digest = _PREFIX.unpack_from(raw)
    if magic != MAGIC:
        raise InvalidModelFile(f"{path} is not a .onebit model file (bad magic); export one with `onebit export`")
    if version != FORMAT_VERSION:
        raise InvalidModelFile(f"{path} has format version {version}; this onebit reads version {FORMAT_VERSION}")
    body = memoryview(raw)[_PREFIX.size :]
    if header_len > len(body):
        raise InvalidModelFile(f"{path} is truncated (header needs {header_len} bytes, {len(body)} present)")
    if hashlib.sha256(body).digest() != digest:
        raise InvalidModelFile(f"{path} is corrupt or was modified (checksum mismatch); export it again")
    try:
        header = json.loads(bytes(body[:header_len]))
        data = body[header_len:]
        arrays = {}
        for name, e in header["arrays"].items():
            if e["dtype"] not in _DTYPES:
                raise InvalidModelFile(f"{path}: array {name!r} has unsupported dtype {e['dtype']!r}")
            dtype = np.dtype(e["dtype"]).newbyteorder("<")
            count = int(np.prod(e["shape"], dtype=np.int64))
            if e["offset"] < 0 or e["offset"] + e["nbytes"] > len(data) or count * dtype.itemsize != e["nbytes"]:
                raise InvalidModelFile(f"{path}: array {name!r} lies outside the file or has the wrong size")
            arrays[name] = np.frombuffer(data, dtype, count, e["offset"]).reshape(e["shape"])
        return header["meta"], arrays
    except (KeyError, TypeError, ValueError) as error:
        if isinstance(error, InvalidModelFile):
            raise
        raise InvalidModelFile(f"{path}: malformed header ({error})") from error
