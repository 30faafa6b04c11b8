"""Replication of the other durable state (issue 22): schedule overrides, work orders, the
audit log and the historian's spool follow the active; a promoted standby reloads the stores
and replays the dead active's unforwarded spool into the shared backend (a real
VictoriaMetrics): 0 points lost."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from scada import quality as Q
from scada.ha.role import Role
from scada.schedules.overrides import new_override
from scada.tags import Batch
from tests.conftest import free_port
from tests.fixtures.ha_replication import (
    Node,
    make_active,
    make_node,
    make_standby,
    start,
    wait_for,
)

pytestmark = pytest.mark.system

SCHEDULES = """
schedules:
  tick: 1s
  profiles:
    standard:
      fade: 1s
      steps: [{at: dusk, level: 100}]
  calendars:
    - {name: everyday, profile: standard, priority: 10}
"""


def _bytes(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None


async def same_file(a: Node, b: Node, rel: str, b_rel: str | None = None) -> bool:
    pa = Path(a.rt.state_dir) / rel
    pb = Path(b.rt.state_dir) / (b_rel or rel)
    xa, xb = await asyncio.to_thread(_bytes, pa), await asyncio.to_thread(_bytes, pb)
    return xa is not None and xa == xb


async def crash(node: Node) -> None:
    """The process dies: every task stops where it is, nothing is flushed or closed (the
    files stay as they are on disk, as after kill -9)."""
    tasks = list(node.rt._tasks.values())
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def test_overrides_work_orders_and_audit_follow_and_reload_at_promotion(
        tmp_path: Path) -> None:
    pa, pb = free_port(), free_port()
    peers = {"a": f"127.0.0.1:{pa}", "b": f"127.0.0.1:{pb}"}
    svcs = ("alarms", "schedules", "interventions")
    a = make_node(tmp_path, "a", pa, peers, nlum=20, extra=SCHEDULES, services=svcs)
    b = make_node(tmp_path, "b", pb, peers, nlum=20, extra=SCHEDULES, services=svcs)
    try:
        await start(a)
        await start(b)
        await make_active(a, 11)
        await make_standby(b, a)
        now = a.clock.time()
        ov = a.rt.services["schedules"].store.add(new_override(
            level=100, minutes=120, reason="accident rue de la Liberté", user="eve", now=now,
            areas=["centre"]))
        wo_svc = a.rt.services["interventions"]
        wo, created = await wo_svc.create(user="alice", via="test", devices=["centre/cab-1"],
                                          title="door forced open", priority=2)
        assert created
        await wo_svc.transition(wo.id, "approved", user="alice", via="test")
        a.rt.operations.audit.record(user="eve", action="schedule.override", target="centre",
                                     outcome="Good")
        for rel, b_rel in (("schedules/overrides.json", None),
                           ("interventions/journal.jsonl", None),
                           ("audit.log", "replication/audit/audit.log")):
            async def same(rel: str = rel, b_rel: str | None = b_rel) -> bool:
                return await same_file(a, b, rel, b_rel)
            for _ in range(3000):
                if await same():
                    break
                await asyncio.sleep(0.02)
            assert await same(), rel
        # the standby's stores are not touched while it follows; at promotion they reload
        await crash(a)
        await b.rt.ha.promote(12)
        assert b.rt.ha.role is Role.ACTIVE
        sb = b.rt.services["schedules"].store
        assert [o.id for o in sb.active(now + 60)] == [ov.id]
        wb = b.rt.services["interventions"]
        got = wb.get(wo.id)
        assert (got.state, got.title, got.created_by) == ("approved", "door forced open", "alice")
        wo2, _ = await wb.create(user="bob", via="test", devices=["centre/cab-1"], title="again")
        assert wo2.id != wo.id and int(wo2.id.rsplit("-", 1)[1]) == int(wo.id.rsplit("-", 1)[1]) + 1
        assert b.repl.last_promotion["work_orders"] == 1
        assert b.repl.last_promotion["overrides"] == 1
    finally:
        await b.rt.stop()
        await a.rt.stop()


async def test_dead_actives_unforwarded_spool_is_replayed_into_the_shared_backend(
        tmp_path: Path, victoria_metrics_private: Any) -> None:
    vm = victoria_metrics_private
    hist = (f"historian:\n  backend: influx\n  flush_interval: 1s\n  options: {{url: '{vm.url}', "
            f"bucket: scada, org: city, measurement: ha, retries: 0, timeout: 2.0}}\n")
    pa, pb = free_port(), free_port()
    peers = {"a": f"127.0.0.1:{pa}", "b": f"127.0.0.1:{pb}"}
    svcs = ("historian", "alarms")
    a = make_node(tmp_path, "a", pa, peers, nlum=20, extra=hist, services=svcs)
    b = make_node(tmp_path, "b", pb, peers, nlum=20, extra=hist, services=svcs)
    ha_ = a.rt.services["historian"]
    try:
        await start(a)
        await start(b)
        await make_active(a, 21)
        await make_standby(b, a)
        db = a.rt.tagdb
        tags = np.array([db.index(f"centre/cab-1/lum-{n:02d}/power_w") for n in range(1, 21)])
        written: dict[str, list[tuple[float, float]]] = {db.path(int(i)): [] for i in tags}
        # the backend is reachable for the first blocks, then down: the last blocks stay in
        # the active's spool (and in the standby's copy of it)
        for step in range(8):
            if step == 4:
                await asyncio.to_thread(vm.stop)
            t = a.clock.time()
            vals = 30.0 + step + np.arange(20) * 0.5
            db.apply(Batch.of(tags, vals, Q.Good, t))
            for i, v in zip(tags.tolist(), vals.tolist(), strict=True):
                written[db.path(i)].append((t, v))
            await ha_.spool_now()
            if step < 4:
                await ha_.forward_now()
            await a.clock.advance(10)
        assert ha_.spool.pending(), "blocks should be waiting for the backend"
        mirror = Path(b.rt.state_dir) / "replication" / "spool"

        def mirrored() -> bool:
            names = sorted(p.name for p in mirror.glob("*.blk"))
            return names == ha_.spool.pending()

        await wait_for(mirrored, "the standby's copy of the active's spool")
        await crash(a)  # the active dies with its spool unforwarded
        await asyncio.to_thread(vm.start)
        await b.rt.ha.promote(22)
        assert b.repl.last_promotion["spool_points"] > 0
        hb = b.rt.services["historian"]
        await hb.forward_now()
        # every point the dead active recorded is in the shared backend (VictoriaMetrics makes
        # what it ingested searchable within about a second: a bounded wait)

        async def missing() -> list[tuple[str, float, float]]:
            out = []
            for key, pts in written.items():
                i = b.rt.tagdb.index(key)
                ts, vs, _q = await hb.read_raw(i, pts[0][0] - 1, pts[-1][0] + 1)
                got = {round(float(x), 3): float(v) for x, v in zip(ts, vs, strict=True)}
                out += [(key, t, v) for t, v in pts if got.get(round(t, 3)) != pytest.approx(v)]
            return out

        for _ in range(300):
            lost = await missing()
            if not lost:
                break
            await asyncio.sleep(0.1)
        assert lost == [], f"{len(lost)} points lost, e.g. {lost[:3]}"
        assert not list(mirror.glob("*.blk")), "adopted blocks leave the copy"
    finally:
        await b.rt.stop()
        await a.rt.stop()
