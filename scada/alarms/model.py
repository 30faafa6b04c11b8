"""The alarm state model: ISA-18.2 / IEC 62682 alarm state model and OPC UA Part 9 state variables.

An alarm's state is a handful of independent flags, exactly as OPC UA Part 9 models it for AlarmConditionType
(ActiveState, AckedState, ShelvingState, SuppressedState, OutOfServiceState); the ISA-18.2
state names an operator sees are derived from them by :func:`state_name`:

=====================  =========  ======  =========================================
ISA-18.2 state          active     acked   notes
=====================  =========  ======  =========================================
Normal                  no         yes
Unack-Active            yes        no      red dot, flashing
Ack-Active              yes        yes     red dot, steady
Unack-RTN               no         no      returned to normal, still needs an ack
Shelved                 any        any     hidden by an operator (reason, expiry)
Suppressed              any        any     hidden by design (parent fault, mode)
Out-of-service          any        any     device under works
=====================  =========  ======  =========================================

Shelved / Suppressed / Out-of-service alarms keep being evaluated; they are not annunciated.
Transitions of shelved alarms are journaled; those of alarms suppressed by design or out of
service only move the state (no journal line, no event: a city's luminaires are suppressed every
day while their contactors are open). When the hiding ends while the alarm is still active and
unacknowledged, it is annunciated then.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

# condition kinds (int codes used in the vectorised tables)
K_DISCRETE, K_LIMIT, K_DEVIATION, K_QUALITY, K_STALE, K_RATE, K_EXTERNAL = range(7)
KIND_CODES = {
    "discrete": K_DISCRETE, "limit": K_LIMIT, "deviation": K_DEVIATION, "quality": K_QUALITY,
    "stale": K_STALE, "rate": K_RATE, "external": K_EXTERNAL,
}

# shelving (OPC UA Part 9 ShelvedStateMachineType)
UNSHELVED, ONESHOT, TIMED = 0, 1, 2
SHELVE_NAMES = {UNSHELVED: "Unshelved", ONESHOT: "OneShotShelved", TIMED: "TimedShelved"}

# limit levels (OPC UA Part 9 ExclusiveLimitStateMachineType)
LEVEL_NAMES = {2: "HighHigh", 1: "High", 0: "", -1: "Low", -2: "LowLow"}

# journal events
RAISE = "raise"
CLEAR = "clear"
ACK = "ack"
COMMENT = "comment"
SHELVE = "shelve"
UNSHELVE = "unshelve"
SUPPRESS = "suppress"
UNSUPPRESS = "unsuppress"
OUT_OF_SERVICE = "out_of_service"
IN_SERVICE = "in_service"
CHATTER = "chatter"
LEVEL = "level"
EVENTS = (RAISE, CLEAR, ACK, COMMENT, SHELVE, UNSHELVE, SUPPRESS, UNSUPPRESS, OUT_OF_SERVICE,
          IN_SERVICE, CHATTER, LEVEL)

NORMAL = "Normal"
UNACK_ACTIVE = "UnackActive"
ACK_ACTIVE = "AckActive"
UNACK_RTN = "UnackRTN"
SHELVED = "Shelved"
SUPPRESSED = "Suppressed"
OUT_OF_SERVICE_STATE = "OutOfService"


def state_name(active: bool, acked: bool, shelved: int, suppressed: bool, oos: bool) -> str:
    """ISA-18.2 state of an alarm from its OPC UA Part 9 flags (see the module table)."""
    if oos:
        return OUT_OF_SERVICE_STATE
    if shelved:
        return SHELVED
    if suppressed:
        return SUPPRESSED
    if active:
        return ACK_ACTIVE if acked else UNACK_ACTIVE
    return NORMAL if acked else UNACK_RTN


class AlarmError(Exception):
    """Base of alarm-engine errors."""


class UnknownAlarm(AlarmError, KeyError):
    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "unknown alarm"


class InvalidAlarmState(AlarmError, ValueError):
    """The action does not apply in the alarm's state (OPC UA BadConditionAlreadyShelved ...)."""


@dataclass(slots=True)
class AlarmEvent:
    """One journaled transition, handed to listeners (OPC UA A&C, notifications) after the
    journal write. ``active`` is the level (0 normal, +-1 High/Low, +-2 HighHigh/LowLow,
    1 for non-limit alarms)."""

    seq: int
    ts: float
    cond: int
    alarm_id: str
    device: str
    area: str
    name: str
    category: str
    priority: int
    severity: int
    event: str
    state: str
    active: int
    acked: bool
    shelved: int
    suppressed: bool
    oos: bool
    value: float | None
    message: str
    user: str | None = None
    comment: str | None = None
    shelve_until: float | None = None

    @property
    def hidden(self) -> bool:
        return bool(self.shelved or self.suppressed or self.oos)

    def as_dict(self) -> dict[str, Any]:
        return {
            "seq": self.seq, "ts": self.ts, "alarm_id": self.alarm_id, "device": self.device,
            "area": self.area, "name": self.name, "category": self.category,
            "priority": self.priority, "severity": self.severity, "event": self.event,
            "state": self.state, "active": self.active, "acked": self.acked,
            "shelved": self.shelved, "shelve_until": self.shelve_until,
            "suppressed": self.suppressed, "oos": self.oos, "user": self.user,
            "comment": self.comment, "value": self.value, "message": self.message,
        }


async def sleep_or_wake(clock: Any, seconds: float, wake: asyncio.Event) -> None:
    """Sleep ``seconds`` on ``clock`` or until ``wake`` is set, whichever comes first (the timer
    tasks sleep to their next deadline and are woken when a nearer one appears)."""
    sleeper = asyncio.ensure_future(clock.sleep(max(0.0, seconds)))
    waiter = asyncio.ensure_future(wake.wait())
    try:
        await asyncio.wait({sleeper, waiter}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in (sleeper, waiter):
            t.cancel()
        await asyncio.gather(sleeper, waiter, return_exceptions=True)
