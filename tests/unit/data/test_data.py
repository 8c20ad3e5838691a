"""Tests for synthfed.data.dataset and synthfed.data.loaders."""
from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from synthfed.data import (
    FASHION_MNIST_DIR,
    DataError,
    ImageDataset,
    concat,
    load_csv,
    load_digits,
    load_fashion_mnist,
    load_idx,
    load_image_folder,
    load_source,
)
from synthfed.errors import DataNote


def _png(path: Path, *, size=(8, 8), mode="L", value=128) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    color = value if mode == "L" else (value, 255 - value, 0)
    Image.new(mode, size, color).save(path)
    return path


def _write_idx(path: Path, array: np.ndarray, *, magic: bytes | None = None, gz: bool = True) -> Path:
    header = magic if magic is not None else bytes([0, 0, 0x08, array.ndim])
    raw = header + b"".join(struct.pack(">I", d) for d in array.shape) + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(raw) if gz else raw)
    return path


def _tiny(n=6, c=1, hw=4, k=3) -> ImageDataset:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(n, c, hw, hw), dtype=np.uint8)
    return ImageDataset(images, np.arange(n) % k, tuple("abc"[:k]), "tiny")


# --------------------------------------------------------------------------- ImageDataset
def test_dataset_validation_rejects_bad_inputs():
    # Prepare
    good = np.zeros((2, 1, 4, 4), np.uint8)
    # Execute / Assert
    with pytest.raises(DataError, match="uint8"):
        ImageDataset(good.astype(np.float32), np.array([0, 1]), ("a", "b"))
    with pytest.raises(DataError, match="C in"):
        ImageDataset(np.zeros((2, 2, 4, 4), np.uint8), np.array([0, 1]), ("a", "b"))
    with pytest.raises(DataError, match="2 images but 3 labels"):
        ImageDataset(good, np.array([0, 1, 1]), ("a", "b"))
    with pytest.raises(DataError, match="label 2 out of range"):
        ImageDataset(good, np.array([0, 2]), ("a", "b"))


def test_dataset_basics_subset_counts_tensor_fingerprint():
    # Prepare
    ds = _tiny()
    # Execute
    sub = ds.subset([0, 3])
    x, y = ds.to_tensor()
    # Assert
    assert len(ds) == 6 and ds.num_classes == 3 and ds.image_shape == (1, 4, 4)
    assert ds.labels.dtype == np.int64
    assert sub.labels.tolist() == [0, 0] and sub.class_names == ds.class_names
    assert ds.class_counts().tolist() == [2, 2, 2]
    assert x.dtype == torch.float32 and y.dtype == torch.int64
    assert x.min() >= -1.0 and x.max() <= 1.0
    assert float(x[0, 0, 0, 0]) == pytest.approx(ds.images[0, 0, 0, 0] / 127.5 - 1.0)
    assert ds.fingerprint() == _tiny().fingerprint()
    assert ds.fingerprint() != sub.fingerprint()
    with pytest.raises(ValueError):
        ds.images[0, 0, 0, 0] = 1  # read-only: the fingerprint cannot go stale


def test_resized_and_concat():
    # Prepare
    gray, rgb = _tiny(hw=8), _tiny(c=3, hw=8)
    # Execute
    g16, c16 = gray.resized(16), rgb.resized(16)
    both = concat([gray, gray])
    # Assert
    assert g16.image_shape == (1, 16, 16) and c16.image_shape == (3, 16, 16)
    assert gray.resized(8) is gray
    assert len(both) == 12 and both.class_names == gray.class_names
    with pytest.raises(DataError, match="image shape"):
        concat([gray, rgb])
    with pytest.raises(DataError, match="class names"):
        concat([gray, ImageDataset(gray.images, gray.labels, ("x", "y", "z"))])


def test_with_class_names_reindexes_by_name():
    # Prepare
    ds = ImageDataset(np.zeros((3, 1, 2, 2), np.uint8), np.array([0, 1, 1]), ("b", "d"))
    # Execute
    wider = ds.with_class_names(("a", "b", "c", "d"))
    # Assert
    assert wider.labels.tolist() == [1, 3, 3] and wider.num_classes == 4
    with pytest.raises(DataError, match=r"\['d'\] are not among"):
        ds.with_class_names(("a", "b"))


# --------------------------------------------------------------------------- digits
def test_digits_shape_dtype_range_and_disjoint_split():
    # Execute
    train = load_digits(split="train")
    test = load_digits(split="test")
    full = load_digits(split="all", size=None)
    # Assert
    assert train.image_shape == (1, 16, 16) and train.images.dtype == np.uint8
    assert full.image_shape == (1, 8, 8) and len(full) == 1797
    assert full.images.max() == 255 and full.images.min() == 0
    assert len(train) + len(test) == 1797
    assert abs(len(test) / 1797 - 0.2) < 0.01
    assert train.class_names == tuple(str(i) for i in range(10))
    assert np.all(test.class_counts() >= 35)  # stratified: every class in test
    assert load_digits(split="test").fingerprint() == test.fingerprint()  # deterministic
    assert load_digits(split="test", seed=1).fingerprint() != test.fingerprint()


def test_digits_split_indices_are_disjoint():
    # Prepare: the split must partition the record indices, checked via the seed-stable order.
    from sklearn.datasets import load_digits as sk

    raw = np.rint(sk().images * (255 / 16)).astype(np.uint8)
    # Execute
    tr = load_digits(split="train", size=None).images[:, 0]
    te = load_digits(split="test", size=None).images[:, 0]
    # Assert: multiset union of train and test equals the full set.
    key = lambda a: sorted(x.tobytes() for x in a)  # noqa: E731
    assert key(np.concatenate([tr, te])) == key(raw)


# --------------------------------------------------------------------------- idx
def test_idx_round_trip_gz_and_plain(tmp_path):
    # Prepare
    images = np.arange(5 * 3 * 2, dtype=np.uint8).reshape(5, 3, 2)
    labels = np.array([0, 1, 2, 1, 0], np.uint8)
    img_gz = _write_idx(tmp_path / "img.gz", images)
    lbl_plain = _write_idx(tmp_path / "lbl", labels, gz=False)
    # Execute
    ds = load_idx(img_gz, lbl_plain, class_names=("a", "b", "c"))
    auto = load_idx(img_gz, lbl_plain)
    # Assert
    assert ds.images.shape == (5, 1, 3, 2)
    assert np.array_equal(ds.images[:, 0], images)
    assert ds.labels.tolist() == [0, 1, 2, 1, 0]
    assert auto.class_names == ("0", "1", "2")


def test_idx_errors_name_the_file(tmp_path):
    # Prepare
    images = np.zeros((4, 2, 2), np.uint8)
    good_img = _write_idx(tmp_path / "img.gz", images)
    bad_magic = _write_idx(tmp_path / "bad-magic.gz", images, magic=b"\x12\x34\x08\x03")
    labels3 = _write_idx(tmp_path / "labels3.gz", np.zeros(3, np.uint8))
    truncated = tmp_path / "trunc.gz"
    truncated.write_bytes(gzip.compress(bytes([0, 0, 8, 3]) + struct.pack(">III", 4, 2, 2) + b"\0" * 5))
    # Execute / Assert
    with pytest.raises(DataError, match="bad-magic.gz"):
        load_idx(bad_magic, labels3)
    with pytest.raises(DataError, match=r"img\.gz has 4 images but .*labels3\.gz has 3"):
        load_idx(good_img, labels3)
    with pytest.raises(DataError, match="trunc.gz"):
        load_idx(truncated, labels3)
    with pytest.raises(DataError, match="missing.gz: file not found"):
        load_idx(tmp_path / "missing.gz", labels3)


def test_fashion_mnist_missing_gives_install_hint(tmp_path):
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist"):
        load_fashion_mnist(root=tmp_path)


@pytest.mark.skipif(not (FASHION_MNIST_DIR / "t10k-images-idx3-ubyte.gz").exists(),
                    reason="Debian package dataset-fashion-mnist not installed")
def test_fashion_mnist_loads_60000_10000():
    # Execute
    train = load_fashion_mnist(split="train")
    test = load_source("fashion-mnist", split="test")
    # Assert
    assert len(train) == 60000 and len(test) == 10000
    assert train.image_shape == (1, 28, 28) and train.num_classes == 10
    assert train.class_names[0] == "T-shirt/top"
    assert np.all(test.class_counts() == 1000)


# --------------------------------------------------------------------------- folders / csv
def test_image_folder_loads_classes_and_channels(tmp_path):
    # Prepare
    for cls, n in (("cat", 2), ("dog", 3)):
        for i in range(n):
            _png(tmp_path / "gray" / cls / f"{i}.png", value=10 * i)
            _png(tmp_path / "rgb" / cls / f"{i}.png", mode="RGB" if i == 0 else "L")
    (tmp_path / "gray" / "cat" / "notes.txt").write_text("ignored")
    # Execute
    gray = load_image_folder(tmp_path / "gray")
    with pytest.warns(DataNote, match=r"converted 3 of 5 images to RGB \(3 from L\)"):  # said, not silent
        rgb = load_image_folder(tmp_path / "rgb")
    forced = load_image_folder(tmp_path / "gray", grayscale=False)
    # Assert
    assert gray.class_names == ("cat", "dog") and gray.labels.tolist() == [0, 0, 1, 1, 1]
    assert gray.image_shape == (1, 8, 8) and gray.images[1, 0, 0, 0] == 10
    assert rgb.image_shape == (3, 8, 8)  # one RGB image -> the whole set is RGB
    assert forced.image_shape == (3, 8, 8)


def test_image_folder_errors(tmp_path):
    # Prepare
    _png(tmp_path / "mixed" / "a" / "small.png", size=(8, 8))
    _png(tmp_path / "mixed" / "b" / "big.png", size=(12, 12))
    _png(tmp_path / "corrupt" / "a" / "ok.png")
    (tmp_path / "corrupt" / "a" / "broken.png").write_bytes(b"\x89PNG not really")
    trunc = _png(tmp_path / "trunc" / "a" / "t.png", size=(64, 64))
    trunc.write_bytes(trunc.read_bytes()[:60])
    (tmp_path / "empty" / "a").mkdir(parents=True)
    # Execute / Assert
    with pytest.raises(DataError, match=r"small\.png is 8x8.*big\.png is 12x12"):
        load_image_folder(tmp_path / "mixed")
    with pytest.raises(DataError, match="broken.png"):
        load_image_folder(tmp_path / "corrupt")
    with pytest.raises(DataError, match="t.png"):
        load_image_folder(tmp_path / "trunc")
    with pytest.raises(DataError, match="no images"):
        load_image_folder(tmp_path / "empty")


def test_csv_labels_by_index_and_name(tmp_path):
    # Prepare
    for i in range(4):
        _png(tmp_path / "imgs" / f"{i}.png", value=i)
    (tmp_path / "idx.csv").write_text("path,label\nimgs/0.png,0\nimgs/1.png,2\nimgs/2.png,1\n")
    (tmp_path / "names.csv").write_text("path,label\nimgs/0.png,dog\nimgs/1.png,cat\nimgs/3.png,dog\n")
    elsewhere = tmp_path / "sub"
    elsewhere.mkdir()
    (elsewhere / "rooted.csv").write_text(f"path,label\n0.png,1\n{tmp_path / 'imgs' / '1.png'},0\n")
    # Execute
    by_idx = load_csv(tmp_path / "idx.csv")
    by_name = load_csv(tmp_path / "names.csv")
    given = load_csv(tmp_path / "names.csv", class_names=("dog", "cat", "bird"))
    rooted = load_csv(elsewhere / "rooted.csv", root=tmp_path / "imgs")
    # Assert
    assert by_idx.class_names == ("0", "1", "2") and by_idx.labels.tolist() == [0, 2, 1]
    assert by_name.class_names == ("cat", "dog") and by_name.labels.tolist() == [1, 0, 1]
    assert given.labels.tolist() == [0, 1, 0] and given.num_classes == 3
    assert rooted.labels.tolist() == [1, 0] and len(rooted) == 2


def test_csv_errors(tmp_path):
    # Prepare
    _png(tmp_path / "a.png")
    (tmp_path / "range.csv").write_text("path,label\na.png,0\na.png,5\n")
    (tmp_path / "unknown.csv").write_text("path,label\na.png,cat\na.png,zebra\n")
    (tmp_path / "missing.csv").write_text("path,label\nnope.png,0\n")
    (tmp_path / "cols.csv").write_text("file,y\na.png,0\n")
    # Execute / Assert
    with pytest.raises(DataError, match=r"range\.csv, line 3: label 5 out of range"):
        load_csv(tmp_path / "range.csv", class_names=("x", "y"))
    with pytest.raises(DataError, match=r"unknown\.csv, line 3: unknown class name 'zebra'"):
        load_csv(tmp_path / "unknown.csv", class_names=("cat", "dog"))
    with pytest.raises(DataError, match="nope.png not found"):
        load_csv(tmp_path / "missing.csv")
    with pytest.raises(DataError, match="columns 'path' and 'label'"):
        load_csv(tmp_path / "cols.csv")


# --------------------------------------------------------------------------- load_source
def test_load_source_specs(tmp_path):
    # Prepare
    _png(tmp_path / "data" / "a" / "0.png")
    _png(tmp_path / "data" / "b" / "0.png")
    _png(tmp_path / "data_test" / "b" / "1.png")  # test folder lacks class "a"
    _png(tmp_path / "data_test" / "b" / "2.png")
    _png(tmp_path / "data_test" / "b" / "3.png")
    (tmp_path / "list.csv").write_text("path,label\ndata/a/0.png,cat\ndata/b/0.png,dog\n")
    (tmp_path / "list_test.csv").write_text("path,label\ndata_test/b/1.png,dog\n")
    img = _write_idx(tmp_path / "i.gz", np.zeros((3, 2, 2), np.uint8))
    lbl = _write_idx(tmp_path / "l.gz", np.array([0, 1, 1], np.uint8))
    # Execute
    digits = load_source("digits", split="test")
    folder_train = load_source(f"folder:{tmp_path / 'data'}")
    folder_test = load_source(f"folder:{tmp_path / 'data'}", split="test")
    folder_all = load_source(f"folder:{tmp_path / 'data'}", split="all")
    csv = load_source(f"csv:{tmp_path / 'list.csv'}")
    csv_test = load_source(f"csv:{tmp_path / 'list.csv'}", split="test")
    idx = load_source(f"idx:{img},{lbl}")
    idx4 = load_source(f"idx:{img},{lbl},{img},{lbl}", split="all")
    # Assert
    assert len(digits) == len(load_digits(split="test"))
    assert len(folder_train) == 2 and len(folder_test) == 3
    # the test split is labelled with the training classes: "b" stays label 1
    assert folder_test.class_names == ("a", "b") and folder_test.labels.tolist() == [1, 1, 1]
    assert len(folder_all) == 5 and folder_all.class_counts().tolist() == [1, 4]
    assert csv.class_names == ("cat", "dog") and csv_test.labels.tolist() == [1]
    assert len(idx) == 3 and len(idx4) == 6
    with pytest.raises(DataError, match="no test split"):
        load_source(f"folder:{tmp_path / 'data_test'}", split="test")
    with pytest.raises(DataError, match="no test split"):
        load_source(f"idx:{img},{lbl}", split="test")
    with pytest.raises(DataError, match="accepted forms:.*folder:/path"):
        load_source("cifar10")
    with pytest.raises(DataError, match="did you mean folder:"):
        load_source(str(tmp_path / "data"))
