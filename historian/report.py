"""Auditor reports: one self-contained HTML file (inline SVG charts, tables), and CSV / JSON
carrying every figure the HTML shows.

A report is a plain mapping of named tables (lists of row dicts) plus ``inputs`` (what went in,
with the inventory hash) and free text; the energy, availability and intervention reports all
render through the same three functions, so the three formats never disagree.
"""

from __future__ import annotations

import csv
import html
import io
import json
import math
from collections.abc import Sequence
from typing import Any

COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd")


def to_json(report: dict[str, Any]) -> str:
    return json.dumps(report, indent=2, ensure_ascii=False, default=str) + "\n"


def to_csv(report: dict[str, Any]) -> str:
    """Every table as a block: a ``table`` column naming it, its own header row, its rows."""
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    inputs = report.get("inputs", {})
    w.writerow(["table", "field", "value"])
    for k, v in inputs.items():
        w.writerow(["inputs", k, v])
    for k in ("uncertainty", "note"):
        if report.get(k):
            w.writerow(["inputs", k, report[k]])
    for name, rows in report.items():
        if not isinstance(rows, list) or not rows or not isinstance(rows[0], dict):
            continue
        cols = list(rows[0].keys())
        w.writerow([])
        w.writerow(["table", *cols])
        for r in rows:
            w.writerow([name, *(_cell(r.get(c)) for c in cols)])
    return out.getvalue()


def _cell(v: Any) -> Any:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    return v


# ---------------------------------------------------------------------------- SVG charts
def bar_chart(title: str, labels: Sequence[str], series: Sequence[tuple[str, Sequence[float | None]]],
              *, unit: str = "", hline: float | None = None, hline_label: str = "",
              ymax: float | None = None, lines: Sequence[tuple[str, Sequence[float | None]]] = ()) -> str:
    """Grouped bars (plus optional lines and a horizontal target line) as inline SVG."""
    W, H, L, B, T = 760, 260, 56, 40, 28
    vals = [v for _, s in (*series, *lines) for v in s if v is not None and not math.isnan(v)]
    top = ymax if ymax is not None else max([*vals, hline or 0.0, 1e-9]) * 1.1
    bottom = min(0.0, *vals) if vals else 0.0
    span = (top - bottom) or 1.0
    n = max(1, len(labels))
    gw = (W - L - 10) / n
    bw = gw * 0.8 / max(1, len(series))

    def y(v: float) -> float:
        return T + (H - T - B) * (1 - (v - bottom) / span)

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" role="img" '
             f'aria-label="{html.escape(title)}" style="font:11px sans-serif">',
             f'<text x="{L}" y="16" style="font-weight:bold">{html.escape(title)}</text>']
    for k in range(5):
        v = bottom + span * k / 4
        parts.append(f'<line x1="{L}" x2="{W - 10}" y1="{y(v):.1f}" y2="{y(v):.1f}" stroke="#ddd"/>'
                     f'<text x="{L - 4}" y="{y(v) + 4:.1f}" text-anchor="end">{v:,.4g}{unit}</text>')
    for j, (name, s) in enumerate(series):
        for i, v in enumerate(s):
            if v is None or math.isnan(v):
                continue
            x = L + i * gw + gw * 0.1 + j * bw
            y0, y1 = sorted((y(0.0), y(v)))
            parts.append(f'<rect x="{x:.1f}" y="{y0:.1f}" width="{bw:.1f}" height="{max(y1 - y0, 0.5):.1f}" '
                         f'fill="{COLORS[j % len(COLORS)]}"><title>{html.escape(str(labels[i]))} '
                         f'{html.escape(name)}: {v:,.4g}{unit}</title></rect>')
    for j, (_name, s) in enumerate(lines):
        pts = [f"{L + i * gw + gw / 2:.1f},{y(v):.1f}" for i, v in enumerate(s) if v is not None and not math.isnan(v)]
        if pts:
            c = COLORS[(len(series) + j) % len(COLORS)]
            parts.append(f'<polyline points="{" ".join(pts)}" fill="none" stroke="{c}" stroke-width="2"/>')
    if hline is not None:
        parts.append(f'<line x1="{L}" x2="{W - 10}" y1="{y(hline):.1f}" y2="{y(hline):.1f}" stroke="#d62728" '
                     f'stroke-dasharray="6,4" stroke-width="2"/><text x="{W - 12}" y="{y(hline) - 4:.1f}" '
                     f'text-anchor="end" fill="#d62728">{html.escape(hline_label)}</text>')
    step = max(1, n // 14)
    for i, lab in enumerate(labels):
        if i % step == 0:
            parts.append(f'<text x="{L + i * gw + gw / 2:.1f}" y="{H - B + 14}" text-anchor="middle">'
                         f'{html.escape(str(lab))}</text>')
    legend = [*(n for n, _ in series), *(n for n, _ in lines)]
    for j, name in enumerate(legend):
        parts.append(f'<rect x="{L + j * 170}" y="{H - 14}" width="10" height="10" fill="{COLORS[j % len(COLORS)]}"/>'
                     f'<text x="{L + j * 170 + 14}" y="{H - 5}">{html.escape(name)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def hbar_chart(title: str, labels: Sequence[str], values: Sequence[float | None], *, unit: str = "",
               vline: float | None = None) -> str:
    """Horizontal bars (worst cabinets)."""
    W, L, row = 760, 260, 18
    H = 30 + row * max(1, len(labels)) + 10
    vals = [v for v in values if v is not None]
    top = max([*vals, vline or 0.0, 1e-9]) * 1.05
    bottom = min(0.0, *vals) if vals else 0.0
    span = top - bottom or 1.0

    def x(v: float) -> float:
        return L + (W - L - 20) * (v - bottom) / span

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" role="img" '
             f'aria-label="{html.escape(title)}" style="font:11px sans-serif">',
             f'<text x="4" y="16" style="font-weight:bold">{html.escape(title)}</text>']
    for i, (lab, v) in enumerate(zip(labels, values, strict=True)):
        yy = 26 + i * row
        parts.append(f'<text x="{L - 4}" y="{yy + 12}" text-anchor="end">{html.escape(str(lab))}</text>')
        if v is not None:
            x0, x1 = sorted((x(0.0), x(v)))
            parts.append(f'<rect x="{x0:.1f}" y="{yy}" width="{max(x1 - x0, 0.5):.1f}" height="{row - 4}" fill="{COLORS[0]}"/>'
                         f'<text x="{x1 + 4:.1f}" y="{yy + 12}">{v:,.4g}{unit}</text>')
    if vline is not None:
        parts.append(f'<line x1="{x(vline):.1f}" x2="{x(vline):.1f}" y1="22" y2="{H - 6}" stroke="#d62728" '
                     'stroke-dasharray="6,4" stroke-width="2"/>')
    parts.append("</svg>")
    return "".join(parts)


# ---------------------------------------------------------------------------- HTML
CSS = """body{font:14px/1.4 system-ui,sans-serif;margin:24px;max-width:1100px;color:#222}
table{border-collapse:collapse;margin:8px 0 20px;font-size:12px}th,td{border:1px solid #ccc;padding:3px 6px;text-align:right}
th{background:#f2f2f2}td:first-child,th:first-child{text-align:left}h1{font-size:22px}h2{font-size:17px;margin-top:28px}
.inputs td{text-align:left}.note{background:#fffbe6;border:1px solid #f0d000;padding:8px}"""


def table_html(rows: Sequence[dict[str, Any]], limit: int | None = None) -> str:
    if not rows:
        return "<p>(no rows)</p>"
    cols = list(rows[0].keys())
    shown = rows if limit is None else rows[:limit]
    out = ["<table><tr>", *(f"<th>{html.escape(c)}</th>" for c in cols), "</tr>"]
    for r in shown:
        out.append("<tr>" + "".join(f"<td>{html.escape(_fmt(r.get(c)))}</td>" for c in cols) + "</tr>")
    out.append("</table>")
    if limit is not None and len(rows) > limit:
        out.append(f"<p>{len(rows) - limit} more rows in the CSV and JSON versions of this report.</p>")
    return "".join(out)


def _fmt(v: Any) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:,.3f}"
    return str(v)


def page(title: str, inputs: dict[str, Any], sections: Sequence[tuple[str, str]]) -> str:
    body = [f"<h1>{html.escape(title)}</h1>", '<table class="inputs">']
    body += [f"<tr><th>{html.escape(k)}</th><td>{html.escape(_fmt(v))}</td></tr>" for k, v in inputs.items()]
    body.append("</table>")
    for h, content in sections:
        body.append(f"<h2>{html.escape(h)}</h2>{content}")
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{CSS}</style></head><body>{''.join(body)}</body></html>\n")


def energy_html(r: dict[str, Any]) -> str:
    m = r["monthly"]
    months = [x["month"] for x in m]
    target = r["summary"][0]["target_pct"] if r["summary"] else 65.0
    sections = [
        ("Result", table_html(r["summary"]) + f'<p class="note">{html.escape(r["uncertainty"])}</p>'),
        ("Monthly savings against the target", bar_chart(
            "Savings per month (%)", months,
            [("B: D4i counters", [x["savings_pct_b"] for x in m]), ("A: power x hours", [x["savings_pct_a"] for x in m]),
             ("C: cabinet meters", [x["savings_pct_c"] for x in m])],
            unit=" %", hline=target, hline_label=f"target {target:g} %", ymax=100.0,
            lines=[("cumulative (B)", [x["cumulative_savings_pct_b"] for x in m])])),
        ("Baseline and actual energy", bar_chart(
            "Energy per month (kWh)", months,
            [("baseline", [x["baseline_kwh"] for x in m]), ("actual (B)", [x["actual_kwh_b"] for x in m])], unit="")),
        ("Data completeness", bar_chart("Measured luminaire-nights (%)", months,
                                        [("completeness", [x["completeness_pct"] for x in m])], unit=" %", ymax=100.0)),
        ("Worst cabinets", hbar_chart("Savings of the 10 worst cabinets (%, option B)",
                                      [x["cabinet"] for x in r["worst_cabinets"]],
                                      [x["savings_pct_b"] for x in r["worst_cabinets"]], unit=" %", vline=target)
         + table_html(r["worst_cabinets"])),
        ("Months", table_html(m)),
        ("Contract years", table_html(r["contract_years"])),
        ("Areas", table_html(r["areas"])),
        ("Cabinets", table_html(r["cabinets"], limit=500)),
        ("Luminaires", table_html(r["luminaires"], limit=500)),
    ]
    return page("Public lighting energy savings (IPMVP)", r["inputs"], sections)


def generic_html(title: str, r: dict[str, Any], charts: Sequence[tuple[str, str]] = ()) -> str:
    sections = list(charts)
    for name, rows in r.items():
        if isinstance(rows, list) and (not rows or isinstance(rows[0], dict)):
            sections.append((name.replace("_", " ").capitalize(), table_html(rows, limit=1000)))
    if r.get("note"):
        sections.insert(0, ("Note", f'<p class="note">{html.escape(r["note"])}</p>'))
    return page(title, r.get("inputs", {}), sections)
