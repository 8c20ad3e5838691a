"""Bad labels and images are refused at the loaders with the file and line; conversions are announced.

Each test writes a tiny CSV/PNG/idx fixture in tmp_path. Errors are DataError
(an InputError: exit 1) whose message names the file and the CSV line, idx
record or class folder; changes made to the input are DataNote warnings."""
from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from synthfed.data import DataError, load_client_folders, load_csv, load_idx, load_image_folder, load_source
from synthfed.errors import DataNote, InputError


def _png(path: Path, *, size=(8, 8), mode="L", value=100) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, value if mode == "L" else (value, 0, 0)).save(path)
    return path


def _csv(root: Path, name: str, labels) -> Path:
    """``name`` listing one 8x8 PNG per label (img/0.png, img/1.png, ...)."""
    for i in range(len(labels)):
        if not (root / "img" / f"{i}.png").exists():
            _png(root / "img" / f"{i}.png", value=i)
    path = root / name
    path.write_text("path,label\n" + "".join(f"img/{i}.png,{lab}\n" for i, lab in enumerate(labels)))
    return path


def _idx(path: Path, array: np.ndarray) -> Path:
    raw = bytes([0, 0, 0x08, array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape)
    path.write_bytes(gzip.compress(raw + array.astype(np.uint8).tobytes()))
    return path


# --------------------------------------------------------------------------- CSV labels
def test_csv_label_outside_the_inferred_classes_names_its_line(tmp_path):
    # Prepare: labels 0..9 on lines 2..16, a typo 17 on line 17, then more 0..9
    labels = [i % 10 for i in range(15)] + [17] + [1, 2, 3]
    path = _csv(tmp_path, "data.csv", labels)
    # Execute / Assert: an InputError naming the file and the line; no empty classes 10..16
    with pytest.raises(DataError, match=r"data\.csv, line 17: label 17 is outside the 10 classes 0\.\.9") as err:
        load_source(f"csv:{path}")
    assert isinstance(err.value, InputError) and "10..16" in str(err.value)


def test_csv_label_outside_the_declared_classes_names_its_line(tmp_path):
    # Prepare: a valid training CSV (classes 0..9) and a test split with a 17 on line 4
    _csv(tmp_path, "data.csv", [i % 10 for i in range(20)])
    _csv(tmp_path, "data_test.csv", [0, 1, 17])
    # Execute / Assert
    with pytest.raises(DataError, match=r"data_test\.csv, line 4: label 17 out of range: outside the 10 classes 0\.\.9"):
        load_source(f"csv:{tmp_path / 'data.csv'}", split="test")


def test_csv_fractional_label_is_refused(tmp_path):
    # Prepare
    path = _csv(tmp_path, "frac.csv", [0, 1, "1.5", 2])
    # Execute / Assert
    with pytest.raises(DataError, match=r"frac\.csv, line 4: label '1\.5' is not a whole number"):
        load_csv(path)


def test_csv_mixed_label_kinds_blame_the_odd_one(tmp_path):
    # Prepare: mostly indices with one name; mostly names with one index
    numbers = _csv(tmp_path, "numbers.csv", [0, 1, 2, "cat", 1, 0])
    names = _csv(tmp_path, "names.csv", ["cat", "dog", "cat", "3", "dog"])
    # Execute / Assert
    with pytest.raises(DataError, match=r"numbers\.csv, line 5: label 'cat' is a class name but 5 other labels "
                                        r"are class indices"):
        load_csv(numbers)
    with pytest.raises(DataError, match=r"names\.csv, line 5: label '3' is a class index"):
        load_csv(names)


def test_csv_classes_counted_from_one_are_refused(tmp_path):
    # Prepare: labels 1..3, so class 0 would be empty
    path = _csv(tmp_path, "onebased.csv", [1, 2, 3, 1])
    # Execute / Assert
    with pytest.raises(DataError, match=r"onebased\.csv: no label is 0.*labels here run 1\.\.3"):
        load_csv(path)


def test_csv_valid_paths_keep_their_behaviour(tmp_path):
    # Prepare: index labels, name labels, and a test split that lacks a class
    _csv(tmp_path, "idx.csv", [0, 2, 1, 2])
    _csv(tmp_path, "idx_test.csv", [2, 2])
    names = _csv(tmp_path, "names.csv", ["dog", "cat", "dog"])
    gap = _csv(tmp_path, "gap.csv", [0, 2])
    # Execute
    train = load_source(f"csv:{tmp_path / 'idx.csv'}")
    test = load_source(f"csv:{tmp_path / 'idx.csv'}", split="test")
    by_name = load_csv(names)
    allowed = load_csv(gap, allow_empty_classes=True)  # one Flower site may lack a class
    # Assert
    assert train.class_names == ("0", "1", "2") and train.labels.tolist() == [0, 2, 1, 2]
    assert test.class_names == ("0", "1", "2") and test.labels.tolist() == [2, 2]
    assert by_name.class_names == ("cat", "dog") and by_name.labels.tolist() == [1, 0, 1]
    assert allowed.class_counts().tolist() == [1, 0, 1]


# --------------------------------------------------------------------------- folders and idx
def test_empty_class_folder_is_refused_but_not_in_a_test_split(tmp_path):
    # Prepare: class "dog" is an empty folder in the training split; the test split lacks "cat"
    _png(tmp_path / "data" / "cat" / "0.png")
    (tmp_path / "data" / "dog").mkdir()
    _png(tmp_path / "ok" / "cat" / "0.png")
    _png(tmp_path / "ok" / "dog" / "0.png")
    (tmp_path / "ok_test" / "cat").mkdir(parents=True)
    _png(tmp_path / "ok_test" / "dog" / "1.png")
    # Execute / Assert
    with pytest.raises(DataError, match=r"class folder .*data/dog has no image"):
        load_source(f"folder:{tmp_path / 'data'}")
    test = load_source(f"folder:{tmp_path / 'ok'}", split="test")
    assert test.class_names == ("cat", "dog") and test.labels.tolist() == [1]


def test_folder_names_of_mixed_kinds_are_refused(tmp_path):
    # Prepare: folders 0, 1, 2 and a stray "misc"
    for name in ("0", "1", "2", "misc"):
        _png(tmp_path / "data" / name / "0.png")
    # Execute / Assert
    with pytest.raises(DataError, match=r"class folder .*data/misc: label 'misc' is a class name"):
        load_image_folder(tmp_path / "data")


def test_client_folders_class_empty_everywhere_is_refused(tmp_path):
    # Prepare: class "fish" is an empty folder at both sites; "dog" is missing at site_b only (valid)
    for client in ("site_a", "site_b"):
        _png(tmp_path / client / "cat" / "0.png")
        (tmp_path / client / "fish").mkdir()
    _png(tmp_path / "site_a" / "dog" / "0.png")
    (tmp_path / "site_b" / "dog").mkdir()
    # Execute / Assert
    with pytest.raises(DataError, match=r"class folder .*site_a/fish has no image, nor does class 'fish'"):
        load_client_folders(tmp_path)


def test_idx_label_gap_names_the_record(tmp_path):
    # Prepare: labels 0, 1, 2, 1 and a 9 in record 5
    images = _idx(tmp_path / "img.gz", np.zeros((5, 4, 4)))
    labels = _idx(tmp_path / "lbl.gz", np.array([0, 1, 2, 1, 9]))
    # Execute / Assert
    with pytest.raises(DataError, match=r"lbl\.gz, record 5: label 9 is outside the 3 classes 0\.\.2"):
        load_idx(images, labels)


# --------------------------------------------------------------------------- image shape and colour
def test_non_square_images_are_refused_with_one_file_and_the_count(tmp_path):
    # Prepare: three 20x16 PNGs; an idx file of 4x6 images
    for cls in ("a", "b", "c"):
        _png(tmp_path / "wide" / cls / "0.png", size=(20, 16))
    images = _idx(tmp_path / "img.gz", np.zeros((5, 4, 6)))
    labels = _idx(tmp_path / "lbl.gz", np.array([0, 1, 2, 1, 0]))
    # Execute / Assert
    with pytest.raises(DataError, match=r"wide: all 3 images are 20x16 \(width x height\), not square, "
                                        r"e\.g\. .*wide/a/0\.png"):
        load_source(f"folder:{tmp_path / 'wide'}")
    with pytest.raises(DataError, match=r"img\.gz: all 5 images are 6x4 .*not square"):
        load_source(f"idx:{images},{labels}")


def test_mixed_colour_modes_convert_to_rgb_with_a_note(tmp_path):
    # Prepare: six gray images and one RGB image
    for cls in ("a", "b"):
        for i in range(3):
            _png(tmp_path / "data" / cls / f"{i}.png")
    colour = _png(tmp_path / "data" / "a" / "9.png", mode="RGB")
    # Execute
    with pytest.warns(DataNote, match=r"converted 6 of 7 images to RGB \(6 from L\) because 1 image is in colour") as notes:
        ds = load_source(f"folder:{tmp_path / 'data'}")
    # Assert: as before, no colour is lost; the note names the colour file
    assert ds.image_shape == (3, 8, 8)
    assert str(colour) in str(notes[0].message)


def test_client_folders_mixed_modes_note_once(tmp_path):
    # Prepare: site_a gray, site_b one RGB image
    _png(tmp_path / "site_a" / "cat" / "0.png")
    _png(tmp_path / "site_b" / "cat" / "0.png", mode="RGB")
    # Execute
    with pytest.warns(DataNote, match=r"client folders .*: converted 1 of 2 images to RGB \(1 from L\)") as notes:
        fed = load_client_folders(tmp_path)
    # Assert: one note for the federation, and both clients share the RGB shape
    assert len([n for n in notes if n.category is DataNote]) == 1
    assert fed.clients[0].image_shape == fed.clients[1].image_shape == (3, 8, 8)
