"""Alarm journal (repair, rotation, queries), ISA-18.2 metrics and the `scada alarms` CLI."""

from __future__ import annotations

import csv
import io
import json
import os

from click.testing import CliRunner

from cli import main
from scada.alarms import metrics as MX
from scada.alarms.journal import Journal, journal_files, read_journal, replay
from tests.fixtures.alarms import make_env

CAB = "centre/cab-1"
LUM = "centre/cab-1/lum-01"


def line(seq: int, ts: float, aid: str = "a/d/x", event: str = "raise", **kw) -> bytes:
    e = {"seq": seq, "ts": ts, "alarm_id": aid, "device": aid.rsplit("/", 1)[0], "area": "a",
         "name": aid.rsplit("/", 1)[1], "category": "lighting", "priority": 3, "severity": 500,
         "event": event, "state": "UnackActive" if event == "raise" else "UnackRTN",
         "active": 1 if event == "raise" else 0, "acked": False, "user": None, "comment": None,
         "value": 1.0, **kw}
    return (json.dumps(e) + "\n").encode()


def test_partial_last_line_is_repaired_and_seq_continues(tmp_path) -> None:
    j = Journal(str(tmp_path))
    j.write([line(1, 10.0), line(2, 11.0)])
    j.close()
    with open(journal_files(str(tmp_path))[-1], "ab") as f:
        f.write(b'{"seq":3,"ts":12.0,"alarm_')  # killed mid-write
    assert [e["seq"] for e in read_journal(tmp_path)] == [1, 2]  # reader skips it
    j2 = Journal(str(tmp_path))
    assert j2.repaired > 0 and j2.last_seq == 2
    j2.write([line(3, 12.0)])
    j2.close()
    assert [e["seq"] for e in read_journal(tmp_path)] == [1, 2, 3]


def test_rotation_and_time_window(tmp_path) -> None:
    j = Journal(str(tmp_path), rotate_bytes=600, fsync="always")
    for k in range(1, 11):
        j.write([line(k, 100.0 + k)])
    j.close()
    assert len(journal_files(str(tmp_path))) > 2
    assert Journal(str(tmp_path)).last_seq == 10
    assert [e["seq"] for e in read_journal(tmp_path, since=103, until=106)] == [3, 4, 5]
    assert len(read_journal(journal_files(str(tmp_path))[0])) >= 1  # a single file works too


def test_replay_gives_last_state_and_device_service() -> None:
    entries = [json.loads(x) for x in (
        line(1, 1.0, "a/d/x"), line(2, 2.0, "a/d/x", event="clear"),
        line(3, 3.0, "a/d/y"),
    )]
    entries.append({"seq": 4, "ts": 4.0, "alarm_id": "a/e", "device": "a/e", "name": "",
                    "event": "out_of_service"})
    alarms, devices = replay(entries)
    assert alarms["a/d/x"]["event"] == "clear" and alarms["a/d/y"]["active"] == 1
    assert devices == {"a/e": entries[-1]}


def test_metrics_flood_top10_stale_chattering() -> None:
    lines = []
    seq = 0
    # a flood: 30 raises within one 10-minute interval, one alarm raised 12 times in 10 min
    for k in range(30):
        seq += 1
        lines.append(line(seq, 6000.0 + k, f"a/d{k % 18}/x"))
    for k in range(18):  # all recover
        seq += 1
        lines.append(line(seq, 7000.0 + k, f"a/d{k}/x", event="clear"))
    seq += 1
    lines.append(line(seq, 9000.0, "a/old/x"))  # still active 2 days later: stale
    entries = [json.loads(x) for x in lines]
    m = MX.compute(entries, now=9000.0 + 48 * 3600, chatter_count=2, chatter_window=600)
    assert m["alarms"] == 31
    assert m["per_10min_max"] == 30
    assert len(m["flood_periods"]) == 1 and m["flood_periods"][0]["alarms"] == 30
    assert m["top10"][0]["count"] == 2
    assert [s["alarm_id"] for s in m["stale"]] == ["a/old/x"]
    assert {c["alarm_id"] for c in m["chattering"]} == {f"a/d{k}/x" for k in range(12)}
    text = MX.format_text(m)
    assert "flood" in text and "chattering" in text


def test_cli_active_history_export_and_metrics(tmp_path, stepped_clock) -> None:
    env = make_env(tmp_path, stepped_clock, nlum=4)
    env.set({f"{CAB}/comm_ok": 1, f"{CAB}/contactor": 1, f"{CAB}/voltage_l1": 230,
             f"{LUM}/lamp_failure": 0, f"{LUM}/level": 100})
    env.set({f"{LUM}/lamp_failure": 1})
    env.set({f"{CAB}/voltage_l1": 250})
    env.engine.acknowledge(f"{CAB}/voltage", user="olga", comment="seen, crew")
    env.set({"north/cab-2/contactor": 1})
    env.engine.set_out_of_service("north/cab-2", True, user="eve", comment="works")
    env.engine.close()
    d = env.engine.journal.directory
    r = CliRunner()

    res = r.invoke(main, ["alarms", "--dir", d])
    assert res.exit_code == 0, res.output
    assert f"{LUM}/lamp_failure" in res.output and f"{CAB}/voltage" in res.output
    assert "UnackActive" in res.output and "AckActive" in res.output

    res = r.invoke(main, ["alarms", "--dir", d, "--history", "--device", CAB, "--format", "json"])
    rows = json.loads(res.output)
    assert {x["event"] for x in rows} == {"raise", "ack"}
    assert all(x["device"].startswith(CAB) for x in rows)
    ack = next(x for x in rows if x["event"] == "ack")
    assert (ack["user"], ack["comment"]) == ("olga", "seen, crew")

    out = os.path.join(tmp_path, "h.csv")
    res = r.invoke(main, ["alarms", "--dir", d, "--history", "--format", "csv", "-o", out,
                          "--since", "2025-12-31T00:00"])
    assert res.exit_code == 0, res.output
    with open(out, encoding="utf-8") as f:
        rows = list(csv.DictReader(io.StringIO(f.read())))
    assert {"seq", "ts", "alarm_id", "event", "state", "user", "comment", "value"} <= set(rows[0])
    assert any(x["event"] == "out_of_service" for x in rows)

    res = r.invoke(main, ["alarms", "--dir", d, "--history", "--until", "2025-12-31"])
    assert "no alarms" in res.output

    res = r.invoke(main, ["alarms", "--dir", d, "--metrics", "--format", "json"])
    m = json.loads(res.output)
    assert m["alarms"] == 2 and m["top10"]

    res = r.invoke(main, ["alarms", "--dir", str(tmp_path / "nowhere")])
    assert res.exit_code == 1 and "no alarm journal" in res.output
