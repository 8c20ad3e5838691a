"""Class labels checked where they enter: CSV cells, idx label files, class folder names.

A typo in one label must not become a class. Before these checks, a CSV
label ``17`` in a 10-class set silently made classes 10..16 with no image,
and ``generate`` then wrote labelled images for classes that were never
trained. The rules, the same for every source:

* a label is a whole-number class index or a class name; a number with a
  fraction (``1.5``) is neither;
* one source uses one kind: a few numbers among names (or names among
  numbers) are typos, not extra classes;
* integer labels number the classes 0..K-1 with every class used; a class
  without any image is refused (a test split labelled with the training
  classes may lack some, and so may one site of a federation when asked);
* each message names the file and the line (CSV), record (idx) or folder.
"""
from __future__ import annotations

import re
from typing import Callable, Sequence

import numpy as np

from .dataset import DataError

_WHOLE = re.compile(r"[+-]?[0-9]+\Z")
_NUMBER = re.compile(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?\Z")
_ONE = {"index": "a class index (a whole number)", "name": "a class name"}
_MANY = {"index": "class indices", "name": "class names"}


def label_kind(label: str) -> str:
    """``"index"`` (whole number), ``"fraction"`` (another number) or ``"name"``."""
    if _WHOLE.match(label):
        return "index"
    return "fraction" if _NUMBER.match(label) else "name"


def _ranges(values: Sequence[int]) -> str:
    """``[10, 11, 12, 15]`` -> ``"10..12, 15"``."""
    out, start = [], None
    for i, v in enumerate(values):
        start = v if start is None else start
        if i + 1 == len(values) or values[i + 1] != v + 1:
            out.append(str(v) if v == start else f"{start}..{v}")
            start = None
    return ", ".join(out)


def check_kinds(kinds: Sequence[str], labels: Sequence[str], where: Callable[[int], str]) -> None:
    """DataError at the first fractional label, or the first label of the minority kind."""
    for i, kind in enumerate(kinds):
        if not labels[i]:
            raise DataError(f"{where(i)}: empty label: a label is a class index 0..K-1 or a class name")
        if kind == "fraction":
            raise DataError(f"{where(i)}: label {labels[i]!r} is not a whole number: a label is a class index "
                            "0..K-1 or a class name")
    n_index = sum(k == "index" for k in kinds)
    if 0 < n_index < len(kinds):
        odd = "index" if n_index <= len(kinds) - n_index else "name"  # a tie blames the numbers
        usual = "name" if odd == "index" else "index"
        i, j = kinds.index(odd), kinds.index(usual)
        n = kinds.count(usual)
        others = f"the other label is {_ONE[usual]}" if n == 1 else f"{n} other labels are {_MANY[usual]}"
        raise DataError(f"{where(i)}: label {labels[i]!r} is {_ONE[odd]} but {others} (e.g. {labels[j]!r} at "
                        f"{where(j)}); "
                        "use class indices or class names, not both")


def check_indices(values: np.ndarray, num_classes: int | None, where: Callable[[int], str], source: str) -> int:
    """The number of classes integer labels ``values`` stand for; DataError for any that cannot.

    ``num_classes`` given (declared classes): every value must be in range,
    and classes may lack images. ``None`` (inferred "0".."max"): every class
    0..max must have an image, else the label above the first gap is named.
    """
    values = np.asarray(values, dtype=np.int64)
    if not len(values):  # nothing to check (an empty idx file): one class "0", as before
        return num_classes if num_classes is not None else 1
    if values.min() < 0:
        i = int(np.flatnonzero(values < 0)[0])
        raise DataError(f"{where(i)}: label {values[i]} out of range: class indices start at 0")
    if num_classes is not None:
        bad = np.flatnonzero(values >= num_classes)
        if len(bad):
            i = int(bad[0])
            raise DataError(f"{where(i)}: label {values[i]} out of range: outside the {num_classes} classes "
                            f"0..{num_classes - 1}")
        return num_classes
    counts = np.bincount(values)
    empty = [int(c) for c in np.flatnonzero(counts == 0)]
    if not empty:
        return len(counts)
    k = empty[0]
    if k == 0:
        raise DataError(f"{source}: no label is 0, but integer labels are class indices counted from 0 (the "
                        f"labels here run {values.min()}..{values.max()}); number the classes from 0 or use names")
    i = int(np.flatnonzero(values > k)[0])
    which = f"label {_ranges(empty)}, so class {empty[0]} would" if len(empty) == 1 else \
        f"labels {_ranges(empty)}, so those classes would"
    raise DataError(f"{where(i)}: label {values[i]} is outside the {k} classes 0..{k - 1} (no image has {which} "
                    "be empty); fix the label, or add images of the missing classes")


def check_empty_folders(classes: dict, folder_of: Callable[[str], object]) -> None:
    """DataError naming the first class folder without any image."""
    for name, files in classes.items():
        if not files:
            raise DataError(f"class folder {folder_of(name)} has no image: a class without images would be "
                            "generated but never trained; add its images or remove the folder")


def check_folder_names(names: Sequence[str], folder_of: Callable[[str], object]) -> None:
    """Class folder names follow the label rules (one kind; no fraction among whole numbers).

    Unlike a CSV cell, a folder name is typed once, on purpose: a set named
    only by decimals ("0.5", "1.0") is a set of names and stays valid."""
    names = list(names)
    kinds = [label_kind(n) for n in names]
    if all(k == "fraction" for k in kinds):
        return
    check_kinds(kinds, names, lambda i: f"class folder {folder_of(names[i])}")


def csv_class_names(labels: Sequence[str], where: Callable[[int], str], source: str, *,
                    allow_empty: bool = False) -> tuple[str, ...]:
    """Classes inferred from a CSV's label column: "0".."max" for indices, else the sorted names."""
    kinds = [label_kind(s) for s in labels]
    check_kinds(kinds, labels, where)
    if kinds and kinds[0] == "index":
        values = np.array([int(s) for s in labels], dtype=np.int64)
        if allow_empty:
            check_indices(values, int(values.max()) + 1, where, source)  # negatives only
            return tuple(str(i) for i in range(int(values.max()) + 1))
        return tuple(str(i) for i in range(check_indices(values, None, where, source)))
    return tuple(sorted(set(labels)))


def csv_label_indices(labels: Sequence[str], names: Sequence[str], where: Callable[[int], str],
                      source: str) -> list[int]:
    """Each label's class index for declared ``names``: a label equal to a name is
    that class (names win), else a whole-number index in range; one kind per file."""
    lookup = {n: i for i, n in enumerate(names)}
    numbered = all(label_kind(n) == "index" for n in names)  # e.g. the test split of an index-labelled set
    kinds, values = [], []
    for i, s in enumerate(labels):
        kind = label_kind(s)
        if s not in lookup and kind == "index" and numbered:
            if str(int(s)) not in lookup:  # a number that names no class: out of range
                listed = f"0..{len(names) - 1}" if tuple(names) == tuple(map(str, range(len(names)))) \
                    else str(list(names))
                raise DataError(f"{where(i)}: label {s} out of range: outside the {len(names)} classes {listed}")
            s = str(int(s))  # "07" spells class "7"
        if s in lookup:
            kinds.append("name")
            values.append(lookup[s])
            continue
        if kind == "name":
            raise DataError(f"{where(i)}: unknown class name {s!r}; known: {list(names)}")
        kinds.append(kind)
        values.append(int(s) if kind == "index" else -1)  # a fraction is refused just below
    check_kinds(kinds, labels, where)
    check_indices(np.array(values, dtype=np.int64), len(names), where, source)
    return values
