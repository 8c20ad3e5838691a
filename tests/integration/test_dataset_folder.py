"""A generated dataset loads with the standard loaders: Hugging Face imagefolder
(flat and class folders, and the folder itself through its README), torchvision's
ImageFolder class order, and synthfed's own reader for either layout."""

import csv
import hashlib
import os

import numpy as np
import pytest
import yaml
from PIL import Image

from synthfed import dataset_folder
from synthfed.config import TrainConfig
from synthfed.dataset_folder import class_folder, load_generated
from synthfed.generation import generate_dataset, load_generator
from synthfed.training import train

PER_CLASS = 2


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    config = TrainConfig(data="digits", image_size=8, preset="tiny", num_clients=2, num_train_timesteps=20,
                         batch_size=64, rounds=1, device="cpu").validate()
    run = tmp_path_factory.mktemp("run") / "run"
    train(config, run)
    return run


def _generate(run_dir, out, layout):
    return generate_dataset(load_generator(run_dir), out, per_class=PER_CLASS, num_steps=3, allow_non_private=True,
                            layout=layout)


@pytest.fixture(scope="module")
def datasets_dirs(run_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("ds")
    return {layout: _generate(run_dir, root / layout, layout) for layout in ("flat", "class-folders")}


def _manifest(folder):
    with open(folder / "manifest.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def _rows_by_pixels(pairs):
    """Sorted (label, sha of the pixels): compares two listings of the same images in any order."""
    return sorted((int(y), hashlib.sha256(np.asarray(img).tobytes()).hexdigest()) for y, img in pairs)


def _our_rows(folder):
    return _rows_by_pixels((r["label"], Image.open(folder / r["file"])) for r in _manifest(folder))


@pytest.fixture()
def hf_offline(tmp_path, monkeypatch):
    datasets = pytest.importorskip("datasets")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))
    return datasets


@pytest.mark.parametrize("layout", ["flat", "class-folders"])
def test_hugging_face_imagefolder_returns_exactly_the_generated_rows_with_labels(datasets_dirs, hf_offline, layout):
    folder = datasets_dirs[layout]
    loaded = hf_offline.load_dataset("imagefolder", data_dir=str(folder / "images"), split="train",
                                     cache_dir=str(folder.parent / f"cache-{layout}"))
    assert loaded.num_rows == 10 * PER_CLASS
    assert _rows_by_pixels(zip(loaded["label"], loaded["image"])) == _our_rows(folder)


def test_the_folder_itself_loads_through_its_readme_without_the_preview_grid(datasets_dirs, hf_offline):
    folder = datasets_dirs["flat"]
    assert (folder / "grid.png").is_file() and not (folder / "images" / "grid.png").exists()
    loaded = hf_offline.load_dataset(str(folder), split="train", cache_dir=str(folder.parent / "cache-readme"))
    assert loaded.num_rows == 10 * PER_CLASS
    assert _rows_by_pixels(zip(loaded["label"], loaded["image"])) == _our_rows(folder)


def test_readme_card_has_hugging_face_metadata_and_the_privacy_statement(datasets_dirs):
    text = (datasets_dirs["flat"] / "README.md").read_text()
    assert text.startswith("---\n")
    meta = yaml.safe_load(text.split("---\n")[1])
    assert "not-differentially-private" in meta["tags"] and "differential-privacy" not in meta["tags"]
    assert meta["configs"][0]["data_files"][0]["path"] == "images/**"
    assert "license" in meta and meta["task_categories"] == ["image-classification"]
    assert "**NOT differentially private**" in text


def _imagefolder_classes(root):
    """torchvision.datasets.ImageFolder's class order (its find_classes), without torchvision."""
    try:
        from torchvision.datasets import ImageFolder
    except Exception:  # torchvision is not installed beside this torch
        return sorted(entry.name for entry in os.scandir(root) if entry.is_dir())
    return ImageFolder(str(root)).classes


def test_class_folders_list_the_classes_in_label_order_for_imagefolder(datasets_dirs):
    folder = datasets_dirs["class-folders"]
    classes = _imagefolder_classes(folder / "images")
    assert classes == [class_folder(k, str(k), 10) for k in range(10)]
    for row in _manifest(folder):  # each image sits in its label's folder: ImageFolder's index is the label
        assert classes.index(row["file"].split("/")[1]) == int(row["label"])


def test_class_folder_names_sort_in_label_order_and_are_safe_file_names():
    names = ["T-shirt/top", "Trouser", "a b", "..", *[f"c{i}" for i in range(8)]]
    folders = [class_folder(k, n, len(names)) for k, n in enumerate(names)]
    assert folders == sorted(folders)
    assert folders[0] == "00-T-shirt-top" and folders[2] == "02-a-b" and folders[3] == "03-class"
    assert all("/" not in f and not f.startswith(".") for f in folders)


def test_both_layouts_read_back_as_the_same_dataset(datasets_dirs):
    flat, _ = load_generated(datasets_dirs["flat"])
    nested, card = load_generated(datasets_dirs["class-folders"])
    assert np.array_equal(flat.images, nested.images) and np.array_equal(flat.labels, nested.labels)
    assert card["differentially_private"] is False


def test_parquet_manifest_only_when_pyarrow_is_installed(run_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(dataset_folder, "parquet_available", lambda: False)
    out = _generate(run_dir, tmp_path / "no-parquet", "flat")
    assert (out / "manifest.csv").is_file() and not (out / "manifest.parquet").exists()


def test_an_unknown_layout_is_refused_before_sampling(run_dir, tmp_path):
    from synthfed.errors import UsageError

    with pytest.raises(UsageError, match="--layout must be one of flat, class-folders"):
        _generate(run_dir, tmp_path / "x", "nested")
    assert not (tmp_path / "x").exists()
