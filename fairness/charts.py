"""Drawing primitives of the audit report: inline SVG bar charts and
confusion matrices, base64 PNG strips, number formatting and the page's CSS.

Kept apart from ``report.py`` (which decides what the page says) so that the
page's content and its drawing can change independently."""

from __future__ import annotations

import base64
import html
import io
import math
from typing import Sequence

import numpy as np

COLORS = {"synthetic": "#2563eb", "real_pooled": "#9ca3af", "clients": "#f59e0b", "fidelity": "#059669",
          "requested": "#9ca3af", "judged": "#2563eb", "real": "#d1d5db"}
LEVEL_STYLE = {"ok": ("#ecfdf5", "#047857", "OK"), "warning": ("#fffbeb", "#b45309", "CHECK"),
               "alert": ("#fef2f2", "#b91c1c", "ALERT")}


# --------------------------------------------------------------------------- small utilities
def html_escape(x) -> str:
    return html.escape(str(x), quote=True)


def fmt_num(v, fmt: str = "{:.3f}") -> str:
    if v is None or (isinstance(v, float) and (math.isnan(v))):
        return "–"
    if isinstance(v, float) and math.isinf(v):
        return "∞"
    return fmt.format(v) if isinstance(v, (int, float)) else html_escape(v)


def fmt_pct(v) -> str:
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.0f}%"


def png_data_uri(array: np.ndarray) -> str:
    """uint8 (H, W) or (H, W, 3) -> data URI."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array)).save(buf, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _tile(image: np.ndarray, *, target: int = 44) -> np.ndarray:
    """One CHW uint8 image to HW(C), enlarged (nearest) to about ``target`` pixels."""
    c, h, w = image.shape
    scale = max(1, int(math.ceil(target / max(h, w))))
    img = image[0] if c == 1 else image.transpose(1, 2, 0)
    return np.repeat(np.repeat(img, scale, axis=0), scale, axis=1)


def image_strip(images: Sequence[np.ndarray], *, target: int = 44, pad: int = 2) -> np.ndarray:
    tiles = [_tile(im, target=target) for im in images]
    h, w = tiles[0].shape[:2]
    shape = (h, len(tiles) * (w + pad) - pad) + tiles[0].shape[2:]
    out = np.full(shape, 255, dtype=np.uint8)
    for i, t in enumerate(tiles):
        out[:, i * (w + pad) : i * (w + pad) + w] = t
    return out


# --------------------------------------------------------------------------- SVG charts
def bars_svg(labels: Sequence[str], series: list[tuple[str, Sequence[float | None], str]], *, title: str,
              max_value: float = 1.0, percent: bool = True, width: int = 560) -> str:
    """Horizontal grouped bars: one group per label, one bar per series; legend on top."""
    n_s = len(series)
    bar_h, gap = 9, 7
    group_h = n_s * bar_h + gap
    left, right = 64, 48
    plot_w = width - left - right
    legend, x, y = [], left, 8
    for name, _, color in series:  # legend, wrapped onto more lines when needed
        w = 20 + int(5.9 * len(name))
        if x + w > width and x > left:
            x, y = left, y + 16
        legend.append(f'<rect x="{x}" y="{y}" width="11" height="11" fill="{color}"/>'
                      f'<text x="{x + 15}" y="{y + 10}" class="lg">{html_escape(name)}</text>')
        x += w + 12
    top = y + 26
    height = top + len(labels) * group_h + 22
    out = [f'<svg class="chart" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" role="img" aria-label="{html_escape(title)}">', *legend]
    step = 0.25 if max_value >= 0.75 else (0.1 if max_value > 0.25 else 0.05)
    for tick in np.arange(0.0, max_value + 1e-9, step):
        tx = left + plot_w * tick / max_value
        out.append(f'<line x1="{tx:.1f}" y1="{top - 4}" x2="{tx:.1f}" y2="{height - 20}" class="grid"/>')
        lab = f"{100 * tick:.0f}%" if percent else f"{tick:.2g}"
        out.append(f'<text x="{tx:.1f}" y="{height - 6}" class="tick" text-anchor="middle">{lab}</text>')
    for i, label in enumerate(labels):
        y0 = top + i * group_h
        out.append(f'<text x="{left - 8}" y="{y0 + n_s * bar_h / 2 + 4:.1f}" class="cls" text-anchor="end">{html_escape(label)}</text>')
        for j, (name, values, color) in enumerate(series):
            v = values[i]
            if v is None or (isinstance(v, float) and math.isnan(v)):
                continue
            bw = plot_w * max(0.0, min(float(v), max_value)) / max_value
            y = y0 + j * bar_h
            text = f"{100 * v:.0f}%" if percent else f"{v:.3g}"
            out.append(f'<rect x="{left}" y="{y}" width="{bw:.1f}" height="{bar_h - 1}" fill="{color}">'
                       f'<title>{html_escape(name)}, {html_escape(label)}: {text}</title></rect>')
            if j == 0:
                out.append(f'<text x="{left + bw + 4:.1f}" y="{y + bar_h - 1.5}" class="val">{text}</text>')
    out.append("</svg>")
    return "".join(out)


def confusion_svg(matrix: Sequence[Sequence[int]], names: Sequence[str]) -> str:
    m = np.asarray(matrix, dtype=float)
    k = len(names)
    rows = m.sum(axis=1, keepdims=True)
    frac = np.divide(m, rows, out=np.zeros_like(m), where=rows > 0)
    cell = max(22, min(40, 420 // max(k, 1)))
    left, top = 70, 56
    size_w, size_h = left + k * cell + 10, top + k * cell + 10
    out = [f'<svg class="chart" xmlns="http://www.w3.org/2000/svg" width="{size_w}" height="{size_h}" '
           f'viewBox="0 0 {size_w} {size_h}" role="img" aria-label="confusion matrix">',
           f'<text x="{left + k * cell / 2}" y="14" class="lg" text-anchor="middle">predicted class →</text>',
           f'<text x="12" y="{top + k * cell / 2}" class="lg" text-anchor="middle" '
           f'transform="rotate(-90 12 {top + k * cell / 2})">true class →</text>']
    for j, n in enumerate(names):
        out.append(f'<text x="{left + j * cell + cell / 2}" y="{top - 8}" class="tick" text-anchor="middle">{html_escape(n[:6])}</text>')
    for i, n in enumerate(names):
        out.append(f'<text x="{left - 6}" y="{top + i * cell + cell / 2 + 4}" class="tick" text-anchor="end">{html_escape(n[:10])}</text>')
        for j in range(k):
            f = frac[i, j]
            if i == j:
                color = f"rgba(37,99,235,{0.08 + 0.92 * f:.3f})"
            else:
                color = f"rgba(220,38,38,{min(1.0, 0.05 + 1.6 * f):.3f})" if f > 0 else "#f9fafb"
            txt_color = "#fff" if f > 0.55 else "#111827"
            out.append(f'<rect x="{left + j * cell}" y="{top + i * cell}" width="{cell - 1}" height="{cell - 1}" '
                       f'fill="{color}"><title>true {html_escape(n)}, predicted {html_escape(names[j])}: {int(m[i, j])} '
                       f'({100 * f:.0f}% of row)</title></rect>')
            if m[i, j] > 0:
                out.append(f'<text x="{left + j * cell + cell / 2}" y="{top + i * cell + cell / 2 + 4}" class="cell" '
                           f'fill="{txt_color}" text-anchor="middle">{int(m[i, j])}</text>')
    out.append("</svg>")
    return "".join(out)


# --------------------------------------------------------------------------- HTML sections
CSS = """
body{font-family:-apple-system,"Segoe UI",Helvetica,Arial,sans-serif;margin:0;background:#f3f4f6;color:#111827;}
main{max-width:1200px;margin:0 auto;padding:20px 28px 40px;}
h1{font-size:24px;margin:4px 0 2px;} h2{font-size:18px;margin:28px 0 8px;border-bottom:1px solid #d1d5db;padding-bottom:4px;}
h3{font-size:14px;margin:12px 0 6px;color:#374151;}
.sub{color:#4b5563;font-size:13px;margin-bottom:14px;}
.cards{display:grid;grid-template-columns:repeat(3,1fr);gap:14px;}
.card{border-radius:8px;padding:12px 14px;border:1px solid #e5e7eb;font-size:13.5px;line-height:1.45;}
.card h3{margin:0 0 6px;font-size:15px;color:inherit;display:flex;justify-content:space-between;align-items:center;}
.badge{font-size:11px;font-weight:700;padding:2px 8px;border-radius:10px;color:#fff;}
.kpis{display:grid;grid-template-columns:repeat(6,1fr);gap:10px;margin-top:14px;}
.kpi{background:#fff;border:1px solid #e5e7eb;border-radius:8px;padding:8px 10px;}
.kpi .v{font-size:22px;font-weight:700;} .kpi .l{font-size:11.5px;color:#6b7280;}
.panel{background:#fff;border:1px solid #e5e7eb;border-radius:8px;padding:12px 14px;}
.row{display:flex;flex-wrap:wrap;gap:14px;align-items:flex-start;}
table{border-collapse:collapse;font-size:12.5px;background:#fff;}
th,td{border-bottom:1px solid #e5e7eb;padding:4px 8px;text-align:right;} th{background:#f9fafb;}
td.t,th.t{text-align:left;} tr.chosen td{font-weight:700;background:#eff6ff;}
.chart .lg{font-size:11px;fill:#374151;} .chart .tick{font-size:10px;fill:#6b7280;} .chart .cls{font-size:11px;fill:#111827;}
.chart .val{font-size:9.5px;fill:#374151;} .chart .cell{font-size:10px;} .chart .grid{stroke:#e5e7eb;}
.samples td{text-align:left;border:none;padding:2px 6px;} .samples img,.pairs img{image-rendering:pixelated;display:block;}
.pairs{display:flex;flex-wrap:wrap;gap:10px;} .pair{background:#fff;border:1px solid #e5e7eb;border-radius:6px;padding:6px;font-size:11px;}
.pair.copy{border:2px solid #b91c1c;} .note{font-size:12.5px;color:#4b5563;} .small{font-size:12px;color:#4b5563;}
dl{font-size:12.5px;} dt{font-weight:700;margin-top:6px;} dd{margin-left:14px;color:#374151;}
"""


def roc_svg(fpr: Sequence[float], tpr: Sequence[float], *, tpr_at: dict[str, float], resolution: float,
             width: int = 380, height: int = 330) -> str:
    """The attack's ROC on log-log axes (TPR against FPR), the chance diagonal
    dashed and the stated low-FPR points marked. Axes start one decade at or
    below the FPR resolution (1 / non-members; at most 1e-3); points below the
    axis (FPR or TPR 0) are drawn on it."""
    lo = 10.0 ** min(-3, math.floor(math.log10(max(resolution, 1e-9)) + 1e-9))
    left, right, top, bottom = 54, 14, 12, 44
    pw, ph = width - left - right, height - top - bottom
    span = -math.log10(lo)

    def x(v: float) -> float:
        return left + pw * (math.log10(max(float(v), lo)) + span) / span

    def y(v: float) -> float:
        return top + ph - ph * (math.log10(max(float(v), lo)) + span) / span

    out = [f'<svg class="chart" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" role="img" aria-label="membership attack ROC, log-log">']
    for e in range(int(round(math.log10(lo))), 1):
        v = 10.0 ** e
        label = "1" if e == 0 else f"1e{e}"
        out.append(f'<line x1="{x(v):.1f}" y1="{top}" x2="{x(v):.1f}" y2="{top + ph}" class="grid"/>'
                   f'<line x1="{left}" y1="{y(v):.1f}" x2="{left + pw}" y2="{y(v):.1f}" class="grid"/>'
                   f'<text x="{x(v):.1f}" y="{top + ph + 14}" class="tick" text-anchor="middle">{label}</text>'
                   f'<text x="{left - 5}" y="{y(v) + 3.5:.1f}" class="tick" text-anchor="end">{label}</text>')
    out.append(f'<line x1="{x(lo):.1f}" y1="{y(lo):.1f}" x2="{x(1):.1f}" y2="{y(1):.1f}" stroke="#9ca3af" '
               'stroke-dasharray="4 3"><title>chance: TPR = FPR</title></line>')
    pts = " ".join(f"{x(f):.1f},{y(t):.1f}" for f, t in zip(fpr, tpr))
    out.append(f'<polyline points="{pts}" fill="none" stroke="{COLORS["synthetic"]}" stroke-width="1.8"/>')
    for i, (target, value) in enumerate(sorted(tpr_at.items(), key=lambda kv: -float(kv[0]))):
        tx, ty = x(float(target)), y(value)
        out.append(f'<line x1="{tx:.1f}" y1="{top}" x2="{tx:.1f}" y2="{top + ph}" stroke="#b45309" '
                   f'stroke-dasharray="2 2"/><circle cx="{tx:.1f}" cy="{ty:.1f}" r="3.2" fill="#b45309">'
                   f'<title>TPR at FPR {target}: {100 * value:.1f}%</title></circle>'
                   f'<text x="{tx + 4:.1f}" y="{top + 12 + 13 * i}" class="val">TPR@{target} = {100 * value:.1f}%</text>')
    out.append(f'<text x="{left + pw / 2}" y="{height - 6}" class="lg" text-anchor="middle">false-positive rate '
               f'(non-members called members), log</text>'
               f'<text x="12" y="{top + ph / 2}" class="lg" text-anchor="middle" transform="rotate(-90 12 '
               f'{top + ph / 2})">true-positive rate, log</text></svg>')
    return "".join(out)
