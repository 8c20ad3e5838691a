"""The audit page's sections on distribution fidelity (FID, precision/recall)
and on fairness across sites and attribute groups, and their CSV tables.

Kept apart from ``report.py`` so that each file stays readable; the drawing
primitives are those of ``charts.py``. Reports written before these sections
existed have neither key and get neither section."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from synthfed.fairness.charts import COLORS, bars_svg, html_escape, fmt_num, fmt_pct

__all__ = ["distribution_html", "groups_html", "write_section_tables"]

_CLASSIFIER_TITLES = {"synthetic": "trained on synthetic", "real_pooled": "trained on real (pooled)"}


# --------------------------------------------------------------------------- distribution fidelity
def distribution_html(report: dict) -> str:
    """FID and precision/recall, overall and per class, with the feature space named."""
    d = report.get("distribution")
    if not d:
        return ""
    if "fid" not in d:
        return f'<h2>Distribution fidelity</h2><p class="small">Not computed: {html_escape(d.get("skipped", ""))}.</p>'
    rows = "".join(
        f'<tr><td class="t">{html_escape(r["class"])}</td><td>{r["num_synthetic"]}</td><td>{r["num_real"]}</td>'
        f'<td>{fmt_num(r["fid"], "{:.2f}")}</td><td>{fmt_pct(r["precision"])}</td><td>{fmt_pct(r["recall"])}</td></tr>'
        for r in d["per_class"])
    names = [r["class"] for r in d["per_class"]]
    pr_svg = bars_svg(names, [("precision", [r["precision"] for r in d["per_class"]], COLORS["synthetic"]),
                               ("recall", [r["recall"] for r in d["per_class"]], COLORS["clients"])],
                       title="precision and recall per class", width=420)
    return f"""
<h2>Distribution fidelity</h2>
<div class="row">
<div class="panel"><table>
<tr><td class="t">{html_escape(d['label'])}</td><td><b>{fmt_num(d['fid'], "{:.2f}")}</b></td></tr>
<tr><td class="t">precision (share of synthetic images inside the real manifold, k = {d['k']})</td><td><b>{fmt_pct(d['precision'])}</b></td></tr>
<tr><td class="t">recall (share of real images inside the synthetic manifold, k = {d['k']})</td><td><b>{fmt_pct(d['recall'])}</b></td></tr>
<tr><td class="t">images compared: synthetic | real test (stratified cap {d['max_images']} each)</td><td>{d['num_synthetic']} | {d['num_real']}</td></tr>
</table>
<p class="small" style="max-width:520px">Features: {html_escape(d['features'])}. Reference: the {html_escape(d['reference'])}.
Lower FID is closer; FID grows when fewer images are compared, so compare numbers made with the same counts.
Low precision: images unlike any real one; low recall: parts of the real data the synthetic set misses.</p></div>
<div class="panel"><h3>Precision and recall per class</h3>{pr_svg}</div>
</div>
<div class="panel" style="margin-top:14px"><h3>Per class (FID on few images is biased upwards)</h3><table>
<tr><th class="t">class</th><th>synthetic</th><th>real</th><th>FID</th><th>precision</th><th>recall</th></tr>{rows}</table></div>"""


# --------------------------------------------------------------------------- groups
def _group_table_html(table: dict, min_size: int) -> str:
    by = table["by_classifier"]
    kinds = [k for k in ("synthetic", "real_pooled") if k in by]
    names = [g["group"] for g in by["synthetic"]["groups"]]
    acc = {k: {g["group"]: g["accuracy"] for g in by[k]["groups"]} for k in kinds}
    counts = {g["group"]: g["count"] for g in by["synthetic"]["groups"]}
    head = "".join(f"<th>accuracy, {html_escape(_CLASSIFIER_TITLES[k])}</th>" for k in kinds)
    body = "".join(
        f'<tr><td class="t">{html_escape(n)}{" <span class=small>(small)</span>" if counts[n] < min_size else ""}</td>'
        f'<td>{counts[n]}</td>' + "".join(f"<td>{fmt_pct(acc[k].get(n))}</td>" for k in kinds) + "</tr>"
        for n in names)
    foot = "".join(
        f'<tr><td class="t">difference (max − min) | ratio (min / max), {html_escape(_CLASSIFIER_TITLES[k])}</td><td></td>'
        + "".join(f"<td>{fmt_pct(by[k]['difference'])} | {fmt_num(by[k]['ratio'], '{:.2f}')}</td>" if k == kk else "<td></td>"
                  for kk in kinds) + "</tr>"
        for k in kinds)
    series = [(_CLASSIFIER_TITLES[k], [acc[k].get(n) for n in names],
               COLORS["synthetic"] if k == "synthetic" else COLORS["real_pooled"]) for k in kinds]
    svg = bars_svg(names, series, title=f"accuracy per {table['feature']}", width=440)
    title = "Per site" if table["kind"] == "site" else f"Per attribute '{html_escape(table['feature'])}'"
    cap = f"; at most {table['max_per_group']} records per group" if table.get("max_per_group") else ""
    return (f'<div class="panel"><h3>{title}</h3><div class="row"><div><table><tr><th class="t">group</th>'
            f'<th>records</th>{head}</tr>{body}{foot}</table><p class="small" style="max-width:460px">Evaluated on '
            f'{html_escape(table["evaluated_on"])}{cap}.</p></div><div>{svg}</div></div></div>')


def groups_html(report: dict) -> str:
    """Accuracy per site and per attribute group (Fairlearn MetricFrame)."""
    g = report.get("groups")
    if not g:
        return ""
    tables = "".join(_group_table_html(t, g["min_group_size"]) for t in g["tables"])
    skipped = "".join(f"<li>{html_escape(s)}</li>" for s in g.get("skipped", []))
    skipped = f'<ul class="small">{skipped}</ul>' if skipped else ""
    return f"""
<h2>Fairness across sites and attribute groups</h2>
<p class="note">Accuracy of the classifier trained on the synthetic set, per group, computed with Fairlearn's
MetricFrame: difference = best − worst group, ratio = worst / best (1 = every group served equally). Groups with
fewer than {g['min_group_size']} records are marked small and left out of the verdict.</p>
{tables or '<p class="small">No group beyond the class could be formed.</p>'}{skipped}"""


# --------------------------------------------------------------------------- CSV tables
def write_section_tables(report: dict, out_dir: Path, write_csv: Callable[[Path, list, list], None]) -> list[Path]:
    """distribution.csv (overall + per class), groups.csv (one row per table,
    classifier and group, with that table's difference and ratio) and
    mia_roc.csv (the attack's ROC points), each when the report has the data."""
    written = []
    d = report.get("distribution") or {}
    if "fid" in d:
        cols = ["num_synthetic", "num_real", "fid", "precision", "recall"]
        rows = [["(all)", *(d[c] for c in cols)]] + [[r["class"], *(r[c] for c in cols)] for r in d["per_class"]]
        write_csv(out_dir / "distribution.csv", ["class", *cols, "feature_space"],
                  [[*r, d["feature_space"]] for r in rows])
        written.append(out_dir / "distribution.csv")
    g = report.get("groups") or {}
    if g.get("tables"):
        rows = [[t["feature"], t["kind"], s["classifier"], grp["group"], grp["count"], grp["accuracy"],
                 s["difference"], s["ratio"]]
                for t in g["tables"] for s in t["by_classifier"].values() for grp in s["groups"]]
        write_csv(out_dir / "groups.csv", ["feature", "kind", "classifier", "group", "count", "accuracy",
                                           "difference", "ratio"], rows)
        written.append(out_dir / "groups.csv")
    roc = ((report.get("privacy") or {}).get("membership") or {}).get("roc")
    if roc:
        write_csv(out_dir / "mia_roc.csv", ["fpr", "tpr"], [list(p) for p in zip(roc["fpr"], roc["tpr"])])
        written.append(out_dir / "mia_roc.csv")
    return written
