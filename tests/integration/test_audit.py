"""The audit end to end on a tiny trained run: report files, selection hygiene, planted copies, CLI errors."""

import csv
import html
import json
import re
import shutil

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

import synthfed.data
import synthfed.fairness.audit as audit_mod
from synthfed.cli.app import app, register_subcommands
from synthfed.data import ImageDataset, load_source

register_subcommands()
runner = CliRunner()

TINY = ["--data", "digits", "--image-size", "8", "--preset", "tiny", "--clients", "2", "--timesteps", "20",
        "--batch-size", "64", "--rounds", "1"]
FAST = dict(families=("logreg",), cnn_epochs=(1,), judge_epochs=1, mia_max_examples=100, fid_features="classifier")


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    """A 1-round tiny FedAvg run on digits (8x8, 2 clients) and 6 images per class sampled from it."""
    root = tmp_path_factory.mktemp("audit")
    run, ds = root / "run", root / "synthetic"
    result = runner.invoke(app, ["train", *TINY, "--out", str(run)])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["generate", str(run), "--out", str(ds), "--per-class", "6", "--steps", "3",
                                 "--allow-non-private"])
    assert result.exit_code == 0, result.output
    return run, ds


def _strict_json(path):
    def no_constants(name):
        raise ValueError(f"non-standard JSON constant {name}")

    return json.loads(path.read_text(), parse_constant=no_constants)


def test_cli_audit_with_compare_writes_a_self_contained_report(generated, tmp_path):
    # Prepare: a second dataset folder to compare against (a copy, under another name)
    run, ds = generated
    other = tmp_path / "local-only"
    shutil.copytree(ds, other)
    out = tmp_path / "report"
    # Execute
    result = runner.invoke(app, ["audit", str(ds), "--data", "digits", "--out", str(out), "--compare", str(other),
                                 "--classifiers", "logreg", "--judge-epochs", "1",
                                 "--fid-features", "classifier"])
    # Assert
    assert result.exit_code == 0, result.output
    for name in ["report.html", "report.json", "per_class.csv", "classifiers.csv", "selection.csv", "confusion.csv",
                 "closest_pairs.csv", "comparison.csv"]:
        assert (out / name).is_file(), name
    assert (out / "compared" / "local-only" / "report.html").is_file()
    report = _strict_json(out / "report.json")
    assert report["run"] == run.name  # found through the dataset's card (a relative path), named without its path
    assert report["real"]["matches_training_data"] is True and report["real_data_warning"] is None
    assert "AUDITED AGAINST OTHER DATA" not in (out / "report.html").read_text()
    kinds = [b["kind"] for b in report["utility"]["baselines"]]
    assert kinds == ["real_pooled", "real_client", "real_client"]
    assert 0.0 <= report["privacy"]["membership"]["auc"] <= 1.0
    assert report["privacy"]["differentially_private"] is False
    page = (out / "report.html").read_text()
    assert "<script" not in page and not re.search(r'(src|href)="(https?:)?//', page)  # nothing fetched
    assert page.count("data:image/png;base64,") >= 10  # one sample strip per class, plus closest pairs
    assert page.index('id="summary"') < page.index("<table")  # words before numbers
    assert "NOT differentially private" in page and "Privacy card" in page
    rows = list(csv.DictReader(open(out / "comparison.csv")))
    assert list(rows[0]) == ["metric", ds.name, "local-only", "direction"]
    by_metric = {r["metric"]: r for r in rows}
    assert by_metric["bias_reduction"]["local-only"] == "0.0"  # the reference
    assert by_metric["bias"]["direction"] == "lower"
    per_class = list(csv.DictReader(open(out / "per_class.csv")))
    assert [r["class"] for r in per_class] == [str(d) for d in range(10)]


class _Guard:
    armed = False


class GuardedTestSet(ImageDataset):
    """The real test split, booby-trapped: reading its pixels or labels during model selection fails."""

    def __getattribute__(self, name):
        if name in ("images", "labels") and _Guard.armed:
            raise AssertionError("model selection read the real test split")
        if name in ("images", "labels"):
            type(self).reads += 1
        return object.__getattribute__(self, name)


def test_selection_never_touches_the_real_test_split(generated, tmp_path, monkeypatch):
    # Prepare: the real test split comes back guarded; selection runs with the guard armed
    run, ds = generated
    GuardedTestSet.reads = 0
    original_load, original_select = audit_mod.load_source, audit_mod.select_and_train
    calls = []

    shuffle = [False]

    def load_source(spec, *, split="train"):
        data = original_load(spec, split=split).resized(8)
        if split == "test":
            labels = np.random.default_rng(0).permutation(data.labels) if shuffle[0] else data.labels
            return GuardedTestSet(data.images, labels, data.class_names, data.source)
        return data

    def select_and_train(train_ds, **kwargs):
        calls.append(len(train_ds))
        _Guard.armed = True
        try:
            return original_select(train_ds, **kwargs)
        finally:
            _Guard.armed = False

    monkeypatch.setattr(audit_mod, "load_source", load_source)
    monkeypatch.setattr(synthfed.data, "load_source", load_source)
    monkeypatch.setattr(audit_mod, "select_and_train", select_and_train)
    # Execute
    settings = dict(real="digits", out_dir=None, mia=False, **{**FAST, "families": ("logreg", "cnn")})
    report = audit_mod.run_audit(ds, **settings)
    shuffle[0] = True  # same audit against a test split with scrambled labels
    scrambled = audit_mod.run_audit(ds, **settings)
    # Assert
    assert len(calls) == 8  # twice: synthetic + real pooled + 2 clients alone, all with the guard armed
    # the test labels change every test score but no choice or validation score
    rows = [report["utility"]["tstr"], *report["utility"]["baselines"]]
    rows_scrambled = [scrambled["utility"]["tstr"], *scrambled["utility"]["baselines"]]
    def choices(rs):
        return [[(c["candidate"], c["val_accuracy"], c["chosen"]) for c in r["selection"]] for r in rs]

    assert choices(rows) == choices(rows_scrambled)
    assert report["utility"]["tstr"]["accuracy"] != scrambled["utility"]["tstr"]["accuracy"]
    assert GuardedTestSet.reads > 0  # the guard saw the test split being used, after selection only
    assert report["utility"]["tstr"]["num_val"] == 12  # 20% of the 60 synthetic images
    with pytest.raises(AssertionError, match="real test split"):  # and the guard does fire when armed
        _Guard.armed = True
        try:
            load_source("digits", split="test").labels
        finally:
            _Guard.armed = False


def test_audit_flags_a_training_image_planted_in_the_synthetic_set(generated, tmp_path):
    # Prepare: replace synthetic image 0 (class 0) by a real training image of class 0
    run, ds = generated
    planted = tmp_path / "planted"
    shutil.copytree(ds, planted)
    train = load_source("digits", split="train").resized(8)
    victim = int(np.flatnonzero(train.labels == 0)[3])
    Image.fromarray(train.images[victim][0]).save(planted / "images" / "000000.png")
    # and a dataset card that claims a DP guarantee
    card = json.loads((planted / "card.json").read_text())
    card["privacy"] = {"differentially_private": True, "statement": "DP-SGD, record-level",
                       "clients": [{"client": 0, "eps_lower": 7.9, "eps_estimate": 7.95, "eps_upper": 8.0, "delta": 1e-5},
                                   {"client": 1, "eps_lower": 3.9, "eps_estimate": 3.95, "eps_upper": 4.0, "delta": 1e-5}]}
    (planted / "card.json").write_text(json.dumps(card))
    # Execute
    report = audit_mod.run_audit(planted, real="digits", out_dir=tmp_path / "r", mia=False, max_real_train=300, **FAST)
    # Assert
    mem = report["privacy"]["memorization"]
    assert mem["near_copy_indices"] == [0]
    assert mem["closest_pairs"][0]["synthetic_index"] == 0 and mem["closest_pairs"][0]["distance"] == 0.0
    assert report["summary"]["privacy"]["level"] == "alert"  # a copy overrides the DP claim in the verdict
    assert report["privacy"]["epsilon_max"] == 8.0
    # the speed cap shrinks the baselines, never the set searched for copies
    assert report["utility"]["baselines"][0]["train_size"] == 300
    assert mem["num_train"] == len(train)
    assert "ε ≤ 8" in report["summary"]["privacy"]["text"]
    assert "COPY" in (tmp_path / "r" / "report.html").read_text()


@pytest.mark.parametrize(
    "args,needle,code",
    [  # 2: a bad option value; 1: a path that is not what it should be (data error)
        (["audit", "/nonexistent", "--data", "digits", "--out", "/tmp/x"], "not a directory", 1),
        (["audit", "DS", "--data", "nonsense", "--out", "OUT"], "unknown data source", 2),
        (["audit", "DS", "--data", "digits", "--out", "OUT", "--classifiers", "svm"], "--classifiers", 2),
        (["audit", "DS", "--data", "digits", "--out", "OUT", "--run", "/nonexistent"], "not a synthfed run", 1),
        (["audit", "DS", "--data", "digits", "--out", "OUT", "--reference", "x"], "--reference", 2),
    ],
)
def test_bad_audit_input_exits_with_one_clear_line(generated, tmp_path, args, needle, code):
    # Prepare
    _, ds = generated
    args = [str(ds) if a == "DS" else str(tmp_path / "out") if a == "OUT" else a for a in args]
    # Execute
    result = runner.invoke(app, args)
    # Assert
    assert result.exit_code == code, result.output
    assert needle in result.output
    assert result.output.count("error:") == 1


def _digits_csv(root, name="digits-attrs"):
    """The digits splits as PNG + CSV (the same data as the run's ``digits``) with two attribute
    columns: ``sex`` (f/m, some cells empty) and ``row`` (an id: no grouping)."""
    from synthfed.data import load_digits

    for split, data in ((name, load_digits(split="train")), (f"{name}_test", load_digits(split="test"))):
        (root / split).mkdir(parents=True)
        lines = ["path,label,sex,row"]
        for i, (img, y) in enumerate(zip(data.images, data.labels)):
            Image.fromarray(img[0]).save(root / split / f"{i}.png")
            lines.append(f"{split}/{i}.png,{int(y)},{'' if i % 7 == 0 else 'fm'[i % 2]},{i}")
        (root / f"{split}.csv").write_text("\n".join(lines) + "\n")
    return root / f"{name}.csv"


def test_audit_reports_fid_groups_and_the_attack_roc_and_fails_on_check(generated, tmp_path):
    # Prepare: the training data as a csv: source with attribute columns
    run, ds = generated
    spec = f"csv:{_digits_csv(tmp_path)}"
    out = tmp_path / "report"
    # Execute: --fail-on check, on a model that is not DP (privacy is CHECK at least)
    result = runner.invoke(app, ["audit", str(ds), "--data", spec, "--out", str(out), "--classifiers", "logreg",
                                 "--judge-epochs", "1", "--fail-on", "check"])
    # Assert: the verdict is the exit code, and the report is written all the same
    assert result.exit_code == 3, result.output
    assert "--fail-on check" in result.output and "error:" not in result.output
    report = _strict_json(out / "report.json")
    assert report["real"]["matches_training_data"] is True
    dist = report["distribution"]
    assert dist["feature_space"] in ("classifier", "inception") and dist["reference"] == "real test split"
    if dist["feature_space"] == "classifier":
        assert dist["label"].startswith("classifier-feature FID (SmallCNN") and dist["max_images"] == 2000
    assert dist["fid"] >= 0 and 0 <= dist["precision"] <= 1 and 0 <= dist["recall"] <= 1
    assert (dist["num_synthetic"], dist["num_real"]) == (60, report["real"]["test_size"])
    assert [r["class"] for r in dist["per_class"]] == [str(d) for d in range(10)]
    groups = report["groups"]
    assert [t["kind"] for t in groups["tables"]] == ["site", "attribute"]
    site, sex = groups["tables"]
    rows = site["by_classifier"]["synthetic"]["groups"]
    assert [g["group"] for g in rows] == ["client_0", "client_1"]
    assert sum(g["count"] for g in rows) == report["real"]["train_size"]  # every record of every site (< cap)
    assert sex["feature"] == "sex" and set(sex["by_classifier"]) == {"synthetic", "real_pooled"}
    sex_rows = sex["by_classifier"]["synthetic"]["groups"]
    assert [g["group"] for g in sex_rows] == ["(missing)", "f", "m"]
    assert sum(g["count"] for g in sex_rows) == report["real"]["test_size"]
    for summary in sex["by_classifier"].values():
        acc = [g["accuracy"] for g in summary["groups"]]
        assert summary["difference"] == pytest.approx(max(acc) - min(acc))
    assert any("'row'" in s for s in groups["skipped"])
    mia = report["privacy"]["membership"]
    assert set(mia["tpr_at_fpr"]) == {"0.01", "0.001"} and mia["fpr_resolution"] == 1 / mia["num_non_members"]
    assert mia["roc"]["fpr"][0] == 0.0 and mia["roc"]["fpr"][-1] == 1.0 and mia["roc"]["tpr"][-1] == 1.0
    assert mia["tpr_at_fpr"]["0.01"] == mia["tpr_at_1pct_fpr"]
    for name in ["distribution.csv", "groups.csv", "mia_roc.csv"]:
        assert (out / name).is_file(), name
    assert len(list(csv.DictReader(open(out / "mia_roc.csv")))) == len(mia["roc"]["fpr"])
    page = (out / "report.html").read_text()
    for needle in ["Distribution fidelity", html.escape(dist["label"]), "Fairness across sites and attribute groups",
                   "Per attribute 'sex'", "membership attack ROC, log-log", "TPR at FPR 0.001"]:
        assert needle in page, needle
