"""Notifications against real peers on loopback: an aiosmtpd SMTP server and an asyncio HTTP
server (webhook, SMS gateway); escalation and rate limits on a stepped clock; an outage loses
nothing (durable queue, channel-down alarm, health); permanent refusals end in the dead-letter
log and are replayed."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import pwd
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

from cli import main
from scada import quality as Q
from scada.alarms import model as M
from scada.alarms.notify import Notifier
from scada.alarms.notify_queue import read_dead_letters, read_queues
from scada.alarms.service import make_notifier
from scada.audit import AuditLog
from scada.loader import load_site
from scada.runtime import Runtime
from scada.tags import Batch
from tests.conftest import free_port
from tests.fixtures.alarms import AlarmEnv, make_env, write_site

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
async def notifier(tmp_path: Path, stepped_clock: Any, notifications: str, *,
                   env: AlarmEnv | None = None, extra: str = ""):
    """The alarm engine of the test site with the notifier wired as the server wires it
    (:func:`make_notifier`); ``env`` reuses an engine (a restarted notifier)."""
    own = env is None
    if env is None:
        env = make_env(tmp_path, stepped_clock, nlum=4, extra=extra,
                       alarms_extra=f"notifications:\n{notifications}")
    audit = AuditLog(str(tmp_path / "audit.log"), stepped_clock)
    n = make_notifier(env.site, env.engine, stepped_clock, env.engine.journal.directory,
                      audit=lambda: audit)
    n.municipality_of.update({"centre": "Dijon", "north": "Talant"})
    task = asyncio.create_task(n.run())
    await stepped_clock.advance(0)
    try:
        yield env, n
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        env.engine.listeners.remove(n.on_events)
        audit.close()
        if own:
            env.engine.close()


async def run_for(clock: Any, n: Notifier, seconds: float, step: float = 5.0) -> None:
    """Advance the stepped clock ``seconds`` in ``step``s, letting every delivery attempt (real
    I/O in worker threads or sockets) finish before time moves on."""
    for _ in range(int(seconds / step)):
        await until(lambda: not any(c.busy for c in n.channels.values()), "attempts to end")
        await clock.advance(step)
    await until(lambda: not any(c.busy for c in n.channels.values()), "attempts to end")


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
        env.engine.acknowledge(f"{CAB}/voltage", user="olga", comment="ok")
        await stepped_clock.advance(3600)
        await asyncio.sleep(0.1)
        esc = [r for r in http_server.requests if r["body"]["escalation"] == 1]
        assert [r["body"]["alarm_id"] for r in esc] == [f"{CAB}/comm_lost"]
        assert dead_letters(n) == []


async def test_refusals_are_dead_letters_and_replayed_outages_are_queued(
        tmp_path, stepped_clock, http_server) -> None:
    http_server.status = 400  # the gateway refuses the message itself: retrying cannot help
    closed = free_port()
    conf = f"""
  channels:
    failing: {{type: webhook, url: "{http_server.url}", retries: 2, backoff: 1s}}
    refused: {{type: webhook, url: "http://127.0.0.1:{closed}/x", retries: 1, backoff: 1s,
               timeout: 2s}}
  rules:
    - {{categories: [cabinet], channels: [failing, refused]}}
"""
    async with notifier(tmp_path, stepped_clock, conf) as (env, n):
        env.set({f"{CAB}/comm_ok": 1})
        env.mark(CAB, 0x80050000)
        await until(lambda: len(dead_letters(n)) == 1, "a dead letter")
        await run_for(stepped_clock, n, 10)
        (d,) = dead_letters(n)
        assert d["channel"] == "failing" and d["reason"].endswith("HTTP 400")
        assert d["attempts"] == 1 and len(http_server.requests) == 1  # not retried
        assert d["alarm_ids"] == [f"{CAB}/comm_lost"]
        # a refused connection is an outage: kept in the durable queue, the channel is down
        ch = n.channels["refused"]
        assert ch.failures >= 2 and ch.down_since is not None
        assert [x["event"]["alarm_id"] for x in read_queues(env.engine.journal.directory)[
            "refused"]] == [f"{CAB}/comm_lost"]
        assert env.state("_system/notify/refused/down") == M.UNACK_ACTIVE
        assert n.health()["refused"]["queued"] == 1 and n.health()["refused"]["down"] == 1
        assert n.health()["failing"]["dead_letters"] == 1
        # the operator fixes the gateway and replays the dead letter (scada notify replay)
        http_server.status = 200
        directory = env.engine.journal.directory
        listed = CliRunner().invoke(main, ["notify", "list", "--dir", directory])
        assert listed.exit_code == 0, listed.output
        assert "queue refused: 1 waiting" in listed.output and d["id"] in listed.output
        res = CliRunner().invoke(main, ["notify", "replay", "--dir", directory, d["id"]])
        assert res.exit_code == 0, res.output
        assert "requested" in res.output
        await run_for(stepped_clock, n, 10)
        await until(lambda: len(http_server.requests) == 2, "the replayed notification")
        assert http_server.requests[1]["body"]["alarm_id"] == f"{CAB}/comm_lost"
        assert read_dead_letters(directory) == []  # replayed: not listed any more
        assert len(read_dead_letters(directory, include_replayed=True)) == 1
        (rec,) = [json.loads(x) for x in (tmp_path / "audit.log").read_text().splitlines()]
        assert (rec["action"], rec["user"], rec["ids"], rec["outcome"]) == (
            "notify.replay", pwd.getpwuid(os.getuid()).pw_name, [d["id"]], "Good")  # the request file's owner
        res = CliRunner().invoke(main, ["notify", "replay", "--dir", directory, d["id"]])
        assert res.exit_code == 2 and "no dead letter" in res.output  # not twice


async def test_smtp_outage_of_ten_minutes_loses_nothing(tmp_path, stepped_clock,
                                                        smtp_server) -> None:
    conf = f"""
  channels:
    mail: {{type: smtp, host: 127.0.0.1, port: {smtp_server.port}, to: [oncall@city.example],
            sender: scada@city.example, retries: 2, backoff: 5s, max_backoff: 60s, timeout: 5s}}
  rules:
    - {{categories: [cabinet], priorities: [1, 2], channels: [mail]}}
"""
    async with notifier(tmp_path, stepped_clock, conf) as (env, n):
        ch = n.channels["mail"]
        env.set({f"{CAB}/comm_ok": 1, "north/cab-2/comm_ok": 1, "north/cab-2/voltage_l1": 230})
        smtp_server.stop()
        t0 = stepped_clock.time()
        env.mark(CAB, 0x80050000)                       # P1 at t0
        await run_for(stepped_clock, n, 180)
        env.set({"north/cab-2/voltage_l1": 260})        # P2 at t0 + 3 min
        await run_for(stepped_clock, n, 180)
        env.mark("north/cab-2", 0x80050000)             # P1 at t0 + 6 min
        await run_for(stepped_clock, n, 240)
        assert stepped_clock.time() - t0 == 600 and smtp_server.messages == []
        assert ch.down_since is not None and n.health()["mail"]["queued"] == 3
        assert env.state("_system/notify/mail/down") == M.UNACK_ACTIVE
        smtp_server.start()
        await run_for(stepped_clock, n, 65)
        await until(lambda: smtp_server.messages, "the backlog")
        order = [f"{CAB}/comm_lost", "north/cab-2/voltage", "north/cab-2/comm_lost"]
        (_, rcpt, msg), = smtp_server.messages  # one digest, not a flood
        body = msg.get_content()
        assert rcpt == ["oncall@city.example"] and "3 late" in msg["Subject"]
        assert "unreachable (since 2026-01-01T01:00:00+01:00)" in body  # t0, site zone
        assert "rate limited" not in body
        lines = [ln for ln in body.splitlines() if ln.startswith("- ")]
        assert [next(a for a in order if a in ln) for ln in lines] == order  # in order
        assert all("LATE" in ln for ln in lines)  # each marked with its delay
        assert "LATE 10 min" in lines[0]
        assert ch.down_since is None and n.health()["mail"]["queued"] == 0
        assert env.state("_system/notify/mail/down") == M.UNACK_RTN  # cleared
        assert read_queues(env.engine.journal.directory)["mail"] == []
        assert dead_letters(n) == []


async def test_queue_survives_a_restart(tmp_path, stepped_clock, smtp_server) -> None:
    conf = f"""
  channels:
    mail: {{type: smtp, host: 127.0.0.1, port: {smtp_server.port}, to: [oncall@city.example],
            retries: 0, backoff: 30s}}
  rules:
    - {{categories: [cabinet], channels: [mail]}}
"""
    smtp_server.stop()
    env = make_env(tmp_path, stepped_clock, nlum=2, alarms_extra=f"notifications:\n{conf}")
    try:
        async with notifier(tmp_path, stepped_clock, conf, env=env) as (_, n):
            env.set({f"{CAB}/comm_ok": 1})
            env.mark(CAB, 0x80050000)
            await run_for(stepped_clock, n, 10)
            assert n.health()["mail"]["failed"] >= 1
        smtp_server.start()  # the server restarts with the channel's queue on disk
        async with notifier(tmp_path, stepped_clock, conf, env=env) as (_, n2):
            assert len(n2.channels["mail"].queue.pending) == 1
            await run_for(stepped_clock, n2, 10)
            await until(lambda: smtp_server.messages, "the queued mail")
            assert f"{CAB}/comm_lost" in smtp_server.messages[0][2]["Subject"]
    finally:
        env.engine.close()


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


def ack(env: AlarmEnv, alarm_id: str, user: str = "olga") -> None:
    env.engine.acknowledge(alarm_id, user=user, comment="crew sent")


def lum(k: int, point: str = "lamp_failure") -> str:
    return f"{CAB}/lum-0{k}/{point}"


async def test_mail_headers_zone_location_and_state_at_send_time(
        tmp_path, stepped_clock, smtp_server) -> None:
    conf = f"""
  channels:
    mail: {{type: smtp, host: 127.0.0.1, port: {smtp_server.port}, to: [oncall@city.example],
            sender: scada@city.example, rate_per_min: 1}}
  rules:
    - {{categories: [lighting], channels: [mail]}}
"""
    async with notifier(tmp_path, stepped_clock, conf) as (env, n):
        env.set({f"{CAB}/comm_ok": 1, f"{CAB}/contactor": 1})
        env.set({lum(k): 0 for k in range(1, 5)})
        raised = stepped_clock.time()
        env.set({lum(1): 1})
        await until(lambda: len(smtp_server.messages) == 1, "first mail")
        _, _, msg = smtp_server.messages[0]
        # RFC 5322 3.6.1 / 3.6.4: Date (the site's zone, Europe/Paris: +01:00 in January)
        date = msg["Date"].datetime
        assert date.timestamp() == raised and date.utcoffset().total_seconds() == 3600
        assert msg["Message-ID"].startswith("<") and msg["Message-ID"].endswith("@city.example>")
        body = msg.get_content()
        assert "since:    2026-01-01T01:00:00+01:00" in body  # site zone with its offset
        assert "location: 47.30000, 5.00000" in body  # the luminaire's cabinet's coordinates
        assert "cabinet:  centre/cab-1 (by the town hall)" in body
        assert "state:    UnackActive" in body and "LATE" not in msg["Subject"]
        # the next alarms wait for the rate limit (1 a minute); one is acknowledged meanwhile:
        # it is not sent, the two others go out as a digest that says why they waited
        env.set({lum(2): 1})
        await run_for(stepped_clock, n, 5)
        ack(env, lum(2))
        env.set({lum(3): 1})
        await run_for(stepped_clock, n, 5)
        env.set({lum(4): 1})
        await run_for(stepped_clock, n, 55)
        await until(lambda: len(smtp_server.messages) == 2, "digest")
        assert n.channels["mail"].stats["dropped"] == 1 and n.health()["mail"]["queued"] == 0
        digest = smtp_server.messages[1][2]
        assert "2 alarm notifications" in digest["Subject"] and "late" not in digest["Subject"]
        text = digest.get_content()
        assert "while the channel was rate limited" in text and lum(2) not in text
        assert lum(3) in text and lum(4) in text and text.count("state:    UnackActive") == 2
        assert digest["Date"] and digest["Message-ID"] != msg["Message-ID"]


async def test_two_alarms_at_once_are_not_called_rate_limited(tmp_path, stepped_clock,
                                                               http_server) -> None:
    conf = f"""
  channels:
    hook: {{type: webhook, url: "{http_server.url}"}}
  rules:
    - {{categories: [lighting], channels: [hook]}}
"""
    async with notifier(tmp_path, stepped_clock, conf) as (env, _n):
        env.set({f"{CAB}/comm_ok": 1, f"{CAB}/contactor": 1})
        env.set({lum(k): 0 for k in range(1, 3)})
        env.set({lum(1): 1, lum(2): 1})  # one batch: both queued before the sender runs
        await until(lambda: http_server.requests, "digest")
        body = http_server.requests[0]["body"]
        assert body["count"] == 2 and body["reason"] == "at once"
        assert [a["alarm_id"] for a in body["alarms"]] == [lum(1), lum(2)]
        assert body["alarms"][0]["location"]["cabinet"]["path"] == CAB


async def test_return_to_normal_when_the_rule_asks(tmp_path, stepped_clock, smtp_server,
                                                   http_server) -> None:
    conf = f"""
  channels:
    mail: {{type: smtp, host: 127.0.0.1, port: {smtp_server.port}, to: [duty@city.example]}}
    hook: {{type: webhook, url: "{http_server.url}"}}
  rules:
    - {{name: duty manager, categories: [lighting], channels: [mail], return_to_normal: true}}
    - {{name: log, categories: [lighting], channels: [hook]}}
"""
    async with notifier(tmp_path, stepped_clock, conf) as (env, n):
        env.set({f"{CAB}/comm_ok": 1, f"{CAB}/contactor": 1, lum(1): 0})
        env.set({lum(1): 1})
        await until(lambda: smtp_server.messages and http_server.requests, "raise")
        await run_for(stepped_clock, n, 600)
        env.set({lum(1): 0})  # the lamp is back
        await until(lambda: len(smtp_server.messages) == 2, "return to normal")
        rtn = smtp_server.messages[1][2]
        assert "BACK TO NORMAL" in rtn["Subject"] and lum(1) in rtn["Subject"]
        assert "cleared:  2026-01-01T01:10:00+01:00" in rtn.get_content()
        await run_for(stepped_clock, n, 10)
        assert len(http_server.requests) == 1  # the other rule did not ask for it


async def test_sms_through_an_http_gateway_and_smtp_to_sms(tmp_path, stepped_clock,
                                                           http_server, smtp_server) -> None:
    conf = f"""
  channels:
    gw: {{type: sms, url: "{http_server.url}", token: s3cret, form: true,
          to: ["+33600000001", "+33600000002"],
          fields: {{number: "{{to}}", message: "{{text}}", sender: SCADA}}}}
    mail2sms: {{type: sms, host: 127.0.0.1, port: {smtp_server.port}, max_chars: 60,
                to: ["0600000003@sms.example"]}}
  rules:
    - {{priorities: [1], channels: [gw, mail2sms]}}
"""
    async with notifier(tmp_path, stepped_clock, conf) as (env, _n):
        env.set({f"{CAB}/comm_ok": 1})
        env.mark(CAB, 0x80050000)
        await until(lambda: len(http_server.requests) == 2 and smtp_server.messages, "SMS")
        reqs = http_server.requests
        assert [r["body"]["number"] for r in reqs] == ["+33600000001", "+33600000002"]
        assert all(r["headers"]["authorization"] == "Bearer s3cret" for r in reqs)
        assert all(r["headers"]["content-type"] == "application/x-www-form-urlencoded"
                   for r in reqs)
        text = reqs[0]["body"]["message"]
        assert text.startswith("P1 ") and f"{CAB}/comm_lost" in text and len(text) <= 160
        assert reqs[0]["body"]["sender"] == "SCADA"
        _, rcpt, sms = smtp_server.messages[0]
        assert rcpt == ["0600000003@sms.example"]
        assert sms.get_content().strip() == text[:60].strip() and sms["Date"]


async def test_health_tags_and_max_age_in_a_runtime(tmp_path, stepped_clock) -> None:
    """The alarm service of a runtime publishes ``_system/notify/<channel>/*``; a notification
    still undelivered after ``max_age`` becomes a dead letter."""
    closed = free_port()
    conf = f"""
  channels:
    hook: {{type: webhook, url: "http://127.0.0.1:{closed}/x", retries: 0, backoff: 10s,
            max_backoff: 30s, max_age: 2min}}
  rules:
    - {{categories: [cabinet], channels: [hook]}}
"""
    site = load_site(write_site(tmp_path, nlum=2, alarms_extra=f"notifications:\n{conf}"),
                     validate_drivers=False)
    rt = Runtime(site, stepped_clock)
    rt.load_services(only=["alarms"])
    svc = rt.services["alarms"]
    n = svc.notifier
    task = asyncio.create_task(n.run())
    db = rt.tagdb
    try:
        db.apply(Batch.of([db.index(f"{CAB}/comm_ok")], [1.0], Q.Good, stepped_clock.time()))
        db.mark(np.asarray([db.index(f"{CAB}/comm_ok")]), 0x80050000)
        await run_for(stepped_clock, n, 10)
        svc.publish_health()
        h = {p: db.read(f"_system/notify/hook/{p}").value
             for p in ("queued", "failed", "dead_letters", "last_success", "down")}
        assert h["queued"] == 1 and h["failed"] >= 1 and h["dead_letters"] == 0
        assert h["down"] == 1
        assert h["last_success"] is None or math.isnan(h["last_success"])  # never delivered
        assert svc.engine.view(svc.engine.find("_system/notify/hook/down")).active == 1
        await run_for(stepped_clock, n, 150)
        (d,) = dead_letters(n)
        assert "max_age" in d["reason"] and d["alarm_ids"] == [f"{CAB}/comm_lost"]
        svc.publish_health()
        assert db.read("_system/notify/hook/queued").value == 0
        assert db.read("_system/notify/hook/dead_letters").value == 1
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await svc.aclose()
