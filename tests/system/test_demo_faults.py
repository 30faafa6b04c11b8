"""`scada demo --fault ...`: a fault injected into the demo's simulators becomes a red dot that
`scada alarms` shows (issue 6's demo), whatever the hour (issue 15).

The demo runs the real demo site (config/, copied so its state stays in the test's directory)
with the fault the README shows, its clock started (`--start`) at noon and at night: the
README's "a red dot from the start" must hold at both. A lamp failure is a red dot at night;
by day the schedule has switched the cabinet's contactor off, the lamp cannot be tested and its
alarm is Suppressed by design (ISA-18.2). Nothing here depends on the real time of day.
"""

from __future__ import annotations

import json
import re
import shutil
import time
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from tests.fixtures.process import REPO, ScadaProcess, run_scada

pytestmark = [pytest.mark.system, pytest.mark.slow, pytest.mark.timeout(300)]

LAMP = "centre/cab-001/lum-03"


def readme_fault() -> tuple[str, str]:
    """(fault, device path) of the README's "a red dot from the start" demo line."""
    for line in (REPO / "README.md").read_text().splitlines():
        if "a red dot from the start" in line:
            m = re.search(r"scada demo --fault (\w+):(\S+)", line)
            assert m, line
            return m.group(1), m.group(2)
    pytest.fail("README.md has no 'a red dot from the start' demo line")


def demo_site(tmp_path: Path) -> Path:
    """The demo site with its state under ``tmp_path`` (not the checkout's .scada-state)."""
    cfg = tmp_path / "config"
    shutil.copytree(REPO / "config", cfg)
    site = cfg / "demo.yaml"
    text = site.read_text()
    assert "state_dir: ../.scada-state/demo" in text
    site.write_text(text.replace("state_dir: ../.scada-state/demo", f"state_dir: {tmp_path / 'state'}"))
    return site


def alarm_states(site: Path) -> dict[str, str]:
    """alarm_id -> state of every retained alarm (red dots and hidden ones), from the journal."""
    res = run_scada("alarms", "--site", str(site), "--all", "--format", "json")
    if res.returncode != 0:  # no journal yet
        return {}
    return {row["alarm_id"]: row["state"] for row in json.loads(res.stdout)}


def wait_states(site: Path, want: dict[str, str], demo: ScadaProcess, within: float = 120.0) -> None:
    deadline = time.monotonic() + within
    states: dict[str, str] = {}
    while time.monotonic() < deadline:
        states = alarm_states(site)
        if all(states.get(a) == s for a, s in want.items()):
            return
        assert demo.proc.poll() is None, demo.output[-3000:]
        time.sleep(0.5)
    pytest.fail(f"wanted {want}, the journal says {({a: states.get(a) for a in want})}")


@pytest.mark.parametrize(("start", "lamp_state"), [
    ("2026-06-21T12:00", "Suppressed"),   # summer noon: lights scheduled off
    ("2026-12-21T22:00", "UnackActive"),  # winter night: lights on, the lamp failure is a red dot
])
def test_demo_fault_becomes_a_red_dot_at_any_hour(tmp_path, start, lamp_state):
    fault, device = readme_fault()
    site = demo_site(tmp_path)
    demo = ScadaProcess("demo", "--site", str(site), "--start", start, "--fault", f"{fault}:{device}",
                        "--fault", f"lamp_failure:{LAMP}")
    try:
        demo.wait_for("running:", timeout=150)
        out = demo.output
        assert f"fault {fault} on {device}" in out and f"fault lamp_failure on {LAMP}" in out, out
        assert "simulator fault channel: 127.0.0.1:" in out
        clock = demo.wait_for("  clock: ").split()[1:3]
        started = datetime.fromisoformat(" ".join(clock)) - datetime.fromisoformat(start)
        assert timedelta(0) <= started < timedelta(minutes=10), clock  # the demo's, not the wall's
        readme_alarm = f"{device}/{fault}"
        wait_states(site, {readme_alarm: "UnackActive", f"{LAMP}/lamp_failure": lamp_state}, demo)
        red = run_scada("alarms", "--site", str(site), "--format", "json")
        dots = {row["alarm_id"] for row in json.loads(red.stdout)}
        assert readme_alarm in dots  # the README's red dot, noon or night
        assert (f"{LAMP}/lamp_failure" in dots) == (lamp_state != "Suppressed")
        assert demo.stop() == 0, demo.output[-3000:]
    finally:
        demo.kill()
