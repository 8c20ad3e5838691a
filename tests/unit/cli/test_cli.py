"""The command line: a bad value ends with one line and exit code 2, bad data with exit code 1; the happy path works.
(Every other error path: tests/unit/cli/test_cli_errors.py.)"""

import csv
import json

import pandas as pd

import pytest
from typer.testing import CliRunner

from synthfed.cli.app import app, register_subcommands

register_subcommands()
runner = CliRunner()

TINY = ["--data", "digits", "--image-size", "8", "--preset", "tiny", "--clients", "2", "--timesteps", "20",
        "--batch-size", "64"]


@pytest.mark.parametrize(
    "args,needle",
    [
        (["train", "--clients", "0"], "--clients"),
        (["train", "--strategy", "magic"], "--strategy"),
        (["train", "--participation", "half"], "--participation"),
        (["train", "--participation", "2.5"], "whole number"),
        (["train", "--epsilon", "-1"], "--epsilon"),
        (["train", "--delta", "1e-5"], "--delta needs --epsilon"),
        (["train", "--data", "nonsense"], "nonsense"),  # an unknown form of --data (SourceSpecError)
        (["train", "--preset", "paper", "--image-size", "12"], "divisible"),
        (["train", "--clients", "2", "--participation", "3"], "only 2 clients"),
    ],
)
def test_bad_values_exit_2_with_one_clear_line(args, needle):
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert needle in result.output
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize(
    "args,needle",
    [
        (["train", "--data", "folder:/nonexistent"], "/nonexistent"),
        (["generate", "/nonexistent", "--out", "/tmp/x"], "not a synthfed run"),
    ],
)
def test_bad_data_exits_1_with_one_clear_line(args, needle):
    result = runner.invoke(app, args)
    assert result.exit_code == 1, result.output
    assert needle in result.output
    assert len(result.stderr.strip().splitlines()) == 1


def test_every_train_option_is_documented():
    result = runner.invoke(app, ["train", "--help"], terminal_width=200)
    assert result.exit_code == 0
    for option in ["--epsilon", "--participation", "--local-epochs", "--resume", "--device", "--strategy", "--alpha"]:
        assert option in result.output


def test_train_then_generate_writes_pngs_manifest_and_grid(tmp_path):
    run = tmp_path / "run"
    result = runner.invoke(app, ["train", *TINY, "--rounds", "1", "--out", str(run)])
    assert result.exit_code == 0, result.output
    out = tmp_path / "samples"
    refused = runner.invoke(app, ["generate", str(run), "--out", str(out), "--per-class", "2", "--steps", "3"])
    assert refused.exit_code == 2 and "allow-non-private" in refused.output
    assert not out.exists()
    result = runner.invoke(app, ["generate", str(run), "--out", str(out), "--per-class", "2", "--steps", "3",
                                 "--allow-non-private"])
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(open(out / "manifest.csv")))
    assert len(rows) == 20
    assert {r["class_name"] for r in rows} == {str(d) for d in range(10)}
    assert all((out / r["file"]).is_file() for r in rows)
    assert (out / "grid.png").is_file()
    assert "NOT differentially private" in result.output
    assert all(r["privacy"] == "NOT differentially private" for r in rows)
    card = json.loads((out / "card.json").read_text())
    assert card["differentially_private"] is False and card["label"] == "NOT differentially private"
    assert "NOT differentially private" in (out / "README.md").read_text()
    assert len(pd.read_parquet(out / "manifest.parquet")) == 20
    # generating into the same folder again is refused, not overwritten (a data error: the folder is taken)
    again = runner.invoke(app, ["generate", str(run), "--out", str(out), "--steps", "3", "--allow-non-private"])
    assert again.exit_code == 1 and "not empty" in again.output


def test_partition_prints_and_saves_the_stats_table(tmp_path):
    result = runner.invoke(app, ["partition", "--clients", "3", "--alpha", "0.3", "--save", str(tmp_path / "p.csv")])
    assert result.exit_code == 0, result.output
    assert "client_2" in result.output
    assert (tmp_path / "p.csv").read_text().count("\n") == 4


def test_match_real_and_csv_class_counts(tmp_path):
    run = tmp_path / "run"
    assert runner.invoke(app, ["train", *TINY, "--rounds", "1", "--out", str(run)]).exit_code == 0
    info = json.loads((run / "run.json").read_text())
    real = [sum(c["class_counts"][k] for c in info["clients"]) for k in range(10)]
    res = runner.invoke(app, ["generate", str(run), "--out", str(tmp_path / "m"), "--per-class", "5", "--steps", "2",
                              "--counts", "match-real", "--allow-non-private"])
    assert res.exit_code == 0, res.output
    card = json.loads((tmp_path / "m" / "card.json").read_text())
    got = list(card["counts"].values())
    assert sum(got) == 50
    expected = [50 * r / sum(real) for r in real]
    assert all(abs(g - e) < 1 for g, e in zip(got, expected))
    (tmp_path / "c.csv").write_text("class,count\n3,4\n7,2\n")
    res = runner.invoke(app, ["generate", str(run), "--out", str(tmp_path / "c"), "--counts", str(tmp_path / "c.csv"),
                              "--steps", "2", "--allow-non-private"])
    assert res.exit_code == 0, res.output
    rows = list(csv.DictReader(open(tmp_path / "c" / "manifest.csv")))
    assert sorted(r["class_name"] for r in rows) == ["3"] * 4 + ["7"] * 2
