"""Released files, read by their holder: datasets, cards, manifests, copied model
folders and audit reports carry no private material and state their guarantee honestly.

Each test plays the attacker who holds only the released files (DESIGN.md
section 3) and looks for what they must not find: absolute paths, the real
label histogram, real training images, noise keys, or a guarantee stronger
than the ledger supports."""

import base64
import csv
import io
import json
import math
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from PIL import Image
from typer.testing import CliRunner

import synthfed.fairness.audit as audit_mod
from synthfed.card import MATCH_REAL_REFUSED, PUBLIC_CONFIG_KEYS, guarantee_strength
from synthfed.checkpoint import MODEL_PRIVACY_FILE, latest_round_dir, read_run_file
from synthfed.cli.app import app, register_subcommands
from synthfed.generation import generate_dataset, load_generator

register_subcommands()
runner = CliRunner()

TINY = ["--data", "digits", "--image-size", "8", "--preset", "tiny", "--clients", "2", "--timesteps", "20",
        "--batch-size", "64", "--rounds", "1"]
GEN = ["--per-class", "3", "--steps", "2"]
AUDIT = ["--data", "digits", "--classifiers", "logreg", "--judge-epochs", "1", "--max-real-train", "100",
         "--fid-features", "classifier"]
FAST = dict(families=("logreg",), cnn_epochs=(1,), judge_epochs=1, mia=False, max_real_train=100,
            fid_features="classifier")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Three tiny 1-round runs on digits: no DP, DP-SGD at epsilon 50 (formally DP, weak), and FedPer."""
    root = tmp_path_factory.mktemp("released")
    plain, weak, fedper = root / "plain-run", root / "weak-run", root / "fedper-run"
    for run, extra in ((plain, []), (weak, ["--epsilon", "50", "--warm-start", "none"]), (fedper, ["--strategy", "fedper", "--head", "out"])):
        result = runner.invoke(app, ["train", *TINY, *extra, "--out", str(run)])
        assert result.exit_code == 0, result.output
    return root, plain, weak, fedper


def _generate(model, out, *extra):
    return runner.invoke(app, ["generate", str(model), "--out", str(out), *GEN, *extra])


def _ema(run: Path) -> Path:
    return latest_round_dir(run) / "global" / "ema"


# --------------------------------------------------------------------------- match-real
def test_match_real_is_refused_for_a_dp_run_even_with_the_flag(runs, tmp_path):
    # Prepare
    _, _, weak, _ = runs
    # Execute
    plain_try = _generate(weak, tmp_path / "m1", "--counts", "match-real")
    flagged_try = _generate(weak, tmp_path / "m2", "--counts", "match-real", "--allow-non-private")
    # Assert: one clear error, exit 2, nothing written
    for result in (plain_try, flagged_try):
        assert result.exit_code == 2, result.output
        assert result.output.count("error:") == 1
        text = " ".join(result.output.split())
        assert "real label histogram" in text and "--counts uniform" in text
    assert not (tmp_path / "m1").exists() and not (tmp_path / "m2").exists()


def test_real_counts_under_a_dp_claim_are_refused_by_the_core_too(runs, tmp_path):
    # Prepare: a DP generator, and a caller that skips the CLI's check
    _, _, weak, _ = runs
    gen = load_generator(weak)
    # Execute / Assert
    with pytest.raises(ValueError, match="real label histogram"):
        generate_dataset(gen, tmp_path / "d", per_class=1, num_steps=2, real_counts=True)
    assert not (tmp_path / "d").exists()
    assert "real label histogram" in MATCH_REAL_REFUSED


def test_match_real_on_a_non_dp_run_needs_the_flag_and_the_card_says_the_counts_are_real(runs, tmp_path):
    # Prepare
    _, plain, _, _ = runs
    # Execute
    refused = _generate(plain, tmp_path / "no", "--counts", "match-real")
    written = _generate(plain, tmp_path / "yes", "--counts", "match-real", "--allow-non-private")
    # Assert
    assert refused.exit_code == 2 and "allow-non-private" in refused.output
    assert written.exit_code == 0, written.output
    card = json.loads((tmp_path / "yes" / "card.json").read_text())
    assert card["differentially_private"] is False and card["label"] == "NOT differentially private"
    assert card["counts_are_real"] is True and "REAL class histogram" in card["counts_source"]
    assert "REAL class histogram" in (tmp_path / "yes" / "README.md").read_text()
    rows = list(csv.DictReader(open(tmp_path / "yes" / "manifest.csv")))
    assert {r["privacy"] for r in rows} == {"NOT differentially private"}


# --------------------------------------------------------------------------- weak guarantees
@pytest.mark.parametrize("eps,strength", [(0.5, "strong"), (1.0, "strong"), (1.01, "moderate"), (10.0, "moderate"),
                                          (10.01, "weak"), (1138.0, "weak"), (math.inf, "none"), (None, "none")])
def test_guarantee_strength_thresholds(eps, strength):
    assert guarantee_strength(eps) == strength


def test_epsilon_above_10_is_called_weak_in_card_manifest_and_report(runs, tmp_path):
    # Prepare: a dataset from the epsilon-50 run
    _, _, weak, _ = runs
    ds = tmp_path / "weak-ds"
    assert _generate(weak, ds).exit_code == 0
    # Execute
    report = audit_mod.run_audit(ds, real="digits", out_dir=tmp_path / "report", **FAST)
    # Assert: the card
    card = json.loads((ds / "card.json").read_text())
    assert card["differentially_private"] is True and card["guarantee_strength"] == "weak"
    assert "WEAK" in card["label"] and "little practical protection" in card["guarantee"]
    assert "weak" in (ds / "README.md").read_text()
    assert all("weak" in r["privacy"] for r in csv.DictReader(open(ds / "manifest.csv")))
    # the report: the word, its own colour, a warning level
    assert report["privacy"]["guarantee_strength"] == "weak"
    assert report["summary"]["privacy"]["level"] != "ok" and "WEAK" in report["summary"]["privacy"]["text"]
    page = (tmp_path / "report" / "report.html").read_text()
    assert re.search(r'background:#c2410c"[^>]*>weak DP<', page)
    assert "strong DP<" not in page and "(weak)" in page
    assert report["privacy"]["unit_of_privacy"].startswith("one image (record) of one client")


# --------------------------------------------------------------------------- copied model folders
def test_a_dp_model_folder_copied_out_of_its_run_stays_dp(runs, tmp_path):
    # Prepare: the EMA folder alone, somewhere else
    _, _, weak, _ = runs
    copy = tmp_path / "shipped" / "ema"
    shutil.copytree(_ema(weak), copy)
    ledger_rows = load_generator(weak).privacy["clients"]
    # Execute: no --allow-non-private needed
    result = _generate(copy, tmp_path / "ds")
    # Assert
    assert result.exit_code == 0, result.output
    card = json.loads((tmp_path / "ds" / "card.json").read_text())
    assert card["differentially_private"] is True and card["guarantee_strength"] == "weak"
    assert [r["eps_upper"] for r in card["privacy"]["clients"]] == [r["eps_upper"] for r in ledger_rows]
    assert card["source"]["kind"] == "model folder" and card["source"]["run"] == weak.name
    assert "weak-run" in card["source_text"]


def test_a_non_dp_model_folder_copy_is_refused_and_a_bare_folder_claims_nothing(runs, tmp_path):
    # Prepare: a copy of the non-DP run's folder, and one stripped of its statement
    _, plain, _, _ = runs
    copy, bare = tmp_path / "copy" / "ema", tmp_path / "bare" / "ema"
    shutil.copytree(_ema(plain), copy)
    shutil.copytree(_ema(plain), bare)
    (bare / MODEL_PRIVACY_FILE).unlink()
    # Execute
    refused = _generate(copy, tmp_path / "d1")
    stamped = _generate(copy, tmp_path / "d2", "--allow-non-private")
    # Assert
    assert refused.exit_code == 2 and "allow-non-private" in refused.output
    assert stamped.exit_code == 0, stamped.output
    card = json.loads((tmp_path / "d2" / "card.json").read_text())
    assert card["label"] == "NOT differentially private"
    assert "trained without DP-SGD" in card["privacy"]["statement"]
    statement = load_generator(bare).privacy
    assert statement["differentially_private"] is False
    assert statement["statement"] == "NOT differentially private (no privacy statement in the folder)"


def test_the_shared_part_of_a_personalized_run_is_refused_even_as_a_copy(runs, tmp_path):
    # Prepare
    _, _, _, fedper = runs
    copy = tmp_path / "backbone" / "ema"
    shutil.copytree(_ema(fedper), copy)
    # Execute
    result = _generate(copy, tmp_path / "d", "--allow-non-private")
    # Assert
    assert result.exit_code == 2 and "shared part of a fedper run" in " ".join(result.output.split())
    assert json.loads((copy / MODEL_PRIVACY_FILE).read_text())["shared_part_of"] == "fedper"


def test_a_model_folder_statement_holds_only_what_the_ledger_says(runs):
    # Prepare: the run's secret noise keys (if this version keeps them) and its data spec
    _, _, weak, _ = runs
    keys_file = weak / "private" / "noise-keys.json"
    secrets = list(json.loads(keys_file.read_text())["clients"].values()) if keys_file.is_file() else []
    # Execute
    meta = json.loads((_ema(weak) / MODEL_PRIVACY_FILE).read_text())
    text = (_ema(weak) / MODEL_PRIVACY_FILE).read_text()
    # Assert
    assert set(meta) == {"format", "differentially_private", "statement", "components", "clients", "unit_of_privacy",
                         "adjacency", "config", "run", "round", "weights", "shared_part_of"}
    assert set(meta["config"]) == set(PUBLIC_CONFIG_KEYS)  # no data spec, no seed
    assert meta["differentially_private"] is True and meta["round"] == 1 and meta["run"] == weak.name
    assert [r["client"] for r in meta["clients"]] == ["0", "1"]
    assert not any(s in text for s in secrets)
    assert "seed" not in meta["config"] and "digits" not in text


# --------------------------------------------------------------------------- audit reports
def _embedded_images(page: str):
    for b64 in re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", page):
        yield np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))).convert("L"))


def _shows(big: np.ndarray, small: np.ndarray) -> bool:
    """Is ``small`` (H×W) in ``big``, as is or enlarged by a whole factor (nearest)?"""
    for s in range(1, 9):
        tile = np.repeat(np.repeat(small, s, axis=0), s, axis=1)
        if tile.shape[0] > big.shape[0] or tile.shape[1] > big.shape[1]:
            break
        windows = np.lib.stride_tricks.sliding_window_view(big, tile.shape)
        if (windows == tile).all(axis=(-1, -2)).any():
            return True
    return False


def _real_images_shown(report_dir: Path, train_images: np.ndarray) -> int:
    report = json.loads((report_dir / "report.json").read_text())
    nearest = [train_images[p["train_index"]][0] for p in report["privacy"]["memorization"]["closest_pairs"]]
    page = (report_dir / "report.html").read_text()
    return sum(any(_shows(img, real) for img in _embedded_images(page)) for real in nearest)


def _pooled_training_images(run: Path) -> np.ndarray:
    from synthfed.config import TrainConfig
    from synthfed.training import load_federated_data

    return load_federated_data(TrainConfig.from_dict(read_run_file(run)["config"])).pooled().resized(8).images


def test_the_report_shows_real_images_and_histograms_only_when_asked_and_then_says_so(runs, tmp_path):
    # Prepare: a non-DP dataset next to its run (the audit finds the run through the card)
    root, plain, _, _ = runs
    ds = root / "plain-ds-report"
    if not ds.exists():
        assert _generate(plain, ds, "--allow-non-private").exit_code == 0
    train_images = _pooled_training_images(plain)
    # Execute
    default = runner.invoke(app, ["audit", str(ds), *AUDIT, "--no-mia", "--out", str(tmp_path / "r")])
    private = runner.invoke(app, ["audit", str(ds), *AUDIT, "--no-mia", "--out", str(tmp_path / "p"),
                                  "--include-real-images"])
    # Assert: by default, distances and verdict but no real pixel, no real histogram, no banner
    assert default.exit_code == 0 and private.exit_code == 0, default.output + private.output
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    assert report["contains_personal_data"] is False and report["run"] == plain.name
    assert report["fairness"]["histograms"]["real_train"] is None
    assert "real_train" not in (tmp_path / "r" / "per_class.csv").read_text().splitlines()[0]
    assert report["privacy"]["memorization"]["closest_pairs"] and "dcr_ratio" in report["privacy"]["memorization"]
    assert _real_images_shown(tmp_path / "r", train_images) == 0
    assert "personal data: do not share" not in (tmp_path / "r" / "report.html").read_text()
    # with the flag: the same detector finds them, and the report says what it holds
    flagged = json.loads((tmp_path / "p" / "report.json").read_text())
    assert flagged["contains_personal_data"] is True and flagged["fairness"]["histograms"]["real_train"]
    assert _real_images_shown(tmp_path / "p", train_images) == len(flagged["privacy"]["memorization"]["closest_pairs"])
    assert "contains personal data: do not share" in (tmp_path / "p" / "report.html").read_text()
    assert "do not share" in " ".join(private.output.split())


@pytest.mark.parametrize("where", ["dataset", "inside-dataset", "inside-run"])
def test_audit_out_inside_the_dataset_or_a_run_is_refused_before_any_work(runs, tmp_path, monkeypatch, where):
    # Prepare: a dataset; the audit itself must never start
    root, plain, _, _ = runs
    ds = tmp_path / "ds"
    assert _generate(plain, ds, "--allow-non-private").exit_code == 0
    out = {"dataset": ds, "inside-dataset": ds / "report", "inside-run": plain / "report"}[where]
    monkeypatch.setattr(audit_mod, "run_audit", lambda *a, **k: pytest.fail("the audit started"))
    # Execute
    result = runner.invoke(app, ["audit", str(ds), *AUDIT, "--out", str(out)])
    # Assert
    assert result.exit_code == 2, result.output
    assert result.output.count("error:") == 1 and "inside" in result.output
    assert not (ds / "report").exists() and not (plain / "report").exists()
    assert not (ds / "report.html").exists()


def test_run_audit_refuses_a_report_folder_inside_the_dataset(runs, tmp_path):
    _, plain, _, _ = runs
    ds = tmp_path / "ds"
    assert _generate(plain, ds, "--allow-non-private").exit_code == 0
    with pytest.raises(ValueError, match="inside"):
        audit_mod.run_audit(ds, real="digits", out_dir=ds / "audit", **FAST)


# --------------------------------------------------------------------------- no local paths anywhere
def _texts(path: Path) -> list[bytes]:
    """Everything a holder can read from a file: its bytes, plus a parquet's decoded cells and schema."""
    texts = [path.read_bytes()]
    if path.suffix == ".parquet":
        texts.append(pd.read_parquet(path).to_csv().encode())
        texts.append(repr(pq.read_schema(path).metadata).encode())
    return texts


def test_no_released_file_names_a_local_path(runs, tmp_path_factory, tmp_path):
    # Prepare: every kind of released file, made with absolute paths on the command line
    root, plain, weak, _ = runs
    released = tmp_path / "released"
    shipped = released / "model" / "ema"
    shutil.copytree(_ema(weak), shipped)
    outputs = [released / "dp", released / "real-counts", released / "from-folder"]
    assert _generate(weak, outputs[0]).exit_code == 0
    assert _generate(plain, outputs[1], "--counts", "match-real", "--allow-non-private").exit_code == 0
    assert _generate(shipped, outputs[2]).exit_code == 0
    # the dataset next to its run, so the card's relative path finds it and the membership attack runs
    ds = root / "plain-ds-paths"
    assert _generate(plain, ds, "--allow-non-private").exit_code == 0
    reports = [released / "report", released / "report-private"]
    compared = runner.invoke(app, ["audit", str(ds), *AUDIT, "--out", str(reports[0]), "--compare", str(outputs[1])])
    assert compared.exit_code == 0, compared.output
    assert runner.invoke(app, ["audit", str(outputs[0]), *AUDIT, "--no-mia", "--run", str(weak), "--out",
                               str(reports[1]), "--include-real-images"]).exit_code == 0
    needles = {str(p) for p in (tmp_path_factory.getbasetemp(), tmp_path_factory.getbasetemp().resolve(), Path.home(),
                                Path.cwd(), root, tmp_path)} - {"/"}
    # Execute
    files = [f for folder in [*outputs, ds, shipped.parent, *reports] for f in folder.rglob("*") if f.is_file()]
    leaks = [(f.name, n) for f in files for text in _texts(f) for n in needles if n.encode() in text]
    # Assert
    assert len(files) > 40 and any(f.suffix == ".parquet" for f in files)
    assert leaks == []
    card = json.loads((ds / "card.json").read_text())
    assert card["source"]["run_dir"] == "../plain-run"  # relative: found by the audit, names nothing local
    report = json.loads((reports[0] / "report.json").read_text())
    assert report["run"] == plain.name and "auc" in report["privacy"]["membership"]
