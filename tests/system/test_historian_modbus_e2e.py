"""Recording what real drivers deliver: simulated Modbus cabinets -> Modbus driver (real sockets,
stepped clock) -> recorder -> spool -> embedded store; then the availability report finds the
cabinet outage and the lamp failure the simulator injected, with their causes."""

from __future__ import annotations

from datetime import date

import numpy as np
import pytest

from historian import availability
from historian.embedded import EmbeddedBackend
from historian.service import HistorianService
from scada import quality as Q
from tests.system.test_modbus_sim_e2e import E2E

pytestmark = pytest.mark.system


async def test_driver_data_recorded_and_outages_found(tmp_path, stepped_clock):
    async with E2E(tmp_path, stepped_clock) as e2e:
        e2e.site.config.site.state_dir = str(tmp_path / "state")
        e2e.site.config.historian.options = {"fsync": False}
        h = HistorianService(e2e.rt)
        # the driver made its first reads before the historian existed: start from a snapshot
        # (the service's run() does the same when it starts)
        h.recorder.snapshot(stepped_clock.time())
        t_start = stepped_clock.time()
        await e2e.step(60.0, n=3)
        t_silent = stepped_clock.time()
        e2e.sim.inject("a/c1", "silent")
        await e2e.step(60.0, n=3)
        t_clear = stepped_clock.time()
        e2e.sim.clear("a/c1")
        await e2e.step(10.0, n=2)
        await e2e.step(60.0, n=2)
        t_lamp = stepped_clock.time()
        e2e.sim.inject("a/c1/l03", "lamp_failure")
        await e2e.step(60.0, n=3)
        t_lamp_clear = stepped_clock.time()
        e2e.sim.clear("a/c1/l03", "lamp_failure")
        await e2e.step(60.0, n=3)
        final_energy = e2e.tag("a/c2/energy_wh")
        await h.flush()
        await h.aclose()
    store = EmbeddedBackend(str(tmp_path / "state" / "historian" / "data"))
    # what the driver delivered is what is stored: values with status and source time
    energy = store.read_raw("a/c2/energy_wh", t_start - 1, stepped_clock.time() + 1)
    assert len(energy) >= 3 and np.all(np.diff(energy.v) >= 0) and set(energy.q.tolist()) == {Q.Good}
    assert energy.v[-1] == final_energy.value and energy.t[-1] == pytest.approx(final_energy.source_ts, abs=1e-3)
    volts = store.read_raw("a/c1/contactor", t_start - 1, stepped_clock.time() + 1)
    bad = volts.t[volts.q == Q.BadCommunicationError]
    assert len(bad) and t_silent < bad.min() < t_clear
    r = availability.compute(store, e2e.site, date(2026, 1, 1), date(2026, 1, 1))
    out = {(o["device"], o["cause"]): o for o in r["outages"]}
    c1 = out[("a/c1", "BadCommunicationError")]
    assert 0 < c1["hours"] * 3600 <= t_clear - t_silent + 30
    l03 = out[("a/c1/l03", "lamp_failure")]
    assert 0 < l03["hours"] * 3600 <= t_lamp_clear - t_lamp + 70
    dev = {d["device"]: d for d in r["devices"]}
    assert dev["a/c2"]["down_h"] == 0.0 and dev["a/c2"]["available_pct"] == 100.0
    store.close()
