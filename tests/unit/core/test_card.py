"""The dataset card's wording and counts (synthfed/card.py), against hand-made inputs."""

import math

import pytest

from synthfed.card import (NOT_DP, NonPrivateOutputRefused, counts_origin, guarantee_strength, manifest_stamp,
                           privacy_label, resolve_class_counts, worst_epsilon)
from synthfed.errors import InputError, UsageError
from synthfed.run_info import ClientInfo, RunInfo

NAMES = ("a", "b", "c")


def _status(*eps, dp=True):
    return {"differentially_private": dp, "clients": [{"eps_upper": e} for e in eps]}


@pytest.mark.parametrize("eps,strength", [(0.5, "strong"), (1.0, "strong"), (8.0, "moderate"), (10.0, "moderate"),
                                          (10.01, "weak"), (math.inf, "none"), (None, "none"), (-1.0, "none")])
def test_guarantee_strength_thresholds(eps, strength):
    assert guarantee_strength(eps) == strength


def test_the_label_takes_the_worst_client_and_never_calls_a_non_dp_status_private():
    assert worst_epsilon(_status(2.0, 7.5, 3.0)) == 7.5
    assert privacy_label(_status(2.0, 7.5)).startswith("differentially private, moderate (each client: epsilon <= 7.5")
    assert "WEAK" in privacy_label(_status(12.0))
    assert privacy_label(_status(1.0, dp=False)) == NOT_DP
    assert privacy_label(_status(math.inf)) == NOT_DP  # a "DP" status without a finite epsilon is not DP
    assert privacy_label({"differentially_private": True, "clients": []}) == NOT_DP


def _run_info(engine="simulation", counts=([5, 0, 5], [0, 10, 0])):
    clients = [ClientInfo(id=i, n=sum(c) if c else 10, class_counts=list(c) if c else None)
               for i, c in enumerate(counts)]
    return RunInfo(config={}, model={}, data="", clients=clients, engine=engine)


def _resolve(mode, **kw):
    args = dict(num_classes=3, class_names=NAMES, per_class=4, run_info=_run_info(), client=None,
                differentially_private=False, allow_non_private=True)
    return resolve_class_counts(mode, **{**args, **kw})


def test_match_real_scales_the_real_histogram_by_largest_remainders():
    # pooled: [5, 10, 5] of 20 -> 12 images: [3, 6, 3]; client 0 alone: [5, 0, 5] -> [6, 0, 6]
    assert _resolve("match-real") == [3, 6, 3]
    assert _resolve("match-real", client=0) == [6, 0, 6]
    assert sum(_resolve("match-real", per_class=3)) == 9


def test_match_real_is_refused_under_dp_and_without_the_flag():
    with pytest.raises(UsageError):
        _resolve("match-real", differentially_private=True)
    with pytest.raises(NonPrivateOutputRefused):
        _resolve("match-real", allow_non_private=False)


def test_match_real_on_a_flower_run_says_where_the_counts_are():
    with pytest.raises(UsageError, match="a Flower run's class counts stay on its nodes"):
        _resolve("match-real", run_info=_run_info(engine="flower", counts=(None, None)))


def test_counts_from_a_csv_by_name_or_index_and_its_errors_name_the_line(tmp_path):
    good = tmp_path / "counts.csv"
    good.write_text("class,count\nb,7\n2,1\n")
    assert _resolve(str(good)) == [0, 7, 1]
    bad = tmp_path / "bad.csv"
    bad.write_text("class,count\nb,7\nzebra,1\n")
    with pytest.raises(InputError, match=r"bad.csv:3: unknown class 'zebra'"):
        _resolve(str(bad))
    with pytest.raises(UsageError, match="--counts must be uniform, match-real or a CSV"):
        _resolve(str(tmp_path / "missing.csv"))


def test_counts_origin_names_a_csv_by_file_name_only():
    assert counts_origin("/home/someone/secret/plan.csv", None) == "requested by the user in plan.csv"
    assert "REAL class histogram of client 2's own" in counts_origin("match-real", 2)


def test_every_manifest_row_says_not_dp_for_a_non_dp_card():
    assert manifest_stamp({"differentially_private": False, "label": NOT_DP}) == NOT_DP
