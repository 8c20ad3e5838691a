"""Loaders that turn files already on disk into :class:`ImageDataset`.

Nothing here downloads: the machines this runs on are offline, so every
source is either bundled (scikit-learn digits), a Debian package
(Fashion-MNIST) or files the user points at (idx, image folders, CSV).
Every failure is a :class:`DataError` naming the file at fault, because the
person who sees it has to go and fix that file. Labels follow the rules of
:mod:`.labels` (whole-number indices 0..K-1 with every class used, or class
names, one kind per source); images those of :mod:`.images` (one square size,
mixed colour modes converted with a DataNote).
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from .dataset import DataError, ImageDataset, SourceSpecError, concat
from .idx import read_idx
from .images import read_images
from .labels import check_empty_folders, check_folder_names, check_indices, csv_class_names, csv_label_indices

__all__ = [
    "FASHION_MNIST_DIR", "FASHION_MNIST_CLASSES", "IMAGE_EXTENSIONS", "load_digits", "load_idx",
    "load_fashion_mnist", "load_image_folder", "load_csv", "load_source",
]

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")  # Debian package dataset-fashion-mnist
FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp")
_SPLITS = ("train", "test", "all")
_SOURCE_FORMS = (
    "digits", "fashion-mnist", "fashion-mnist:/dir",
    "idx:IMAGES,LABELS  (optionally idx:IMAGES,LABELS,TEST_IMAGES,TEST_LABELS)",
    "folder:/path  (test split: sibling /path_test)",
    "csv:/path.csv  (columns path,label; test split: sibling /path_test.csv)",
)


def _check_split(split: str) -> None:
    if split not in _SPLITS:
        raise SourceSpecError(f"split must be one of {_SPLITS}, got {split!r}")


# --------------------------------------------------------------------------- digits
def load_digits(*, split: str = "train", size: int | None = 16, test_fraction: float = 0.2,
                seed: int = 0) -> ImageDataset:
    """scikit-learn's 1,797 8x8 digits, scaled 0..16 -> 0..255, stratified split.

    Bundled in the scikit-learn wheel, so it is the dataset tests and demos can
    always rely on. Upsampled to 16x16 by default so a U-Net has room for 2-3
    resolution levels. The split is stratified and fixed by ``seed`` so train
    and test are disjoint and identical across runs.
    """
    _check_split(split)
    if not 0.0 < test_fraction < 1.0:
        raise DataError(f"test_fraction must be in (0, 1), got {test_fraction}")
    from sklearn.datasets import load_digits as _sk_digits
    from sklearn.model_selection import train_test_split

    bunch = _sk_digits()
    images = np.rint(bunch.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)[:, None]
    labels = bunch.target.astype(np.int64)
    idx = np.arange(len(labels))
    if split != "all":
        train_idx, test_idx = train_test_split(idx, test_size=test_fraction, random_state=seed,
                                               stratify=labels)
        idx = np.sort(train_idx if split == "train" else test_idx)
    ds = ImageDataset(images[idx], labels[idx], tuple(str(i) for i in range(10)), "digits")
    return ds.resized(size) if size is not None else ds


# --------------------------------------------------------------------------- idx
def _idx_names(labels: np.ndarray, labels_path: Path, class_names, *, allow_empty: bool) -> tuple[str, ...]:
    """Declared ``class_names`` (labels in range), else "0".."max" with every class used."""
    def where(i: int) -> str:
        return f"{labels_path}, record {i + 1}"

    if class_names is not None:
        check_indices(labels, len(class_names), where, str(labels_path))
        return tuple(class_names)
    top = int(labels.max(initial=0)) + 1
    k = check_indices(labels, top if allow_empty else None, where, str(labels_path))
    return tuple(str(i) for i in range(k))


def load_idx(images_path, labels_path, *, class_names=None, source: str = "",
             allow_empty_classes: bool = False, square: bool = False) -> ImageDataset:
    """Images and labels from a pair of idx files (MNIST layout), gz or plain.

    Images may be ``(N, H, W)`` or ``(N, H, W, C)`` with C in {1, 3};
    ``square=True`` (what ``load_source`` asks, for training) refuses H != W.
    Without ``class_names`` the classes are "0".."max label" and each must
    have an image unless ``allow_empty_classes`` (a gap means a bad label).
    """
    images_path, labels_path = Path(images_path), Path(labels_path)
    images = read_idx(images_path)
    labels = read_idx(labels_path)
    if images.ndim == 3:
        images = images[:, None]
    elif images.ndim == 4 and images.shape[3] in (1, 3):
        images = np.transpose(images, (0, 3, 1, 2))
    else:
        raise DataError(f"{images_path}: expected image array (N, H, W[, C]), got shape {images.shape}")
    if labels.ndim != 1:
        raise DataError(f"{labels_path}: expected a 1-D label array, got shape {labels.shape}")
    if len(labels) != len(images):
        raise DataError(f"{images_path} has {len(images)} images but {labels_path} "
                        f"has {len(labels)} labels")
    h, w = images.shape[2:]
    if square and h != w:
        raise DataError(f"{images_path}: all {len(images)} images are {w}x{h} (width x height), not square; crop or "
                        "pad them to a square size first (the models generate square images)")
    labels = labels.astype(np.int64)
    names = _idx_names(labels, labels_path, class_names, allow_empty=allow_empty_classes)
    return ImageDataset(images, labels, names, source or str(images_path))


def _find(root: Path, stem: str) -> Path:
    """``stem.gz`` as Debian ships it, else an uncompressed ``stem`` if that is what exists."""
    gz, plain = root / f"{stem}.gz", root / stem
    return plain if plain.exists() and not gz.exists() else gz


def load_fashion_mnist(*, split: str = "train", root=FASHION_MNIST_DIR) -> ImageDataset:
    """Fashion-MNIST (60,000 train / 10,000 test, 28x28 gray) from local idx files."""
    _check_split(split)
    root = Path(root)
    if split == "all":
        return concat([load_fashion_mnist(split=s, root=root) for s in ("train", "test")])
    prefix = "train" if split == "train" else "t10k"
    img = _find(root, f"{prefix}-images-idx3-ubyte")
    lbl = _find(root, f"{prefix}-labels-idx1-ubyte")
    missing = [p for p in (img, lbl) if not p.exists()]
    if missing:
        raise DataError(f"Fashion-MNIST file {missing[0]} not found; "
                        "apt-get install dataset-fashion-mnist or pass --data idx:IMAGES,LABELS")
    source = "fashion-mnist" if root == FASHION_MNIST_DIR else f"fashion-mnist:{root}"
    return load_idx(img, lbl, class_names=FASHION_MNIST_CLASSES, source=source)


# --------------------------------------------------------------------------- image files
def _is_image(p: Path) -> bool:
    return p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS


def subdirs(path: Path) -> list[Path]:
    return sorted((d for d in path.iterdir() if d.is_dir() and not d.name.startswith(".")),
                  key=lambda d: d.name)


def scan_class_folders(path: Path, *, what: str) -> dict[str, list[Path]]:
    """``{class_name: sorted image files}`` for a ``path/<class>/*.png`` layout."""
    if not path.is_dir():
        raise DataError(f"{what} {path}: not a directory")
    classes = {d.name: sorted((f for f in d.iterdir() if _is_image(f)), key=lambda f: f.name)
               for d in subdirs(path)}
    if not any(classes.values()):
        loose = [f for f in path.iterdir() if _is_image(f)]
        hint = " (images must sit in one sub-folder per class)" if loose else ""
        raise DataError(f"{what} {path}: no images found ({', '.join(IMAGE_EXTENSIONS)}){hint}")
    return classes


def _class_folders(path: Path, *, what: str, allow_empty: bool) -> dict[str, list[Path]]:
    """The class folders of ``path``, checked: names of one kind, and (unless
    ``allow_empty``) every class folder holding an image."""
    classes = scan_class_folders(path, what=what)
    check_folder_names(list(classes), lambda name: path / name)
    if not allow_empty:
        check_empty_folders(classes, lambda name: path / name)
    return classes


def _read_files(files: Sequence[Path], labels, class_names, *, grayscale, source, what) -> ImageDataset:
    images = read_images(files, grayscale=grayscale, what=what)
    return ImageDataset(images, np.asarray(labels, dtype=np.int64), tuple(class_names), source)


def load_image_folder(path, *, grayscale: bool | None = None, allow_empty_classes: bool = False) -> ImageDataset:
    """``path/<class_name>/*.png|jpg|bmp``; sorted sub-folder names are the classes.

    ``grayscale=None`` keeps one channel only when every image is grayscale,
    so a folder of RGB photos is never silently flattened (a DataNote says how
    many files were converted). An empty class folder is a DataError unless
    ``allow_empty_classes`` (a test split, or a site lacking a class).
    """
    path = Path(path)
    classes = _class_folders(path, what="image folder", allow_empty=allow_empty_classes)
    names = tuple(classes)
    files = [f for fs in classes.values() for f in fs]
    labels = [i for i, fs in enumerate(classes.values()) for _ in fs]
    return _read_files(files, labels, names, grayscale=grayscale, source=str(path), what=str(path))


def _read_csv_table(path: Path):
    """The CSV as strings with normalised ``path``/``label`` columns (labels stripped)."""
    import pandas as pd

    if not path.is_file():
        raise DataError(f"{path}: CSV file not found")
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True)
    except (ValueError, OSError, pd.errors.ParserError) as exc:
        raise DataError(f"{path}: cannot parse CSV ({exc})") from None
    df.columns = [str(c).strip().lower() for c in df.columns]
    if not {"path", "label"} <= set(df.columns):
        raise DataError(f"{path}: needs columns 'path' and 'label', found {list(df.columns)}")
    if df.empty:
        raise DataError(f"{path}: CSV lists no images")
    df["label"] = [s.strip() for s in df["label"]]
    return df


def _csv_line(path: Path):
    return lambda row: f"{path}, line {row + 2}"  # 1-based, after the header line


def _infer_csv_names(path: Path, raw: Sequence[str], *, allow_empty: bool = False) -> tuple[str, ...]:
    return csv_class_names(raw, _csv_line(path), str(path), allow_empty=allow_empty)


def load_csv(path, *, root=None, class_names=None, grayscale: bool | None = None,
             allow_empty_classes: bool = False) -> ImageDataset:
    """Images listed in a CSV with columns ``path,label`` (any other columns are
    carried as string ``attributes``, e.g. ``site`` or ``sex`` for the audit's groups).

    ``label`` is a class index or a class name, one kind per file. With
    ``class_names`` given, a label equal to a class name maps to that name
    (names win over integers); otherwise it must be an integer index in range,
    and classes may lack images. Without ``class_names``, integer labels give
    classes "0".."max", each of which must have an image unless
    ``allow_empty_classes``, and string labels give the sorted distinct names.
    Errors name the CSV line. Relative paths resolve against ``root``
    (default: the CSV's folder) so a dataset folder can be moved as a whole.
    """
    path = Path(path)
    df = _read_csv_table(path)
    base = Path(root) if root is not None else path.parent
    raw = list(df["label"])
    if class_names is None:
        names = _infer_csv_names(path, raw, allow_empty=allow_empty_classes)
    else:
        names = tuple(str(c) for c in class_names)
    labels = csv_label_indices(raw, names, _csv_line(path), str(path))
    files = []
    for row, p in enumerate(df["path"]):
        line = row + 2  # 1-based, after the header line
        f = Path(p.strip())
        f = f if f.is_absolute() else base / f
        if not f.is_file():
            raise DataError(f"{path}, line {line}: image {f} not found")
        files.append(f)
    ds = _read_files(files, labels, names, grayscale=grayscale, source=str(path), what=str(path))
    extra = [c for c in df.columns if c not in ("path", "label")]
    if not extra:
        return ds
    attributes = {c: [str(v).strip() for v in df[c]] for c in extra}  # e.g. site, sex, age band: audit groups
    return ImageDataset(ds.images, ds.labels, ds.class_names, ds.source, attributes)


# --------------------------------------------------------------------------- spec strings
def _pick(split: str, train, test, train_names, *, no_test: str) -> ImageDataset:
    """Train, test (labelled with the train classes) or both, for sources without built-in splits."""
    if split == "train" or (split == "all" and test is None):
        return train()
    if test is None:
        raise DataError(no_test)
    if split == "test":
        return test(train_names())
    first = train()
    return concat([first, test(first.class_names)])


def load_source(spec: str, *, split: str = "train", allow_empty_classes: bool = False) -> ImageDataset:
    """Resolve a ``--data`` spec string to a dataset (the CLI's single entry point).

    Sources without a built-in split take their test set from a sibling
    (``/path_test``, ``name_test.csv``, or the idx 4-path form) and label it
    with the *training* classes, so class k means the same thing in both (the
    test split may lack classes). ``allow_empty_classes`` lets the training
    split declare classes without images too: one Flower site's folder may
    lack a class the federation has.
    """
    allow = allow_empty_classes
    _check_split(split)
    kind, _, arg = str(spec).partition(":")
    kind, arg = kind.strip().lower(), arg.strip()
    if kind == "digits" and not arg:
        return load_digits(split=split)
    if kind == "fashion-mnist":
        return load_fashion_mnist(split=split, root=Path(arg) if arg else FASHION_MNIST_DIR)
    if kind == "idx" and arg:
        p = [s.strip() for s in arg.split(",")]
        if len(p) not in (2, 4) or not all(p):
            raise SourceSpecError("idx spec needs IMAGES,LABELS or IMAGES,LABELS,TEST_IMAGES,TEST_LABELS, "
                            f"got {spec!r}")
        return _pick(
            split,
            lambda: load_idx(p[0], p[1], source=f"idx:{p[0]}", allow_empty_classes=allow, square=True),
            (lambda names: load_idx(p[2], p[3], class_names=names, source=f"idx:{p[2]}", square=True))
            if len(p) == 4 else None,
            lambda: _idx_names(read_idx(Path(p[1])).astype(np.int64), Path(p[1]), None, allow_empty=allow),
            no_test=f"{spec!r} has no test split: pass idx:IMAGES,LABELS,TEST_IMAGES,TEST_LABELS",
        )
    if kind == "folder" and arg:
        path = Path(arg).expanduser()
        tpath = path.with_name(f"{path.name}_test")
        return _pick(
            split,
            lambda: load_image_folder(path, allow_empty_classes=allow),
            (lambda names: load_image_folder(tpath, allow_empty_classes=True).with_class_names(names))
            if tpath.is_dir() else None,
            lambda: tuple(_class_folders(path, what="image folder", allow_empty=allow)),
            no_test=f"{path} has no test split: create {tpath} with the same class sub-folders",
        )
    if kind == "csv" and arg:
        path = Path(arg).expanduser()
        tpath = path.with_name(f"{path.stem}_test{path.suffix}")
        return _pick(
            split,
            lambda: load_csv(path, allow_empty_classes=allow),
            (lambda names: load_csv(tpath, class_names=names)) if tpath.is_file() else None,
            lambda: _infer_csv_names(path, list(_read_csv_table(path)["label"]), allow_empty=allow),
            no_test=f"{path} has no test split: create {tpath} with the same columns",
        )
    hint = ""
    if Path(str(spec)).is_dir():
        hint = f" (did you mean folder:{spec}?)"
    elif str(spec).lower().endswith(".csv"):
        hint = f" (did you mean csv:{spec}?)"
    raise SourceSpecError(f"unknown data source {spec!r}{hint}; accepted forms: " + "; ".join(_SOURCE_FORMS))
