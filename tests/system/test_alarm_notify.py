"""Notifications against real peers on loopback: an aiosmtpd SMTP server and an asyncio HTTP
server (webhook); escalation and rate limits on a stepped clock; failing endpoints end in the
dead-letter log."""

from __future__ import annotations

import asyncio
import contextlib
import json
from pathlib import Path
from typing import Any

import pytest

from scada.alarms.notify import Notifier
from tests.conftest import free_port
from tests.fixtures.alarms import AlarmEnv, make_env

pytestmark = pytest.mark.system

CAB = "centre/cab-1"


async def until(pred: Any, what: str) -> None:
    """Wait (real time: SMTP runs in a worker thread) until ``pred()`` holds."""
    for _ in range(500):
        if pred():
            return
        await asyncio.sleep(0.02)
    raise TimeoutError(f"{what} did not happen within 10 s")


@contextlib.asynccontextmanager
async def notifier(tmp_path: Path, stepped_clock: Any, notifications: str):
    env: AlarmEnv = make_env(tmp_path, stepped_clock, nlum=4,
                             alarms_extra=f"notifications:\n{notifications}")
    cfg = env.site.config
    n = Notifier(cfg.alarms.notifications, stepped_clock, env.engine.journal.directory,
                 site=cfg.site.name, timezone=cfg.site.timezone,
                 municipality_of={"centre": "Dijon", "north": "Talant"})
    env.engine.listeners.append(n.on_events)
    task = asyncio.create_task(n.run())
    await stepped_clock.advance(0)
    try:
        yield env, n
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        env.engine.close()


def dead_letters(n: Notifier) -> list[dict[str, Any]]:
    p = Path(n.dead_path)
    return [json.loads(x) for x in p.read_text().splitlines()] if p.exists() else []


async def test_mail_and_webhook_then_escalation(tmp_path, stepped_clock, smtp_server, http_server) -> None:
    conf = f"""
  channels:
    mail: {{type: smtp, host: 127.0.0.1, port: {smtp_server.port}, to: [oncall@city.example],
            sender: scada@city.example, retries: 1, backoff: 1s}}
    hook: {{type: webhook, url: "{http_server.url}", headers: {{X-Token: abc}}, retries: 1}}
    mayor: {{type: webhook, url: "{http_server.url}", retries: 0, headers: {{X-To: dijon}}}}
    mayor_talant: {{type: webhook, url: "{http_server.url}", retries: 0, headers: {{X-To: talant}}}}
  rules:
    - name: cabinet faults
      priorities: [1, 2]
      categories: [cabinet]
      channels: [mail, hook]
      escalate: [{{after: 15min, by_municipality: {{Dijon: [mayor], Talant: [mayor_talant]}}}}]
"""
    async with notifier(tmp_path, stepped_clock, conf) as (env, n):
        env.set({f"{CAB}/comm_ok": 1, f"{CAB}/contactor": 1, f"{CAB}/voltage_l1": 230,
                 f"{CAB}/door_open": 0})
        env.set({f"{CAB}/door_open": 1})  # priority 3: no rule
        env.mark(CAB, 0x80050000)  # BadCommunicationError: comm_lost, priority 1
        await until(lambda: smtp_server.messages and http_server.requests, "delivery")
        mail_from, rcpt, msg = smtp_server.messages[0]
        assert (mail_from, rcpt) == ("scada@city.example", ["oncall@city.example"])
        assert f"{CAB}/comm_lost" in msg["Subject"] and "P1" in msg["Subject"]
        req = http_server.requests[0]
        assert req["method"] == "POST" and req["headers"]["x-token"] == "abc"
        assert (req["body"]["alarm_id"], req["body"]["event"], req["body"]["escalation"]) == (
            f"{CAB}/comm_lost", "raise", 0)
        assert len(smtp_server.messages) == 1  # the door (priority 3) was not sent
        # not acknowledged within 15 min: escalated to the mayor's channel
        await stepped_clock.advance(14 * 60)
        await asyncio.sleep(0.1)
        assert all(r["body"]["escalation"] == 0 for r in http_server.requests)
        await stepped_clock.advance(60)
        await until(lambda: any(r["body"]["escalation"] == 1 for r in http_server.requests),
                    "escalation")
        esc = [r for r in http_server.requests if r["body"]["escalation"] == 1]
        assert [r["headers"].get("x-to") for r in esc] == ["dijon"]  # the town of area centre
        # an acknowledged alarm does not escalate
        env.set({f"{CAB}/voltage_l1": 260})  # HighHigh voltage, priority 2
        await until(lambda: len(smtp_server.messages) == 2, "second mail")
        env.engine.acknowledge(f"{CAB}/voltage", user="olga", role="operator", comment="ok")
        await stepped_clock.advance(3600)
        await asyncio.sleep(0.1)
        esc = [r for r in http_server.requests if r["body"]["escalation"] == 1]
        assert [r["body"]["alarm_id"] for r in esc] == [f"{CAB}/comm_lost"]
        assert dead_letters(n) == []


async def test_failing_endpoints_go_to_dead_letters(tmp_path, stepped_clock, http_server) -> None:
    http_server.status = 500
    closed = free_port()
    conf = f"""
  channels:
    failing: {{type: webhook, url: "{http_server.url}", retries: 2, backoff: 1s}}
    refused: {{type: webhook, url: "http://127.0.0.1:{closed}/x", retries: 1, timeout: 2s}}
  rules:
    - {{channels: [failing, refused]}}
"""
    async with notifier(tmp_path, stepped_clock, conf) as (env, n):
        env.set({f"{CAB}/comm_ok": 1})
        env.mark(CAB, 0x80050000)
        await until(lambda: len(dead_letters(n)) == 2, "two dead letters")
        by = {d["channel"]: d for d in dead_letters(n)}
        assert by["failing"]["reason"].endswith("HTTP 500") and by["failing"]["attempts"] == 3
        assert len(http_server.requests) == 3  # tried, retried twice
        assert by["refused"]["attempts"] == 2 and "Error" in by["refused"]["reason"]
        assert by["refused"]["alarm_ids"] == [f"{CAB}/comm_lost"]
        assert n.channels["failing"].stats["dead"] == 1


async def test_rate_limit_sends_a_digest_not_a_flood(tmp_path, stepped_clock, http_server) -> None:
    conf = f"""
  channels:
    sms: {{type: webhook, url: "{http_server.url}", rate_per_min: 1}}
  rules:
    - {{categories: [lighting], channels: [sms]}}
"""
    async with notifier(tmp_path, stepped_clock, conf) as (env, _n):
        env.set({f"{CAB}/comm_ok": 1, f"{CAB}/contactor": 1})
        env.set({f"{CAB}/lum-0{k}/lamp_failure": 0 for k in range(1, 5)})
        env.set({f"{CAB}/lum-01/lamp_failure": 1})
        await until(lambda: len(http_server.requests) == 1, "first message")
        env.set({f"{CAB}/lum-0{k}/lamp_failure": 1 for k in range(2, 5)})
        await asyncio.sleep(0.1)
        assert len(http_server.requests) == 1  # rate limited: waiting for the next slot
        await stepped_clock.advance(60)
        await until(lambda: len(http_server.requests) == 2, "digest")
        body = http_server.requests[1]["body"]
        assert body["count"] == 3
        assert sorted(a["alarm_id"] for a in body["alarms"]) == [
            f"{CAB}/lum-0{k}/lamp_failure" for k in range(2, 5)]
