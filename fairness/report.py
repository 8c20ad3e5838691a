"""Render an audit report: one self-contained report.html, report.json and CSV tables.

The HTML page has no external resources (no scripts, fonts or image files):
charts are inline SVG and images are PNGs made with PIL, embedded as base64,
so the page can be mailed or attached to a data-sharing request as one file.
It opens with a summary in words (utility, fairness, privacy, each marked
ok / warning / alert) before any table of numbers.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from pathlib import Path

import numpy as np

from synthfed.card import source_label
from synthfed.data import ImageDataset
from synthfed.io import write_bytes_atomic

from synthfed.fairness.charts import (
    COLORS,
    LEVEL_STYLE,
    html_escape,
    fmt_num,
    fmt_pct,
    png_data_uri,
    image_strip,
    bars_svg,
    confusion_svg,
    CSS,
)
from synthfed.fairness.privacy_report import STRENGTH_STYLE, personal_data_banner, privacy_html
from synthfed.fairness.report_sections import distribution_html, groups_html, write_section_tables

__all__ = ["render_html", "write_report", "write_tables"]

def _summary_html(report: dict) -> str:
    s = report["summary"]
    cards = []
    fair_title = "Fairness across classes" + (" and groups" if (report.get("groups") or {}).get("tables") else "")
    for key, title in (("utility", "Utility"), ("fairness", fair_title), ("privacy", "Privacy")):
        bg, fg, word = LEVEL_STYLE[s[key]["level"]]
        cards.append(f'<div class="card" style="background:{bg};border-color:{fg}33"><h3 style="color:{fg}">{title}'
                     f'<span class="badge" style="background:{fg}">{word}</span></h3>{html_escape(s[key]["text"])}</div>')
    tstr = report["utility"]["tstr"]
    priv = report["privacy"]
    mia = priv.get("membership") or {}
    strength = priv.get("guarantee_strength") or ("moderate" if priv["differentially_private"] else "none")
    kpis = [
        (fmt_pct(tstr["accuracy"]), "accuracy on real test data (trained on synthetic)", ""),
        (fmt_pct(report["utility"].get("utility_ratio")), "of the real-data classifier's accuracy", ""),
        (f"{fmt_pct(tstr['worst_class'])}", f"worst class ('{report['fairness']['worst_class_name']}')", ""),
        (fmt_num(tstr["bias"]), "class-wise bias (std of per-class accuracy)", ""),
        (str(priv["memorization"]["near_copies"]), "near-exact copies of training images", ""),
        (_guarantee_kpi(priv, strength),
         "privacy guarantee" + (f"; membership attack AUC {mia['auc']:.2f}" if "auc" in mia else ""),
         f' style="color:{STRENGTH_STYLE[strength][0]}"'),  # its own colour per strength
    ]
    k_html = "".join(f'<div class="kpi"><div class="v"{style}>{html_escape(v)}</div><div class="l">{html_escape(label)}</div></div>'
                     for v, label, style in kpis)
    return f'<section id="summary"><div class="cards">{"".join(cards)}</div><div class="kpis">{k_html}</div></section>'


def _guarantee_kpi(priv: dict, strength: str) -> str:
    """ε with its strength in words, e.g. "ε ≤ 1.14e+03 (weak)"; never a bare "DP"."""
    if not priv["differentially_private"]:
        return "not DP"
    eps = priv.get("epsilon_max")
    return f"ε ≤ {eps:.3g} ({strength})" if eps is not None else f"DP ({strength})"


def _fairness_html(report: dict) -> str:
    names = report["dataset"]["class_names"]
    tstr = report["utility"]["tstr"]
    baselines = report["utility"]["baselines"]
    fair = report["fairness"]
    series = [("trained on synthetic", tstr["per_class_recall"], COLORS["synthetic"])]
    pooled = next((b for b in baselines if b["kind"] == "real_pooled"), None)
    if pooled:
        series.append(("trained on real (pooled)", pooled["per_class_recall"], COLORS["real_pooled"]))
    clients = [b for b in baselines if b["kind"] == "real_client"]
    if clients:
        mean = np.nanmean(np.array([[np.nan if v is None else v for v in b["per_class_recall"]] for b in clients]), axis=0)
        series.append(("each client alone (mean)", [float(v) for v in mean], COLORS["clients"]))
    recall_svg = bars_svg(names, series, title="per-class accuracy")
    fid_svg = bars_svg(names, [("label fidelity", fair["label_fidelity_per_class"], COLORS["fidelity"])],
                        title="label fidelity", width=360)
    hist = fair["histograms"]

    def share(v):
        v = np.asarray(v, dtype=float)
        return list(v / v.sum()) if v.sum() > 0 else [None] * len(v)

    series = [("judged by real-data CNN", share(hist["predicted_by_judge"]), COLORS["judged"]),
              ("requested", share(hist["requested"]), COLORS["requested"])]
    if hist.get("real_train") is not None:  # the real histogram: only in a report marked as personal data
        series.append(("real training data", share(hist["real_train"]), COLORS["real"]))
    hmax = max(max(v for v in s[1] if v is not None) for s in series if any(v is not None for v in s[1]))
    hmax = min(1.0, math.ceil(hmax * 10 + 1e-9) / 10)
    hist_svg = bars_svg(names, series, title="class histogram", max_value=hmax, width=480)
    red = fair.get("bias_reduction_vs_clients_alone")
    red_txt = ""
    if red is not None:
        red_txt = (f" Bias reduction over each client alone: <b>{fmt_pct(red)}</b> "
                   f"(1 − {tstr['bias']:.3f} / {fair['mean_client_bias']:.3f}).")
    return f"""
<h2>Fairness across classes</h2>
<p class="note">Per-class accuracy (recall) of the classifier trained on the synthetic set, tested on real images,
next to the same classifier families trained on real data. Gap {fmt_pct(tstr['gap'])}, class-wise bias (population std)
{tstr['bias']:.3f}, worst class '{html_escape(fair['worst_class_name'])}' at {fmt_pct(tstr['worst_class'])}.{red_txt}</p>
<div class="row">
<div class="panel"><h3>Per-class accuracy on real test images</h3>{recall_svg}</div>
<div class="panel"><h3>Label fidelity: a real-data CNN agrees with the requested class</h3>{fid_svg}
<p class="small" style="max-width:360px">Overall {fmt_pct(fair['label_fidelity'])}; the judge ({html_escape(fair['judge']['classifier'])})
is {fmt_pct(fair['judge']['real_test_accuracy'])} accurate on the real test split.</p></div>
</div>
<div class="row" style="margin-top:14px">
<div class="panel"><h3>Confusion matrix (trained on synthetic, real test)</h3>
{confusion_svg(fair['confusion'], names)}</div>
<div class="panel"><h3>Class histograms</h3>{hist_svg}
<p class="small" style="max-width:480px">Total variation, judged vs requested: {fair['tv_distance']:.3f};
generated labels vs real training data: {fair['tv_to_real']:.3f}.</p></div>
</div>"""


def _samples_html(synthetic: ImageDataset, per_class: int = 10) -> str:
    rows = []
    for k, name in enumerate(synthetic.class_names):
        idx = np.flatnonzero(synthetic.labels == k)[:per_class]
        if len(idx) == 0:
            cell = '<span class="small">no images</span>'
        else:
            cell = f'<img alt="samples of class {html_escape(name)}" src="{png_data_uri(image_strip(synthetic.images[idx]))}">'
        rows.append(f'<tr><td><b>{html_escape(name)}</b></td><td>{cell}</td></tr>')
    return f"""
<h2>Samples per class</h2>
<div class="panel"><table class="samples">{''.join(rows)}</table>
<p class="small">The first {per_class} synthetic images of each class, as stored in the dataset.</p></div>"""


def _metrics_table(report: dict) -> str:
    names = report["dataset"]["class_names"]
    rows = []
    for r in [report["utility"]["tstr"], *report["utility"]["baselines"]]:
        rows.append(
            f'<tr{" class=chosen" if r["kind"] == "synthetic" else ""}><td class="t">{html_escape(r["name"])}</td>'
            f'<td>{r["train_size"]}</td><td class="t">{html_escape(r["classifier"])}</td><td>{fmt_pct(r["accuracy"])}</td>'
            f'<td>{fmt_pct(r["balanced_accuracy"])}</td><td>{fmt_pct(r["worst_class"])} ({html_escape(names[r["worst_class_index"]])})</td>'
            f'<td>{fmt_pct(r["gap"])}</td><td>{r["bias"]:.3f}</td></tr>')
    return ('<h2>Utility: train on synthetic, test on real</h2><div class="panel"><table>'
            '<tr><th class="t">trained on</th><th>images</th><th class="t">chosen classifier</th><th>accuracy</th>'
            '<th>balanced acc.</th><th>worst class</th><th>gap</th><th>bias (std)</th></tr>' + "".join(rows) +
            f'</table><p class="small">Every row is tested on the same {report["real"]["test_size"]} real test images '
            f'({html_escape(report["real"]["spec"])}, test split). Each classifier was chosen among '
            f'{html_escape(", ".join(report["settings"]["families"]))} by accuracy on a {fmt_pct(report["settings"]["val_fraction"])} '
            'validation split of its own training set — for the synthetic row, synthetic images only; the real test '
            'split is used once, after selection.</p></div>')


def _selection_table(report: dict) -> str:
    models = [report["utility"]["tstr"], *report["utility"]["baselines"]]
    cands = list(dict.fromkeys(c["candidate"] for m in models for c in m["selection"]))
    rows = []
    for m in models:
        by = {c["candidate"]: c for c in m["selection"]}
        cells = "".join(
            (f'<td style="font-weight:700;background:#eff6ff">{fmt_pct(by[c]["val_accuracy"])}</td>' if by[c]["chosen"]
             else f"<td>{fmt_pct(by[c]['val_accuracy'])}</td>") if c in by else "<td>–</td>" for c in cands)
        rows.append(f'<tr><td class="t">{html_escape(m["name"])}</td><td>{m["num_fit"]} / {m["num_val"]}</td>{cells}</tr>')
    head = "".join(f"<th>{html_escape(c)}</th>" for c in cands)
    return ('<h3>Model selection: validation accuracy of every candidate (chosen in bold)</h3><table>'
            f'<tr><th class="t">training set</th><th>fit / val. images</th>{head}</tr>' + "".join(rows) + "</table>"
            '<p class="small">Validation images are a stratified split of each row\'s own training set; the chosen '
            'candidate is then refitted on the whole training set.</p>')


def _comparison_html(report: dict) -> str:
    comp = report.get("comparison")
    if not comp:
        return ""
    cols = [c for c in comp["columns"] if c != "direction"]
    pct_rows = {"accuracy", "balanced_accuracy", "worst_class", "gap", "bias_reduction", "utility_ratio",
                "label_fidelity", "worst_class_fidelity", "mia_tpr_at_1pct_fpr", "mia_tpr_at_0.1pct_fpr",
                "precision", "recall"}
    body = []
    for r in comp["table"]:
        m = r["metric"]
        vals = [r.get(c) for c in cols]
        finite = [v for v in vals if isinstance(v, (int, float))]
        best = (max(finite) if r["direction"] == "higher" else min(finite)) if finite else None
        cells = []
        for v in vals:
            if v is None:
                txt = "∞ (not DP)" if m == "epsilon" else "–"
            elif m in pct_rows:
                txt = fmt_pct(v)
            elif m == "near_copies":
                txt = f"{int(v)}"
            else:
                txt = f"{v:.3f}"
            style = ' style="font-weight:700;background:#ecfdf5"' if (best is not None and v == best and len(finite) > 1) else ""
            cells.append(f"<td{style}>{txt}</td>")
        body.append(f'<tr><td class="t">{html_escape(m)}</td>{"".join(cells)}<td class="t">{html_escape(r["direction"])}</td></tr>')
    head = "".join(f"<th>{html_escape(c)}</th>" for c in cols)
    return (f'<h2>Comparison</h2><div class="panel"><table><tr><th class="t">metric</th>{head}<th class="t">better</th></tr>'
            + "".join(body) + f'</table><p class="small">bias_reduction = 1 − bias / bias of the reference '
            f'({html_escape(comp["reference"])}); best value per row highlighted.</p></div>')


def _definitions_html() -> str:
    return """
<h2>How to read this report</h2>
<div class="panel"><dl>
<dt>Accuracy, balanced accuracy</dt><dd>Share of real test images classified correctly; the mean of the per-class accuracies (recalls).</dd>
<dt>Worst class, gap, class-wise bias</dt><dd>Lowest per-class accuracy; highest minus lowest; population standard deviation of the per-class accuracies (0 = every class served equally).</dd>
<dt>Bias reduction of A over B</dt><dd>1 − bias<sub>A</sub> / bias<sub>B</sub>: 0.4 means A's class-wise bias is 40% lower.</dd>
<dt>Label fidelity</dt><dd>Share of images generated for class k that a CNN trained on real data assigns to class k.</dd>
<dt>Total variation (TV)</dt><dd>½ Σ|p<sub>k</sub> − q<sub>k</sub>| between two class histograms (0 = same proportions).</dd>
<dt>DCR, DCR ratio, near copies</dt><dd>Distance from a synthetic image to its closest real record; median to training over median to unseen hold-out (equal-size sets); images within a few grey levels of a training image.</dd>
<dt>Membership inference AUC</dt><dd>How well "low denoising loss ⇒ training image" separates training from unseen images (0.5 = no better than guessing).</dd>
<dt>TPR at FPR, log-log ROC</dt><dd>Share of training images the attack exposes while wrongly accusing that share of outsiders; the ROC on log axes shows the low-FPR regime, where a few records are confidently exposed.</dd>
<dt>FID, precision, recall</dt><dd>Fréchet distance between feature statistics of synthetic and real test images (0 = same); share of synthetic images within the k-NN balls of real ones, and of real images within those of synthetic ones (Kynkäänniemi et al. 2019). The feature space is named: InceptionV3, or the judge's features (comparable only within audits of the same real data).</dd>
<dt>Group difference, ratio</dt><dd>Best minus worst group accuracy; worst over best (Fairlearn MetricFrame), per site and per attribute column.</dd>
</dl></div>"""


def real_mismatch_banner(report: dict) -> str:
    """The loud banner of an audit against other data than the training data."""
    warning = report.get("real_data_warning")
    if not warning:
        return ""
    return ('<div class="panel" style="background:#b45309;color:#fff;font-size:1.2em;font-weight:700;margin:12px 0">'
            f'{html_escape(warning)} Do not read this report as the audit of the training data.</div>')


def render_html(report: dict, *, synthetic: ImageDataset, train: ImageDataset | None = None) -> str:
    ds = report["dataset"]
    made_by = source_label(ds["source"]) if ds.get("source") else "unknown model"
    notes = "".join(f"<li>{html_escape(n)}</li>" for n in report.get("notes", []))
    notes_html = f'<div class="panel note" style="margin-top:12px"><ul style="margin:0">{notes}</ul></div>' if notes else ""
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>synthfed audit: {html_escape(report['name'])}</title>
<meta name="viewport" content="width=device-width, initial-scale=1"><style>{CSS}</style></head>
<body><main>
{personal_data_banner(report)}
{real_mismatch_banner(report)}
<h1>Audit of synthetic dataset “{html_escape(report['name'])}”</h1>
<div class="sub">{ds['num_images']} images, {len(ds['class_names'])} classes, {ds['image_shape'][1]}×{ds['image_shape'][2]}
× {ds['image_shape'][0]} channel(s) · made by {html_escape(made_by)} · tested against real data {html_escape(report['real']['spec'])}
({report['real']['train_size']} training / {report['real']['test_size']} test images) · seed {report['settings']['seed']}</div>
{_summary_html(report)}
{notes_html}
{_comparison_html(report)}
{_metrics_table(report)}
{distribution_html(report)}
{_fairness_html(report)}
{groups_html(report)}
{_samples_html(synthetic)}
{privacy_html(report, synthetic, train)}
<div class="panel" style="margin-top:14px">{_selection_table(report)}</div>
{_definitions_html()}
<p class="small">Written by <code>synthfed audit</code>. Machine-readable: report.json and the CSV tables next to this file.</p>
</main></body></html>
"""


# --------------------------------------------------------------------------- files
def _write_csv(path: Path, header: list[str], rows: list[list]) -> None:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    for r in rows:
        writer.writerow(["" if v is None else v for v in r])
    write_bytes_atomic(path, buf.getvalue().encode("utf-8"))


def write_tables(report: dict, out_dir: Path) -> list[Path]:
    """per_class.csv, classifiers.csv, selection.csv, confusion.csv, closest_pairs.csv (+ privacy_clients.csv,
    distribution.csv, groups.csv, mia_roc.csv, comparison.csv when the report has their data)."""
    names = report["dataset"]["class_names"]
    fair = report["fairness"]
    models = [report["utility"]["tstr"], *report["utility"]["baselines"]]
    written = []
    hist = fair["histograms"]
    real_train = hist.get("real_train")  # withheld unless the report is marked as personal data
    header = ["class", "requested", "generated", "judged_as", *(["real_train"] if real_train else []), "real_test",
              "label_fidelity"]
    header += [f"recall[{m['name']}]" for m in models]
    rows = [[n, hist["requested"][k], hist["generated"][k], hist["predicted_by_judge"][k],
             *([real_train[k]] if real_train else []), report["real"]["test_counts"][k],
             fair["label_fidelity_per_class"][k], *[m["per_class_recall"][k] for m in models]]
            for k, n in enumerate(names)]
    _write_csv(out_dir / "per_class.csv", header, rows)
    written.append(out_dir / "per_class.csv")
    _write_csv(out_dir / "classifiers.csv",
               ["trained_on", "kind", "train_size", "classifier", "accuracy", "balanced_accuracy", "worst_class",
                "worst_class_name", "gap", "bias"],
               [[m["name"], m["kind"], m["train_size"], m["classifier"], m["accuracy"], m["balanced_accuracy"],
                 m["worst_class"], names[m["worst_class_index"]], m["gap"], m["bias"]] for m in models])
    written.append(out_dir / "classifiers.csv")
    _write_csv(out_dir / "selection.csv", ["trained_on", "candidate", "family", "params", "val_accuracy", "fit_seconds", "chosen"],
               [[m["name"], s["candidate"], s["family"], json.dumps(s["params"], sort_keys=True), s["val_accuracy"],
                 s["fit_seconds"], s["chosen"]] for m in models for s in m["selection"]])
    written.append(out_dir / "selection.csv")
    _write_csv(out_dir / "confusion.csv", ["true \\ predicted", *names],
               [[n, *fair["confusion"][k]] for k, n in enumerate(names)])
    written.append(out_dir / "confusion.csv")
    mem = report["privacy"]["memorization"]
    _write_csv(out_dir / "closest_pairs.csv",
               ["synthetic_index", "train_index", "distance", "rms", "holdout_distance", "near_copy"],
               [[p["synthetic_index"], p["train_index"], p["distance"], p["rms"], p["holdout_distance"], p["near_copy"]]
                for p in mem["closest_pairs"]])
    written.append(out_dir / "closest_pairs.csv")
    clients = report["privacy"].get("clients") or []
    if clients:
        keys = list(clients[0])
        _write_csv(out_dir / "privacy_clients.csv", keys, [[r.get(k) for k in keys] for r in clients])
        written.append(out_dir / "privacy_clients.csv")
    written += write_section_tables(report, out_dir, _write_csv)
    comp = report.get("comparison")
    if comp:
        cols = ["metric", *comp["columns"]]
        _write_csv(out_dir / "comparison.csv", cols, [[r.get(c) for c in cols] for r in comp["table"]])
        written.append(out_dir / "comparison.csv")
    return written


def write_report(report: dict, out_dir: str | Path, *, synthetic: ImageDataset, train: ImageDataset | None = None,
                 holdout: ImageDataset | None = None) -> dict[str, Path]:
    """Write report.html, report.json and the CSV tables into ``out_dir`` (created if needed).

    ``synthetic`` and ``train`` supply the pixels of the sample grid and the
    closest-pair gallery (the report itself stores only indices). ``train``
    (real training images) is accepted only for a report marked
    ``contains_personal_data``, whose page then carries the banner.
    """
    if train is not None and not report.get("contains_personal_data"):
        raise ValueError("real training images go only into a report marked as containing personal data")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(out_dir / "report.json",
                       (json.dumps(report, indent=2, sort_keys=True, allow_nan=False) + "\n").encode("utf-8"))
    write_bytes_atomic(out_dir / "report.html", render_html(report, synthetic=synthetic, train=train).encode("utf-8"))
    tables = write_tables(report, out_dir)
    paths = {"html": out_dir / "report.html", "json": out_dir / "report.json", **{p.stem: p for p in tables}}
    _shareable(paths.values())
    return paths


def _shareable(paths) -> None:
    """Atomic writes create 0600 temp files; a report is meant to be read by others (umask still applies)."""
    umask = os.umask(0)
    os.umask(umask)
    for p in paths:
        try:
            os.chmod(p, 0o666 & ~umask)
        except OSError:
            pass
