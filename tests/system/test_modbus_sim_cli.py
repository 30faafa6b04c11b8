"""``scada sim`` as its own process: --fault at start, the control channel, clean Ctrl+C."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from pathlib import Path

import pytest
from pymodbus.client import AsyncModbusTcpClient

from simulators.faults import send_control
from tests.conftest import free_port
from tests.system.test_modbus_sim import write_site

pytestmark = pytest.mark.system

REPO = Path(__file__).resolve().parents[2]


async def test_scada_sim_process_with_faults_and_control_channel(tmp_path):
    p1, p2 = free_port(), free_port()
    site = write_site(tmp_path, p1, p2)
    ready = tmp_path / "ready.json"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(REPO / "cli.py"), "sim", str(site), "--rate", "10",
        "--fault", "lamp_failure:a/c1/l02", "--fault", "exception:a/c3:code=6",
        "--ready-file", str(ready), "--duration", "60",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, cwd=REPO,
    )
    client = AsyncModbusTcpClient("127.0.0.1", port=p1, timeout=1.0, retries=0)
    shared = AsyncModbusTcpClient("127.0.0.1", port=p2, timeout=1.0, retries=0)
    try:
        for _ in range(300):
            if ready.exists() or proc.returncode is not None:
                break
            await asyncio.sleep(0.05)
        assert ready.exists(), "scada sim did not become ready"
        info = json.loads(ready.read_text())
        assert info["devices"] == {"modbus": 79}           # 3 cabinets + 76 luminaires
        assert await client.connect() and await shared.connect()
        regs = (await client.read_input_registers(1016, count=2, device_id=1)).registers
        assert regs[0] & 0x01 and regs[1] == 0               # --fault lamp_failure applied
        r = await shared.read_input_registers(0, count=1, device_id=7)
        assert r.isError() and r.exception_code == 0x06      # --fault exception:code=6
        host, port = info["control"]
        answers = await asyncio.to_thread(
            send_control, host, port,
            {"op": "inject", "path": "a/c1", "fault": "door_open"},
            {"op": "clear", "path": "a/c3"},
        )
        assert all(a["ok"] for a in answers)
        assert (await client.read_discrete_inputs(1, count=1, device_id=1)).bits[0] is True
        assert not (await shared.read_input_registers(0, count=1, device_id=7)).isError()
    finally:
        client.close()
        shared.close()
        if proc.returncode is None:
            proc.send_signal(signal.SIGINT)
        out, _ = await asyncio.wait_for(proc.communicate(), 20)
    assert proc.returncode == 0, out.decode(errors="replace")
    text = out.decode(errors="replace")
    assert "fault lamp_failure on a/c1/l02" in text and "control channel:" in text


def test_bad_fault_spec_is_a_usage_error(tmp_path):
    import subprocess

    site = write_site(tmp_path, free_port(), free_port())
    res = subprocess.run([sys.executable, str(REPO / "cli.py"), "sim", str(site), "--fault", "nonsense"],
                         capture_output=True, text=True, timeout=60, cwd=REPO)
    assert res.returncode == 2 and "NAME:DEVICE_PATH" in res.stderr
    res = subprocess.run([sys.executable, str(REPO / "cli.py"), "sim", str(site), "--duration", "5",
                          "--fault", "lamp_failure:a/nowhere"],
                         capture_output=True, text=True, timeout=60, cwd=REPO)
    assert res.returncode == 1 and "unknown device 'a/nowhere'" in res.stderr


def test_shard_serves_only_its_share_of_the_cabinets(tmp_path):
    import subprocess

    p1, p2 = free_port(), free_port()
    site = write_site(tmp_path, p1, p2)
    ready = tmp_path / "ready.json"
    res = subprocess.run([sys.executable, str(REPO / "cli.py"), "sim", str(site), "--shard", "1/3",
                          "--duration", "0.5", "--control", "", "--ready-file", str(ready)],
                         capture_output=True, text=True, timeout=60, cwd=REPO)
    assert res.returncode == 0, res.stdout + res.stderr
    # shards split listening addresses, not devices: c2 and c3 share p2, so shard 1 of 3 (the
    # second address) serves both with their 24 + 32 luminaires and shard 0 serves c1 alone
    assert json.loads(ready.read_text())["devices"] == {"modbus": 58}
