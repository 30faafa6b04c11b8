"""Store-and-forward: the backend goes away for 10 simulated minutes under load and comes back;
every recorded point reaches it, in order, with its source time (both backends)."""

from __future__ import annotations

import os

import numpy as np
import pytest

from historian.embedded import EmbeddedBackend
from historian.influx import InfluxBackend
from historian.service import HistorianService
from scada import quality as Q
from scada.clock import SteppedClock
from scada.runtime import Runtime
from scada.tags import Batch
from tests.fixtures.historian import EmbeddedOutage, influx_options, make_site

pytestmark = pytest.mark.system

START = 1_735_700_000.0  # 2025-01-01, in the past for VictoriaMetrics


@pytest.mark.parametrize("kind", ["embedded", "influx"])
async def test_backend_down_ten_minutes_under_load_loses_nothing(kind, tmp_path, request):
    site = make_site(tmp_path, cabinets=4, lamps=10, historian="  flush_interval: 1s\n  snapshot: 0")
    clock = SteppedClock(START)
    rt = Runtime(site, clock)
    if kind == "embedded":
        backend = EmbeddedBackend(str(tmp_path / "store"), {"fsync": False})
        outage = EmbeddedOutage(backend)
    else:
        vm = request.getfixturevalue("victoria_metrics_private")
        backend = InfluxBackend(str(tmp_path / "x"), influx_options(vm))
        outage = vm
    h = HistorianService(rt, backend, health_interval=5.0)
    rt.add_service(h)
    tags = rt.tagdb.indices_of_point("power_w")
    n_tags = len(tags)
    await rt.start()
    await clock.advance(0)  # services running before the first sample (no start-up snapshot)
    try:
        steps = 20 * 12  # 20 simulated minutes, one batch every 5 s
        seen_down = False
        k_down: int | None = None  # first step at which the service reported the outage
        for k in range(steps):
            if k == 5 * 12:
                outage.stop()
            if k == 15 * 12:
                assert h.spool.pending(), "the outage should have left blocks in the spool"
                outage.start()
            # every value is distinct and increasing so order and completeness are checkable
            rt.tagdb.apply(Batch.of(tags, np.full(n_tags, float(k)), Q.Good, clock.time()))
            await clock.advance(5.0)
            if k >= 5 * 12 and k_down is None and not h.backend_ok:
                k_down = k
            if 6 * 12 < k < 15 * 12 and not h.backend_ok:
                seen_down = True
                h.publish_health()
                assert rt.tagdb.read("_system/historian/backend_ok").value is False
                assert rt.tagdb.read("_system/historian/spool_blocks").value > 0
                # lag: the oldest waiting block was recorded no later than the step at which
                # the failure was seen (the writer thread may still have stored a block or two
                # after the outage began: real threads, simulated time), and it keeps growing
                assert k_down is not None
                assert rt.tagdb.read("_system/historian/lag_s").value >= 5.0 * (k - k_down)
        assert seen_down, "the service should have noticed the outage"
        await h.flush()
        backend.flush()
    finally:
        await rt.stop()
    assert h.spool.pending() == []
    assert h.health_values()["lag_s"] == 0.0
    reader = EmbeddedBackend(str(tmp_path / "store")) if kind == "embedded" else backend
    total = 0
    for i in tags.tolist():
        raw = reader.read_raw(rt.tagdb.path(i), START - 1, START + 3600)
        total += len(raw)
        missing = sorted(set(range(steps)) - set(int(x) for x in raw.v.tolist()))
        assert raw.v.tolist() == [float(k) for k in range(steps)], (  # all of them, in order
            f"{rt.tagdb.path(i)}: missing {missing}; service {h.counters}, spool "
            f"{sorted(os.listdir(h.spool.dir))}")
        np.testing.assert_allclose(raw.t, START + 5.0 * np.arange(steps), atol=1e-3)
    assert total == steps * n_tags
    if reader is not backend:
        reader.close()
