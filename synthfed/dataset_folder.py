"""The on-disk layout of a generated dataset, so that standard loaders read it.

::

    OUT/
      README.md          dataset card: YAML metadata (Hugging Face) + the privacy statement
      card.json          the same card, machine-readable (synthfed audit reads it)
      manifest.csv       one row per image: file (relative to OUT), label, class_name, model, seed, privacy
      manifest.parquet   the same rows, when pyarrow is installed (extra: synthfed[parquet])
      grid.png           a preview: outside images/, so no loader counts it as a sample
      images/
        metadata.csv     file_name (relative to images/), label, class_name: Hugging Face imagefolder
        000000.png ...   --layout flat
        00-zero/000000.png ...   --layout class-folders (torchvision ImageFolder)

Class folders are named ``<label, zero-padded>-<class name>`` so that the
sorted folder names (ImageFolder's class order) are the label order.

``load_generated`` reads either layout back through ``manifest.csv``."""

from __future__ import annotations

import csv
import importlib.util
import json
import re
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from synthfed.config import LAYOUTS  # noqa: F401  (re-exported)

if TYPE_CHECKING:
    from synthfed.data import ImageDataset

IMAGES_DIR = "images"
HF_METADATA = "metadata.csv"


def class_folder(label: int, name: str, num_classes: int) -> str:
    """``03-dress``: sorts in label order; only characters safe on every file system."""
    width = len(str(max(num_classes - 1, 0)))
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.") or "class"
    return f"{label:0{width}d}-{slug}"


def image_names(labels: np.ndarray, class_names: tuple[str, ...], layout: str) -> list[str]:
    """Each image's path relative to ``images/``."""
    if layout == "flat":
        return [f"{i:06d}.png" for i in range(len(labels))]
    return [f"{class_folder(int(y), class_names[y], len(class_names))}/{i:06d}.png" for i, y in enumerate(labels)]


def write_images(folder: Path, images: np.ndarray, labels: np.ndarray, class_names: tuple[str, ...], *,
                 layout: str, producer: dict, seed: int, stamp: str) -> None:
    """PNGs, ``images/metadata.csv``, ``manifest.csv`` (+ parquet when pyarrow is there)."""
    names = image_names(labels, class_names, layout)
    root = folder / IMAGES_DIR
    for sub in sorted({n.rpartition("/")[0] for n in names} - {""}):
        (root / sub).mkdir(parents=True)
    model = json.dumps(producer, sort_keys=True)
    rows = []
    for name, img, y in zip(names, images, labels):
        Image.fromarray(img[0] if img.shape[0] == 1 else img.transpose(1, 2, 0)).save(root / name)
        rows.append({"file": f"{IMAGES_DIR}/{name}", "label": int(y), "class_name": class_names[y], "model": model,
                     "seed": seed, "privacy": stamp})
    _write_csv(folder / "manifest.csv", rows)
    _write_csv(root / HF_METADATA, [{"file_name": n, "label": r["label"], "class_name": r["class_name"]}
                                    for n, r in zip(names, rows)])
    if parquet_available():
        import pandas as pd

        pd.DataFrame(rows).to_parquet(folder / "manifest.parquet", index=False)


def parquet_available() -> bool:
    return importlib.util.find_spec("pyarrow") is not None


def _write_csv(path: Path, rows: list[dict]) -> None:
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def readme_front_matter(card: dict, total: int) -> str:
    """Hugging Face dataset-card metadata: ``load_dataset(OUT)`` reads images/
    (not the preview grid); the tags say whether the data is differentially private."""
    dp = card["differentially_private"]
    size = next(label for limit, label in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"))
                if total < limit) if total < 100_000 else "100K<n<1M"
    return f"""---
license: other
pretty_name: {json.dumps("synthfed synthetic images: " + card['source_text'])}
tags:
- synthetic
- synthfed
- {'differential-privacy' if dp else 'not-differentially-private'}
task_categories:
- image-classification
size_categories:
- {size}
configs:
- config_name: default
  data_files:
  - split: train
    path: "{IMAGES_DIR}/**"
---
"""


def loading_section(layout: str, class_names: tuple[str, ...]) -> str:
    lines = ["", "## Loading", "", "```python",
             "from datasets import ClassLabel, load_dataset",
             'ds = load_dataset("imagefolder", data_dir="images", split="train")  # or load_dataset(".") here',
             f'ds = ds.cast_column("label", ClassLabel(names={list(class_names)!r}))',
             "```", ""]
    if layout == "class-folders":
        lines += ["torchvision: `ImageFolder(\"images\")` (class folders sort in label order).", ""]
    lines += ["`manifest.csv` lists every image with its label and the privacy stamp; `card.json` is this card.", "",
              "License: not set by synthfed (`license: other`); the data owner decides.", ""]
    return "\n".join(lines)


def load_generated(directory: str | Path) -> tuple["ImageDataset", dict]:
    """A generated dataset folder back as an ``ImageDataset`` plus its card
    (``card.json``; empty for a folder without one)."""
    from synthfed.data import DataError, ImageDataset

    directory = Path(directory)
    manifest = directory / "manifest.csv"
    if not manifest.is_file():
        raise DataError(f"{directory} is not a generated dataset (no manifest.csv)")
    card_path = directory / "card.json"
    card = json.loads(card_path.read_text()) if card_path.is_file() else {}
    with open(manifest, newline="") as fh:
        rows = list(csv.DictReader(fh))
    if not rows:
        raise DataError(f"{manifest} lists no images")
    images = []
    for row in rows:
        path = directory / row["file"]
        try:
            with Image.open(path) as img:
                arr = np.asarray(img)
        except (OSError, ValueError) as exc:
            raise DataError(f"cannot read generated image {path}: {exc}") from exc
        images.append(arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1))
    class_names = tuple(card.get("class_names") or sorted({r["class_name"] for r in rows}))
    dataset = ImageDataset(
        images=np.stack(images).astype(np.uint8),
        labels=np.asarray([int(r["label"]) for r in rows], dtype=np.int64),
        class_names=class_names,
        source=str(directory),
    )
    return dataset, card
