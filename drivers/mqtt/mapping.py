# One module (over ~600 lines): one pure, data-driven translation (profile topics and payloads <-> points), tested as a whole.
"""MQTT topic and payload mapping, pure (no sockets, no clock): the profile says it all.

A gateway vendor's topic tree and JSON shape are data in the device profile, not code
(issue 4), so a third-party gateway is integrated with a profile alone:

* ``options.topics``: named topic templates with segments ``{gateway}``, ``{line}``,
  ``{address}`` (and ``{group}`` for commands), each with its payload format (``json`` or
  ``text``) and the field holding the source timestamp (epoch ``s``/``ms`` or ISO 8601).
* each point's ``source``: which topic, which field (a dotted path, list indices as numbers:
  ``diag.flags``, ``groups.3``), scale/offset to engineering units, a bit of an integer
  bit-field, string values that mean ``true``, and for writable points the command to publish.
* ``options.commands``: command topic templates and JSON payload templates (``"{value}"`` is
  replaced by the raw value, keeping its JSON type).
* ``options.availability``: which topic/field tells whether a gateway is online (its retained
  state and its Last Will, MQTT 3.1.1 §3.1.2.5 / MQTT 5 §3.1.2.5).

This module validates those models, compiles them into fast extractors, and decodes payloads
into values or a *reject reason*. Reasons are counted per reason by the driver and exposed as
``_system/mqtt/rejected_<reason>`` tags; a rejected message never stops the others.

Decoding is built for speed (~20,000 messages/s into the tag database): payloads of one
topic shape are decoded into rows and converted (scale, offset, bits) with numpy for the whole
burst at once; only unusual messages (missing fields, strings, ISO timestamps) take the slow
per-field path.
"""

from __future__ import annotations

import json
import math
import operator
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from drivers.transforms import Pipeline, TransformSpec, pipeline

# ----------------------------------------------------------------------------- reject reasons
TOO_LARGE = "too_large"
NOT_UTF8 = "not_utf8"
TRUNCATED = "truncated"
NOT_JSON = "not_json"
NON_FINITE = "non_finite"
WRONG_TYPE = "wrong_type"
MISSING_FIELD = "missing_field"
BAD_TIMESTAMP = "bad_timestamp"
UNKNOWN_TOPIC = "unknown_topic"

#: Every reason a message can be rejected for, in the order the health tags are listed.
REJECT_REASONS: tuple[str, ...] = (
    TOO_LARGE, NOT_UTF8, TRUNCATED, NOT_JSON, NON_FINITE, WRONG_TYPE, MISSING_FIELD,
    BAD_TIMESTAMP, UNKNOWN_TOPIC,
)

REASON_TEXT = {
    TOO_LARGE: "payload larger than options.max_payload",
    NOT_UTF8: "payload is not UTF-8 text",
    TRUNCATED: "JSON payload ends early (truncated)",
    NOT_JSON: "payload is not JSON",
    NON_FINITE: "NaN or Infinity where a number was expected",
    WRONG_TYPE: "a mapped field has the wrong JSON type (or the payload is not an object)",
    MISSING_FIELD: "none of the mapped fields is present",
    BAD_TIMESTAMP: "the source timestamp field is not a valid time",
    UNKNOWN_TOPIC: "no configured device publishes on this topic",
}


class Reject(Exception):
    """A message that cannot be used; ``reason`` is one of :data:`REJECT_REASONS`."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


# ----------------------------------------------------------------------------- config models
class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


SEGMENTS = ("gateway", "line", "address", "group")


def _check_template(v: str) -> str:
    import string

    for _, name, _, _ in string.Formatter().parse(v):
        if name is not None and name not in SEGMENTS:
            raise ValueError(
                f"topic template {v!r}: unknown segment {{{name}}}; use {', '.join('{' + s + '}' for s in SEGMENTS)}"
            )
    if "+" in v or "#" in v:
        raise ValueError(f"topic template {v!r}: wildcards are derived by the driver; write the exact topic")
    return v


class TopicDef(_Model):
    """One topic of a gateway's tree."""

    pattern: str
    format: Literal["json", "text"] = "json"
    #: dotted path of the field holding the source timestamp (None: time of reception)
    timestamp: str | None = None
    timestamp_unit: Literal["s", "ms", "iso8601"] = "s"

    @field_validator("pattern")
    @classmethod
    def _pattern(cls, v: str) -> str:
        return _check_template(v)


class CommandDef(_Model):
    """A command a writable point publishes: topic template + JSON payload template."""

    topic: str
    payload: Any = Field(default_factory=lambda: {"level": "{value}"})
    qos: Literal[0, 1] = 1
    retain: bool = False
    #: JSON type of the published value: ``int`` rounds (DALI arc levels 0-254 are integers)
    value_type: Literal["auto", "int", "float"] = "auto"

    @field_validator("topic")
    @classmethod
    def _topic(cls, v: str) -> str:
        return _check_template(v)


class Availability(_Model):
    """Whether a gateway is online: from its retained state and Last Will on one topic
    (``topic``), or, for a gateway whose vendor publishes no status, from its data
    (``from_data``: online while it or its devices publish)."""

    topic: str | None = None
    field: str | None = None
    online: list[Any] = Field(default_factory=lambda: [True, "online", "Online", "ONLINE", 1])
    #: no status topic: online while any topic of the gateway (or of its devices) publishes,
    #: offline after ``silence_s`` without a message
    from_data: bool = False
    #: seconds of silence before a data-driven gateway is offline (default: its profile's
    #: report_period_s x bad_after_periods)
    silence_s: float | None = Field(None, gt=0)

    @model_validator(mode="after")
    def _one(self) -> Availability:
        if self.from_data == (self.topic is not None):
            raise ValueError("give either topic (a status / Last Will topic) or from_data: true")
        if not self.from_data and self.silence_s is not None:
            raise ValueError("silence_s applies to from_data availability only")
        return self


class MqttProfileOptions(_Model):
    """``options`` of an MQTT device profile (validated by the loader with file:line errors)."""

    topics: dict[str, TopicDef | str] = Field(default_factory=dict)
    commands: dict[str, CommandDef] = Field(default_factory=dict)
    availability: Availability | None = None
    #: gateway point holding a bit-field of its DALI lines that are down (bit n = line n,
    #: 0-based): the luminaires of a line reported down go BadCommunicationError at once
    #: instead of after ``bad_after_periods`` of silence
    line_faults_point: str | None = None
    #: command (in ``commands``) sent to each gateway after every (re)connection so it
    #: republishes its full state at once instead of at its next reporting period
    query_on_connect: str | None = None
    #: number shown in ``{line}``/``{address}`` for the first line/short address (0 or 1)
    line_base: int = Field(0, ge=0)
    address_base: int = Field(0, ge=0)
    #: child n -> line (n-1)//addresses_per_line, address (n-1)%addresses_per_line (DALI: 64)
    addresses_per_line: int = Field(64, ge=1, le=65536)
    #: how often a device reports when nothing changes (None: never goes stale)
    report_period_s: float | None = Field(60.0, gt=0)
    #: silent for this many periods -> UncertainLastUsableValue, then BadCommunicationError
    uncertain_after_periods: float = Field(2.5, gt=0)
    bad_after_periods: float = Field(5.0, gt=0)
    max_payload: int = Field(65536, ge=64)
    #: seconds to wait for the echoed state confirming a command
    verify_timeout_s: float = Field(10.0, gt=0)

    @model_validator(mode="after")
    def _refs(self) -> MqttProfileOptions:
        self.topics = {k: TopicDef(pattern=v) if isinstance(v, str) else v for k, v in self.topics.items()}
        av = self.availability
        if av is not None and av.topic is not None and av.topic not in self.topics:
            raise ValueError(f"availability.topic {av.topic!r} is not one of topics: {sorted(self.topics)}")
        if av is not None and av.from_data and av.silence_s is None and self.report_period_s is None:
            raise ValueError("availability.from_data needs silence_s (or a report_period_s)")
        if self.query_on_connect is not None and self.query_on_connect not in self.commands:
            raise ValueError(f"query_on_connect {self.query_on_connect!r} is not one of commands: {sorted(self.commands)}")
        if self.bad_after_periods <= self.uncertain_after_periods:
            raise ValueError("bad_after_periods must be greater than uncertain_after_periods")
        return self

    def topic(self, name: str) -> TopicDef:
        t = self.topics[name]
        return t if isinstance(t, TopicDef) else TopicDef(pattern=t)


class MqttPointSource(_Model):
    """A point's ``source``: where its value is in the gateway's messages."""

    #: named topic (in options.topics) carrying the value; not needed with ``availability``
    topic: str | None = None
    #: dotted path in the JSON payload; None = the whole payload (text topics, bare numbers)
    field: str | None = None
    scale: float = 1.0
    offset: float = 0.0
    #: named transforms after scale/offset: ``dali_arc``, ``{lookup: {...}}``, ``{bits: [a, b]}``
    #: (drivers/transforms.py); writes apply their inverses
    transform: TransformSpec = None
    #: a bool point reading whether the gateway is online (its availability: the Last Will
    #: topic, or data, see options.availability), Good either way
    availability: bool = False
    #: take one bit of an integer field (bit-field of diagnostic flags)
    bit: int | None = Field(None, ge=0, le=63)
    #: true when any bit of this mask is set in an integer field (e.g. 0x60: under/over-voltage)
    mask: int | None = Field(None, ge=1)
    #: for bool points: JSON strings/values meaning true (e.g. ["ON", "Online"])
    true_values: list[Any] | None = None
    #: writable points: the command (in options.commands) publishing a new value
    command: str | None = None
    #: fixed segment values for the command topic (e.g. {group: 3})
    args: dict[str, int | str] = Field(default_factory=dict)
    #: wait for the echoed value (this point's own field) before confirming a write
    verify: bool = True
    tolerance: float = Field(0.5, ge=0)

    @field_validator("scale")
    @classmethod
    def _scale(cls, v: float) -> float:
        if v == 0 or not math.isfinite(v):
            raise ValueError("scale must be a finite non-zero number")
        return v

    @model_validator(mode="after")
    def _where(self) -> MqttPointSource:
        if self.availability:
            if self.topic is not None or self.field is not None:
                raise ValueError("availability: true reads the gateway's availability; give no topic/field")
        elif self.topic is None:
            raise ValueError("topic: required (the named topic carrying this point), unless "
                             "availability: true")
        return self

    @property
    def pipe(self) -> Pipeline | None:
        return pipeline(self.transform)


class BrokerConnection(_Model):
    """A device's ``connection``: broker, gateway id, credentials, TLS (children inherit it)."""

    broker: str = "embedded"
    gateway: str | None = None
    username: str | None = None
    password: str | None = None
    tls: bool = False
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    tls_insecure: bool = False
    protocol: Literal["auto", "5", "3.1.1"] = "auto"
    keepalive: int = Field(30, ge=5, le=3600)
    client_id: str | None = None

    @field_validator("broker")
    @classmethod
    def _broker(cls, v: str) -> str:
        if v != "embedded":
            host, sep, port = v.rpartition(":")
            if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ValueError("expected 'embedded' or 'host:port' (e.g. 'mqtt.example.org:1883')")
        return v

    def address(self, embedded: tuple[str, int]) -> tuple[str, int]:
        if self.broker == "embedded":
            return embedded
        host, _, port = self.broker.rpartition(":")
        return host.strip("[]"), int(port)


class MqttOptions(_Model):
    """Site-wide ``drivers.mqtt`` options."""

    embedded_host: str = "127.0.0.1"
    embedded_port: int = Field(11883, gt=0, lt=65536)
    client_id_prefix: str = "scada"
    #: bound on paho's outgoing queue (messages); beyond it commands are refused, not buffered
    max_queued: int = Field(1000, ge=1)
    #: messages arriving within this window are decoded and applied as one batch: at the Dijon
    #: load (~570 msg/s) ~11 messages per batch instead of one, for <= 20 ms of added latency
    batch_window_ms: float = Field(20.0, ge=0, le=1000)
    session_expiry_s: int = Field(86400, ge=0)


# ----------------------------------------------------------------------------- JSON decoding
def _no_constants(name: str) -> float:
    raise Reject(NON_FINITE, f"JSON constant {name}")


_DECODER = json.JSONDecoder(parse_constant=_no_constants)
_raw_decode = _DECODER.raw_decode
_WS = " \t\n\r"


def _decode(text: str) -> Any:
    """``json.loads`` without its two regex passes: raw_decode + a trailing-garbage check."""
    if text[:1] in _WS or not text:
        text = text.strip(_WS)
        if not text:
            raise json.JSONDecodeError("Expecting value", text, 0)
    obj, end = _raw_decode(text)
    if end != len(text) and text[end:].strip(_WS):
        raise json.JSONDecodeError("Extra data", text, end)
    return obj
_LITERALS = ("true", "false", "null")


def decode_json(payload: bytes, max_payload: int) -> Any:
    """Bytes -> JSON value, or :class:`Reject` with the precise reason."""
    if len(payload) > max_payload:
        raise Reject(TOO_LARGE, f"{len(payload)} bytes > {max_payload}")
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError as e:
        raise Reject(NOT_UTF8, f"byte {e.start}") from None
    try:
        return _decode(text)
    except json.JSONDecodeError as e:
        rest = e.doc[e.pos:].strip()
        if (not rest or e.msg.startswith("Unterminated")
                or (len(rest) < 5 and any(lit.startswith(rest) for lit in _LITERALS))
                or (len(rest) < 32 and rest.strip("0123456789.eE+-") == "")):
            raise Reject(TRUNCATED, f"{e.msg} at char {e.pos}") from None
        raise Reject(NOT_JSON, f"{e.msg} at char {e.pos}") from None
    except RecursionError:
        raise Reject(NOT_JSON, "nesting too deep") from None


def decode_text(payload: bytes, max_payload: int) -> str:
    if len(payload) > max_payload:
        raise Reject(TOO_LARGE, f"{len(payload)} bytes > {max_payload}")
    try:
        return payload.decode("utf-8").strip()
    except UnicodeDecodeError as e:
        raise Reject(NOT_UTF8, f"byte {e.start}") from None


def split_path(path: str | None) -> tuple[str | int, ...]:
    """``"diag.flags"`` -> ("diag", "flags"); ``"groups.3"`` -> ("groups", 3); None -> ()."""
    if not path:
        return ()
    return tuple(int(p) if p.isdigit() else p for p in path.split("."))


MISSING = object()


def get_path(obj: Any, keys: tuple[str | int, ...]) -> Any:
    """Walk ``keys`` into ``obj``; :data:`MISSING` when absent, ``Reject(wrong_type)`` when a
    container on the way has the wrong type."""
    for k in keys:
        if isinstance(k, int):
            if not isinstance(obj, list):
                if isinstance(obj, dict):
                    obj = obj.get(str(k), MISSING)
                    if obj is MISSING:
                        return MISSING
                    continue
                raise Reject(WRONG_TYPE, f"expected a list at {k!r}")
            if k >= len(obj):
                return MISSING
            obj = obj[k]
        else:
            if not isinstance(obj, dict):
                raise Reject(WRONG_TYPE, f"expected an object at {k!r}")
            obj = obj.get(k, MISSING)
            if obj is MISSING:
                return MISSING
    return obj


def parse_timestamp(v: Any, unit: str) -> float:
    """A timestamp field -> POSIX seconds, or ``Reject(bad_timestamp)``."""
    if unit == "iso8601":
        if not isinstance(v, str):
            raise Reject(BAD_TIMESTAMP, f"expected an ISO 8601 string, got {type(v).__name__}")
        try:
            dt = datetime.fromisoformat(v)
        except ValueError:
            raise Reject(BAD_TIMESTAMP, f"not ISO 8601: {v[:40]!r}") from None
        if dt.tzinfo is None:
            raise Reject(BAD_TIMESTAMP, f"ISO 8601 time without a UTC offset: {v[:40]!r}")
        return dt.timestamp()
    if type(v) not in (int, float):
        raise Reject(BAD_TIMESTAMP, f"expected a number, got {type(v).__name__}")
    t = float(v) / (1000.0 if unit == "ms" else 1.0)
    if not (math.isfinite(t) and 0 < t < 32503680000.0):  # 3000-01-01
        raise Reject(BAD_TIMESTAMP, f"out of range: {v!r}")
    return t


# ----------------------------------------------------------------------------- compiled shapes
_NUM_TYPES = frozenset((int, float, bool))


@dataclass
class FieldSpec:
    """One mapped field of a topic shape (one point of the profile)."""

    point: str
    offset_in_device: int
    keys: tuple[str | int, ...]
    dtype: str  # tag dtype: float | int | bool | string
    scale: float = 1.0
    offset: float = 0.0
    bit: int | None = None
    true_values: tuple[Any, ...] | None = None
    mask: int | None = None
    pipe: Pipeline | None = None

    def __post_init__(self) -> None:
        if self.bit is not None:
            self.mask = 1 << self.bit

    @property
    def simple(self) -> bool:
        return self.dtype != "string" and self.true_values is None


@dataclass
class Shape:
    """Every field one topic carries for one profile: decoded together, converted with numpy.

    Shared by all devices of the profile; per device only the first tag index differs.
    """

    profile: str
    topic_name: str
    topic: TopicDef
    fields: list[FieldSpec]
    ts_keys: tuple[str | int, ...] = ()
    max_payload: int = 65536
    # derived
    fast: bool = field(init=False, default=False)
    _ts_key: str | None = field(init=False, default=None)
    getter: Callable[[Any], Any] | None = field(init=False, default=None)
    offsets: np.ndarray = field(init=False)
    scale: np.ndarray = field(init=False)
    add: np.ndarray = field(init=False)
    bits: list[tuple[int, int]] = field(init=False)  # (field number, bit mask)
    bools: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.offsets = np.asarray([f.offset_in_device for f in self.fields], dtype=np.int64)
        self.scale = np.asarray([f.scale for f in self.fields], dtype=np.float64)
        self.add = np.asarray([f.offset for f in self.fields], dtype=np.float64)
        self.bits = [(k, f.mask) for k, f in enumerate(self.fields) if f.mask is not None]
        self.bools = np.asarray([f.dtype == "bool" for f in self.fields], dtype=bool)
        self._any_bool = bool(self.bools.any())
        self._bit_cols = np.asarray([k for k, _ in self.bits], dtype=np.int64)
        self._bit_masks = np.asarray([m for _, m in self.bits], dtype=np.int64)
        self._pipes = [(k, f.pipe) for k, f in enumerate(self.fields) if f.pipe]
        self._ts_key = (self.ts_keys[0] if len(self.ts_keys) == 1 and isinstance(self.ts_keys[0], str)
                        and self.topic.timestamp_unit == "s" else None)
        self.fast = (
            self.topic.format == "json" and bool(self.fields)
            and all(f.simple and f.keys for f in self.fields)
            and self.topic.timestamp_unit != "iso8601"
        )
        if self.fast:
            paths = [f.keys for f in self.fields]
            if all(len(p) == 1 and isinstance(p[0], str) for p in paths):
                keys = [p[0] for p in paths]
                ig = operator.itemgetter(*keys)
                self.getter = (lambda o: (ig(o),)) if len(keys) == 1 else ig
            else:
                self.getter = lambda o: tuple(_strict_get(o, p) for p in paths)

    # -- decoding ------------------------------------------------------------------------
    def decode_fast(self, obj: Any) -> tuple[tuple[Any, ...], float | None] | None:
        """All fields present and numeric: (raw row, source time or None). None: use the slow
        path (it gives the precise reject reason or a partial update)."""
        if type(obj) is not dict:
            return None
        try:
            row = self.getter(obj)  # type: ignore[misc]
        except (KeyError, IndexError, TypeError):
            return None
        if not set(map(type, row)) <= _NUM_TYPES:
            return None
        ts = None
        if self._ts_key is not None:  # the common case: a top-level epoch-seconds field
            v = obj.get(self._ts_key, MISSING)
            if v is not MISSING:
                if type(v) in (int, float) and 0 < v < 32503680000.0:
                    ts = float(v)
                else:
                    ts = parse_timestamp(v, "s")  # raises the precise reject
        elif self.ts_keys:
            v = _get_or_missing(obj, self.ts_keys)
            if v is not MISSING:
                ts = parse_timestamp(v, self.topic.timestamp_unit)
        return row, ts

    def decode_slow(self, obj: Any) -> tuple[list[tuple[int, Any]], float | None]:
        """Field by field: [(field number, value in engineering units)], source time.

        Raises :class:`Reject` for the whole message when a present field has the wrong type
        or a non-finite value (a message that lies about one field is not trusted for others).
        """
        ts = None
        if self.topic.format == "json" and self.ts_keys:
            if not isinstance(obj, dict):
                raise Reject(WRONG_TYPE, f"expected a JSON object, got {type(obj).__name__}")
            v = get_path(obj, self.ts_keys)
            if v is not MISSING:
                ts = parse_timestamp(v, self.topic.timestamp_unit)
        out: list[tuple[int, Any]] = []
        for k, f in enumerate(self.fields):
            v = get_path(obj, f.keys) if f.keys else obj
            if v is MISSING:
                continue
            out.append((k, convert(f, v)))
        if not out:
            raise Reject(MISSING_FIELD, f"none of {[f.point for f in self.fields]} in the payload")
        return out, ts

    def convert_rows(self, rows: list[tuple[Any, ...]]) -> tuple[np.ndarray, np.ndarray]:
        """Raw rows (m x k) -> engineering values (m x k) and a per-row finite mask."""
        raw = np.asarray(rows, dtype=np.float64)
        if raw.ndim == 1:
            raw = raw.reshape(len(rows), len(self.fields))
        ok = np.isfinite(raw).all(axis=1)
        vals = raw * self.scale + self.add
        if self.bits:
            cols = self._bit_cols
            sub = raw[:, cols]
            ints = np.where(np.isfinite(sub), sub, 0.0).astype(np.int64)
            vals[:, cols] = (ints & self._bit_masks) != 0
        if self._any_bool:
            vals[:, self.bools] = vals[:, self.bools] != 0
        for k, p in self._pipes:  # named transforms (DALI curve, tables, bit fields)
            vals[:, k] = p.forward(vals[:, k])
        return vals, ok


def _strict_get(obj: Any, keys: tuple[str | int, ...]) -> Any:
    for k in keys:
        obj = obj[k]
    return obj


def _get_or_missing(obj: Any, keys: tuple[str | int, ...]) -> Any:
    try:
        return get_path(obj, keys)
    except Reject:
        raise Reject(BAD_TIMESTAMP, "timestamp path does not lead to a value") from None


def convert(f: FieldSpec, v: Any) -> Any:
    """One JSON value -> the point's value (engineering units), or ``Reject``."""
    if f.dtype == "string":
        if isinstance(v, str):
            return v
        if type(v) in _NUM_TYPES:
            if isinstance(v, float) and not math.isfinite(v):
                raise Reject(NON_FINITE, f"{f.point}")
            return json.dumps(v)
        raise Reject(WRONG_TYPE, f"{f.point}: expected text, got {type(v).__name__}")
    if f.true_values is not None and (isinstance(v, str) or v in f.true_values):
        return 1.0 if v in f.true_values else 0.0
    if type(v) not in _NUM_TYPES:
        raise Reject(WRONG_TYPE, f"{f.point}: expected a number, got {type(v).__name__}")
    x = float(v)
    if not math.isfinite(x):
        raise Reject(NON_FINITE, f"{f.point}")
    if f.mask is not None:
        return 1.0 if int(x) & f.mask else 0.0
    x = x * f.scale + f.offset
    if f.pipe:
        x = float(f.pipe.forward(np.asarray([x]))[0])
    if f.dtype == "bool":
        return 1.0 if x != 0 else 0.0
    return x


def is_online(av: Availability, payload_value: Any) -> bool:
    """Does this availability value mean online? (bools compare as bools, not as 1/0)."""
    for o in av.online:
        if type(o) is type(payload_value) and o == payload_value:
            return True
    return False


def raw_for_write(src: MqttPointSource, value: Any, value_type: str = "auto") -> Any:
    """Engineering value -> the raw value published (inverse transforms, then inverse
    scale/offset), JSON-typed. Raises ValueError when a transform cannot represent it."""
    if isinstance(value, bool):
        return value
    v = float(value)
    pipe = src.pipe
    if pipe:
        v = pipe.inverse(v)
    raw = round((v - src.offset) / src.scale, 9)  # 127.00000000000001 -> 127.0
    if value_type == "int":
        return round(raw)
    if value_type == "float":
        return raw
    return int(raw) if raw.is_integer() else raw


def render_payload(template: Any, value: Any, segments: dict[str, Any]) -> Any:
    """Fill a command payload template: ``"{value}"`` keeps the value's JSON type; other
    strings are formatted with the topic segments (``"{gateway}"``, ``"{group}"``)."""
    if isinstance(template, str):
        if template == "{value}":
            return value
        try:
            return template.format(value=value, **segments)
        except (KeyError, IndexError, ValueError):
            return template
    if isinstance(template, dict):
        return {k: render_payload(v, value, segments) for k, v in template.items()}
    if isinstance(template, list):
        return [render_payload(v, value, segments) for v in template]
    return template


def format_topic(template: str, segments: dict[str, Any]) -> str:
    """Fill a topic template; a missing segment names itself in the error."""
    try:
        return template.format(**segments)
    except KeyError as e:
        raise KeyError(f"topic template {template!r} needs segment {e.args[0]!r}") from None


def device_segments(gateway: str, index: int | None, opts: MqttProfileOptions) -> dict[str, Any]:
    """Segments of a device's topics: the gateway id, and for child n (from 1) its DALI line
    ``(n-1)//64`` and short address ``(n-1)%64`` (IEC 62386-102: 64 short addresses per line)."""
    seg: dict[str, Any] = {"gateway": gateway}
    if index is not None:
        n = index - 1
        seg["line"] = n // opts.addresses_per_line + opts.line_base
        seg["address"] = n % opts.addresses_per_line + opts.address_base
    return seg


def build_shapes(
    profile: str, opts: MqttProfileOptions, points: list[tuple[str, str, MqttPointSource | None]]
) -> dict[str, Shape]:
    """Group a profile's points by topic into shapes. ``points``: (name, dtype, source) in
    schema order (the index in the list is the point's offset in the device's tags)."""
    by_topic: dict[str, list[FieldSpec]] = {}
    for off, (name, dtype, src) in enumerate(points):
        if src is None or src.topic is None:
            continue
        if src.topic not in opts.topics:
            raise KeyError(
                f"profile {profile!r} point {name!r}: source.topic {src.topic!r} is not one of "
                f"options.topics ({', '.join(sorted(opts.topics)) or 'none defined'})"
            )
        by_topic.setdefault(src.topic, []).append(
            FieldSpec(
                point=name, offset_in_device=off, keys=split_path(src.field), dtype=dtype,
                scale=src.scale, offset=src.offset, bit=src.bit, mask=src.mask,
                true_values=tuple(src.true_values) if src.true_values is not None else None,
                pipe=src.pipe,
            )
        )
    out = {}
    for tname, fields in by_topic.items():
        t = opts.topic(tname)
        out[tname] = Shape(profile, tname, t, fields, split_path(t.timestamp), opts.max_payload)
    return out
