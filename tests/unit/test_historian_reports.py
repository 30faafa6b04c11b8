"""Reports end to end through the CLI (click runner; embedded store on disk, no sockets):
energy HTML/CSV/JSON/PDF agree, availability from recorded quality and faults, intervention
delays from an alarm journal, ``scada history`` raw and aggregated."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import sys
import xml.etree.ElementTree as ET

import numpy as np
from click.testing import CliRunner

import commands.report as report_cmd
from cli import main
from historian import report as R
from historian.base import Points
from historian.embedded import EmbeddedBackend
from scada import astro
from scada import quality as Q
from tests.fixtures.historian import make_site

T0 = 1_735_689_600.0  # 2025-01-01T00:00Z


def _store(site):
    return EmbeddedBackend(os.path.join(site.config.site.state_dir, "historian", "data"), {"fsync": False})


def _energy_data(site, days: int = 31):
    """Every luminaire of the site burns sunset -> sunrise at 40 W (legacy 170 W) in January 2025."""
    d = astro.to_dates(np.array(["2024-12-31"], dtype="datetime64[D]"))[0] + np.arange(days + 2)
    on, off, _ = astro.night_bounds(47.322, 5.0415, d, "Europe/Paris")
    t = np.arange(T0 - 86400, T0 + (days + 1) * 86400, 900.0)
    lit = np.concatenate(([0.0], np.cumsum(off - on)))
    k = np.searchsorted(on, t, side="right") - 1
    kk = np.maximum(k, 0)
    wh = 40.0 * (lit[kk] + np.where(k >= 0, np.clip(t - on[kk], 0, (off - on)[kk]), 0)) / 3600
    keys = [f"{dev.path}/energy_wh" for dev in site.all_devices() if dev.kind == "luminaire"]
    n = len(t)
    return Points.of(keys, np.repeat(np.arange(len(keys)), n), np.tile(t, len(keys)), np.tile(wh, len(keys)))


def _energy_january(tmp_path) -> list[str]:
    """A 2-cabinet site with January's 15-min energy stored; the report command's arguments."""
    site = make_site(tmp_path, cabinets=2, lamps=3)
    b = _store(site)
    b.write(_energy_data(site), "jan")
    b.close()
    return ["report", "energy", "--site", site.path, "--from", "2025-01-01", "--to", "2025-01-31"]


def test_energy_report_formats_agree(tmp_path):
    r, args = CliRunner(), _energy_january(tmp_path)
    res = r.invoke(main, [*args, "--format", "json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    b_row = data["summary"][1]
    assert b_row["savings_pct"] == 76.471 and b_row["measured_pct"] == 100.0
    assert len(data["inputs"]["inventory_sha256"]) == 64
    assert [m["month"] for m in data["monthly"]] == ["2025-01"]
    out = tmp_path / "r.html"
    res = r.invoke(main, [*args, "--format", "html", "--out", str(out)])
    assert res.exit_code == 0, res.output
    page = out.read_text()
    assert page.startswith("<!DOCTYPE html>") and "76.471" in page
    svgs = re.findall(r"<svg.*?</svg>", page, re.S)
    assert len(svgs) == 4  # savings vs 65 %, baseline vs actual, completeness, worst cabinets
    for svg in svgs:
        ET.fromstring(svg)  # well-formed
    assert "target 65 %" in page
    assert data["inputs"]["inventory_sha256"] in page
    assert "http" not in page.replace("http://www.w3.org/2000/svg", "")  # self-contained
    res = r.invoke(main, [*args, "--format", "csv"])
    rows = [row for row in csv.reader(io.StringIO(res.stdout)) if row]
    assert any(row[0] == "summary" and "76.471" in row for row in rows)
    assert sum(1 for row in rows if row[0] == "luminaires") == 6
    # area filter
    res = r.invoke(main, [*args, "--area", "north", "--format", "json"])
    assert json.loads(res.stdout)["inputs"]["luminaires"] == 3



def _pdf_text(s: str) -> bytes:
    """``s`` as an uncompressed PDF string operand (parentheses and backslashes escaped)."""
    return s.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)").encode("latin-1")


def _pdf_pages(pdf: bytes) -> int:
    pages = len(re.findall(rb"/Type /Page(?!s)\b", pdf))
    assert pages == int(re.search(rb"/Count (\d+)", pdf)[1])  # the page tree agrees
    return pages


def test_energy_report_pdf(tmp_path, monkeypatch):
    """The PDF is the HTML page: same charts (drawn from the same SVG), inputs with the
    inventory hash, the uncertainty statement, the tables."""
    monkeypatch.setattr(R, "PDF_COMPRESS", False)  # page text readable as is
    r, args = CliRunner(), _energy_january(tmp_path)
    data = json.loads(r.invoke(main, [*args, "--format", "json"]).stdout)
    out = tmp_path / "r.pdf"
    res = r.invoke(main, [*args, "--format", "pdf", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert f"wrote {out}" in res.stderr
    pdf = out.read_bytes()
    assert pdf.startswith(b"%PDF-") and pdf.rstrip().endswith(b"%%EOF")
    assert _pdf_text("76.471") in pdf  # savings of option B (summary table and uncertainty note)
    assert _pdf_text(data["inputs"]["inventory_sha256"]) in pdf
    assert data["uncertainty"].startswith("Option B savings 76.471 % +/- 0.47 percentage points")
    assert _pdf_text("Option B savings 76.471 % +/- 0.47 percentage points") in pdf  # the note's 1st line
    # the four charts of the HTML, drawn as vectors: each title, the 65 % line and its dashes
    for title in ("Savings per month (%)", "Energy per month (kWh)", "Burning hours measured (%)",
                  "Savings of the 10 worst cabinets (%, option B)"):
        assert b"(" + _pdf_text(title) + b") Tj" in pdf, title
    assert _pdf_text("target 65 %") in pdf and b"[6 4] 0 d" in pdf
    assert 2 <= _pdf_pages(pdf) <= 6  # 4 with fpdf2 2.8.9: inputs + result, 3 of charts and tables
    # one Doc for both pages: every chart of the HTML is the SVG the PDF drew
    doc = R.energy_doc(data)
    page = R.render(R.energy_doc, data, "html")
    charts = [c for h, bl in doc.sections for c in bl if isinstance(c, R.Chart)]
    assert len(charts) == 4 and all(c.svg in page for c in charts)
    # without --out: to stdout when it is a pipe / file, refused on a terminal (binary)
    res = r.invoke(main, [*args, "--format", "pdf"])
    assert res.exit_code == 0 and res.stdout_bytes.startswith(b"%PDF-")
    monkeypatch.setattr(report_cmd, "_stdout_isatty", lambda: True)
    res = r.invoke(main, [*args, "--format", "pdf"])
    assert res.exit_code == 2 and "--out" in res.output


def test_pdf_without_fpdf2_says_how_to_install(tmp_path, monkeypatch):
    site = make_site(tmp_path, cabinets=1, lamps=1)
    monkeypatch.setitem(sys.modules, "fpdf", None)  # import fpdf -> ImportError
    for cmd in (["energy", "--from", "2025-01-01", "--to", "2025-01-31"],
                ["availability", "--from", "2025-01-01", "--to", "2025-01-31"], ["interventions"]):
        out = tmp_path / f"{cmd[0]}.pdf"
        res = CliRunner().invoke(main, ["report", *cmd, "--site", site.path, "--format", "pdf", "--out", str(out)])
        assert res.exit_code == 1, (cmd, res.output)
        assert "pip install '.[pdf]'" in res.output
        assert not out.exists()


def test_availability_from_quality_and_faults(tmp_path):
    site = make_site(tmp_path, cabinets=1, lamps=3, areas=("centre",))  # lum-03: never recorded
    b = _store(site)
    day = 86400.0
    # every series recorded every 15 min (as the recorder's snapshots do), from 23:00 local on
    # 31 Dec to 3 days past January; cab-1: comm lost 2 h on Jan 10; lum-01: lamp failure 24 h
    # on Jan 20; lum-02: one day out of service (planned); lum-03: never recorded
    grid = np.arange(T0 - 3600, T0 + 34 * day, 900.0)

    def series(key, value, q_of=None, v_of=None):
        q = np.full(len(grid), Q.Good, np.uint32) if q_of is None else q_of(grid).astype(np.uint32)
        v = np.full(len(grid), float(value)) if v_of is None else v_of(grid)
        return key, grid, v, q

    def between(a, b, inside, outside):
        return lambda t: np.where((t >= a) & (t < b), inside, outside)

    pts = [
        series("centre/cab-1/energy_wh", 1, between(T0 + 9 * day, T0 + 9 * day + 7200, Q.BadCommunicationError, Q.Good)),
        series("centre/cab-1/lum-01/power_w", 40),
        series("centre/cab-1/lum-01/lamp_failure", 0, v_of=between(T0 + 19 * day, T0 + 20 * day, 1.0, 0.0)),
        series("centre/cab-1/lum-02/power_w", 40, between(T0 + 4 * day, T0 + 5 * day, Q.BadOutOfService, Q.Good)),
    ]
    keys = [p[0] for p in pts]
    b.write(Points.of(keys, np.concatenate([[i] * len(p[1]) for i, p in enumerate(pts)]),
                      np.concatenate([p[1] for p in pts]), np.concatenate([p[2] for p in pts]),
                      np.concatenate([p[3] for p in pts])), "av")
    b.close()
    # the site's local time is Europe/Paris: January starts 1 h before T0 (00:00 local)
    res = CliRunner().invoke(main, ["report", "availability", "--site", site.path, "--from", "2025-01-01",
                                    "--to", "2025-01-31", "--format", "json"])
    assert res.exit_code == 0, res.output
    r = json.loads(res.stdout)
    dev = {d["device"]: d for d in r["devices"]}
    # traceability: what data, which product, when, which command (issue 17)
    inp = r["inputs"]
    assert inp["data_readings"] > 0 and len(inp["data_sha256"]) == 64 and inp["product"].startswith("city-scada")
    assert inp["command"].startswith("scada report availability") and inp["generated"]
    month = 31 * 24.0
    assert dev["centre/cab-1"]["down_h"] == 2.0
    assert dev["centre/cab-1"]["available_pct"] == round(100 * (1 - 2 / month), 4)
    assert dev["centre/cab-1/lum-01"]["down_h"] == 24.0
    assert dev["centre/cab-1/lum-02"]["planned_h"] == 24.0
    assert dev["centre/cab-1/lum-02"]["available_pct"] == 100.0
    assert dev["centre/cab-1/lum-03"]["available_pct"] is None and dev["centre/cab-1/lum-03"]["no_data_h"] == 744.0
    causes = sorted((o["device"], o["cause"], o["hours"]) for o in r["outages"])
    assert causes == [("centre/cab-1", "BadCommunicationError", 2.0),
                      ("centre/cab-1/lum-01", "lamp_failure", 24.0)]
    total = 3 * month - 24.0
    assert r["summary"][0]["available_pct"] == round(100 * (1 - 26 / total), 4)
    assert r["summary"][0]["target_met"] is False  # 98.8 % < 99 %
    out = tmp_path / "av.pdf"
    res = CliRunner().invoke(main, ["report", "availability", "--site", site.path, "--from", "2025-01-01",
                                    "--to", "2025-01-31", "--format", "pdf", "--out", str(out)])
    assert res.exit_code == 0, res.output
    pdf = out.read_bytes()
    assert pdf.startswith(b"%PDF-") and pdf.rstrip().endswith(b"%%EOF")
    # recording stops on 3 Feb: past the last point + 1 h the state is unknown, not down
    res = CliRunner().invoke(main, ["report", "availability", "--site", site.path, "--from", "2025-02-01",
                                    "--to", "2025-02-05", "--format", "json"])
    feb = {d["device"]: d for d in json.loads(res.stdout)["devices"]}
    last = (T0 + 34 * day - 900.0 + 3600.0 - (T0 + 31 * day - 3600.0)) / 3600.0  # hours known in Feb
    assert feb["centre/cab-1"]["down_h"] == 0.0
    assert feb["centre/cab-1"]["no_data_h"] == round(5 * 24.0 - last, 4)


def test_interventions_from_journal(tmp_path):
    site = make_site(tmp_path, cabinets=1, lamps=1)
    j = tmp_path / "journal-000001.jsonl"
    lines = []
    seq = 0

    def ev(ts, aid, event, prio=1, cat="lighting"):
        nonlocal seq
        seq += 1
        lines.append(json.dumps({"seq": seq, "ts": ts, "alarm_id": aid, "device": aid.rsplit("/", 1)[0],
                                 "area": "centre", "name": aid.rsplit("/", 1)[1], "category": cat,
                                 "priority": prio, "event": event, "state": "x", "user": "op"}))

    # three priority-1 alarms acknowledged after 5, 10, 30 min and cleared after 60, 120, 240 min
    for n, (ack, clr) in enumerate(((5, 60), (10, 120), (30, 240))):
        t = T0 + 86400 * (n + 1)
        aid = f"centre/cab-1/alarm{n}"
        ev(t, aid, "raise")
        ev(t + ack * 60, aid, "ack")
        ev(t + clr * 60, aid, "clear")
    ev(T0 + 86400 * 10, "centre/cab-1/open", "raise", prio=2, cat="comms")
    j.write_text("\n".join(lines) + "\n")
    res = CliRunner().invoke(main, ["report", "interventions", "--site", site.path, "--journal", str(j),
                                    "--format", "json"])
    assert res.exit_code == 0, res.output
    r = json.loads(res.stdout)
    import hashlib

    assert r["inputs"]["journal_sha256"] == hashlib.sha256(j.read_bytes()).hexdigest()
    assert r["inputs"]["command"].startswith("scada report interventions")
    p1 = next(x for x in r["by_priority"] if x["priority"] == 1)
    assert p1["alarms"] == 3 and p1["ack_median_min"] == 10.0 and p1["clear_median_min"] == 120.0
    assert p1["ack_p90_min"] == float(np.percentile([5, 10, 30], 90))
    assert [o["alarm_id"] for o in r["open_at_end"]] == ["centre/cab-1/open"]
    html = CliRunner().invoke(main, ["report", "interventions", "--site", site.path, "--journal", str(j)])
    assert "<svg" in html.stdout
    res = CliRunner().invoke(main, ["report", "interventions", "--site", site.path, "--journal", str(j),
                                    "--format", "pdf"])
    assert res.exit_code == 0, res.output
    assert res.stdout_bytes.startswith(b"%PDF-") and res.stdout_bytes.rstrip().endswith(b"%%EOF")


def test_history_command_raw_and_aggregated(tmp_path):
    site = make_site(tmp_path, cabinets=1, lamps=1)
    b = _store(site)
    key = "centre/cab-1/power_w"
    t = T0 + np.arange(120) * 60.0
    q = np.where(np.arange(120) == 5, Q.BadCommunicationError, Q.Good)
    b.write(Points.of([key], np.zeros(120), t, np.arange(120.0), q), "h")
    b.close()
    r = CliRunner()
    res = r.invoke(main, ["history", key, "--site", site.path, "--from", "2025-01-01T01:00+01:00",
                          "--to", "2025-01-01T03:00+01:00", "--format", "json"])
    assert res.exit_code == 0, res.output
    pts = json.loads(res.stdout)["points"]
    assert len(pts) == 120 and pts[5]["status"] == "BadCommunicationError"
    res = r.invoke(main, ["history", key, "--site", site.path, "--from", "2025-01-01T01:00+01:00",
                          "--to", "2025-01-01T03:00+01:00", "--agg", "1h", "--fn", "max"])
    rows = list(csv.DictReader(io.StringIO(res.stdout)))
    assert [(r_["max"], r_["bad_points"]) for r_ in rows] == [("59.0", "1"), ("119.0", "0")]
