"""Loaders that turn files already on disk into :class:`ImageDataset`.

Nothing here downloads: the machines this runs on are offline, so every
source is either bundled (scikit-learn digits), a Debian package
(Fashion-MNIST) or files the user points at (idx, image folders, CSV).
Every failure is a :class:`DataError` naming the file at fault, because the
person who sees it has to go and fix that file.
"""
from __future__ import annotations

import gzip
from pathlib import Path
from typing import Sequence

import numpy as np

from .dataset import DataError, ImageDataset, concat

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
_GRAY_MODES = ("1", "L", "LA")
_SPLITS = ("train", "test", "all")
_SOURCE_FORMS = (
    "digits", "fashion-mnist", "fashion-mnist:/dir",
    "idx:IMAGES,LABELS  (optionally idx:IMAGES,LABELS,TEST_IMAGES,TEST_LABELS)",
    "folder:/path  (test split: sibling /path_test)",
    "csv:/path.csv  (columns path,label; test split: sibling /path_test.csv)",
)


def _check_split(split: str) -> None:
    if split not in _SPLITS:
        raise DataError(f"split must be one of {_SPLITS}, got {split!r}")


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
_IDX_DTYPES = {0x08: np.uint8}


def _read_idx(path: Path) -> np.ndarray:
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


def load_idx(images_path, labels_path, *, class_names=None, source: str = "") -> ImageDataset:
    """Images and labels from a pair of idx files (MNIST layout), gz or plain.

    Images may be ``(N, H, W)`` or ``(N, H, W, C)`` with C in {1, 3}. Without
    ``class_names`` the classes are "0".."max label".
    """
    images_path, labels_path = Path(images_path), Path(labels_path)
    images = _read_idx(images_path)
    labels = _read_idx(labels_path)
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
    labels = labels.astype(np.int64)
    if class_names is None:
        class_names = tuple(str(i) for i in range(int(labels.max(initial=0)) + 1))
    elif len(labels) and labels.max() >= len(class_names):
        raise DataError(f"{labels_path}: label {int(labels.max())} out of range "
                        f"for {len(class_names)} classes")
    return ImageDataset(images, labels, tuple(class_names), source or str(images_path))


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


def _subdirs(path: Path) -> list[Path]:
    return sorted((d for d in path.iterdir() if d.is_dir() and not d.name.startswith(".")),
                  key=lambda d: d.name)


def _scan_class_folders(path: Path, *, what: str) -> dict[str, list[Path]]:
    """``{class_name: sorted image files}`` for a ``path/<class>/*.png`` layout."""
    if not path.is_dir():
        raise DataError(f"{what} {path}: not a directory")
    classes = {d.name: sorted((f for f in d.iterdir() if _is_image(f)), key=lambda f: f.name)
               for d in _subdirs(path)}
    if not any(classes.values()):
        loose = [f for f in path.iterdir() if _is_image(f)]
        hint = " (images must sit in one sub-folder per class)" if loose else ""
        raise DataError(f"{what} {path}: no images found ({', '.join(IMAGE_EXTENSIONS)}){hint}")
    return classes


def _scan_headers(files: Sequence[Path]) -> list[tuple[str, tuple[int, int]]]:
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


def _check_sizes(files: Sequence[Path], headers, *, what: str) -> tuple[int, int]:
    """The common (width, height); DataError naming one file of each size otherwise."""
    first_of: dict[tuple[int, int], Path] = {}
    for f, (_, size) in zip(files, headers):
        first_of.setdefault(size, f)
    if len(first_of) > 1:
        examples = ", ".join(f"{p} is {w}x{h}" for (w, h), p in list(first_of.items())[:4])
        raise DataError(f"{what}: images differ in size ({len(first_of)} sizes: {examples}); "
                        "resize them to one size first")
    return next(iter(first_of))


def _channels(headers, grayscale: bool | None) -> int:
    if grayscale is None:
        return 1 if all(mode in _GRAY_MODES for mode, _ in headers) else 3
    return 1 if grayscale else 3


def _decode(files: Sequence[Path], channels: int) -> np.ndarray:
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


def _read_files(files: Sequence[Path], labels, class_names, *, grayscale, source, what) -> ImageDataset:
    headers = _scan_headers(files)
    _check_sizes(files, headers, what=what)
    images = _decode(files, _channels(headers, grayscale))
    return ImageDataset(images, np.asarray(labels, dtype=np.int64), tuple(class_names), source)


def load_image_folder(path, *, grayscale: bool | None = None) -> ImageDataset:
    """``path/<class_name>/*.png|jpg|bmp``; sorted sub-folder names are the classes.

    ``grayscale=None`` keeps one channel only when every image is grayscale,
    so a folder of RGB photos is never silently flattened.
    """
    path = Path(path)
    classes = _scan_class_folders(path, what="image folder")
    names = tuple(classes)
    files = [f for fs in classes.values() for f in fs]
    labels = [i for i, fs in enumerate(classes.values()) for _ in fs]
    return _read_files(files, labels, names, grayscale=grayscale, source=str(path), what=str(path))


def _as_int(s: str):
    try:
        return int(s)
    except ValueError:
        return None


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


def _infer_csv_names(raw: Sequence[str]) -> tuple[str, ...]:
    ints = [_as_int(s) for s in raw]
    if all(v is not None for v in ints):
        return tuple(str(i) for i in range(max(max(ints), 0) + 1))
    return tuple(sorted(set(raw)))


def load_csv(path, *, root=None, class_names=None, grayscale: bool | None = None) -> ImageDataset:
    """Images listed in a CSV with columns ``path,label``.

    ``label`` is a class index or a class name. With ``class_names`` given, a
    label equal to a class name maps to that name (names win over integers);
    otherwise it must be an integer index in range. Without ``class_names``,
    integer labels give classes "0".."max" and string labels give the sorted
    distinct names. Relative paths resolve against ``root`` (default: the
    CSV's folder) so a dataset folder can be moved as a whole.
    """
    path = Path(path)
    df = _read_csv_table(path)
    base = Path(root) if root is not None else path.parent
    raw = list(df["label"])
    names = tuple(str(c) for c in (class_names if class_names is not None else _infer_csv_names(raw)))
    lookup = {name: i for i, name in enumerate(names)}
    labels, files = [], []
    for row, (s, p) in enumerate(zip(raw, df["path"])):
        line = row + 2  # 1-based, after the header line
        v = lookup.get(s, _as_int(s))
        if v is None:
            raise DataError(f"{path}, line {line}: unknown class name {s!r}; known: {list(names)}")
        if not 0 <= v < len(names):
            raise DataError(f"{path}, line {line}: label {v} out of range [0, {len(names)})")
        f = Path(p.strip())
        f = f if f.is_absolute() else base / f
        if not f.is_file():
            raise DataError(f"{path}, line {line}: image {f} not found")
        labels.append(v)
        files.append(f)
    return _read_files(files, labels, names, grayscale=grayscale, source=str(path), what=str(path))


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


def load_source(spec: str, *, split: str = "train") -> ImageDataset:
    """Resolve a ``--data`` spec string to a dataset (the CLI's single entry point).

    Sources without a built-in split take their test set from a sibling
    (``/path_test``, ``name_test.csv``, or the idx 4-path form) and label it
    with the *training* classes, so class k means the same thing in both.
    """
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
            raise DataError("idx spec needs IMAGES,LABELS or IMAGES,LABELS,TEST_IMAGES,TEST_LABELS, "
                            f"got {spec!r}")
        return _pick(
            split,
            lambda: load_idx(p[0], p[1], source=f"idx:{p[0]}"),
            (lambda names: load_idx(p[2], p[3], class_names=names, source=f"idx:{p[2]}"))
            if len(p) == 4 else None,
            lambda: tuple(str(i) for i in range(int(_read_idx(Path(p[1])).max(initial=0)) + 1)),
            no_test=f"{spec!r} has no test split: pass idx:IMAGES,LABELS,TEST_IMAGES,TEST_LABELS",
        )
    if kind == "folder" and arg:
        path = Path(arg).expanduser()
        tpath = path.with_name(f"{path.name}_test")
        return _pick(
            split,
            lambda: load_image_folder(path),
            (lambda names: load_image_folder(tpath).with_class_names(names)) if tpath.is_dir() else None,
            lambda: tuple(d.name for d in _subdirs(path)),
            no_test=f"{path} has no test split: create {tpath} with the same class sub-folders",
        )
    if kind == "csv" and arg:
        path = Path(arg).expanduser()
        tpath = path.with_name(f"{path.stem}_test{path.suffix}")
        return _pick(
            split,
            lambda: load_csv(path),
            (lambda names: load_csv(tpath, class_names=names)) if tpath.is_file() else None,
            lambda: _infer_csv_names(list(_read_csv_table(path)["label"])),
            no_test=f"{path} has no test split: create {tpath} with the same columns",
        )
    hint = ""
    if Path(str(spec)).is_dir():
        hint = f" (did you mean folder:{spec}?)"
    elif str(spec).lower().endswith(".csv"):
        hint = f" (did you mean csv:{spec}?)"
    raise DataError(f"unknown data source {spec!r}{hint}; accepted forms: " + "; ".join(_SOURCE_FORMS))
