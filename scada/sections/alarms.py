"""Alarm templates in device profiles and the ``alarms:`` site section (owned by the alarm issue).

An :class:`AlarmDef` is written once per profile (or in ``config/profiles/alarms-standard.yaml``
under ``alarm_templates:``) and instantiated for every device of that profile. The kinds follow
the condition classes of ISA-18.2 / IEC 62682 and the alarm types of OPC UA Part 9 (discrete ->
OffNormalAlarmType, limit -> ExclusiveLimitAlarmType, the others -> AlarmConditionType).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from .common import Duration, Ident, Strict, check_format

AlarmKind = Literal["discrete", "limit", "deviation", "quality", "stale", "rate"]
#: "accident" and "civil" (damaged poles, roadworks) drive the interventions procedures (issue 20)
Category = Literal["lighting", "traffic", "cabinet", "system", "accident", "civil"]

#: Default OPC UA severity (Part 9: 1..1000) for ISA-18.2 priorities 1 (highest) .. 4.
PRIORITY_SEVERITY = {1: 900, 2: 700, 3: 500, 4: 300}


class SuppressRule(Strict):
    """Suppression by design (ISA-18.2 designed suppression): while the rule holds, the
    alarm is not annunciated (it is still evaluated and journaled as Suppressed).

    Exactly one of ``alarm`` (another alarm of ``of``'s device is active, e.g. the cabinet's
    ``comm_lost``) or ``point`` + ``equals`` (a tag of ``of``'s device has that value, e.g. the
    cabinet's ``contactor`` is false, the junction's ``flash_cmd`` is true).
    """

    of: Literal["self", "parent"] = "parent"
    alarm: Ident | None = None
    point: Ident | None = None
    equals: float | None = None

    @field_validator("equals", mode="before")
    @classmethod
    def _bool(cls, v: Any) -> Any:
        return float(v) if isinstance(v, bool) else v

    @model_validator(mode="after")
    def _one(self) -> SuppressRule:
        if (self.alarm is None) == (self.point is None):
            raise ValueError("a suppression rule names either 'alarm' or 'point' (with 'equals')")
        if self.point is not None and self.equals is None:
            raise ValueError(f"suppression by point {self.point!r} needs 'equals' (the value that suppresses)")
        return self


class DesignedSuppression(Strict):
    """Site-wide suppression by design (``alarms.suppressed_by``), along the site model:
    while the ``of`` device's ``alarm`` is active (or its ``point`` equals ``equals``), the
    alarms of the device (``of: self``) or of its children (``of: parent``: the rule is read
    from the child's side, like a template's ``suppressed_by``) are suppressed: all of them, or
    only those named in ``alarms``. Devices without that alarm or point are not concerned."""

    of: Literal["self", "parent"] = "parent"
    alarm: Ident | None = None
    point: Ident | None = None
    equals: float | None = None
    alarms: list[Ident] | None = None

    @field_validator("equals", mode="before")
    @classmethod
    def _bool(cls, v: Any) -> Any:
        return float(v) if isinstance(v, bool) else v

    @model_validator(mode="after")
    def _one(self) -> DesignedSuppression:
        if (self.alarm is None) == (self.point is None):
            raise ValueError("an alarms.suppressed_by rule names either 'alarm' or 'point' (with 'equals')")
        if self.point is not None and self.equals is None:
            raise ValueError(f"suppression by the point {self.point!r} needs 'equals'")
        if self.of == "self" and self.alarms is None:
            raise ValueError("an 'of: self' rule names the 'alarms' it hides (else it would hide itself)")
        return self


#: A cabinet (or gateway) that lost communication, supply or its breaker shows one red dot,
#: not one per luminaire; a contactor switched off makes its luminaires dark by design; a
#: junction flashing on command is not a fault.
DEFAULT_SUPPRESSION = [
    {"alarm": "comm_lost"}, {"alarm": "mains_failure"}, {"alarm": "breaker_tripped"},
    {"alarm": "offline"},
    {"point": "contactor", "equals": 0.0,
     "alarms": ["comm_lost", "lamp_failure", "driver_failure", "led_fault", "led_short",
                "supply_fault", "thermal_derating", "dimming_not_followed"]},
    {"of": "self", "point": "force_flash_cmd", "equals": 1.0, "alarms": ["flashing"]},
]


class AlarmDef(Strict):
    """One alarm template of a profile, instantiated for every device using the profile.

    * ``discrete``: ``point`` equals ``equals`` (default true).
    * ``limit``: ``point`` above ``hi``/``hihi`` or below ``lo``/``lolo``; it returns to normal
      only ``deadband`` inside the limit (ISA-18.2 alarm deadband).
    * ``deviation``: ``|point - reference * scale| > tolerance`` (commanded vs measured, e.g.
      ``level`` vs ``level_cmd``: "dimming not followed").
    * ``quality``: the tag's status code is Bad (communication lost). BadOutOfService and
      BadWaitingForInitialData do not count.
    * ``stale``: the tag got no sample for ``timeout``.
    * ``rate``: ``|d point / dt| > max_rate`` (units per second).
    """

    name: Ident
    kind: AlarmKind = "discrete"
    point: Ident | None = None
    equals: float = 1.0
    hihi: float | None = None
    hi: float | None = None
    lo: float | None = None
    lolo: float | None = None
    deadband: float = Field(0.0, ge=0)
    reference: Ident | None = None
    tolerance: float = Field(0.0, ge=0)
    scale: float = 1.0
    timeout: Duration = 0.0
    max_rate: float | None = Field(None, gt=0)
    on_delay: Duration = 0.0
    off_delay: Duration = 0.0
    priority: int = Field(3, ge=1, le=4)
    severity: int | None = Field(None, ge=1, le=1000)
    category: Category = "system"
    #: ``str.format`` template; fields: device, area, name, location, value, limit, unit.
    message: str = ""
    suppressed_by: list[SuppressRule] = Field(default_factory=list)
    options: dict[str, Any] = Field(default_factory=dict)

    @field_validator("equals", mode="before")
    @classmethod
    def _bool(cls, v: Any) -> Any:
        return float(v) if isinstance(v, bool) else v

    @field_validator("message")
    @classmethod
    def _message(cls, v: str) -> str:
        return check_format(v)  # formatted at every raise: no megabyte-wide fields

    @model_validator(mode="after")
    def _kind_fields(self) -> AlarmDef:
        if self.point is None:
            raise ValueError(f"alarm {self.name!r}: kind {self.kind!r} needs 'point' (the tag it watches)")
        if self.kind == "limit" and all(x is None for x in (self.hihi, self.hi, self.lo, self.lolo)):
            raise ValueError(f"alarm {self.name!r}: a limit alarm needs at least one of hihi, hi, lo, lolo")
        if self.kind == "deviation" and self.reference is None:
            raise ValueError(f"alarm {self.name!r}: a deviation alarm needs 'reference' (the commanded point)")
        if self.kind == "stale" and self.timeout <= 0:
            raise ValueError(f"alarm {self.name!r}: a stale alarm needs 'timeout' > 0 (e.g. 10min)")
        if self.kind == "rate" and self.max_rate is None:
            raise ValueError(f"alarm {self.name!r}: a rate alarm needs 'max_rate' (units per second)")
        return self

    @property
    def effective_severity(self) -> int:
        return self.severity if self.severity is not None else PRIORITY_SEVERITY[self.priority]


class ChatterConfig(Strict):
    """Chattering (ISA-18.2 nuisance alarms): ``count`` raises within ``window`` flag the alarm; with
    ``auto_shelve`` set it is also shelved for that long (user ``system``)."""

    count: int = Field(5, ge=2, le=50)
    window: Duration = 600.0
    auto_shelve: Duration | None = None


class ChannelConfig(Strict):
    """A notification channel: e-mail over SMTP, an HTTP webhook (JSON POST of the alarm), or
    an SMS: through an HTTP SMS gateway (``url``, ``fields`` template, ``token`` or
    ``username``/``password`` authentication) or, without ``url``, through an SMTP-to-SMS
    gateway (``host``/``port`` and ``to`` addresses such as ``0600000000@sms.operator``)."""

    type: Literal["smtp", "webhook", "sms"]
    # smtp (and SMTP-to-SMS)
    host: str = "127.0.0.1"
    port: int = Field(25, ge=1, le=65535)
    sender: str = "scada@localhost"
    #: e-mail addresses (smtp, SMTP-to-SMS) or phone numbers (sms through an HTTP gateway)
    to: list[str] = Field(default_factory=list)
    starttls: bool = False
    username: str | None = None
    password: str | None = None
    # webhook and HTTP SMS gateway
    url: str | None = None
    headers: dict[str, str] = Field(default_factory=dict)
    #: HTTP ``Authorization: Bearer`` token (else ``username``/``password`` give Basic auth)
    token: str | None = None
    # HTTP SMS gateway
    #: request parameters; string values are formatted with ``{to}`` (one request per number)
    #: and ``{text}`` (the SMS text)
    fields: dict[str, Any] = Field(default_factory=lambda: {"to": "{to}", "text": "{text}"})
    #: send ``fields`` as application/x-www-form-urlencoded instead of JSON
    form: bool = False
    #: an SMS is cut to this many characters
    max_chars: int = Field(160, ge=20, le=1600)
    # delivery
    timeout: Duration = 10.0
    #: failed attempts before the channel is declared down (alarm raised); it keeps retrying
    retries: int = Field(3, ge=0, le=20)
    #: wait after the first failed attempt, doubled after each further one ...
    backoff: Duration = 2.0
    #: ... up to this
    max_backoff: Duration = Field(60.0, gt=0)
    #: a notification not delivered this long after it was queued becomes a dead letter
    max_age: Duration = Field(86400.0, gt=0)
    #: at most this many messages per minute; beyond it queued alarms go out as one digest
    rate_per_min: float = Field(30.0, gt=0)

    @field_validator("fields")
    @classmethod
    def _fields(cls, v: dict[str, Any]) -> dict[str, Any]:
        for k, x in v.items():
            if isinstance(x, str):
                try:
                    x.format(to="", text="")
                except (KeyError, IndexError, ValueError) as e:
                    raise ValueError(f"fields.{k}: {x!r} may use only {{to}} and {{text}} "
                                     f"({type(e).__name__}: {e})") from None
        return v

    @model_validator(mode="after")
    def _need(self) -> ChannelConfig:
        if self.type == "smtp" and not self.to:
            raise ValueError("an smtp channel needs 'to' (a list of addresses)")
        if self.type == "webhook" and not self.url:
            raise ValueError("a webhook channel needs 'url' (http://host:port/path)")
        if self.type == "sms" and not self.to:
            raise ValueError("an sms channel needs 'to' (phone numbers for an HTTP gateway "
                             "('url'), or the addresses of an SMTP-to-SMS gateway)")
        return self


class EscalationStep(Strict):
    """If the alarm is still unacknowledged ``after`` its raise, notify ``channels`` and the
    channels of the alarm's municipality in ``by_municipality`` (the area's ``municipality`` in
    the site's ``areas:``), e.g. the elected official in charge of that town's junctions."""

    after: Duration
    channels: list[str] = Field(default_factory=list)
    by_municipality: dict[str, list[str]] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _some(self) -> EscalationStep:
        if not self.channels and not self.by_municipality:
            raise ValueError("an escalation step needs 'channels' and/or 'by_municipality'")
        return self


class RuleConfig(Strict):
    """Which alarms go to which channels; unset filters match everything."""

    name: str = ""
    priorities: list[int] | None = None
    areas: list[str] | None = None
    categories: list[Category] | None = None
    #: local time-of-day window ``HH:MM-HH:MM`` (may wrap midnight), in the site's time zone
    hours: str | None = None
    channels: list[str] = Field(default_factory=list)
    #: if still unacknowledged after ``after``, also notify these channels (in order)
    escalate: list[EscalationStep] = Field(default_factory=list)
    #: also notify the rule's channels when an alarm it notified returns to normal
    return_to_normal: bool = False

    @field_validator("hours")
    @classmethod
    def _hours(cls, v: str | None) -> str | None:
        if v is None:
            return v
        try:
            a, b = v.split("-")
            for part in (a, b):
                h, m = part.strip().split(":")
                if not (0 <= int(h) <= 24 and 0 <= int(m) < 60):
                    raise ValueError
        except ValueError:
            raise ValueError(f"expected a time window 'HH:MM-HH:MM', got {v!r}") from None
        return v


class NotificationsConfig(Strict):
    #: names are identifiers: each is a file name (its queue) and a device path
    #: (``_system/notify/<channel>``)
    channels: dict[Ident, ChannelConfig] = Field(default_factory=dict)
    rules: list[RuleConfig] = Field(default_factory=list)

    @model_validator(mode="after")
    def _known(self) -> NotificationsConfig:
        for r in self.rules:
            steps = [c for s in r.escalate
                     for c in [*s.channels, *(x for v in s.by_municipality.values() for x in v)]]
            for ch in [*r.channels, *steps]:
                if ch not in self.channels:
                    raise ValueError(
                        f"rule {r.name or '(unnamed)'!r}: unknown channel {ch!r}; "
                        f"declared: {', '.join(self.channels) or 'none'}"
                    )
        return self


class MemoryGrowthConfig(Strict):
    """``alarms.memory_growth``: the trend alarm ``_system/server/memory_growth`` (docs/alarms.md).

    The server's resident memory must level off; when its least-squares slope over ``window``
    exceeds ``threshold_pct_per_day`` of its mean (once the samples span ``min_span``), the
    alarm is raised; it clears below half the threshold."""

    enabled: bool = True
    window: Duration = 86400.0
    min_span: Duration = 6 * 3600.0
    threshold_pct_per_day: float = Field(5.0, gt=0)
    priority: int = Field(3, ge=1, le=4)

    @model_validator(mode="after")
    def _span_in_window(self) -> MemoryGrowthConfig:
        if not 0 < self.min_span <= self.window:
            raise ValueError("min_span must be > 0 and not longer than window")
        return self


class AlarmsConfig(Strict):
    enabled: bool = True
    #: sub-directory of the site's state_dir holding journal*.jsonl and dead-letters.jsonl
    journal: str = "alarms"
    #: ``always``: fsync after every batch (power-loss safe, slower); ``interval``: write() per
    #: batch (a killed process loses nothing) and fsync every ``fsync_interval``; ``never``.
    fsync: Literal["always", "interval", "never"] = "interval"
    fsync_interval: Duration = 1.0
    rotate_mb: float = Field(64.0, gt=0)
    chatter: ChatterConfig = Field(default_factory=ChatterConfig)
    #: longest sleep of the timer task (delays, stale, shelve expiry wake it exactly anyway)
    max_tick: Duration = 60.0
    #: an alarm whose suppression cause cleared stays suppressed this long if it is still
    #: active (its own device gets a poll to report normal values before it is annunciated)
    unsuppress_delay: Duration = 10.0
    #: ... and not before its own point has reported after the cause cleared, waiting at most
    #: this long for that report (a device that stays silent is annunciated then)
    unsuppress_max_wait: Duration = 300.0
    #: site-wide designed suppression (ISA-18.2) along the site model, in addition to
    #: the templates' own ``suppressed_by``; ``[]`` turns the defaults off
    suppressed_by: list[DesignedSuppression] = Field(
        default_factory=lambda: [DesignedSuppression(**r) for r in DEFAULT_SUPPRESSION])
    notifications: NotificationsConfig = Field(default_factory=NotificationsConfig)
    memory_growth: MemoryGrowthConfig = Field(default_factory=MemoryGrowthConfig)
