"""The idx format (MNIST, Fashion-MNIST): its reader and its writer, together.

Unsigned bytes only (type 0x08), any number of dimensions, gzip detected by
content; a file whose header disagrees with its length is refused, named."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np

from synthfed.data.dataset import DataError

_IDX_DTYPES = {0x08: np.uint8}


def read_idx(path: Path) -> np.ndarray:
    """Parse one idx file (gzip detected by content, not by extension)."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc})") from None
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as exc:
            raise DataError(f"{path}: corrupt gzip data ({exc})") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise DataError(f"{path}: not an idx file (bad magic number {raw[:4].hex() or 'empty'})")
    type_code, ndim = raw[2], raw[3]
    if type_code not in _IDX_DTYPES:
        raise DataError(f"{path}: unsupported idx element type 0x{type_code:02x} (only unsigned bytes 0x08)")
    header = 4 + 4 * ndim
    if ndim == 0 or len(raw) < header:
        raise DataError(f"{path}: truncated idx header")
    dims = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    expected = header + int(np.prod(dims, dtype=np.int64))
    if len(raw) != expected:
        raise DataError(f"{path}: idx header declares shape {dims} ({expected} bytes) "
                        f"but the file has {len(raw)} bytes")
    return np.frombuffer(raw, dtype=_IDX_DTYPES[type_code], offset=header).reshape(dims)


def write_idx(images_or_labels: np.ndarray) -> bytes:
    """The idx bytes of a uint8 array (what ``read_idx`` reads back)."""
    arr = np.ascontiguousarray(images_or_labels, dtype=np.uint8)
    header = struct.pack(">HBB", 0, 0x08, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
    return header + arr.tobytes()
