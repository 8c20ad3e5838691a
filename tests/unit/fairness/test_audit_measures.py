"""The fuller audit's measures, each against an independent reference: k-NN
precision/recall against brute force, the attack's ROC against scikit-learn,
group accuracy against a pandas groupby; CSV attribute columns reach the
dataset; ``--fail-on`` and ``--data`` on the command line (with a stand-in
audit, so no classifier is trained here)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from sklearn.metrics import roc_curve
from typer.testing import CliRunner

import synthfed.fairness.audit as audit_mod
from synthfed.cli.app import app, register_subcommands
from synthfed.data import ImageDataset, concat, load_source
from synthfed.evaluate.fid import inception_available
from synthfed.evaluate.scores import knn_precision_recall
from synthfed.fairness.charts import roc_svg
from synthfed.fairness.groups import MISSING, attribute_groups, group_summary, group_verdict
from synthfed.fairness.verdict import fails, overall_level
from synthfed.privacy.membership import roc_points, tpr_at_fpr

register_subcommands()
runner = CliRunner()


# --------------------------------------------------------------------------- precision / recall
def _brute_force_pr(real: np.ndarray, fake: np.ndarray, k: int) -> tuple[float, float]:
    """Kynkäänniemi et al. 2019 by loops: a point is inside a set's manifold when it lies
    within some member's distance to that member's k-th nearest other member."""
    def radii(x):
        return [sorted(np.linalg.norm(x[i] - x[j]) for j in range(len(x)) if j != i)[k - 1] for i in range(len(x))]

    def inside(p, x, r):
        return any(np.linalg.norm(p - x[i]) <= r[i] + 1e-12 for i in range(len(x)))

    r_real, r_fake = radii(real), radii(fake)
    precision = np.mean([inside(p, real, r_real) for p in fake])
    recall = np.mean([inside(q, fake, r_fake) for q in real])
    return float(precision), float(recall)


def test_precision_recall_matches_a_brute_force_reference_on_2d_clouds():
    rng = np.random.default_rng(0)
    real = rng.normal(size=(40, 2))
    shifted = rng.normal(loc=(2.5, 0.0), scale=0.7, size=(30, 2))  # partly overlapping: answers strictly inside (0, 1)
    # identical sets: every point is inside the other manifold
    assert knn_precision_recall(real, real.copy(), k=3) == {"precision": 1.0, "recall": 1.0}
    # far apart: nothing is
    assert knn_precision_recall(real, real + 100.0, k=3) == {"precision": 0.0, "recall": 0.0}
    for k in (3, 5):
        got = knn_precision_recall(real, shifted, k=k, max_samples=None)
        want = _brute_force_pr(real, shifted, k)
        assert (got["precision"], got["recall"]) == pytest.approx(want)
        assert 0.0 < got["precision"] < 1.0 and 0.0 < got["recall"] < 1.0


# --------------------------------------------------------------------------- ROC
@pytest.mark.parametrize("ties", [False, True])
def test_roc_points_are_sklearns_roc_curve(ties):
    rng = np.random.default_rng(1)
    members, non = rng.normal(0.4, 1.0, 300), rng.normal(0.0, 1.0, 500)
    if ties:  # coarse scores: many thresholds shared by members and non-members
        members, non = np.round(members, 1), np.round(non, 1)
    y = np.r_[np.ones(len(members)), np.zeros(len(non))]
    for drop in (True, False):
        fpr, tpr, thr = roc_points(members, non, drop_intermediate=drop)
        s_fpr, s_tpr, s_thr = roc_curve(y, np.r_[members, non], drop_intermediate=drop)
        np.testing.assert_allclose(fpr, s_fpr)
        np.testing.assert_allclose(tpr, s_tpr)
        np.testing.assert_allclose(thr[1:], s_thr[1:])
    # TPR at FPR <= target, from the curve, by hand at the thresholds
    fpr, tpr, _ = roc_points(members, non, drop_intermediate=False)
    for target in (0.01, 0.002):
        thresholds = np.unique(np.r_[members, non])
        best = max([(members >= t).mean() for t in thresholds if (non >= t).mean() <= target] + [0.0])
        assert tpr_at_fpr(fpr, tpr, target) == pytest.approx(best)


def test_roc_chart_is_log_log_with_the_diagonal_and_the_low_fpr_points():
    fpr, tpr, _ = roc_points(np.linspace(0, 1, 200), np.linspace(-0.5, 0.5, 1000))
    svg = roc_svg(fpr, tpr, tpr_at={"0.01": tpr_at_fpr(fpr, tpr, 0.01), "0.001": tpr_at_fpr(fpr, tpr, 1e-3)},
                   resolution=1e-3)
    assert svg.startswith("<svg") and svg.endswith("</svg>")
    assert "chance: TPR = FPR" in svg and "1e-3" in svg and "1e-2" in svg and "TPR@0.001" in svg
    assert "log" in svg


# --------------------------------------------------------------------------- groups
def test_group_accuracy_difference_and_ratio_match_a_pandas_groupby():
    rng = np.random.default_rng(2)
    y = rng.integers(0, 4, 500)
    pred = np.where(rng.random(500) < 0.6, y, rng.integers(0, 4, 500))
    sex = rng.choice(["f", "m", "x"], 500, p=[0.5, 0.4, 0.1])
    frame = pd.DataFrame({"correct": y == pred, "sex": sex})
    hand = frame.groupby("sex")["correct"].agg(["mean", "size"])
    # Execute
    summary = group_summary(y, pred, sex, feature="sex")
    # Assert
    assert [g["group"] for g in summary["groups"]] == ["f", "m", "x"]
    for g in summary["groups"]:
        assert g["accuracy"] == pytest.approx(hand.loc[g["group"], "mean"])
        assert g["count"] == hand.loc[g["group"], "size"]
    assert summary["difference"] == pytest.approx(hand["mean"].max() - hand["mean"].min())
    assert summary["ratio"] == pytest.approx(hand["mean"].min() / hand["mean"].max())
    assert summary["overall"] == {"count": 500, "accuracy": pytest.approx(float((y == pred).mean()))}
    assert summary["worst_group"] == hand["mean"].idxmin()


def test_attribute_tables_skip_ids_and_constants_and_name_missing_values():
    images = np.zeros((60, 1, 4, 4), np.uint8)
    labels = np.arange(60) % 3
    attrs = {"sex": ["f", "m", ""] * 20, "row": [str(i) for i in range(60)], "country": ["nl"] * 60}
    test = ImageDataset(images, labels, ("a", "b", "c"), "t", attrs)
    skipped: list[str] = []
    tables = attribute_groups(test, {"synthetic": ("synthetic (TSTR)", labels)}, skipped)
    assert [t["feature"] for t in tables] == ["sex"]
    assert [g["group"] for g in tables[0]["by_classifier"]["synthetic"]["groups"]] == [MISSING, "f", "m"]
    assert any("'row'" in s and "60 distinct" in s for s in skipped) and any("'country'" in s for s in skipped)


def test_group_verdict_warns_on_a_large_gap_between_groups_of_enough_records():
    def table(rows):
        return {"tables": [{"feature": "site", "kind": "site", "by_classifier": {"synthetic": {
            "groups": [{"group": g, "count": n, "accuracy": a} for g, n, a in rows]}}}]}

    text, level = group_verdict(table([("a", 100, 0.9), ("b", 100, 0.5)]))
    assert level == "warning" and "from 50% ('b') to 90% ('a')" in text
    # the same gap, but one group too small to count
    assert group_verdict(table([("a", 100, 0.9), ("b", 5, 0.5), ("c", 50, 0.8)]))[1] == "ok"
    assert group_verdict(None) == ("", "ok")


# --------------------------------------------------------------------------- CSV attributes
def test_csv_attribute_columns_are_carried_through_resize_subset_and_concat(tmp_path):
    for split in ("d", "d_test"):
        (tmp_path / split).mkdir()
        rows = ["path,label,Sex,site"]
        for i in range(6):
            Image.fromarray(np.full((4, 4), 40 * i, np.uint8)).save(tmp_path / split / f"{i}.png")
            rows.append(f"{split}/{i}.png,{i % 2}, {'fm'[i % 2]} ,s{i // 3}")
        (tmp_path / f"{split}.csv").write_text("\n".join(rows) + "\n")
    # Execute
    test = load_source(f"csv:{tmp_path / 'd.csv'}", split="test")
    # Assert: extra columns (names lower-cased, values stripped) in row order, and they survive the audit's steps
    assert list(test.attributes) == ["sex", "site"]
    assert list(test.attributes["sex"]) == ["f", "m"] * 3
    small = test.resized(8).subset([5, 0])
    assert small.image_shape == (1, 8, 8) and list(small.attributes["site"]) == ["s1", "s0"]
    assert list(concat([small, small]).attributes["sex"]) == ["m", "f", "m", "f"]
    assert concat([small, ImageDataset(small.images, small.labels, small.class_names)]).attributes is None
    assert test.fingerprint() == ImageDataset(test.images, test.labels, test.class_names).fingerprint()
    with pytest.raises(ValueError, match="attribute 'x'"):
        ImageDataset(test.images, test.labels, test.class_names, "", {"x": ["a"]})


# --------------------------------------------------------------------------- the command line
def _report(levels: dict[str, str]) -> dict:
    return {"summary": {k: {"level": v, "text": f"{k} text"} for k, v in levels.items()}}


@pytest.mark.parametrize(
    "levels,fail_on,failed",
    [
        ({"utility": "ok", "fairness": "ok", "privacy": "ok"}, "check", False),
        ({"utility": "ok", "fairness": "warning", "privacy": "ok"}, "check", True),
        ({"utility": "ok", "fairness": "warning", "privacy": "ok"}, "alert", False),
        ({"utility": "alert", "fairness": "ok", "privacy": "warning"}, "alert", True),
        ({"utility": "alert", "fairness": "alert", "privacy": "alert"}, None, False),
    ],
)
def test_fail_on_by_verdict(levels, fail_on, failed):
    assert fails(_report(levels), fail_on) is failed
    assert overall_level(_report({"utility": "ok", "fairness": "alert", "privacy": "warning"})) == "alert"


@pytest.fixture
def fake_audit(tmp_path, monkeypatch):
    """A dataset folder that passes the CLI's checks, and run_audit replaced by a stand-in returning ``levels``."""
    ds = tmp_path / "ds"
    ds.mkdir()
    (ds / "manifest.csv").write_text("file,label\n")
    calls: list[dict] = []
    levels = {"utility": "ok", "fairness": "warning", "privacy": "ok"}

    def run_audit(dataset_dir, **kwargs):
        calls.append(kwargs)
        return _report(levels)

    monkeypatch.setattr(audit_mod, "run_audit", run_audit)
    return ds, tmp_path / "out", calls, levels


def test_cli_fail_on_gates_the_exit_code(fake_audit):
    ds, out, calls, levels = fake_audit
    base = ["audit", str(ds), "--data", "digits", "--out", str(out)]
    # default: a CHECK verdict still exits 0 (the behaviour before --fail-on)
    assert runner.invoke(app, base).exit_code == 0
    assert runner.invoke(app, [*base, "--fail-on", "alert"]).exit_code == 0
    failed = runner.invoke(app, [*base, "--fail-on", "check"])
    assert failed.exit_code == 3 and "verdict is CHECK" in failed.output and "error:" not in failed.output
    levels["privacy"] = "alert"
    assert runner.invoke(app, [*base, "--fail-on", "alert"]).exit_code == 3
    bad = runner.invoke(app, [*base, "--fail-on", "sometimes"])
    assert bad.exit_code == 2 and "--fail-on" in bad.output and "is not one of" in bad.output
    assert len(calls) == 4  # the bad value was refused before the audit


def test_cli_data_is_the_option_and_real_a_deprecated_alias(fake_audit):
    ds, out, calls, _ = fake_audit
    assert runner.invoke(app, ["audit", str(ds), "--data", "digits", "--out", str(out)]).exit_code == 0
    old = runner.invoke(app, ["audit", str(ds), "--real", "digits", "--out", str(out)])
    assert old.exit_code == 0 and "--real is deprecated: use --data" in old.output
    assert [c["real"] for c in calls] == ["digits", "digits"]
    assert calls[0]["fid_features"] == "auto" and calls[0]["fid_max_images"] is None
    missing = runner.invoke(app, ["audit", str(ds), "--out", str(out)])
    assert missing.exit_code == 2 and "missing option --data" in missing.output
    both = runner.invoke(app, ["audit", str(ds), "--data", "digits", "--real", "fashion-mnist", "--out", str(out)])
    assert both.exit_code == 2 and "disagree" in both.output
    helped = runner.invoke(app, ["audit", "--help"], terminal_width=200)
    assert "--data" in helped.output and "--real " not in helped.output and "--fail-on" in helped.output


def test_cli_lists_the_fid_feature_spaces_of_the_audit():
    from synthfed.cli.audit_cmds import FID_SPACES
    from synthfed.fairness.distribution import FID_FEATURES

    assert FID_SPACES == FID_FEATURES  # spelled out in the CLI, which must start without numpy


@pytest.mark.skipif(inception_available(), reason="the InceptionV3 weights are installed here")
def test_cli_inception_without_its_weights_fails_before_the_audit(fake_audit):
    ds, out, calls, _ = fake_audit
    result = runner.invoke(app, ["audit", str(ds), "--data", "digits", "--out", str(out), "--fid-features", "inception"])
    assert result.exit_code == 1 and "synthfed[fid]" in result.output and calls == []
