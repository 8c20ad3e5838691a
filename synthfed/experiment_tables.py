"""Experiment tables: results of finished cells as CSV and Markdown, mean ±
std over seeds per grid point (``synthfed experiment table``)."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np

from synthfed.experiment_config import AXIS_LABELS, Cell, ExperimentConfig, expand_grid
from synthfed.io import write_bytes_atomic

RESULT_FILE = "result.json"
# key -> (table header, decimals); the table shows those present in any result.
METRICS = {
    "fid_train_cnn": ("FID train (CNN)", 2),
    "fid_test_cnn": ("FID test (CNN)", 2),
    "is_cnn": ("IS (CNN)", 2),
    "label_acc": ("label acc", 3),
    "precision_cnn": ("precision", 3),
    "recall_cnn": ("recall", 3),
    "kid_test_cnn": ("KID test (CNN)", 4),
    "fid_train_inception": ("FID train (Inception)", 2),
    "fid_test_inception": ("FID test (Inception)", 2),
    "train_seconds": ("train s", 0),
}


def read_result(cell_dir: Path) -> dict | None:
    path = cell_dir / RESULT_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _mean_std(values: list[float]) -> tuple[float, float | None]:
    arr = np.asarray(values, dtype=np.float64)
    return float(arr.mean()), (float(arr.std(ddof=1)) if len(arr) > 1 else None)


def _fmt(mean: float, std: float | None, decimals: int) -> str:
    if std is None:
        return f"{mean:.{decimals}f}"
    return f"{mean:.{decimals}f} ± {std:.{decimals}f}"


def _axis_text(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def collect(config: ExperimentConfig, out_dir: Path) -> tuple[list[Cell], dict[str, dict]]:
    cells = expand_grid(config)
    results = {}
    for cell in cells:
        r = read_result(out_dir / "cells" / cell.id)
        if r is not None:
            results[cell.id] = r
    return cells, results


def write_tables(config: ExperimentConfig, out_dir: str | Path, *, floor: dict | None = None) -> str:
    """results.csv (per cell), table.csv and table.md (per grid point, mean ± std
    over the seeds that finished). Returns the Markdown."""
    out_dir = Path(out_dir)
    if floor is None and (out_dir / "real_floor.json").is_file():
        floor = json.loads((out_dir / "real_floor.json").read_text()).get("metrics")
    cells, results = collect(config, out_dir)
    axes = list(config.axes)
    # The Markdown shows only the axes that vary (and always the strategy); the CSVs show every axis.
    shown_axes = [a for a in axes if a == "strategy" or len(dict(config.grid)[a]) > 1]
    present = [m for m in METRICS if any(m in _flat(r) for r in results.values())]
    write_bytes_atomic(out_dir / "results.csv", _results_csv(cells, results, axes, present).encode())
    rows = _grouped_rows(cells, results, axes, present)
    write_bytes_atomic(out_dir / "table.csv", _table_csv(rows, axes, present, floor).encode())
    md = _table_markdown(rows, shown_axes, present, floor)
    write_bytes_atomic(out_dir / "table.md", md.encode())
    return md


def _results_csv(cells: list[Cell], results: dict[str, dict], axes: list[str], present: list[str]) -> str:
    """One row per finished cell: its axes, seed and metrics."""
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["cell", *axes, "seed", *present])
    for cell in cells:
        if cell.id in results:
            flat = _flat(results[cell.id])
            w.writerow([cell.id, *[_axis_text(cell.axes.get(a)) for a in axes], cell.seed, *[flat.get(m, "") for m in present]])
    return buf.getvalue()


def _grouped_rows(cells: list[Cell], results: dict[str, dict], axes: list[str], present: list[str]) -> list[dict]:
    """One row per grid point: its axes, seeds done of planned, and (mean, std) of each metric over the seeds."""
    groups: dict[tuple, list[Cell]] = {}
    for cell in cells:
        groups.setdefault(cell.group, []).append(cell)
    rows = []
    for members in groups.values():
        done = [results[c.id] for c in members if c.id in results]
        row = {"axes": {a: members[0].axes.get(a) for a in axes}, "n": len(done), "of": len(members), "metrics": {}}
        for m in present:
            vals = [_flat(r)[m] for r in done if _flat(r).get(m) is not None]
            if vals:
                row["metrics"][m] = _mean_std(vals)
        rows.append(row)
    return rows


def _table_csv(rows: list[dict], axes: list[str], present: list[str], floor: dict | None) -> str:
    """The grouped rows with mean and std columns, and the real-data floor as a last row."""
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow([*axes, "seeds_done", "seeds_planned", *[f"{m}_{s}" for m in present for s in ("mean", "std")]])
    for row in rows:
        vals = []
        for m in present:
            mean, std = row["metrics"].get(m, (None, None))
            vals += ["" if mean is None else mean, "" if std is None else std]
        w.writerow([*[_axis_text(row["axes"][a]) for a in axes], row["n"], row["of"], *vals])
    if floor:
        w.writerow(["real data", *[""] * (len(axes) - 1), "", "", *[v for m in present for v in (floor.get(m, ""), "")]])
    return buf.getvalue()


def _table_markdown(rows: list[dict], shown_axes: list[str], present: list[str], floor: dict | None) -> str:
    """The grouped rows as a Markdown table (mean ± std), and the real-data floor as a last row."""
    headers = [AXIS_LABELS.get(a, a) for a in shown_axes] + ["seeds"] + [METRICS[m][0] for m in present]
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    for row in rows:
        cells_txt = [_axis_text(row["axes"][a]) for a in shown_axes] + [f"{row['n']}/{row['of']}"]
        for m in present:
            if m in row["metrics"]:
                cells_txt.append(_fmt(*row["metrics"][m], METRICS[m][1]))
            else:
                cells_txt.append("-")
        lines.append("| " + " | ".join(cells_txt) + " |")
    if floor:
        first = [f"real test images (n={floor.get('n_generated', '?')})"] + [""] * (len(shown_axes) - 1) + ["-"]
        rest = [f"{floor[m]:.{METRICS[m][1]}f}" if isinstance(floor.get(m), (int, float)) else "-" for m in present]
        lines.append("| " + " | ".join(first + rest) + " |")
    return "\n".join(lines) + "\n"


def _flat(result: dict) -> dict:
    flat = {k: v for k, v in result.get("metrics", {}).items() if isinstance(v, (int, float))}
    timing = result.get("timing", {})
    if "train_seconds" in timing:
        flat["train_seconds"] = timing["train_seconds"]
    return flat
