"""The privacy section of the audit: from the dataset card to the report.

``privacy_card`` reads what the card claims (and how strong it is, by the
one scale of ``synthfed.card.guarantee_strength``); ``privacy_html`` draws
the section. Real training images appear in it only when the report was
asked to include them (``--include-real-images``), and the page then says
so in a banner: without them the closest pairs keep their distances and
verdict but show the synthetic side only."""

from __future__ import annotations

from synthfed.card import STRENGTH_TEXT, guarantee_strength
from synthfed.privacy.accountant import ADJACENCY, UNIT_OF_PRIVACY
from synthfed.data import ImageDataset
from synthfed.fairness.charts import LEVEL_STYLE, html_escape, fmt_num, fmt_pct, png_data_uri, roc_svg, image_strip
from synthfed.fairness.release import PERSONAL_DATA_BANNER

# The guarantee's badge: its own colour per strength, so that epsilon = 1000
# never wears the badge of epsilon = 1.
STRENGTH_STYLE = {"strong": ("#047857", "strong DP"), "moderate": ("#0369a1", "moderate DP"),
                  "weak": ("#c2410c", "weak DP"), "none": ("#b91c1c", "not DP")}


def privacy_card(card: dict) -> dict:
    """The card's privacy claim, as the report states it."""
    p = card.get("privacy") or {}
    rows = list(p.get("clients") or [])
    dp = bool(p.get("differentially_private", False))
    eps = [r.get("eps_upper", r.get("eps_estimate")) for r in rows]
    eps = [float(e) for e in eps if e is not None]
    deltas = [float(r["delta"]) for r in rows if r.get("delta") is not None]
    if not p:
        statement = "no privacy statement in the dataset card: treat as NOT differentially private"
    else:
        statement = str(p.get("statement") or ("differentially private" if dp else "NOT differentially private"))
    eps_max = max(eps) if (dp and eps) else None
    strength = guarantee_strength(eps_max) if dp else "none"
    return {
        "differentially_private": dp,
        "statement": statement,
        "clients": rows,
        "epsilon_max": eps_max,
        "delta_max": max(deltas) if (dp and deltas) else None,
        "guarantee_strength": strength,
        "guarantee": STRENGTH_TEXT[strength],
        "unit_of_privacy": UNIT_OF_PRIVACY if dp else None,
        "adjacency": ADJACENCY if dp else None,
        "labels": p.get("labels"),
    }


def strength_badge(priv: dict) -> str:
    strength = priv.get("guarantee_strength") or ("none" if not priv.get("differentially_private") else "moderate")
    color, word = STRENGTH_STYLE[strength]
    return f'<span class="badge" style="background:{color}" title="{html_escape(STRENGTH_TEXT[strength])}">{word}</span>'


def personal_data_banner(report: dict) -> str:
    if not report.get("contains_personal_data"):
        return ""
    return ('<div class="panel" style="background:#b91c1c;color:#fff;font-size:1.2em;font-weight:700;'
            f'margin:12px 0">This report {html_escape(PERSONAL_DATA_BANNER)}. It embeds real training images and the real '
            'class histogram of the training data (written with --include-real-images); keep it with the data owner.'
            '</div>')


def _dp_line(priv: dict) -> str:
    statement = str(priv["statement"])
    if priv["differentially_private"]:
        line = "<b>Differentially private:</b> " + html_escape(statement)
        if priv.get("guarantee_strength") == "weak":
            eps = fmt_num(priv.get("epsilon_max"), "{:.4g}")
            line += f' <b style="color:{STRENGTH_STYLE["weak"][0]}">({html_escape(priv["guarantee"])}; ε ≤ {eps})</b>'
        return line
    if statement.lower().startswith("not differentially private"):
        head, _, rest = statement.partition(":")
        return f'<b style="color:#b91c1c">{html_escape(head)}</b>' + (f": {html_escape(rest.strip())}" if rest else "")
    return '<b style="color:#b91c1c">NOT differentially private:</b> ' + html_escape(statement)


def _client_table(priv: dict) -> str:
    if not priv.get("clients"):
        return ""
    rows = "".join(
        f'<tr><td class="t">{html_escape(r.get("client"))}</td><td>{html_escape(r.get("n", "–"))}</td>'
        f'<td class="t">{html_escape(r.get("mechanisms", ""))}</td><td>{fmt_num(r.get("eps_lower"))}</td>'
        f'<td>{fmt_num(r.get("eps_estimate"))}</td><td>{fmt_num(r.get("eps_upper"))}</td>'
        f'<td>{fmt_num(r.get("delta"), "{:.1e}")}</td><td class="t">{guarantee_strength(r.get("eps_upper"))}</td></tr>'
        for r in priv["clients"])
    return ('<table><tr><th class="t">client</th><th>records</th><th class="t">mechanisms</th>'
            '<th>ε lower</th><th>ε estimate</th><th>ε upper</th><th>δ</th><th class="t">strength</th></tr>'
            + rows + "</table>")


def _mia_html(mia: dict) -> str:
    if "auc" not in mia:
        return f"<p class=\"small\">Not run: {html_escape(mia.get('skipped', 'no source model'))}.</p>"
    text = (f"<p class=\"note\">Loss-threshold attack ({mia['num_members']} members vs {mia['num_non_members']} non-members, "
            f"timesteps {', '.join(str(t) for t in mia['timesteps'])}, {mia['draws']} noise draws each): "
            f"<b>ROC AUC {mia['auc']:.3f}</b> (0.5 = guessing), TPR at 1% FPR <b>{fmt_pct(mia['tpr_at_1pct_fpr'])}</b>, "
            f"mean loss members {mia['member_loss_mean']:.4f} vs non-members {mia['non_member_loss_mean']:.4f}. "
            f"Members: {html_escape(mia.get('members', ''))}; non-members: {html_escape(mia.get('non_members', ''))}.</p>")
    return text + _roc_html(mia)


def _roc_html(mia: dict) -> str:
    """The ROC on log-log axes with the TPR at each stated FPR (reports from before the curve: nothing)."""
    roc, tpr_at = mia.get("roc"), mia.get("tpr_at_fpr") or {}
    if not roc:
        return ""
    res = float(mia.get("fpr_resolution") or 1.0 / max(int(mia["num_non_members"]), 1))
    stated = "; ".join(f"TPR at FPR {t}: <b>{100 * v:.1f}%</b>" + (" (read at zero false positives: "
                                                                     f"{1 / res:.0f} non-members resolve FPR "
                                                                     f"{res:.1g} at best)" if float(t) < res else "")
                       for t, v in sorted(tpr_at.items(), key=lambda kv: -float(kv[0])))
    svg = roc_svg(roc["fpr"], roc["tpr"], tpr_at=tpr_at, resolution=res)
    return (f'<div class="row"><div class="panel">{svg}</div><p class="small" style="max-width:420px">ROC of the '
            f"attack on log-log axes (Carlini et al. 2022: an attack matters by the records it exposes at a low "
            f"false-positive rate, which a linear plot and the AUC hide). The dashed diagonal is guessing. {stated}."
            "</p></div>")


def _gallery(mem: dict, synthetic: ImageDataset, train: ImageDataset | None) -> str:
    """Closest pairs: both images only when ``train`` is given (the report then
    carries the personal-data banner); otherwise the synthetic side alone."""
    cells = []
    for p in mem["closest_pairs"]:
        images = [synthetic.images[p["synthetic_index"]]]
        if train is not None:
            images.append(train.images[p["train_index"]])
        alt = "synthetic and nearest training image" if train is not None else "synthetic image"
        cells.append(
            f'<div class="pair{" copy" if p["near_copy"] else ""}"><img alt="{alt}" '
            f'src="{png_data_uri(image_strip(images, target=48, pad=4))}"><div>synthetic #{p["synthetic_index"]}'
            + (f' | train #{p["train_index"]}' if train is not None else "")
            + f'</div><div>RMS {p["rms"]:.3f}{" — COPY" if p["near_copy"] else ""}</div></div>')
    if train is not None:
        title = "Closest pairs (synthetic | nearest training image)"
        note = ""
    else:
        title = "Closest pairs (synthetic side; the nearest training images are withheld)"
        note = ('<p class="small">Real training images are personal data and are not shown; '
                '<code>synthfed audit --include-real-images</code> writes a report with them for the data owner '
                'only.</p>')
    return f'<h3>{title}</h3><div class="pairs">{"".join(cells)}</div>{note}'


def privacy_html(report: dict, synthetic: ImageDataset, train: ImageDataset | None) -> str:
    priv = report["privacy"]
    mem = priv["memorization"]
    _, fg, word = LEVEL_STYLE[report["summary"]["privacy"]["level"]]
    q_train = mem.get("dcr_train_quantiles") or []
    q_hold = mem.get("dcr_holdout_quantiles") or []
    unit = priv.get("unit_of_privacy")
    unit_html = f'<p class="small">Unit of privacy: {html_escape(unit)}.</p>' if unit else ""
    return f"""
<h2>Privacy card</h2>
<div class="panel" style="border-left:5px solid {fg}">
<p><span class="badge" style="background:{fg}">{word}</span> {strength_badge(priv)} {_dp_line(priv)}</p>
{_client_table(priv)}
{unit_html}
<h3>Memorization: nearest training image of every synthetic image</h3>
<table>
<tr><td class="t">synthetic images within the copy threshold of a training image (RMS ≤ {mem['copy_rms']:.4f})</td><td><b>{mem['near_copies']}</b> of {mem['num_synthetic']}</td></tr>
<tr><td class="t">real hold-out images that close to a training image (the data's own duplicates)</td><td>{mem['holdout_near_copies']} of {mem['num_holdout']}</td></tr>
<tr><td class="t">closest synthetic–training pair, RMS per pixel (real hold-out–training: closest {mem['holdout_min_rms']:.3f}, median {mem['holdout_median_rms']:.3f})</td><td>{mem['min_rms']:.3f}</td></tr>
<tr><td class="t">median distance to closest record: training | hold-out (equal-size sets of {mem['reference_size']})</td><td>{mem['median_dcr_train']:.3f} | {mem['median_dcr_holdout']:.3f}</td></tr>
<tr><td class="t">DCR ratio (≈ 1: no sign of memorization; well below 1: closer to the training data than unseen data is)</td><td><b>{mem['dcr_ratio']:.3f}</b></td></tr>
<tr><td class="t">synthetic images closer to the training sample than to the hold-out (≈ 50% expected)</td><td>{fmt_pct(mem['share_closer_to_train'])}</td></tr>
</table>
<p class="small">DCR quantiles (min, 5%, 25%, 50%, 75%, max) to the full training set: {', '.join(f'{v:.2f}' for v in q_train)};
to the hold-out: {', '.join(f'{v:.2f}' for v in q_hold)}. Distances are L2 over {mem['num_pixels']} pixel values in [0, 1].</p>
{_gallery(mem, synthetic, train)}
<h3>Membership inference on the model</h3>
{_mia_html(priv.get("membership") or {})}
</div>"""
