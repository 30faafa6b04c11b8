"""`scada historian import / export / fingerprint`: formats, units, time zones, status codes,
bad rows (counted by reason, reported with file:line, never stored), idempotent re-import,
exact round trips and the data fingerprint recomputed from an export (issue 17)."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner

from cli import main
from historian.base import Points
from historian.embedded import EmbeddedBackend
from historian.fingerprint import Fingerprint
from historian.transfer import Mapping, export, fingerprint_file, import_file
from scada import quality as Q

LONG = """\
ts,tag,value,status
2025-01-01T00:00:00Z,a/lum-1/energy_wh,1.5,Good
2025-01-01T00:15:00Z,a/lum-1/energy_wh,abc,Good
2025-01-01T00:30:00Z,a/lum-1/energy_wh
notatime,a/lum-1/energy_wh,3,Good
2025-01-01 02:00:00,a/lum-1/energy_wh,4,Good
2025-01-01T01:15:00+01:00,,5,Good
2025-01-01T01:30:00Z,a/lum-1/energy_wh,nan,Good
2025-01-01T01:45:00Z,a/lum-1/energy_wh,7,8,9
2025-01-01T02:00:00Z,a/lum-1/energy_wh,,BadCommunicationError
2025-01-01T02:15:00Z,a/lum-1/energy_wh,8,NotAStatus
2025-01-01T02:30:00Z,a/lum-2/energy_wh,0.25,0x40900000
2025-01-01T02:45:00Z,a/lum-2/energy_wh,0.5,0
"""


def _store(tmp_path, name="store"):
    return EmbeddedBackend(str(tmp_path / name), {"fsync": False})


def test_long_csv_bad_rows_units_zones_status(tmp_path):
    f = tmp_path / "readings.csv"
    f.write_text(LONG)
    b = _store(tmp_path)
    res = import_file(b, str(f), Mapping(unit="kWh", tz="Europe/Paris", status="status"))
    assert (res.rows, res.stored, res.n_rejected) == (12, 5, 7)
    assert {r.line: r.reason for r in res.examples} == {
        3: "value is not a number", 4: "missing columns", 5: "time does not parse", 7: "no series name",
        8: "value is not finite on a Good reading", 9: "too many columns", 11: "unknown status"}
    assert res.rejected["value is not a number"] == 1 and sum(res.rejected.values()) == 7
    raw = b.read_raw("a/lum-1/energy_wh", 0, 2e9)
    # kWh -> Wh; the naive time is local (02:00 Paris = 01:00 UTC); a Bad reading keeps no value
    assert raw.t.tolist() == [1735689600.0, 1735693200.0, 1735696800.0]
    assert raw.v[:2].tolist() == [1500.0, 4000.0] and np.isnan(raw.v[2])
    assert raw.q.tolist() == [Q.Good, Q.Good, Q.BadCommunicationError]
    lum2 = b.read_raw("a/lum-2/energy_wh", 0, 2e9)
    assert lum2.v.tolist() == [250.0, 500.0] and lum2.q.tolist() == [Q.UncertainLastUsableValue, Q.Good]
    b.close()


def test_reimport_adds_nothing(tmp_path):
    f = tmp_path / "r.csv"
    f.write_text(LONG)
    b = _store(tmp_path)
    first = import_file(b, str(f), Mapping(status="status"))
    segs = b.stats()["segments"]
    again = import_file(b, str(f), Mapping(status="status"))
    assert again.stored == 0 and again.skipped_readings == first.stored and again.skipped_blocks == 1
    assert b.stats()["segments"] == segs
    # a different unit is different data: imported
    assert import_file(b, str(f), Mapping(status="status", unit="kWh")).stored == first.stored
    b.close()


def test_wide_csv_and_device_point_columns(tmp_path):
    w = tmp_path / "wide.csv"
    w.write_text("time,lum-1,lum-2\n2025-01-01T00:00:00Z,1,2\n2025-01-01T00:15:00Z,,3\n"
                 "2025-01-01T00:30:00Z,inf,4\nbad,1,1\n")
    b = _store(tmp_path)
    res = import_file(b, str(w), Mapping(ts="time", point_name="energy_wh", prefix="c/"))
    assert res.stored == 4 and {r.line: r.reason for r in res.examples} == {
        4: "value is not finite on a Good reading (cell)", 5: "time does not parse"}
    assert b.read_raw("c/lum-1/energy_wh", 0, 2e9).v.tolist() == [1.0]
    assert b.read_raw("c/lum-2/energy_wh", 0, 2e9).v.tolist() == [2.0, 3.0, 4.0]
    d = tmp_path / "dev.csv"
    d.write_text("when,meter,kwh\n1735689600,m1,1.25\n1735690500,m1,1.5\n")
    res = import_file(b, str(d), Mapping(ts="when", ts_unit="s", device="meter", point_name="energy_wh",
                                         value="kwh", unit="kWh"))
    assert res.stored == 2 and b.read_raw("m1/energy_wh", 0, 2e9).v.tolist() == [1250.0, 1500.0]
    b.close()


def test_line_protocol(tmp_path):
    f = tmp_path / "x.lp"
    f.write_text("scada,tag=a/b\\ c/energy_wh v=1.5,q=0i 1735689600000000000\n"
                 "# comment\n"
                 "scada,tag=a/x/energy_wh q=2147811328i 1735689600000000000\n"
                 "garbage\n"
                 "meter,device=m7 energy_wh=10,power_w=3 1735689600000000000\n")
    b = _store(tmp_path)
    res = import_file(b, str(f), Mapping())
    assert res.stored == 4 and [(r.line, r.reason) for r in res.examples] == [(4, "not line protocol")]
    assert b.read_raw("a/b c/energy_wh", 0, 2e9).v.tolist() == [1.5]
    assert b.read_raw("a/x/energy_wh", 0, 2e9).q.tolist() == [Q.BadCommunicationError]
    assert b.read_raw("m7/power_w", 0, 2e9).v.tolist() == [3.0]
    b.close()


@pytest.mark.parametrize("fmt", ["csv", "parquet", "lp"])
def test_export_round_trip_and_fingerprint(tmp_path, fmt):
    rng = np.random.default_rng(3)
    n = 5000
    keys = ["z/l1/energy_wh", "z/l2/energy_wh", "z/l3/power_w"]
    sid = rng.integers(0, 3, n)
    t = 1.74e9 + np.round(rng.random(n) * 86400 * 10, 6)
    v = rng.random(n) * 1e4
    v[::97] = -0.0
    q = np.where(rng.random(n) < 0.05, Q.BadCommunicationError, Q.Good).astype(np.uint32)
    v[(q != 0) & (rng.random(n) < 0.5)] = np.nan
    b = _store(tmp_path)
    b.write(Points.of(keys, sid, t, v, q), "x")
    out = tmp_path / f"out.{ 'lp' if fmt == 'lp' else fmt}"
    fp = export(b, keys, 1.7e9, 1.8e9, str(out), fmt)
    direct = Fingerprint()
    p = b.read_many(keys, 1.7e9, 1.8e9)
    direct.add_points(p.keys, p.sid, p.t, p.v, p.q)
    assert fp.content_hash() == direct.content_hash() and fp.readings == len(p) > 4900
    m = Mapping(status="status") if fmt != "lp" else Mapping()
    assert fingerprint_file(str(out), m).content_hash() == fp.content_hash()
    b2 = _store(tmp_path, "copy")
    res = import_file(b2, str(out), m)
    assert res.n_rejected == 0 and res.stored == len(p)
    for k in keys:
        r1, r2 = b.read_raw(k, 0, 2e9), b2.read_raw(k, 0, 2e9)
        assert r1.t.tolist() == r2.t.tolist() and r1.q.tolist() == r2.q.tolist()
        assert np.array_equal(r1.v, r2.v, equal_nan=True)
        assert np.signbit(r1.v).tolist() == np.signbit(r2.v).tolist()
    b.close()
    b2.close()


def test_cli_import_export_fingerprint(tmp_path):
    f = tmp_path / "readings.csv"
    f.write_text(LONG)
    store = str(tmp_path / "audit")
    r = CliRunner().invoke(main, ["historian", "import", str(f), "--store", store, "--status-col", "status",
                                  "--unit", "kWh", "--rejects", str(tmp_path / "rej.csv")])
    assert r.exit_code == 0, r.output
    assert "readings stored                 5" in r.output and "rows rejected                   7" in r.output
    assert f"{f}:3: value is not a number" in r.output
    assert (tmp_path / "rej.csv").read_text().count("\n") == 8
    r = CliRunner().invoke(main, ["historian", "export", "--store", store, "--from", "2025-01-01",
                                  "--to", "2025-01-02", "--out", str(tmp_path / "e.csv")])
    assert r.exit_code == 0, r.output
    line = next(x for x in r.output.splitlines() if x.startswith("content sha256:"))
    r2 = CliRunner().invoke(main, ["historian", "fingerprint", str(tmp_path / "e.csv"), "--status-col", "status"])
    assert r2.exit_code == 0 and line in r2.output
    r = CliRunner().invoke(main, ["historian", "import", str(f), "--store", store, "--unit", "furlongs"])
    assert r.exit_code == 2 and "unit 'furlongs' is not known" in r.output


def test_read_many_sorted_and_the_later_block_wins(tmp_path):
    b = _store(tmp_path)
    keys = ["s/b/energy_wh", "s/a/energy_wh"]
    b.write(Points.of(keys, [0, 0, 1, 1], [3.0, 1.0, 2.0, 1.0], [30.0, 10.0, 2.0, 1.0]), "one")
    b.write(Points.of(keys, [1, 0], [2.0, 3.0], [20.0, 33.0], [Q.BadCommunicationError, 0]), "two")
    p = b.read_many(["s/a/energy_wh", "s/b/energy_wh", "s/none"], 0.0, 10.0)
    assert p.sid.tolist() == [0, 0, 1, 1] and p.t.tolist() == [1.0, 2.0, 1.0, 3.0]
    assert p.v.tolist() == [1.0, 20.0, 10.0, 33.0] and p.q.tolist() == [0, Q.BadCommunicationError, 0, 0]
    for i, k in enumerate(["s/a/energy_wh", "s/b/energy_wh"]):
        r = b.read_raw(k, 0.0, 10.0)
        assert r.t.tolist() == p.t[p.sid == i].tolist() and r.v.tolist() == p.v[p.sid == i].tolist()
    b.close()
