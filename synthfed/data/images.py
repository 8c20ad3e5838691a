"""Image files on disk to uint8 arrays: header scan, size, shape and colour checks.

Shared by the single-folder/CSV loaders and the per-client folder loader so
that every image source obeys the same rules:

* one size for all images, and **square** (the models generate square
  images; a 16x20 set would train on 16x20 tensors and sample 16x16). A
  non-square set is a :class:`DataError`, whatever ``--image-size`` says:
  squashing it silently would distort every image, so the user crops or pads;
* mixed colour modes are converted to one: RGB when any image is colour (no
  colour is thrown away), else 8-bit gray. The conversion is announced as a
  :class:`~synthfed.errors.DataNote` naming how many files changed and from
  which mode, because one stray RGB file turns a gray dataset into RGB.
"""
from __future__ import annotations

import warnings
from collections import Counter
from pathlib import Path
from typing import Sequence

import numpy as np

from synthfed.errors import DataNote

from .dataset import DataError

GRAY_MODES = ("1", "L", "LA")  # modes that become one channel without losing colour


def scan_headers(files: Sequence[Path]) -> list[tuple[str, tuple[int, int]]]:
    """``(mode, (width, height))`` per file from headers only (cheap), DataError naming bad files."""
    from PIL import Image, UnidentifiedImageError

    out = []
    for f in files:
        try:
            with Image.open(f) as im:
                out.append((im.mode, im.size))
        except FileNotFoundError:
            raise DataError(f"{f}: image file not found") from None
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
            raise DataError(f"{f}: unreadable or corrupt image ({exc})") from None
    return out


def check_sizes(files: Sequence[Path], headers, *, what: str) -> tuple[int, int]:
    """The common (width, height); DataError naming one file of each size otherwise."""
    first_of: dict[tuple[int, int], Path] = {}
    for f, (_, size) in zip(files, headers):
        first_of.setdefault(size, f)
    if len(first_of) > 1:
        examples = ", ".join(f"{p} is {w}x{h}" for (w, h), p in list(first_of.items())[:4])
        raise DataError(f"{what}: images differ in size ({len(first_of)} sizes: {examples}); "
                        "resize them to one size first")
    return next(iter(first_of))


def _images_are(n: int) -> str:
    return "1 image is" if n == 1 else f"{n} images are"


def check_square(size: tuple[int, int], count: int, example, *, what: str) -> None:
    """DataError unless ``size`` (width, height) is square; names one file and how many share it."""
    w, h = size
    if w != h:
        are = "the only image is" if count == 1 else f"all {count} images are"  # one size is already checked
        raise DataError(f"{what}: {are} {w}x{h} (width x height), not square, e.g. {example}; "
                        "crop or pad them to a square size first (the models generate square images)")


def _mode_counts(modes: Sequence[str], target: str) -> str:
    counts = Counter(m for m in modes if m != target)
    return ", ".join(f"{n} from {m}" for m, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def choose_channels(files: Sequence[Path], headers, grayscale: bool | None, *, what: str) -> int:
    """1 or 3 channels: as forced by ``grayscale``, else gray only when every image is.

    With mixed modes and no explicit choice, warns a DataNote naming how many
    files are converted and from which modes (and one colour file when a few
    colour images turn a mostly gray set into RGB)."""
    modes = [mode for mode, _ in headers]
    if grayscale is not None:  # the caller chose; converting is what they asked for
        return 1 if grayscale else 3
    colour = [f for f, m in zip(files, modes) if m not in GRAY_MODES]
    channels = 3 if colour else 1
    if len(set(modes)) > 1:
        target = "RGB" if channels == 3 else "L"
        converted = sum(m != target for m in modes)
        why = ""
        if colour and len(colour) < len(files):
            why = f" because {_images_are(len(colour))} in colour (e.g. {colour[0]})"
        warnings.warn(f"{what}: converted {converted} of {len(files)} images to {target} "
                      f"({_mode_counts(modes, target)}){why}", DataNote, stacklevel=2)
    return channels


def decode(files: Sequence[Path], channels: int) -> np.ndarray:
    """Fully decode to uint8 ``(N, C, H, W)``; truncated files surface here."""
    from PIL import Image

    arrays = []
    for f in files:
        try:
            with Image.open(f) as im:
                arr = np.asarray(im.convert("L" if channels == 1 else "RGB"), dtype=np.uint8)
        except (OSError, ValueError, SyntaxError) as exc:
            raise DataError(f"{f}: unreadable or corrupt image ({exc})") from None
        arrays.append(arr[None] if channels == 1 else np.transpose(arr, (2, 0, 1)))
    return np.stack(arrays)


def read_images(files: Sequence[Path], *, grayscale: bool | None, what: str) -> np.ndarray:
    """Headers, one square size, one colour mode, then pixels: uint8 ``(N, C, H, W)``."""
    headers = scan_headers(files)
    size = check_sizes(files, headers, what=what)
    check_square(size, len(files), files[0], what=what)
    return decode(files, choose_channels(files, headers, grayscale, what=what))
