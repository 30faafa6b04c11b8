"""Work-order KPIs in ``scada report interventions``: delays to acknowledge, dispatch, arrive and
repair per priority, trade and municipality, SLA breaches, read from the interventions journal
in the state directory; the existing alarm tables and formats stay."""

from __future__ import annotations

import json

from click.testing import CliRunner

from cli import main
from scada.interventions.model import WorkOrder
from tests.fixtures.historian import make_site

T0 = 1_767_225_600.0 + 86400  # 2026-01-02


def _journal(site, orders: list[tuple[int, str, dict[str, float]]]) -> None:
    d = site.state_dir if hasattr(site, "state_dir") else site.config.site.state_dir
    import os

    os.makedirs(f"{d}/interventions", exist_ok=True)
    seq = 0
    lines = []
    for k, (prio, trade, t) in enumerate(orders):
        t0 = T0 + k * 3600
        wo = WorkOrder(id=f"WO-{k + 1:06d}", title="x", state="draft", priority=prio, origin="alarm",
                       devices=["centre/cab-1"], area="centre", trade=trade, created=t0 + 60, created_by="server",
                       due_respond=t0 + 3600, due_repair=t0 + 4 * 3600, fault="lamp_failure", alarm_raised=t0)
        seq += 1
        lines.append({"seq": seq, "op": "create", "id": wo.id, "ts": t0 + 60, "order": wo.as_dict()})
        for op, extra, when in (("ack", {}, t.get("ack")), ("assign", {"crew": "c1"}, t.get("dispatch")),
                                ("transition", {"to": "in_progress", "field": "arrived"}, t.get("arrive")),
                                ("transition", {"to": "completed"}, t.get("repair"))):
            if when is not None:
                seq += 1
                lines.append({"seq": seq, "op": op, "id": wo.id, "ts": t0 + when * 60, **extra})
    with open(f"{d}/interventions/journal.jsonl", "w") as f:
        f.write("".join(json.dumps(x) + "\n" for x in lines))


def test_work_order_kpis_in_the_interventions_report(tmp_path):
    site = make_site(tmp_path, cabinets=1, lamps=1)
    _journal(site, [
        (1, "electrician", {"ack": 5, "dispatch": 10, "arrive": 30, "repair": 120}),
        (1, "electrician", {"ack": 15, "dispatch": 20, "arrive": 90, "repair": 300}),  # both SLA late
        (3, "carpenter", {"ack": 2, "dispatch": 60}),  # never arrived: late at the end of the data
    ])
    alarms = tmp_path / "journal.jsonl"
    alarms.write_text("")
    res = CliRunner().invoke(main, ["report", "interventions", "--site", site.path, "--journal", str(alarms),
                                    "--format", "json"])
    assert res.exit_code == 0, res.output
    r = json.loads(res.stdout)
    assert "by_priority" in r and "open_at_end" in r  # the alarm tables are still there
    p1 = next(x for x in r["wo_by_priority"] if x["priority"] == 1)
    assert p1["orders"] == 2 and p1["ack_median_min"] == 10.0 and p1["dispatch_median_min"] == 15.0
    assert p1["arrive_median_min"] == 60.0 and p1["repair_median_min"] == 210.0
    assert p1["respond_breaches"] == 1 and p1["repair_breaches"] == 1
    carp = next(x for x in r["wo_by_trade"] if x["trade"] == "carpenter")
    assert carp["arrive_n"] == 0 and carp["arrive_median_min"] is None
    assert [x["municipality"] for x in r["wo_by_municipality"]] == ["centre"]
    assert sorted(x["order"] for x in r["wo_sla"]) == ["WO-000002", "WO-000003"]
    assert r["inputs"]["work_orders_orders"] == 3
    csv = CliRunner().invoke(main, ["report", "interventions", "--site", site.path, "--journal", str(alarms),
                                    "--format", "csv"])
    assert csv.exit_code == 0 and "respond_breaches" in csv.stdout
    html = CliRunner().invoke(main, ["report", "interventions", "--site", site.path, "--journal", str(alarms)])
    assert "Wo by trade" in html.stdout


async def test_store_snapshot_kpi_columns_and_torn_line(tmp_path):
    """The store compacts into a snapshot + KPI columns every ``snapshot_every`` records; a
    reload (and the report's light replay) give the same orders; a torn last line is skipped."""
    from historian import wo_kpi
    from scada.interventions.store import Store

    d = tmp_path / "state" / "interventions"
    st = Store(str(d), snapshot_every=10)
    st.load()
    for k in range(8):
        wo = WorkOrder(id=st.new_id(), title="x", state="draft", priority=1 + k % 4, origin="manual",
                       devices=[f"centre/cab-{k}"], area="centre", trade="electrician", created=T0 + k,
                       created_by="op", due_respond=T0 + 3600, due_repair=T0 + 7200, fault="door_open")
        async with st.lock:
            await st.commit([{"op": "create", "id": wo.id, "ts": T0 + k, "order": wo.as_dict()},
                             {"op": "transition", "id": wo.id, "ts": T0 + k + 60, "to": "approved", "user": "op"}])
    st.close()
    assert st.stats["snapshots"] == 1 and (d / "kpi.json").exists()
    _append(d / "journal.jsonl", '{"seq": 999, "op": "tran')  # a crash mid-write
    again = Store(str(d))
    again.load()
    assert again.stats["bad_lines"] == 1
    assert {w.id: (w.state, w.approved_at) for w in again.orders.values()} == {
        w.id: (w.state, w.approved_at) for w in st.orders.values()}
    assert again.open_for("centre/cab-3", "door_open").id == "WO-000004" and again.next_id == 9
    rows = wo_kpi.load_orders(str(tmp_path / "state"))
    assert sorted((r["id"], r["state"]) for r in rows) == sorted((w.id, "approved") for w in st.orders.values())


def _append(path, text: str) -> None:
    with open(path, "a") as f:
        f.write(text)
