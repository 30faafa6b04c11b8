"""The alarm journal's line format: one description (:data:`FIELDS`), one writer (:func:`line`,
with :func:`bulk_lines` its fast path for floods), one reader (:func:`decode`).

A journal line is one JSON object ending with a newline, members in this order:

==============  ========  =======================================================  ==========
member          type      meaning                                                   default
==============  ========  =======================================================  ==========
seq             int       journal sequence number, +1 per line                      required
ts              float     time of the transition, POSIX s                           required
event           str       model.EVENTS (raise, clear, ack, shelve, out_of_service)  required
state           str       ISA-18.2 state after the transition (model.state_name)    required
active          int       limit level after it (0 normal, +-1, +-2; 1 non-limit)    required
acked           bool      AckedState after it                                       required
shelved         int       0 unshelved, 1 one-shot, 2 timed                          0
shelve_until    float     TimedShelve expiry                                        null
suppressed      bool      SuppressedState                                           false
oos             bool      OutOfServiceState                                         false
user            str       who made it (operator, ``system``)                        null
comment         str       operator comment / reason                                 null
value           float     the point's value (null if none)                          required
alarm_id        str       ``device/name`` (a device line: the device path)          required
device, area    str       device path, its area                                     required
name            str       alarm name (``""`` on a device's out_of_service line)      required
category        str       alarm category                                            required
priority        int       1 (highest) .. 4                                          required
severity        int       OPC UA severity 1..1000                                   required
kind            str       ``external`` for a condition another service reports      absent
message         str       the alarm's message after the transition                  required
==============  ========  =======================================================  ==========

The last line of an alarm therefore *is* its state. Members at their default (:data:`DEFAULTS`)
may be left out (flood lines are ~90 bytes shorter); :func:`decode` puts them back, so every
entry a consumer sees is complete. Older journals wrote the same members in other orders (the
identity first on operator-action lines, ``acked`` before ``active`` on flood lines): JSON
member order carries no meaning, and :func:`decode` reads them all
(tests/unit/test_alarm_journal.py reads a journal written before this module).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any

import numpy as np

from . import model as M

#: members in write order (see the module table); the identity members come from
#: :func:`identity`
FIELDS = ("seq", "ts", "event", "state", "active", "acked", "shelved", "shelve_until",
          "suppressed", "oos", "user", "comment", "value", "alarm_id", "device", "area", "name",
          "category", "priority", "severity", "kind", "message")

#: members a writer may leave out when they hold these values; the reader puts them back
DEFAULTS: dict[str, Any] = {"shelved": 0, "shelve_until": None, "suppressed": False, "oos": False,
                            "user": None, "comment": None}


def jnum(v: float | None) -> str:
    """A float as JSON (NaN/inf and None -> null)."""
    if v is None:
        return "null"
    f = float(v)
    return repr(f) if math.isfinite(f) else "null"


def jstr(s: str | None) -> str:
    """A string as JSON; plain printable ASCII without quotes or backslashes (device paths,
    alarm names, most messages) skips the encoder."""
    if s is None:
        return "null"
    if s.isascii() and s.isprintable() and '"' not in s and "\\" not in s:
        return f'"{s}"'
    return json.dumps(s, ensure_ascii=False)


def _b(flag: bool) -> str:
    return "true" if flag else "false"


def identity(alarm_id: str, device: str, area: str, name: str, category: str, priority: int,
             severity: int, external: bool = False) -> str:
    """The identity members of a line (JSON members, no braces); the engine caches them."""
    return (f'"alarm_id":{jstr(alarm_id)},"device":{jstr(device)},"area":{jstr(area)},'
            f'"name":{jstr(name)},"category":{jstr(category)},"priority":{priority},'
            f'"severity":{severity}' + (',"kind":"external"' if external else ""))


def line(seq: int, ts: float, event: str, state: str, active: int, acked: bool, shelved: int,
         shelve_until: float | None, suppressed: bool, oos: bool, user: str | None,
         comment: str | None, value: float | None, ident: str, message: str) -> bytes:
    """One full line (every member written)."""
    return (f'{{"seq":{seq},"ts":{ts!r},"event":"{event}","state":"{state}","active":{active},'
            f'"acked":{_b(acked)},"shelved":{shelved},"shelve_until":{jnum(shelve_until)},'
            f'"suppressed":{_b(suppressed)},"oos":{_b(oos)},"user":{jstr(user)},'
            f'"comment":{jstr(comment)},"value":{jnum(value)},{ident},'
            f'"message":{jstr(message)}}}\n').encode()


def event_line(e: M.AlarmEvent, ident: str) -> bytes:
    """The line of one :class:`~scada.alarms.model.AlarmEvent`."""
    return line(e.seq, e.ts, e.event, e.state, e.active, e.acked, e.shelved, e.shelve_until,
                e.suppressed, e.oos, e.user, e.comment, e.value, ident, e.message)


def device_line(seq: int, ts: float, device: str, oos: bool, user: str | None,
                comment: str) -> bytes:
    """A device's ``out_of_service`` / ``in_service`` line (empty alarm ``name``)."""
    ident = identity(device, device, device.split("/", 1)[0], "", "system", 4, 1)
    return line(seq, ts, M.OUT_OF_SERVICE if oos else M.IN_SERVICE,
                M.OUT_OF_SERVICE_STATE if oos else M.NORMAL, 0, True, 0, None, False, oos, user,
                comment, None, ident,
                ("out of service: " if oos else "back in service: ") + device)


def message_tail(ident: str, message: str) -> bytes:
    """Identity and message, the end of every line: cached per alarm by the engine."""
    return f'{ident},"message":{jstr(message)}}}\n'.encode()


_FULL = ('{"seq":%d,"ts":%s,"event":"%s","state":"%s","active":%d,"acked":%s,'
         '"shelved":%d,"shelve_until":%s,"suppressed":%s,"oos":%s,"user":null,'
         '"comment":null,"value":%s,%s,"message":%s}\n')


def bulk_lines(seq0: int, ts: float, event: str, rows: list[int], levels: list[int],
               values: list[float], acked: np.ndarray, shelved: np.ndarray,
               shelve_until: np.ndarray, suppressed: np.ndarray, oos: np.ndarray,
               tails: list[bytes | None], tail: Callable[[int], bytes],
               ident: Callable[[int], str], message: Callable[[int], str]) -> list[bytes]:
    """The lines of a raise or clear of many alarms (a flood is one batch), numbered from
    ``seq0``: the same members as :func:`line` (the flags are the alarms' columns after the
    transition). When every alarm is visible with one state (all raised, or all cleared to the
    same acknowledgement) the defaults are left out and each line is one bytes formatting of
    (seq, level, value) and the alarm's cached tail (``tails[c]``, else ``tail(c)``)."""
    n = len(rows)
    uniq = {v: (repr(v).encode() if math.isfinite(v) else b"null") for v in set(values)}
    vs = [uniq[v] for v in values]
    tsb = repr(ts).encode()
    hidden = (shelved != 0) | suppressed | oos
    if not hidden.any() and (event == M.RAISE or not acked.any() or acked.all()):
        if event == M.RAISE:
            state, ack = b"UnackActive", b"false"
        else:
            state, ack = (b"Normal", b"true") if acked.all() else (b"UnackRTN", b"false")
        head = (b'{"seq":%d,"ts":' + tsb + b',"event":"' + event.encode() + b'","state":"'
                + state + b'","active":%d,"acked":' + ack + b',"value":%s,%s')
        tl = [tails[c] or tail(c) for c in rows]
        return list(map(head.__mod__, zip(range(seq0, seq0 + n), levels, vs, tl, strict=True)))
    shl, supl, oosl, al = shelved.tolist(), suppressed.tolist(), oos.tolist(), acked.tolist()
    su = shelve_until.tolist()
    act = event == M.RAISE
    tsd = tsb.decode()
    return [(_FULL % (seq0 + k, tsd, event,
                      M.state_name(act, al[k], shl[k], supl[k], oosl[k]), levels[k],
                      _b(al[k]), shl[k], jnum(su[k]), _b(supl[k]), _b(oosl[k]),
                      vs[k].decode(), ident(c), jstr(message(c)))).encode()
            for k, c in enumerate(rows)]


def decode(text: str) -> dict[str, Any] | None:
    """One line -> a complete entry (defaults restored); None if it is not a JSON object.
    Raises ``json.JSONDecodeError`` on a line cut by a crash (the reader counts and skips)."""
    e = json.loads(text)
    if not isinstance(e, dict):
        return None
    return e if "oos" in e else {**DEFAULTS, **e}
