# One module (over ~600 lines): rules, channel senders and the escalation loop of one notifier; its durable queue is notify_queue.py.
"""Notifications and escalation: alarm events -> rules -> channels (e-mail over SMTP, HTTP
webhooks, SMS through an HTTP gateway or an SMTP-to-SMS gateway).

* Rules match priority, area, category and a local time-of-day window; a matching annunciated
  raise is sent to the rule's channels, and each ``escalate`` step fires if the alarm is still
  unacknowledged ``after`` that long (the on-call engineer, then the elected official of that
  municipality for critical traffic faults). Acknowledging, shelving or taking the device out
  of service cancels pending escalations. With ``return_to_normal: true`` the rule also tells
  its channels when an alarm it notified clears.
* Nothing is lost: every notification is first written to the channel's durable queue
  (:mod:`.notify_queue`, in the alarms state directory, survives a restart) and leaves it only
  once delivered. A channel that keeps failing is declared *down* after ``retries`` failed
  attempts (an alarm ``_system/notify/<channel>/down`` is raised through the alarm engine) and
  keeps retrying every ``max_backoff``; when it answers again the backlog goes out in order,
  each notification marked with its delay. Only a permanent refusal (HTTP 4xx other than 408 /
  429, an SMTP 5xx reply) or a notification older than ``max_age`` becomes a dead letter,
  which ``scada notify replay`` queues again.
* Each channel has its own sender task: a rate limit (``rate_per_min``, on the injected clock)
  and, when several notifications wait, one digest message instead of a flood of e-mails
  (ISA-18.2: floods must not be amplified).
* Messages are rendered when they are sent, not when they are queued: the alarm's state is
  read then (an escalation or raise of an alarm acknowledged meanwhile is dropped, never sent
  as "unacknowledged"), and the delay is known. Times are in the site's time zone with their
  UTC offset; e-mails carry ``Date`` and ``Message-ID`` (RFC 5322 3.6.1, 3.6.4).
* Blocking I/O is bridged explicitly: ``smtplib`` runs in ``asyncio.to_thread``; webhooks are a
  minimal HTTP/1.1 client on asyncio streams (stdlib only).
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import pwd
import smtplib
import ssl
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from typing import Any
from urllib.parse import urlencode, urlsplit
from zoneinfo import ZoneInfo

from scada.clock import Clock
from scada.sections.alarms import ChannelConfig, NotificationsConfig, RuleConfig

from . import model as M
from .notify_queue import QueueLog, dead_path, notify_dir, read_dead_letters, replay_dir

log = logging.getLogger("scada.alarms.notify")

#: a notification delivered this long after it was queued is marked late
LATE_AFTER = 60.0
#: most notifications in one digest (a bigger backlog goes out in several, rate-limited)
DIGEST_MAX = 200
#: how often the notifier looks for replay requests (``scada notify replay``)
REPLAY_POLL = 5.0


class DeliveryError(Exception):
    """A channel could not deliver (after this attempt); ``permanent`` when retrying cannot
    help (the peer refused the message itself, e.g. HTTP 400, SMTP 550)."""

    def __init__(self, msg: str, permanent: bool = False):
        super().__init__(msg)
        self.permanent = permanent


@dataclass(slots=True)
class Message:
    subject: str
    text: str
    data: dict[str, Any]
    alarm_ids: list[str] = field(default_factory=list)
    sms: str = ""


# ----------------------------------------------------------------------------- rendering
def fmt_delay(s: float) -> str:
    s = round(s)
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60} s" if s % 60 else f"{s // 60} min"
    return f"{s // 3600} h {s % 3600 // 60} min"


class Renderer:
    """Turns queue entries into messages at send time (state, delay and location then)."""

    def __init__(self, site: str, tz: ZoneInfo,
                 state_of: Callable[[str], M.AlarmEvent | None] | None = None,
                 describe: Callable[[str], dict[str, Any]] | None = None):
        self.site = site
        self.tz = tz
        self.state_of = state_of or (lambda _aid: None)
        self.describe = describe or (lambda _dev: {})

    def local(self, ts: float) -> str:
        """ISO 8601 in the site's zone with its offset (2026-01-01T18:00:00+01:00)."""
        return datetime.fromtimestamp(ts, self.tz).isoformat(timespec="seconds")

    def obsolete(self, entry: dict[str, Any]) -> str | None:
        """Why a queued raise/escalation need not be sent any more (someone acknowledged it,
        or it is hidden now), or None."""
        if entry.get("kind") not in ("raise", "escalation"):
            return None
        now = self.state_of(entry["event"]["alarm_id"])
        if now is None:
            return None
        if now.acked:
            return "acknowledged"
        if now.hidden:
            return "shelved, suppressed or out of service"
        return None

    def one(self, entry: dict[str, Any], now: float) -> Message:
        e = entry["event"]
        kind = entry.get("kind", "raise")
        k = int(entry.get("escalation", 0))
        delay = now - float(entry["created"])
        late = delay >= LATE_AFTER
        tag = {"escalation": f"ESCALATION {k}: ", "rtn": "BACK TO NORMAL: "}.get(kind, "")
        late_tag = f"LATE {fmt_delay(delay)}: " if late else ""
        title = e.get("message") or e.get("name")
        if kind == "rtn":
            title = f"{e.get('alarm_id')} returned to normal"
        subject = f"[{self.site}] {late_tag}{tag}P{e['priority']} {e['alarm_id']}: {title}"
        cur = self.state_of(e["alarm_id"])
        state = cur.state if cur is not None else e.get("state")
        where = self.describe(e.get("device", ""))
        lines = [f"{tag}{title}", "",
                 f"alarm:    {e['alarm_id']}",
                 f"device:   {e.get('device')}",
                 f"area:     {e.get('area')}" + (f" ({where['municipality']})"
                                                 if where.get("municipality") else "")]
        if where.get("location"):
            lat, lon = where["location"]
            lines.append(f"location: {lat:.5f}, {lon:.5f} "
                         f"https://www.openstreetmap.org/?mlat={lat:.5f}&mlon={lon:.5f}#map=19/"
                         f"{lat:.5f}/{lon:.5f}")
        for key in ("address", "description"):
            if where.get(key):
                lines.append(f"{key + ':':<9} {where[key]}")
        if where.get("cabinet"):
            cab = where["cabinet"]
            lines.append(f"cabinet:  {cab['path']}" + (f" ({cab['description']})"
                                                       if cab.get("description") else ""))
        lines += [f"category: {e.get('category')}",
                  f"priority: {e['priority']} (severity {e.get('severity')})",
                  f"state:    {state} (at {self.local(now)})",
                  f"value:    {e.get('value')}",
                  f"{'cleared:' if kind == 'rtn' else 'since:  '}  {self.local(float(e['ts']))}"]
        if late:
            lines.append(f"late:     sent {fmt_delay(delay)} after it was queued at "
                         f"{self.local(float(entry['created']))}")
        data = {"site": self.site, "kind": kind, "escalation": k, **e, "state": state,
                "event_state": e.get("state"), "time": self.local(float(e["ts"])),
                "queued_at": self.local(float(entry["created"])), "delay_s": round(delay, 3),
                "late": late, "id": entry["id"], **({"location": where} if where else {})}
        sms = f"{late_tag}{tag}P{e['priority']} {title} ({e['alarm_id']}) {self.local(float(e['ts']))}"
        return Message(subject, "\n".join(lines) + "\n", data, [e["alarm_id"]], sms)

    def digest(self, entries: list[dict[str, Any]], now: float, why: str) -> Message:
        msgs = [self.one(x, now) for x in entries]
        n = len(msgs)
        late = sum(1 for m in msgs if m.data["late"])
        subject = f"[{self.site}] {n} alarm notifications" + (f" ({late} late)" if late else "")
        text = f"{n} alarm notifications {why}:\n\n" + "\n".join(
            f"- {m.subject.removeprefix(f'[{self.site}] ')}" for m in msgs) + "\n" + "".join(
            f"\n{'-' * 72}\n{m.text}" for m in msgs)
        return Message(subject, text, {"site": self.site, "count": n, "reason": why,
                                       "alarms": [m.data for m in msgs]},
                       [a for m in msgs for a in m.alarm_ids],
                       f"[{self.site}] {n} alarms {why}: " + "; ".join(m.sms for m in msgs[:3]))


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
def _smtp_send(cfg: ChannelConfig, msg: Message, timeout: float, when: datetime,
               sms: bool = False) -> None:
    em = EmailMessage()
    em["From"] = cfg.sender
    em["To"] = ", ".join(cfg.to)
    em["Subject"] = msg.subject if not sms else msg.sms[: cfg.max_chars]
    em["Date"] = format_datetime(when)  # RFC 5322 3.6.1: required
    em["Message-ID"] = make_msgid("scada", domain=cfg.sender.rpartition("@")[2] or None)
    em.set_content(msg.text if not sms else msg.sms[: cfg.max_chars])
    try:
        with smtplib.SMTP(cfg.host, cfg.port, timeout=timeout) as s:
            if cfg.starttls:
                s.starttls(context=ssl.create_default_context())
            if cfg.username:
                s.login(cfg.username, cfg.password or "")
            s.send_message(em)
    except smtplib.SMTPResponseException as e:
        # RFC 5321 4.2.1: 5yz is a permanent negative reply, 4yz transient
        raise DeliveryError(f"SMTP {cfg.host}:{cfg.port}: {e.smtp_code} {e.smtp_error!r}",
                            permanent=500 <= e.smtp_code < 600) from e
    except smtplib.SMTPRecipientsRefused as e:
        codes = [c for c, _ in e.recipients.values()]
        raise DeliveryError(f"SMTP {cfg.host}:{cfg.port}: recipients refused {e.recipients}",
                            permanent=all(500 <= c < 600 for c in codes)) from e


async def http_request(url: str, body: bytes, content_type: str, headers: dict[str, str],
                       limit_s: float) -> int:
    """POST ``body``; return the HTTP status. Raises :class:`DeliveryError` on a non-2xx answer
    (permanent for 4xx other than 408 Request Timeout and 429 Too Many Requests, RFC 9110
    15.5) and OSError/TimeoutError on transport failures."""
    u = urlsplit(url)
    if u.scheme not in ("http", "https"):
        raise DeliveryError(f"url {url!r}: expected http:// or https://", permanent=True)
    port = u.port or (443 if u.scheme == "https" else 80)
    path = (u.path or "/") + (f"?{u.query}" if u.query else "")
    head = [f"POST {path} HTTP/1.1", f"Host: {u.hostname}:{port}",
            f"Content-Type: {content_type}", f"Content-Length: {len(body)}",
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
                raise DeliveryError(f"{url}: malformed HTTP status line {status_line!r}")
            status = int(parts[1])
            await reader.read()  # drain (Connection: close)
        finally:
            writer.close()
            try:
                await writer.wait_closed()
            except (ConnectionError, ssl.SSLError):
                pass
    if not 200 <= status < 300:
        raise DeliveryError(f"{url}: HTTP {status}",
                            permanent=400 <= status < 500 and status not in (408, 429))
    return status


async def http_post_json(url: str, payload: Any, headers: dict[str, str], limit_s: float) -> int:
    return await http_request(url, json.dumps(payload, default=str).encode(), "application/json",
                              headers, limit_s)


def _auth_headers(cfg: ChannelConfig) -> dict[str, str]:
    h = dict(cfg.headers)
    if cfg.token:
        h["Authorization"] = f"Bearer {cfg.token}"
    elif cfg.username and cfg.type != "smtp":
        raw = f"{cfg.username}:{cfg.password or ''}".encode()
        h["Authorization"] = "Basic " + base64.b64encode(raw).decode("ascii")
    return h


async def sms_gateway_send(cfg: ChannelConfig, text: str, limit_s: float) -> None:
    """One request per recipient: ``fields`` is the gateway's parameter template, each string
    value formatted with ``to`` (the number), ``text`` (the SMS, cut at ``max_chars``) and
    ``site``; sent as JSON or, with ``form: true``, as application/x-www-form-urlencoded."""
    text = text[: cfg.max_chars]
    for number in cfg.to:
        params = {k: v.format(to=number, text=text) if isinstance(v, str) else v
                  for k, v in cfg.fields.items()}
        if cfg.form:
            body, ctype = urlencode(params).encode(), "application/x-www-form-urlencoded"
        else:
            body, ctype = json.dumps(params).encode(), "application/json"
        await http_request(cfg.url or "", body, ctype, _auth_headers(cfg), limit_s)


# ----------------------------------------------------------------------------- channel
class Channel:
    """One destination with its durable queue, rate limit, retries and dead letters."""

    def __init__(self, name: str, cfg: ChannelConfig, clock: Clock, directory: str,
                 renderer: Renderer, dead_letters: Callable[[list[dict[str, Any]]], None],
                 on_down: Callable[[str, bool, str], None] | None = None):
        self.name = name
        self.cfg = cfg
        self.clock = clock
        self.renderer = renderer
        self.dead_letters = dead_letters
        self.on_down = on_down
        self.queue = QueueLog(os.path.join(notify_dir(directory), f"{name}.queue.jsonl"))
        self._ready = asyncio.Event()
        if self.queue.pending:
            self._ready.set()
        self._last_attempt = -1e18
        self.failures = 0  # consecutive failed attempts
        self.failing_since: float | None = None  # time of the first of them
        self.down_since: float | None = None
        self.last_success: float | None = None
        self.busy = False  # a delivery attempt is running (tests wait for it to end)
        self.stats = {"sent": 0, "digests": 0, "retries": 0, "failed": 0, "dead": 0,
                      "dropped": 0}

    def put(self, entries: list[dict[str, Any]]) -> None:
        self.queue.put(entries)
        self._ready.set()

    async def _deliver(self, msg: Message) -> None:
        t = self.cfg.type
        if t == "smtp" or (t == "sms" and self.cfg.url is None):
            when = datetime.fromtimestamp(self.clock.time(), self.renderer.tz)
            await asyncio.to_thread(_smtp_send, self.cfg, msg, self.cfg.timeout, when, t == "sms")
        elif t == "sms":
            await sms_gateway_send(self.cfg, msg.sms, self.cfg.timeout)
        else:
            await http_post_json(self.cfg.url or "", msg.data, _auth_headers(self.cfg),
                                 self.cfg.timeout)

    def _dead(self, entries: list[dict[str, Any]], reason: str, attempts: int) -> None:
        self.stats["dead"] += len(entries)
        log.error("notification channel %s: %d notification(s) given up (%s), written to the "
                  "dead-letter log; `scada notify replay` sends them again", self.name,
                  len(entries), reason)
        now = self.clock.time()
        self.dead_letters([{
            "id": x["id"], "ts": now, "channel": self.name, "type": self.cfg.type,
            "attempts": attempts, "reason": reason, "alarm_ids": [x["event"]["alarm_id"]],
            "subject": self.renderer.one(x, now).subject, "entry": x} for x in entries])
        self.queue.remove([x["id"] for x in entries], "dead")

    def _set_down(self, down: bool, reason: str) -> None:
        if down == (self.down_since is not None):
            return
        self.down_since = self.clock.time() if down else None
        if down:
            log.error("notification channel %s is down (%s); notifications are kept in its "
                      "queue and sent when it answers again", self.name, reason)
        else:
            log.warning("notification channel %s answers again", self.name)
        if self.on_down is not None:
            self.on_down(self.name, down, reason)

    async def step(self) -> None:
        """One attempt at the head of the queue (a digest when several wait)."""
        now = self.clock.time()
        rate_waited = False
        wait = self._last_attempt + 60.0 / self.cfg.rate_per_min - now
        if wait > 0:
            rate_waited = True
            await self.clock.sleep(wait)
            now = self.clock.time()
        fd = self.queue.sync_fd()
        if fd is not None:
            self.busy = True
            try:
                await asyncio.to_thread(_fsync_close, fd)
            finally:
                self.busy = False
        old = [x for x in self.queue.pending if now - float(x["created"]) > self.cfg.max_age]
        if old:
            self._dead(old, f"not delivered within max_age ({fmt_delay(self.cfg.max_age)})",
                       self.failures)
        keep, drop = [], []
        for x in self.queue.pending[:DIGEST_MAX]:
            (drop if self.renderer.obsolete(x) else keep).append(x)
        if drop:
            self.stats["dropped"] += len(drop)
            self.queue.remove([x["id"] for x in drop])
        if not keep:
            return
        if len(keep) == 1:
            msg = self.renderer.one(keep[0], now)
        else:
            if self.failures:
                why = (f"delayed while the channel was unreachable (since "
                       f"{self.renderer.local(self.failing_since or now)})")
            elif rate_waited:
                why = f"while the channel was rate limited ({self.cfg.rate_per_min:g} per minute)"
            else:
                why = "at once"
            msg = self.renderer.digest(keep, now, why)
        self._last_attempt = now
        self.busy = True
        try:
            await self._deliver(msg)
        except (OSError, TimeoutError, smtplib.SMTPException, DeliveryError) as e:
            await self._failed(keep, e)
            return
        finally:
            self.busy = False
        self.stats["sent"] += 1
        if len(keep) > 1:
            self.stats["digests"] += 1
        self.failures = 0
        self.failing_since = None
        self.last_success = self.clock.time()
        self.queue.remove([x["id"] for x in keep])
        self._set_down(False, "")

    async def _failed(self, batch: list[dict[str, Any]], e: Exception) -> None:
        reason = f"{type(e).__name__}: {e}"
        self.failures += 1
        self.stats["failed"] += 1
        if isinstance(e, DeliveryError) and e.permanent:
            # the peer answered (and refused this message): the channel itself is up
            self._dead(batch, reason, self.failures)
            self.failures = 0
            self.failing_since = None
            self._set_down(False, "")
            return
        if self.failing_since is None:
            self.failing_since = self._last_attempt  # when the failed attempt started
        self.stats["retries"] += 1
        if self.failures > self.cfg.retries:
            self._set_down(True, reason)
        (log.debug if self.down_since is not None else log.warning)(
            "notification channel %s: attempt %d failed (%s); %d queued", self.name,
            self.failures, reason, len(self.queue.pending))
        self.busy = False
        await self.clock.sleep(min(self.cfg.backoff * 2 ** (self.failures - 1),
                                   self.cfg.max_backoff))

    async def run(self) -> None:
        try:
            while True:
                if not self.queue.pending:
                    self._ready.clear()
                    await self._ready.wait()
                    continue
                await self.step()
        finally:
            self.queue.close()


def _fsync_close(fd: int) -> None:
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# ----------------------------------------------------------------------------- notifier
class Notifier:
    """Listener of the alarm engine: matches rules, feeds channels, runs escalations.

    ``state_of(alarm_id)`` gives an alarm's current state at send time, ``describe(device)``
    its location (``location`` (lat, lon), ``address``, ``description``, ``cabinet``,
    ``municipality``), ``on_down(channel, down, reason)`` raises/clears the channel-down
    alarm, ``on_replay(request, ids queued, request file)`` audits a replay."""

    def __init__(self, cfg: NotificationsConfig, clock: Clock, directory: str, *,
                 site: str = "scada", timezone: str = "UTC",
                 municipality_of: dict[str, str] | None = None,
                 state_of: Callable[[str], M.AlarmEvent | None] | None = None,
                 describe: Callable[[str], dict[str, Any]] | None = None,
                 on_down: Callable[[str, bool, str], None] | None = None,
                 on_replay: Callable[[dict[str, Any], list[str], str], None] | None = None):
        self.cfg = cfg
        self.on_replay = on_replay
        self.municipality_of = municipality_of or {}
        self.clock = clock
        self.site = site
        self.tz = ZoneInfo(timezone)
        self.directory = directory
        os.makedirs(notify_dir(directory), exist_ok=True)
        self.dead_path = dead_path(directory)
        self.renderer = Renderer(site, self.tz, state_of, describe)
        self.channels = {n: Channel(n, c, clock, directory, self.renderer, self._dead, on_down)
                         for n, c in cfg.channels.items()}
        self._esc: dict[str, list[tuple[float, int, RuleConfig, M.AlarmEvent]]] = {}
        self._notified: dict[str, set[int]] = {}  # alarm id -> rules that sent its raise
        self._out: dict[str, list[dict[str, Any]]] = {}  # collected by _send, queued by _flush
        self._wake = asyncio.Event()
        self.dead_count = len(read_dead_letters(directory))

    def _dead(self, entries: list[dict[str, Any]]) -> None:
        # small appends of rare events: inline (the durable queue holds them until this returns)
        with open(self.dead_path, "a", encoding="utf-8") as f:
            f.write("".join(json.dumps(x, default=str, ensure_ascii=False) + "\n"
                            for x in entries))
        self.dead_count += len(entries)

    def _entry(self, e: M.AlarmEvent, kind: str, escalation: int = 0) -> dict[str, Any]:
        return {"id": uuid.uuid4().hex, "created": self.clock.time(), "kind": kind,
                "escalation": escalation, "event": e.as_dict()}

    def _send(self, channels: list[str], e: M.AlarmEvent, kind: str, escalation: int = 0) -> None:
        for ch in dict.fromkeys(channels):
            self._out.setdefault(ch, []).append(self._entry(e, kind, escalation))

    def _flush(self) -> None:
        """Queue what :meth:`_send` collected: one write per channel for a whole batch of
        events (a flood of 10,000 raises is one append, not 10,000)."""
        out, self._out = self._out, {}
        for ch, entries in out.items():
            self.channels[ch].put(entries)

    def on_events(self, events: list[M.AlarmEvent]) -> None:
        try:
            self._on_events(events)
        finally:
            self._flush()

    def _on_events(self, events: list[M.AlarmEvent]) -> None:
        for e in events:
            annunciated = (e.event == M.RAISE and not e.hidden) or (
                e.event in (M.UNSUPPRESS, M.UNSHELVE, M.IN_SERVICE) and e.state == M.UNACK_ACTIVE)
            if annunciated:
                for ri, rule in enumerate(self.cfg.rules):
                    if matches(rule, e, self.tz):
                        self._send(rule.channels, e, "raise")
                        if rule.return_to_normal:
                            self._notified.setdefault(e.alarm_id, set()).add(ri)
                        for k, step in enumerate(rule.escalate, 1):
                            self._esc.setdefault(e.alarm_id, []).append((e.ts + step.after, k, rule, e))
                            self._wake.set()
                continue
            if e.event == M.CLEAR:
                for ri in sorted(self._notified.pop(e.alarm_id, ())):
                    self._send(self.cfg.rules[ri].channels, e, "rtn")
            if e.event in (M.ACK, M.SHELVE, M.OUT_OF_SERVICE, M.SUPPRESS) or (
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
                    self._send([*step.channels, *step.by_municipality.get(town, [])], e,
                               "escalation", k)
                else:
                    keep.append((deadline, k, rule, e))
            if keep:
                self._esc[aid] = keep
            else:
                del self._esc[aid]
        self._flush()

    # ------------------------------------------------------------------ replay and health
    def _replay_waiting(self) -> bool:
        """One directory read per poll, inline (like the schedule engine's stat of its
        overrides): the files themselves are read in a worker thread."""
        try:
            return any(n.endswith(".json") for n in os.listdir(replay_dir(self.directory)))
        except FileNotFoundError:
            return False

    def load_replays(self) -> list[tuple[str, dict[str, Any], dict[str, dict[str, Any]]]]:
        """(request path, request, dead letters by id) of each ``scada notify replay`` request
        waiting in the replay directory (worker thread: reads files)."""
        d = replay_dir(self.directory)
        try:
            names = sorted(n for n in os.listdir(d) if n.endswith(".json"))
        except FileNotFoundError:
            return []
        if not names:
            return []
        dead = {x["id"]: x for x in read_dead_letters(self.directory) if "id" in x}
        out = []
        for n in names:
            p = os.path.join(d, n)
            try:
                with open(p, encoding="utf-8") as f:
                    req = json.load(f)
                if not isinstance(req, dict) or not isinstance(req.get("ids"), list):
                    raise ValueError("expected {\"ids\": [...], ...}")
            except (OSError, ValueError) as e:
                log.error("notify replay request %s unreadable (%s): renamed to .bad", p, e)
                os.replace(p, p + ".bad")
                continue
            # who asked: the account that owns the request file (the kernel says so; the
            # user written inside it is only what the command was told)
            try:
                uid = os.stat(p).st_uid
                req["owner"] = pwd.getpwuid(uid).pw_name
            except KeyError:
                req["owner"] = str(uid)
            except OSError:
                continue
            out.append((p, req, dead))
        return out

    def apply_replays(self, reqs: list[tuple[str, dict[str, Any], dict[str, dict[str, Any]]]]
                      ) -> int:
        """Queue the requested dead letters again at the tail of their channel (or the
        request's ``channel``); returns how many were queued."""
        queued = 0
        for p, req, dead in reqs:
            done: list[str] = []
            for i in req["ids"]:
                x = dead.pop(i, None)
                if x is None:
                    log.warning("notify replay: no dead letter %s (already replayed?)", i)
                    continue
                ch = req.get("channel") or x["channel"]
                if ch not in self.channels:
                    log.error("notify replay of %s: no channel %r (declared: %s)", i, ch,
                              ", ".join(self.channels))
                    continue
                self.channels[ch].put([dict(x["entry"])])
                done.append(i)
            if done:
                self._dead_replayed(done, req)
                queued += len(done)
            if self.on_replay is not None:
                self.on_replay(req, done, os.path.basename(p))
            log.info("notify replay requested by %s (account %s): %d notification(s) queued "
                     "again", req.get("user"), req.get("owner"), len(done))
            os.unlink(p)
        return queued

    def _dead_replayed(self, ids: list[str], req: dict[str, Any]) -> None:
        with open(self.dead_path, "a", encoding="utf-8") as f:
            f.write(json.dumps({"replayed": ids, "ts": self.clock.time(), "by": req.get("owner"),
                                "user": req.get("user"), "channel": req.get("channel")}) + "\n")
        self.dead_count = max(0, self.dead_count - len(ids))

    def health(self) -> dict[str, dict[str, float]]:
        """Per channel: queued, failed (attempts since start), dead_letters (this channel's,
        since start), last_success (POSIX time, NaN never), down."""
        return {n: {"queued": float(len(c.queue.pending)), "failed": float(c.stats["failed"]),
                    "dead_letters": float(c.stats["dead"]),
                    "last_success": c.last_success if c.last_success is not None else float("nan"),
                    "down": float(c.down_since is not None)}
                for n, c in self.channels.items()}

    async def run(self) -> None:
        tasks = [asyncio.create_task(c.run(), name=f"alarms:notify:{n}")
                 for n, c in self.channels.items()]
        try:
            while True:
                self._wake.clear()
                now = self.clock.time()
                self.due(now)
                if self._replay_waiting():
                    self.apply_replays(await asyncio.to_thread(self.load_replays))
                nxt = min((d for s in self._esc.values() for d, *_ in s), default=now + 3600)
                await M.sleep_or_wake(self.clock, min(nxt - now, REPLAY_POLL), self._wake)
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
