"""Auditor reports: one self-contained HTML file (inline SVG charts, tables), the same page as a
PDF, and CSV / JSON carrying every figure the HTML shows.

A report is a plain mapping of named tables (lists of row dicts) plus ``inputs`` (what went in,
with the inventory hash) and free text; the energy, availability and intervention reports all
render through the same functions, so the formats never disagree. The HTML and PDF pages are
both drawn from one :class:`Doc` (title, inputs, sections of charts / tables / notes) built once
from the report mapping: the PDF embeds the very SVG strings the HTML inlines.

The PDF needs the optional fpdf2 package (``pip install '.[pdf]'``), imported only when a PDF is
asked for. It uses the PDF core fonts (no font files to ship), which cover Latin-1: the few other
characters our reports use are transliterated (``–`` -> ``-``), anything else becomes ``?``.
"""

from __future__ import annotations

import csv
import html
import io
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
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
def _svg_open(w: int, h: int, title: str) -> str:
    # viewBox equal to the size and the font as presentation attributes: what a browser draws is
    # unchanged, and fpdf2 (PDF) needs the viewBox and does not read the CSS `font` shorthand
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" '
            f'role="img" aria-label="{html.escape(title)}" font-family="sans-serif" font-size="11">')


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

    parts = [_svg_open(W, H, title),
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

    parts = [_svg_open(W, H, title),
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


# ---------------------------------------------------------------------------- page model
@dataclass(frozen=True)
class Chart:
    svg: str  # from bar_chart / hbar_chart


@dataclass(frozen=True)
class Table:
    rows: Sequence[dict[str, Any]]
    limit: int | None = None  # rows shown; the rest are in the CSV and JSON versions


@dataclass(frozen=True)
class Note:
    text: str


Block = Chart | Table | Note


@dataclass(frozen=True)
class Doc:
    """One report page, rendered as HTML (:func:`render_html`) or PDF (:func:`render_pdf`)."""

    title: str
    inputs: dict[str, Any]
    sections: list[tuple[str, list[Block]]] = field(default_factory=list)


def _block_html(b: Block) -> str:
    if isinstance(b, Chart):
        return b.svg
    if isinstance(b, Table):
        return table_html(b.rows, b.limit)
    return f'<p class="note">{html.escape(b.text)}</p>'


def render_html(doc: Doc) -> str:
    return page(doc.title, doc.inputs, [(h, "".join(_block_html(b) for b in blocks)) for h, blocks in doc.sections])


def page(title: str, inputs: dict[str, Any], sections: Sequence[tuple[str, str]]) -> str:
    body = [f"<h1>{html.escape(title)}</h1>", '<table class="inputs">']
    body += [f"<tr><th>{html.escape(k)}</th><td>{html.escape(_fmt(v))}</td></tr>" for k, v in inputs.items()]
    body.append("</table>")
    for h, content in sections:
        body.append(f"<h2>{html.escape(h)}</h2>{content}")
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{CSS}</style></head><body>{''.join(body)}</body></html>\n")


def energy_doc(r: dict[str, Any]) -> Doc:
    m = r["monthly"]
    months = [x["month"] for x in m]
    target = r["summary"][0]["target_pct"] if r["summary"] else 65.0
    sections: list[tuple[str, list[Block]]] = [
        ("Result", [Note(r.get("headline", "")), Table(r["summary"]), Note(r["uncertainty"])]),
        ("Monthly savings against the target", [Chart(bar_chart(
            "Savings per month (%)", months,
            [("B: D4i counters", [x["savings_pct_b"] for x in m]), ("A: power x hours", [x["savings_pct_a"] for x in m]),
             ("C: cabinet meters", [x["savings_pct_c"] for x in m])],
            unit=" %", hline=target, hline_label=f"target {target:g} %", ymax=100.0,
            lines=[("cumulative (B)", [x["cumulative_savings_pct_b"] for x in m])]))]),
        ("Baseline and actual energy", [Chart(bar_chart(
            "Energy per month (kWh)", months,
            [("baseline", [x["baseline_kwh"] for x in m]), ("actual (B)", [x["actual_kwh_b"] for x in m])], unit=""))]),
        ("Data completeness", [Chart(bar_chart("Burning hours measured (%)", months,
                                               [("measured", [x["measured_pct"] for x in m])], unit=" %",
                                               ymax=100.0))]),
        ("Worst cabinets", [Chart(hbar_chart("Savings of the 10 worst cabinets (%, option B)",
                                             [x["cabinet"] for x in r["worst_cabinets"]],
                                             [x["savings_pct_b"] for x in r["worst_cabinets"]], unit=" %",
                                             vline=target)),
                            Table(r["worst_cabinets"])]),
        ("Months", [Table(m)]),
        ("Contract years", [Table(r["contract_years"])]),
        ("Areas", [Table(r["areas"])]),
        ("Cabinets", [Table(r["cabinets"], limit=500)]),
        ("Luminaires", [Table(r["luminaires"], limit=500)]),
        ("Days not fully measured (partial, filled across a gap, estimated)",
         [Table(r.get("partial_nights", []), limit=500)]),
    ]
    return Doc("Public lighting energy savings (IPMVP)", r["inputs"], sections)


def generic_doc(title: str, r: dict[str, Any], charts: Sequence[tuple[str, str]] = ()) -> Doc:
    """``charts``: (heading, SVG from bar_chart / hbar_chart); then every table of the report."""
    sections: list[tuple[str, list[Block]]] = [(h, [Chart(svg)]) for h, svg in charts]
    for name, rows in r.items():
        if isinstance(rows, list) and (not rows or isinstance(rows[0], dict)):
            sections.append((name.replace("_", " ").capitalize(), [Table(rows, limit=1000)]))
    if r.get("note"):
        sections.insert(0, ("Note", [Note(r["note"])]))
    return Doc(title, r.get("inputs", {}), sections)


def render(doc_of: Any, r: dict[str, Any], fmt: str) -> str | bytes:
    """Report ``r`` as ``fmt`` (json, csv, html, pdf); ``doc_of(r)`` gives its page model, from
    which both the HTML and the PDF are drawn."""
    if fmt == "json":
        return to_json(r)
    if fmt == "csv":
        return to_csv(r)
    doc = doc_of(r)
    return render_pdf(doc) if fmt == "pdf" else render_html(doc)


# ---------------------------------------------------------------------------- PDF
PDF_INSTALL_HINT = "PDF reports need the optional fpdf2 package: pip install '.[pdf]' (or pip install fpdf2)"
PDF_COMPRESS = True  # tests switch it off to read the page text
_PX_MM = 25.4 / 96  # one SVG / CSS pixel
_LATIN1 = str.maketrans({"–": "-", "—": "-", "−": "-", "‘": "'", "’": "'", "“": '"', "”": '"', "…": "...",
                         "≤": "<=", "≥": ">=", "≈": "~", "→": "->", "σ": "sigma", "€": "EUR", "\u202f": " "})


class PdfUnavailable(RuntimeError):
    pass


def require_pdf() -> None:
    """Raise :class:`PdfUnavailable` (with the install hint) when fpdf2 cannot be imported."""
    try:
        import fpdf  # noqa: F401
    except ImportError as e:
        raise PdfUnavailable(PDF_INSTALL_HINT) from e


def _latin1(text: str) -> str:
    return text.translate(_LATIN1).encode("latin-1", "replace").decode("latin-1")


def render_pdf(doc: Doc, *, compress: bool | None = None) -> bytes:
    """A4 landscape PDF of ``doc``: the inputs block, then each section's charts (the same SVG as
    the HTML, drawn as vectors), tables (limited as in the HTML, saying so) and notes."""
    require_pdf()
    from fpdf import FPDF, FontFace

    title = _latin1(doc.title)

    class _Pdf(FPDF):
        def footer(self) -> None:
            self.set_y(-9)
            self.set_font("helvetica", size=7)
            self.set_text_color(110)
            self.cell(0, 4, f"{title} - page {self.page_no()}/{{nb}}", align="C")
            self.set_text_color(0)

    pdf = _Pdf(orientation="L", unit="mm", format="A4")
    pdf.set_compression(PDF_COMPRESS if compress is None else compress)
    pdf.set_margins(12, 12, 12)
    pdf.set_auto_page_break(True, margin=13)
    pdf.set_title(title)
    pdf.set_creator("city-scada historian/report.py")
    pdf.add_page()
    pdf.set_font("helvetica", "B", 16)
    pdf.multi_cell(0, 8, title, new_x="LMARGIN", new_y="NEXT")
    pdf.ln(2)
    pdf.set_font("helvetica", size=8)
    if doc.inputs:
        head = FontFace(emphasis="BOLD", fill_color=(242, 242, 242))
        with pdf.table(col_widths=(1, 3), first_row_as_headings=False, text_align="LEFT", line_height=4.2,
                       padding=(0.6, 1.2), headings_style=head) as t:
            for k, v in doc.inputs.items():
                row = t.row()
                row.cell(_latin1(str(k)), style=head)
                row.cell(_latin1(_fmt(v)))
    for heading, blocks in doc.sections:
        # a heading stays with (the start of) its first block
        if pdf.will_page_break(12 + (_block_height(pdf, blocks[0]) if blocks else 0)):
            pdf.add_page()
        else:
            pdf.ln(4)
        pdf.set_font("helvetica", "B", 12)
        pdf.multi_cell(0, 6, _latin1(heading), new_x="LMARGIN", new_y="NEXT")
        pdf.ln(1)
        for b in blocks:
            _block_pdf(pdf, b)
    return bytes(pdf.output())


def _block_pdf(pdf: Any, b: Block) -> None:
    from fpdf import FontFace

    if isinstance(b, Chart):
        svg = _latin1(b.svg).encode("utf-8")
        h = _block_height(pdf, b)
        w = h * _svg_aspect(b.svg)
        if pdf.will_page_break(h):
            pdf.add_page()
        # fpdf2 paints SVG text without a fill with the page's current colour: SVG's default is black
        pdf.set_fill_color(0)
        pdf.set_draw_color(0)
        pdf.image(io.BytesIO(svg), x=pdf.l_margin, y=pdf.get_y(), w=w, h=h)
        pdf.set_y(pdf.get_y() + h + 2)
    elif isinstance(b, Note):
        pdf.set_font("helvetica", size=9)
        pdf.set_fill_color(255, 251, 230)
        pdf.set_draw_color(240, 208, 0)
        pdf.multi_cell(0, 4.5, _latin1(b.text), border=1, fill=True, padding=2, new_x="LMARGIN", new_y="NEXT")
        pdf.set_draw_color(0)
        pdf.set_fill_color(0)
        pdf.ln(2)
    else:
        pdf.set_font("helvetica", size=7 if b.rows and len(b.rows[0]) > 8 else 8)
        if not b.rows:
            pdf.multi_cell(0, 5, "(no rows)", new_x="LMARGIN", new_y="NEXT")
            return
        cols = list(b.rows[0].keys())
        shown = b.rows if b.limit is None else b.rows[: b.limit]
        cells = [[_latin1(_fmt(r.get(c))) for c in cols] for r in shown]
        heads = [_latin1(c) for c in cols]
        widths = _col_widths(pdf, heads, cells, pad=1.0)
        width = sum(widths)
        head = FontFace(emphasis="BOLD", fill_color=(242, 242, 242))
        with pdf.table(col_widths=widths, width=width, align="LEFT", line_height=pdf.font_size * 1.3,
                       text_align=("LEFT", *(["RIGHT"] * (len(cols) - 1))), headings_style=head,
                       padding=(0.5, 1), repeat_headings=1) as t:
            t.row(heads)
            for row in cells:
                t.row(row)
        if b.limit is not None and len(b.rows) > b.limit:
            pdf.set_font("helvetica", "I", 8)
            pdf.multi_cell(0, 5, f"{len(b.rows) - b.limit} more rows in the CSV and JSON versions of this report.",
                           new_x="LMARGIN", new_y="NEXT")
        pdf.ln(2)


def _svg_aspect(svg: str) -> float:
    m = re.search(r'<svg[^>]*?\swidth="([\d.]+)"[^>]*?\sheight="([\d.]+)"', svg)
    return float(m[1]) / float(m[2]) if m else 760 / 260


def _block_height(pdf: Any, b: Block) -> float:
    """Height a chart takes, or the least room worth starting a table or a note in (mm)."""
    if isinstance(b, Chart):
        m = re.search(r'<svg[^>]*?\swidth="([\d.]+)"', b.svg)
        w = min(pdf.epw, float(m[1]) * _PX_MM if m else pdf.epw)
        return w / _svg_aspect(b.svg)
    return 20.0


def _col_widths(pdf: Any, heads: list[str], cells: list[list[str]], pad: float) -> list[float]:
    """Column widths (mm): values never wrap when the page is wide enough; headers get their
    full width if everything fits, otherwise what is left is shared and long headers wrap."""
    extra = 2 * pad + 0.6
    body = [max((pdf.get_string_width(row[i]) for row in cells), default=0.0) + extra for i in range(len(heads))]
    style = pdf.font_style
    pdf.set_font(style="B")
    head = [pdf.get_string_width(h) + extra for h in heads]
    part = [max(pdf.get_string_width(p) for p in h.split("_")) + extra for h in heads]
    pdf.set_font(style=style)
    full = [max(b, h) for b, h in zip(body, head, strict=True)]
    if sum(full) <= pdf.epw:
        return full
    least = [max(b, min(p, 25.0)) for b, p in zip(body, part, strict=True)]
    room = pdf.epw - sum(least)
    if room <= 0:  # too many columns even so: shrink everything, values wrap
        return [w * (pdf.epw - 1e-6) / sum(least) for w in least]
    want = [f - le for f, le in zip(full, least, strict=True)]
    out = [le + room * w / sum(want) for le, w in zip(least, want, strict=True)]
    return [w * (pdf.epw - 1e-6) / sum(out) for w in out]  # rounding must not exceed the page
