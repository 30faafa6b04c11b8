"""Notifications and escalation: alarm events -> rules -> channels (e-mail over SMTP, HTTP
webhooks; an SMS gateway is a webhook).

* Rules match priority, area, category and a local time-of-day window; a matching annunciated
  raise is sent to the rule's channels, and each ``escalate`` step fires if the alarm is still
  unacknowledged ``after`` that long (the on-call engineer, then the elected official of that
  municipality for critical traffic faults). Acknowledging, shelving or taking the device out
  of service cancels pending escalations.
* Each channel has its own sender task: a rate limit (``rate_per_min``, on the injected clock)
  and, when several alarms wait, one digest message instead of a flood of e-mails (ISA-18.2:
  floods must not be amplified); retries with exponential backoff; after the last
  retry the message goes to ``dead-letters.jsonl`` with the reason, nothing is silently lost.
* Blocking I/O is bridged explicitly: ``smtplib`` runs in ``asyncio.to_thread``; webhooks are a
  minimal HTTP/1.1 client on asyncio streams (stdlib only).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import smtplib
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from email.message import EmailMessage
from typing import Any
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo

from scada.clock import Clock
from scada.sections.alarms import ChannelConfig, NotificationsConfig, RuleConfig

from . import model as M

log = logging.getLogger("scada.alarms.notify")


class DeliveryError(Exception):
    """A channel could not deliver (after this attempt)."""


@dataclass(slots=True)
class Message:
    subject: str
    text: str
    data: dict[str, Any]
    alarm_ids: list[str] = field(default_factory=list)


def alarm_message(e: M.AlarmEvent, site: str, escalation: int = 0) -> Message:
    tag = f"ESCALATION {escalation}: " if escalation else ""
    subject = f"[{site}] {tag}P{e.priority} {e.alarm_id}: {e.message or e.name}"
    when = datetime.fromtimestamp(e.ts).isoformat(timespec="seconds")
    text = (f"{tag}{e.message or e.name}\n\nalarm:    {e.alarm_id}\ndevice:   {e.device}\n"
            f"area:     {e.area}\ncategory: {e.category}\npriority: {e.priority} "
            f"(severity {e.severity})\nstate:    {e.state}\nvalue:    {e.value}\nsince:    {when}\n")
    data = {"site": site, "escalation": escalation, **e.as_dict()}
    return Message(subject, text, data, [e.alarm_id])


def digest(msgs: list[Message], site: str) -> Message:
    subject = f"[{site}] {len(msgs)} alarms"
    text = f"{len(msgs)} alarms while the channel was rate limited:\n\n" + "\n".join(
        m.subject for m in msgs)
    return Message(subject, text, {"site": site, "count": len(msgs),
                                   "alarms": [m.data for m in msgs]},
                   [a for m in msgs for a in m.alarm_ids])


def in_window(hours: str | None, ts: float, tz: ZoneInfo) -> bool:
    if hours is None:
        return True
    a, b = (p.strip() for p in hours.split("-"))
    t = datetime.fromtimestamp(ts, tz)
    m = t.hour * 60 + t.minute

    def mins(s: str) -> int:
        h, mm = s.split(":")
        return int(h) * 60 + int(mm)

    lo, hi = mins(a), mins(b)
    return lo <= m < hi if lo <= hi else (m >= lo or m < hi)


def matches(rule: RuleConfig, e: M.AlarmEvent, tz: ZoneInfo) -> bool:
    return ((rule.priorities is None or e.priority in rule.priorities)
            and (rule.areas is None or e.area in rule.areas)
            and (rule.categories is None or e.category in rule.categories)
            and in_window(rule.hours, e.ts, tz))


# ----------------------------------------------------------------------------- transports
def _smtp_send(cfg: ChannelConfig, msg: Message, timeout: float) -> None:
    em = EmailMessage()
    em["From"] = cfg.sender
    em["To"] = ", ".join(cfg.to)
    em["Subject"] = msg.subject
    em.set_content(msg.text)
    with smtplib.SMTP(cfg.host, cfg.port, timeout=timeout) as s:
        if cfg.starttls:
            s.starttls(context=ssl.create_default_context())
        if cfg.username:
            s.login(cfg.username, cfg.password or "")
        s.send_message(em)


async def http_post_json(url: str, payload: Any, headers: dict[str, str], limit_s: float) -> int:
    """POST ``payload`` as JSON; return the HTTP status. Raises :class:`DeliveryError` on a
    non-2xx answer and OSError/TimeoutError on transport failures."""
    u = urlsplit(url)
    if u.scheme not in ("http", "https"):
        raise DeliveryError(f"webhook url {url!r}: expected http:// or https://")
    port = u.port or (443 if u.scheme == "https" else 80)
    body = json.dumps(payload, default=str).encode()
    path = (u.path or "/") + (f"?{u.query}" if u.query else "")
    head = [f"POST {path} HTTP/1.1", f"Host: {u.hostname}:{port}",
            "Content-Type: application/json", f"Content-Length: {len(body)}",
            "Connection: close", "User-Agent: city-scada-alarms"]
    head += [f"{k}: {v}" for k, v in headers.items()]
    async with asyncio.timeout(limit_s):
        reader, writer = await asyncio.open_connection(
            u.hostname, port, ssl=ssl.create_default_context() if u.scheme == "https" else None)
        try:
            writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + body)
            await writer.drain()
            status_line = await reader.readline()
            parts = status_line.decode("latin-1").split(" ", 2)
            if len(parts) < 2 or not parts[1].isdigit():
                raise DeliveryError(f"webhook {url}: malformed HTTP status line {status_line!r}")
            status = int(parts[1])
            await reader.read()  # drain (Connection: close)
        finally:
            writer.close()
            try:
                await writer.wait_closed()
            except (ConnectionError, ssl.SSLError):
                pass
    if not 200 <= status < 300:
        raise DeliveryError(f"webhook {url}: HTTP {status}")
    return status


# ----------------------------------------------------------------------------- channel
class Channel:
    """One destination with its queue, rate limit, retries and dead letters."""

    def __init__(self, name: str, cfg: ChannelConfig, clock: Clock, dead_letters: Callable[[dict[str, Any]], None], site: str):
        self.name = name
        self.cfg = cfg
        self.clock = clock
        self.site = site
        self.dead_letters = dead_letters
        self._queue: list[Message] = []
        self._ready = asyncio.Event()
        self._last_sent = -1e18
        self.stats = {"sent": 0, "digests": 0, "retries": 0, "dead": 0}

    def put(self, msg: Message) -> None:
        self._queue.append(msg)
        self._ready.set()

    async def _deliver(self, msg: Message) -> None:
        if self.cfg.type == "smtp":
            await asyncio.to_thread(_smtp_send, self.cfg, msg, self.cfg.timeout)
        else:
            await http_post_json(self.cfg.url or "", msg.data, self.cfg.headers, self.cfg.timeout)

    async def send(self, msg: Message) -> bool:
        """Deliver with retries; on final failure write a dead letter. True if delivered."""
        last: Exception | None = None
        for attempt in range(self.cfg.retries + 1):
            try:
                await self._deliver(msg)
                self.stats["sent"] += 1
                return True
            except (OSError, TimeoutError, smtplib.SMTPException, DeliveryError) as e:
                last = e
                if attempt < self.cfg.retries:
                    self.stats["retries"] += 1
                    await asyncio.sleep(self.clock.real_seconds(self.cfg.backoff * 2 ** attempt))
        self.stats["dead"] += 1
        reason = f"{type(last).__name__}: {last}"
        log.error("notification channel %s: giving up on %r after %d attempts (%s); written to "
                  "the dead-letter log", self.name, msg.subject, self.cfg.retries + 1, reason)
        await asyncio.to_thread(self.dead_letters, {
            "ts": self.clock.time(), "channel": self.name, "type": self.cfg.type,
            "attempts": self.cfg.retries + 1, "reason": reason, "subject": msg.subject,
            "alarm_ids": msg.alarm_ids, "data": msg.data})
        return False

    async def run(self) -> None:
        interval = 60.0 / self.cfg.rate_per_min
        while True:
            await self._ready.wait()
            wait = self._last_sent + interval - self.clock.time()
            if wait > 0:
                await self.clock.sleep(wait)
            batch, self._queue = self._queue, []
            self._ready.clear()
            if not batch:
                continue
            msg = batch[0] if len(batch) == 1 else digest(batch, self.site)
            if len(batch) > 1:
                self.stats["digests"] += 1
            self._last_sent = self.clock.time()
            await self.send(msg)


# ----------------------------------------------------------------------------- notifier
class Notifier:
    """Listener of the alarm engine: matches rules, feeds channels, runs escalations."""

    def __init__(self, cfg: NotificationsConfig, clock: Clock, directory: str, *,
                 site: str = "scada", timezone: str = "UTC",
                 municipality_of: dict[str, str] | None = None):
        self.cfg = cfg
        self.municipality_of = municipality_of or {}
        self.clock = clock
        self.site = site
        self.tz = ZoneInfo(timezone)
        os.makedirs(directory, exist_ok=True)
        self.dead_path = os.path.join(directory, "dead-letters.jsonl")
        self.channels = {n: Channel(n, c, clock, self._dead, site) for n, c in cfg.channels.items()}
        self._esc: dict[str, list[tuple[float, int, RuleConfig, M.AlarmEvent]]] = {}
        self._wake = asyncio.Event()

    def _dead(self, entry: dict[str, Any]) -> None:
        line = json.dumps(entry, default=str, ensure_ascii=False) + "\n"
        with open(self.dead_path, "a", encoding="utf-8") as f:
            f.write(line)

    def on_events(self, events: list[M.AlarmEvent]) -> None:
        for e in events:
            annunciated = (e.event == M.RAISE and not e.hidden) or (
                e.event in (M.UNSUPPRESS, M.UNSHELVE, M.IN_SERVICE) and e.state == M.UNACK_ACTIVE)
            if annunciated:
                for rule in self.cfg.rules:
                    if matches(rule, e, self.tz):
                        for ch in rule.channels:
                            self.channels[ch].put(alarm_message(e, self.site))
                        for k, step in enumerate(rule.escalate, 1):
                            self._esc.setdefault(e.alarm_id, []).append((e.ts + step.after, k, rule, e))
                            self._wake.set()
            elif e.event in (M.ACK, M.SHELVE, M.OUT_OF_SERVICE, M.SUPPRESS) or (
                    e.event == M.CLEAR and e.acked):
                self._esc.pop(e.alarm_id, None)

    def due(self, now: float) -> None:
        for aid in list(self._esc):
            steps = self._esc[aid]
            keep = []
            for deadline, k, rule, e in steps:
                if deadline <= now:
                    step = rule.escalate[k - 1]
                    town = self.municipality_of.get(e.area, "")
                    for ch in [*step.channels, *step.by_municipality.get(town, [])]:
                        self.channels[ch].put(alarm_message(e, self.site, escalation=k))
                else:
                    keep.append((deadline, k, rule, e))
            if keep:
                self._esc[aid] = keep
            else:
                del self._esc[aid]

    async def run(self) -> None:
        tasks = [asyncio.create_task(c.run(), name=f"alarms:notify:{n}")
                 for n, c in self.channels.items()]
        try:
            while True:
                self._wake.clear()
                now = self.clock.time()
                self.due(now)
                nxt = min((d for s in self._esc.values() for d, *_ in s), default=now + 3600)
                await M.sleep_or_wake(self.clock, nxt - now, self._wake)
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
