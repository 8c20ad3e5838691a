"""``synthfed audit``: utility, fairness, distribution fidelity and privacy of a generated dataset.

Registered on the main app by :func:`register`; the logic lives in
``synthfed.fairness.audit`` (the CLI only parses, validates and prints).
``--fail-on check|alert`` makes the verdict an exit code for CI
(:data:`FAIL_EXIT_CODE`; 1 and 2 stay data and usage errors). The real data
is ``--data`` as for ``train``; ``--real`` is a hidden, deprecated alias."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.table import Table

from synthfed.cli.options import choice
from synthfed.errors import InputError, UsageError

out = Console()
err = Console(stderr=True)

# The exit code of an audit whose verdict reaches --fail-on (1: bad data or a failure, 2: a usage error).
FAIL_EXIT_CODE = 3
FAIL_ON_WORDS = ("check", "alert")
# synthfed.fairness.distribution.FID_FEATURES, spelled out here: importing that module loads numpy.
FID_SPACES = ("auto", "inception", "classifier", "none")
FidSpace, FailOn = choice(FID_SPACES), choice(FAIL_ON_WORDS)


def _real_spec(data: Optional[str], real: Optional[str]) -> str:
    """--data, or the deprecated --real (with a note); both only when they agree."""
    if data is not None and real is not None and data != real:
        raise UsageError(f"--data {data} and --real {real} disagree; --real is the old name of --data: pass --data only")
    if data is None and real is None:
        raise UsageError("missing option --data SPEC: the real data the model was trained on, as for train --data")
    if data is None:
        from synthfed.cli.errors import say

        say("note:", "yellow", "--real is deprecated: use --data (same meaning, as for train)")
    return data if data is not None else real


def _check_fid_options(fid_features: str, fid_max_images: Optional[int]) -> None:
    from synthfed.fairness.distribution import check_fid_features

    if fid_max_images is not None and fid_max_images < 20:
        raise UsageError("--fid-max-images must be at least 20")
    check_fid_features(fid_features)  # "inception" without the weights: the install hint, before any work


def _unique_names(dirs: list[Path]) -> list[str]:
    names: list[str] = []
    for d in dirs:
        base = d.resolve().name or "dataset"
        name, i = base, 2
        while name in names:
            name, i = f"{base}-{i}", i + 1
        names.append(name)
    return names


def _check_dataset_dir(path: Path, what: str) -> None:
    if not path.is_dir():
        raise InputError(f"{what} {path}: not a directory")
    if not (path / "manifest.csv").is_file():
        raise InputError(f"{what} {path}: not a generated dataset (no manifest.csv); make one with `synthfed generate`")


# typer declares each option in the signature, so the parameter list is the command's option table.
def audit(
    dataset_dir: Path = typer.Argument(..., metavar="DATASET_DIR", help="A generated dataset folder (manifest.csv + images, from `synthfed generate`)."),
    data: Optional[str] = typer.Option(None, "--data", metavar="SPEC", help="The real data the model was trained on, as for train --data (its test split is the yardstick). Required."),
    real: Optional[str] = typer.Option(None, "--real", metavar="SPEC", hidden=True, help="Deprecated alias of --data."),
    out_dir: Path = typer.Option(..., "--out", metavar="REPORT_DIR", help="Folder for report.html, report.json and the CSV tables (created; files in it are replaced)."),
    run: Optional[Path] = typer.Option(None, "--run", metavar="RUN_DIR", help="The run that produced the images (default: the dataset card's source); enables per-client baselines and the membership attack."),
    compare: Optional[List[Path]] = typer.Option(None, "--compare", metavar="DIR", help="Another generated dataset to audit and compare (repeat the option for several)."),
    reference: Optional[str] = typer.Option(None, metavar="NAME", help="Folder name of the dataset that bias reduction is measured against (default: the first --compare)."),
    classifiers: str = typer.Option("logreg,mlp,cnn", help="Downstream classifier families to select from: any of logreg, mlp, cnn."),
    cnn_epochs: str = typer.Option("3,10", help="Epoch budgets tried for the CNN candidates."),
    judge_epochs: int = typer.Option(10, help="Epochs of the real-data CNN that judges label fidelity."),
    max_real_train: Optional[int] = typer.Option(None, help="Train the real-data baselines and the judge on at most this many images (stratified; for speed on large data)."),
    no_mia: bool = typer.Option(False, "--no-mia", help="Skip the membership-inference attack."),
    include_real_images: bool = typer.Option(False, "--include-real-images", help="Embed the nearest real training images and the real class histogram (the report is then marked 'contains personal data: do not share')."),
    real_mismatch_ok: bool = typer.Option(False, "--real-mismatch-ok", help="Audit against real data other than the run's training data (the report is stamped so)."),
    fid_features: FidSpace = typer.Option("auto", "--fid-features", help="Feature space of FID and precision/recall: auto (InceptionV3 when installed, else classifier), inception, classifier (the label-fidelity judge), none."),
    fid_max_images: Optional[int] = typer.Option(None, "--fid-max-images", metavar="N", help="Compare at most N synthetic and N real test images (stratified; default 500 with Inception, 2000 with classifier features)."),
    fail_on: Optional[FailOn] = typer.Option(None, "--fail-on", help=f"For CI: exit with code {FAIL_EXIT_CODE} (after writing the report) when the verdict reaches check (any CHECK or ALERT) or alert (any ALERT). Default: exit 0 whatever the verdict."),
    seed: int = typer.Option(0, help="Seed of the validation splits, classifiers and attack noise."),
) -> None:
    """Audit a synthetic dataset: downstream utility on real test data, fairness across classes, sites and attribute groups, FID and precision/recall, memorization and membership inference."""
    from synthfed.cli.render import RichProgress
    from synthfed.fairness.audit import run_audit

    real = _real_spec(data, real)
    _check_fid_options(fid_features, fid_max_images)
    families = _parse_families(classifiers)
    epochs = _parse_cnn_epochs(cnn_epochs)
    _check_budgets(judge_epochs, max_real_train)
    compare = list(compare or [])
    _check_folders(dataset_dir, compare, run, out_dir)
    names = _dataset_names([dataset_dir, *compare], reference)
    _check_out_dir(out_dir, [dataset_dir, *compare], run)

    common = dict(real=real, seed=seed, families=families, cnn_epochs=epochs, judge_epochs=judge_epochs,
                  max_real_train=max_real_train, mia=not no_mia, include_real_images=include_real_images,
                  allow_real_mismatch=real_mismatch_ok, fid_features=fid_features, fid_max_images=fid_max_images)
    with RichProgress(err) as progress:
        others = {}
        for name, c in zip(names[1:], compare):
            others[name] = run_audit(c, out_dir=out_dir / "compared" / name, name=name, progress=progress, **common)
        report = run_audit(dataset_dir, out_dir=out_dir, run_dir=run, name=names[0], compare_with=others or None,
                           reference=reference, progress=progress, **common)
    _print_report(report, out_dir, include_real_images=include_real_images)
    _gate(report, fail_on)


# --------------------------------------------------------------------------- checks, before any long work
def _parse_families(classifiers: str) -> tuple[str, ...]:
    """--classifiers as a tuple of known families."""
    from synthfed.fairness.classifiers import FAMILIES

    families = tuple(f.strip() for f in classifiers.split(",") if f.strip())
    if not families or any(f not in FAMILIES for f in families):
        raise UsageError(f"--classifiers must be a comma-separated subset of {', '.join(FAMILIES)}, not {classifiers!r}")
    return families


def _parse_cnn_epochs(cnn_epochs: str) -> tuple[int, ...]:
    """--cnn-epochs as a tuple of positive whole numbers."""
    try:
        epochs = tuple(int(e) for e in cnn_epochs.split(",") if e.strip())
    except ValueError:
        epochs = ()
    if not epochs or min(epochs) < 1:
        raise UsageError(f"--cnn-epochs must be positive whole numbers like 3,10, not {cnn_epochs!r}")
    return epochs


def _check_budgets(judge_epochs: int, max_real_train: Optional[int]) -> None:
    """--judge-epochs and --max-real-train are large enough to train anything."""
    if judge_epochs < 1:
        raise UsageError("--judge-epochs must be at least 1")
    if max_real_train is not None and max_real_train < 20:
        raise UsageError("--max-real-train must be at least 20")


def _check_folders(dataset_dir: Path, compare: list[Path], run: Optional[Path], out_dir: Path) -> None:
    """The datasets, the run and --out are what the options say they are."""
    _check_dataset_dir(dataset_dir, "dataset")
    for c in compare:
        _check_dataset_dir(c, "--compare dataset")
    if run is not None and not (run / "run.json").is_file():
        raise InputError(f"--run {run}: not a synthfed run directory (no run.json)")
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"--out {out_dir}: exists and is not a directory")


def _dataset_names(dirs: list[Path], reference: Optional[str]) -> list[str]:
    """The audited datasets' names in the report (the first is the audited one); --reference must be one of them."""
    names = _unique_names(dirs)
    if reference is not None and reference not in names:
        raise UsageError(f"--reference {reference!r} is not one of the audited datasets: {', '.join(names)}")
    if reference is not None and len(dirs) < 2:
        raise UsageError("--reference needs --compare")
    return names


def _check_out_dir(out_dir: Path, datasets: list[Path], run: Optional[Path]) -> None:
    """--out lies outside the audited datasets, the run and any other dataset or run folder."""
    from synthfed.fairness.release import check_report_dir

    try:  # before any long work: a report inside the dataset or a run would ship with it
        check_report_dir(out_dir, datasets=datasets, run=run)
    except ValueError as exc:  # it checks the --out option: a usage error
        raise UsageError(str(exc)) from None


# --------------------------------------------------------------------------- printing
def _print_report(report: dict, out_dir: Path, *, include_real_images: bool) -> None:
    """The verdicts, FID and the attack, the comparison, where the files are, and the personal-data warning."""
    for key in ("utility", "fairness", "privacy"):
        s = report["summary"][key]
        style = {"ok": "green", "warning": "yellow", "alert": "red"}[s["level"]]
        out.print(f"[bold {style}]{key} ({s['level']})[/bold {style}]: {s['text']}")
    _print_extras(report)
    if report.get("comparison"):
        _print_comparison(report["comparison"])
    out.print(f"report: {out_dir / 'report.html'}")
    out.print(f"data: {out_dir / 'report.json'} and CSV tables in {out_dir}")
    if include_real_images:
        err.print("[bold red]warning:[/bold red] the report contains personal data (real training images and class "
                  "histogram): do not share it", soft_wrap=True)


def _print_comparison(comp: dict) -> None:
    """The comparison table: one row per metric, one column per dataset, and the metric's direction."""
    table = Table(title=f"comparison (bias reduction vs {comp['reference']})")
    cols = ["metric", *comp["columns"]]
    for col in cols:
        table.add_column(col, justify="left" if col in ("metric", "direction") else "right")
    for r in comp["table"]:
        none = "inf (not DP)" if r["metric"] == "epsilon" else "-"
        table.add_row(*(r[c] if isinstance(r[c], str) else (none if r[c] is None else f"{r[c]:.3g}") for c in cols))
    out.print(table)


def _print_extras(report: dict) -> None:
    """One line each: FID and precision/recall, the attack's TPR at low FPR."""
    d = report.get("distribution") or {}
    if d.get("fid") is not None:
        pr = "" if d.get("precision") is None else f", precision {d['precision']:.0%}, recall {d['recall']:.0%}"
        out.print(f"distribution: {d['label']} {d['fid']:.2f}{pr} ({d['num_synthetic']} synthetic vs "
                  f"{d['num_real']} real test images)", soft_wrap=True, highlight=False)
    tpr = ((report.get("privacy") or {}).get("membership") or {}).get("tpr_at_fpr")
    if tpr:
        out.print("membership attack: " + ", ".join(f"TPR {v:.1%} at FPR {t}" for t, v in tpr.items()),
                  highlight=False)


def _gate(report: dict, fail_on: Optional[str]) -> None:
    """--fail-on: exit FAIL_EXIT_CODE when the verdict reaches the level (after the report is written)."""
    from synthfed.fairness.verdict import fails, overall_level

    if fails(report, fail_on):
        word = {"ok": "OK", "warning": "CHECK", "alert": "ALERT"}[overall_level(report)]
        err.print(f"[bold red]failed:[/bold red] the audit's verdict is {word}, which --fail-on {fail_on} does not "
                  f"accept (exit code {FAIL_EXIT_CODE})", soft_wrap=True)
        raise typer.Exit(FAIL_EXIT_CODE)


def register(app: typer.Typer) -> None:
    """Add ``synthfed audit`` to ``app`` (once, however often it is called)."""
    if not any(c.name == "audit" for c in app.registered_commands):
        app.command("audit")(audit)
