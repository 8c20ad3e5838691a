"""``run_audit`` checks its inputs before the long work: --data must be the data the
run was trained on, --out must be writable, and a failed audit leaves nothing half-written.

One tiny run (digits 8x8, 2 clients, 1 round) and 6 images per class sampled
from it serve every test; the long work (classifier selection) is replaced by
a tripwire wherever a test expects the audit to stop before it."""

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import synthfed.fairness.audit as audit_mod
from synthfed.config import TrainConfig
from synthfed.data import load_digits
from synthfed.errors import DataNote, InputError, UsageError
from synthfed.generation import generate_dataset, load_generator
from synthfed.training import train

FAST = dict(families=("logreg",), cnn_epochs=(1,), judge_epochs=1, mia=False, fid_features="classifier")
CONFIG = TrainConfig(data="digits", image_size=8, preset="tiny", num_clients=2, num_train_timesteps=20,
                     batch_size=64, rounds=1, seed=3)


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    """A trained tiny run and a generated dataset whose card points at it."""
    root = tmp_path_factory.mktemp("audit-inputs")
    run, ds = root / "run", root / "synthetic"
    train(CONFIG.validate(), run)
    generate_dataset(load_generator(run), ds, per_class=6, num_steps=3, allow_non_private=True)
    return run, ds


def _export_csv(root: Path, name: str, train_ds, test_ds) -> Path:
    """``name``.csv (+ _test.csv) listing PNG copies of the given splits, labels 0..9."""
    for split, ds in ((name, train_ds), (f"{name}_test", test_ds)):
        lines = ["path,label"]
        for i, (img, y) in enumerate(zip(ds.images, ds.labels)):
            rel = f"{split}/{i}.png"
            (root / split).mkdir(parents=True, exist_ok=True)
            Image.fromarray(img[0]).save(root / rel)
            lines.append(f"{rel},{int(y)}")
        (root / f"{split}.csv").write_text("\n".join(lines) + "\n")
    return root / f"{name}.csv"


@pytest.fixture(scope="module")
def other_digits(tmp_path_factory):
    """Digits with the same class names '0'..'9' but other images (split seed 1, native 8x8): not the training data."""
    root = tmp_path_factory.mktemp("other")
    train_ds = load_digits(split="train", size=None, seed=1)
    return _export_csv(root, "other", train_ds.subset(np.arange(400)), load_digits(split="test", size=None, seed=1))


def _no_long_work(monkeypatch):
    def tripwire(*args, **kwargs):
        raise AssertionError("the audit started its long work")

    monkeypatch.setattr(audit_mod, "select_and_train", tripwire)


def test_real_that_is_not_the_training_data_is_refused_before_the_long_work(generated, other_digits, tmp_path,
                                                                             monkeypatch):
    # Prepare: --data is another CSV dataset with the same class names; selection is a tripwire
    run, ds = generated
    _no_long_work(monkeypatch)
    out = tmp_path / "report"
    # Execute / Assert: one usage error naming both data sources and the override
    with pytest.raises(UsageError, match=rf"--data csv:{other_digits} is not the data .*run was trained on "
                                         r"\(digits\); pass the training data, or --real-mismatch-ok") as err:
        audit_mod.run_audit(ds, real=f"csv:{other_digits}", out_dir=out, **FAST)
    assert "\n" not in str(err.value)
    assert not out.exists()  # the folder the audit created for its report is gone


def test_mismatch_allowed_explicitly_stamps_the_report(generated, other_digits, tmp_path):
    # Prepare
    run, ds = generated
    out = tmp_path / "report"
    # Execute
    with warnings.catch_warnings(record=True) as notes:
        warnings.simplefilter("always")
        report = audit_mod.run_audit(ds, real=f"csv:{other_digits}", out_dir=out, run_dir=run,
                                     allow_real_mismatch=True, **FAST)
    # Assert: the field, the first note, the utility headline and the HTML banner all say it
    saved = json.loads((out / "report.json").read_text())
    assert saved["real_data_warning"].startswith("AUDITED AGAINST OTHER DATA: --data csv:other.csv is not the data")
    assert saved["real"]["matches_training_data"] is False
    assert saved["notes"][0] == saved["real_data_warning"]
    assert saved["summary"]["utility"]["text"].startswith("AUDITED AGAINST OTHER DATA")
    assert saved["summary"]["utility"]["level"] in ("warning", "alert")
    assert "Do not read this report as the audit of the training data" in (out / "report.html").read_text()
    assert report["run"] == run.name  # the baselines still come from the run's own clients
    assert [b["kind"] for b in report["utility"]["baselines"]] == ["real_pooled", "real_client", "real_client"]
    assert not any("resized" in str(n.message) for n in notes)  # --data is 8x8 already: nothing resized


def test_same_data_under_another_spec_is_accepted_and_resizing_is_noted(generated, tmp_path):
    # Prepare: the digits splits exported as PNG + CSV at their loaded 16x16 (another spec, the same data)
    run, ds = generated
    copy = _export_csv(tmp_path, "digits-copy", load_digits(split="train"), load_digits(split="test"))
    # Execute
    with pytest.warns(DataNote, match=r"--data resized from 16x16 to 8x8 to match the synthetic images"):
        report = audit_mod.run_audit(ds, real=f"csv:{copy}", out_dir=None, run_dir=run, **FAST)
    # Assert: rebuilding the run's split from --data reproduced run.json's client fingerprints
    assert report["real"]["matches_training_data"] is True and report["real_data_warning"] is None
    assert report["real"]["resized_from"] == [16, 16]


def test_changed_training_files_are_refused(generated, tmp_path, monkeypatch):
    # Prepare: a copy of the run whose run.json records other client fingerprints (data changed since)
    run, ds = generated
    changed = tmp_path / "changed-run"
    changed.mkdir()
    info = json.loads((run / "run.json").read_text())
    info["clients"][0]["fingerprint"] = "0" * 64
    (changed / "run.json").write_text(json.dumps(info))
    _no_long_work(monkeypatch)
    # Execute / Assert
    with pytest.raises(UsageError, match=r"--data digits is not the data .*changed-run was trained on: its files "
                                         r"changed since training"):
        audit_mod.run_audit(ds, real="digits", out_dir=None, run_dir=changed, **FAST)


def test_unwritable_out_is_refused_before_the_long_work(generated, tmp_path, monkeypatch):
    # Prepare: --out below a regular file (unwritable even for root)
    _, ds = generated
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    _no_long_work(monkeypatch)
    # Execute / Assert
    with pytest.raises(InputError, match=r"--out .*a-file/report: cannot write the report there"):
        audit_mod.run_audit(ds, real="digits", out_dir=blocker / "report", **FAST)


def test_failed_audit_removes_only_what_it_created(generated, tmp_path, monkeypatch):
    # Prepare: the audit fails in its long work after a file appeared in --out (a half-written report)
    _, ds = generated
    outs = []

    def fails_half_way(*args, **kwargs):
        (outs[-1] / "report.json").write_text("{}")
        raise RuntimeError("disk full")

    monkeypatch.setattr(audit_mod, "select_and_train", fails_half_way)
    new = tmp_path / "new" / "report"
    existing = tmp_path / "existing"
    existing.mkdir()
    (existing / "keep.txt").write_text("mine")
    # Execute
    for out in (new, existing):
        outs.append(out)
        with pytest.raises(RuntimeError, match="disk full"):
            audit_mod.run_audit(ds, real="digits", out_dir=out, **FAST)
    # Assert: the folders the audit made are gone; an existing folder stays with only what it held
    assert not (tmp_path / "new").exists()
    assert sorted(p.name for p in existing.iterdir()) == ["keep.txt"]


def _save_pngs(ds, folder: Path, indices) -> None:
    """``folder/<class>/<i>.png`` for the given rows of ``ds``."""
    for i in indices:
        path = folder / ds.class_names[ds.labels[i]] / f"{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(ds.images[i][0]).save(path)


def test_client_folder_run_accepts_a_real_that_holds_every_client_image(tmp_path, monkeypatch):
    # Prepare: a per-client folder run (2 sites of 8x8 digits); --data candidates: the pooled sites, other digits
    train_ds, test_ds = load_digits(split="train", size=8), load_digits(split="test", size=8)
    _save_pngs(train_ds, tmp_path / "sites" / "a", range(0, 150))
    _save_pngs(train_ds, tmp_path / "sites" / "b", range(150, 300))
    _save_pngs(train_ds, tmp_path / "pooled", range(0, 400))  # a superset of both sites
    _save_pngs(test_ds, tmp_path / "pooled_test", range(100))
    _save_pngs(test_ds, tmp_path / "other", range(100, 360))
    _save_pngs(test_ds, tmp_path / "other_test", range(100))
    config = CONFIG.replace(data=str(tmp_path / "sites"), partition="folders", image_size=None)
    train(config.validate(), tmp_path / "run")
    generate_dataset(load_generator(tmp_path / "run"), tmp_path / "ds", per_class=6, num_steps=3,
                     allow_non_private=True)
    # Execute / Assert: the pooled sites are the training data; other digits are refused before the long work
    report = audit_mod.run_audit(tmp_path / "ds", real=f"folder:{tmp_path / 'pooled'}", out_dir=None, **FAST)
    assert report["real"]["matches_training_data"] is True
    _no_long_work(monkeypatch)
    with pytest.raises(UsageError, match=r"--data folder:.*other is not the data .*run was trained on \(.*sites\)"):
        audit_mod.run_audit(tmp_path / "ds", real=f"folder:{tmp_path / 'other'}", out_dir=None, **FAST)
