"""Pure mapping between a device profile and remote OPC UA nodes (no sockets, no sessions).

What lives here, tested without a server (the caproto / h11 habit: protocol logic without I/O):

* the pydantic models the loader validates site files with (:class:`PointSource`,
  :class:`Connection`, :class:`ProfileOptions`, :class:`Options`);
* template expansion of node addresses (``{device}``, ``{index}``) into :class:`NodeRef`;
* resolution of a :class:`NodeRef` into an ``ua.NodeId`` (string identifiers in the profile's
  namespace, full NodeId syntax ``ns=2;s=...``/``nsu=<uri>;s=...``/``i=2258``) or into an
  ``ua.BrowsePath`` for TranslateBrowsePathsToNodeIds (OPC UA Part 4 §5.8.4);
* the conversion of a received ``DataValue`` into a tag sample: value, status code kept as
  received (Part 4 §7.39, Part 8 §6.3), source timestamp kept (Part 4 §7.11) — falling back to
  the server timestamp, never inventing one that looks like the device's;
* the variant built for a write from a point's type (Part 6 §5.1.2 built-in types).
"""

from __future__ import annotations

import math
import string
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal
from urllib.parse import urlparse

from asyncua import ua
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from scada import quality as Q

#: Namespace URI of the traffic-controller simulator's information model.
TRAFFIC_NAMESPACE = "urn:city-scada:traffic-controller"

PLACEHOLDERS = frozenset(("device", "index"))

VariantName = Literal[
    "Boolean", "SByte", "Byte", "Int16", "UInt16", "Int32", "UInt32", "Int64", "UInt64",
    "Float", "Double", "String",
]

#: Default variant type written for each point type (Part 6 built-in types).
DEFAULT_VARIANT: dict[str, VariantName] = {
    "bool": "Boolean", "int": "Int32", "float": "Double", "string": "String",
}

_INT_RANGES: dict[str, tuple[int, int]] = {
    "SByte": (-(2**7), 2**7 - 1), "Byte": (0, 2**8 - 1),
    "Int16": (-(2**15), 2**15 - 1), "UInt16": (0, 2**16 - 1),
    "Int32": (-(2**31), 2**31 - 1), "UInt32": (0, 2**32 - 1),
    "Int64": (-(2**63), 2**63 - 1), "UInt64": (0, 2**64 - 1),
}


class MappingError(ValueError):
    """A profile or device cannot be mapped onto remote nodes (names what and why)."""


def _check_template(text: str) -> str:
    """Reject placeholders other than ``{device}``/``{index}`` at load time, with the fix."""
    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(text) if f is not None]
    except ValueError as e:
        raise ValueError(f"{text!r} is not a valid template ({e}); write braces as {{{{ }}}}") from None
    for f in fields:
        name = f.split(":")[0].split("!")[0]
        if name not in PLACEHOLDERS:
            raise ValueError(
                f"unknown placeholder {{{name}}} in {text!r}; use {{device}} (the device's object "
                f"name) or {{index}} (child number)"
            )
    return text


class CallSource(BaseModel):
    """A write to this point calls a method (Part 4 §5.11.2 Call) instead of writing Value."""

    model_config = ConfigDict(extra="forbid")

    #: Node of the object that owns the method (template).
    object: str
    #: Node of the method (template).
    method: str
    #: Pass the written value as the single input argument (False: call with no arguments).
    pass_value: bool = True

    @field_validator("object", "method")
    @classmethod
    def _templates(cls, v: str) -> str:
        return _check_template(v)


class PointSource(BaseModel):
    """Where a profile point lives on the device: a NodeId or a browse path, as a template.

    ``node``: ``"{device}.Status.Mode"`` (a string identifier in the profile's namespace), or
    full NodeId syntax: ``"ns=2;s=J1.Mode"``, ``"nsu=urn:x;s=J1.Mode"``, ``"i=2258"``.
    ``browse_path``: ``"{device}/Status/Mode"`` from the Objects folder; each element is
    ``Name`` (profile namespace) or ``<ns index>:Name``.
    """

    model_config = ConfigDict(extra="forbid")

    node: str | None = None
    browse_path: str | None = None
    #: Variant type written to the device (default from the point type: bool -> Boolean,
    #: int -> Int32, float -> Double, string -> String). Must match the remote DataType.
    variant_type: VariantName | None = None
    #: Per-point sampling interval (ms), overriding the profile's.
    sampling_interval_ms: float | None = Field(None, ge=0)
    #: Writes become a method call.
    call: CallSource | None = None

    @model_validator(mode="after")
    def _one_address(self) -> PointSource:
        if (self.node is None) == (self.browse_path is None):
            raise ValueError("give exactly one of 'node' (a NodeId) or 'browse_path'")
        _check_template(self.node or self.browse_path or "")
        return self


class Connection(BaseModel):
    """A device's OPC UA connection (profile defaults merged with the device's own)."""

    model_config = ConfigDict(extra="forbid")

    endpoint: str
    #: Name of the device's object on the server, substituted for ``{device}`` in node
    #: templates (default: the device id). Lets many junctions share one server.
    object: str | None = None
    security_policy: Literal["None", "Basic256Sha256", "Aes128_Sha256_RsaOaep"] = "None"
    mode: Literal["None", "Sign", "SignAndEncrypt"] = "None"
    username: str | None = None
    password: str | None = None
    #: Client application instance certificate and key (PEM or DER paths).
    certificate: str | None = None
    private_key: str | None = None
    #: Pinned server certificate: the connection is refused when the server presents another.
    server_certificate: str | None = None

    @field_validator("endpoint")
    @classmethod
    def _endpoint(cls, v: str) -> str:
        u = urlparse(v)
        if u.scheme != "opc.tcp" or not u.hostname or u.port is None:
            raise ValueError(f"expected 'opc.tcp://host:port[/path]', got {v!r}")
        return v

    @model_validator(mode="after")
    def _security(self) -> Connection:
        if (self.security_policy == "None") != (self.mode == "None"):
            raise ValueError(
                f"security_policy {self.security_policy!r} with mode {self.mode!r}: use both 'None', "
                "or a policy (Basic256Sha256, Aes128_Sha256_RsaOaep) with mode Sign or SignAndEncrypt"
            )
        if self.security_policy != "None" and not (self.certificate and self.private_key):
            raise ValueError(
                f"security_policy {self.security_policy} needs 'certificate' and 'private_key' "
                "(the client's application instance certificate, Part 4 §6.1)"
            )
        if self.password is not None and not self.username:
            raise ValueError("'password' given without 'username'")
        return self


class ProfileOptions(BaseModel):
    """Subscription settings of a profile (OPC UA Part 4 §5.13 Subscription Service Set).

    The keep-alive period is ``publishing_interval_ms * keepalive_count``: the server sends an
    empty Publish response at least that often. A session whose publish responses stop for
    ``dead_after_keepalives`` keep-alive periods is declared dead and rebuilt.
    """

    model_config = ConfigDict(extra="forbid")

    namespace: str | None = None
    publishing_interval_ms: float = Field(1000.0, gt=0)
    sampling_interval_ms: float = Field(500.0, ge=0)
    keepalive_count: int = Field(10, ge=1)
    #: Part 4 §5.13.2: lifetime count shall be at least three times the keep-alive count.
    lifetime_count: int = Field(60, ge=3)
    queue_size: int = Field(1, ge=1)
    dead_after_keepalives: float = Field(2.0, ge=1.0)
    #: asyncua's own server-state probe period (``watchdog_intervall``). 1 s (asyncua's default)
    #: dropped busy sessions with 50,000 items in 3 of 5 runs; 10 s was clean.
    watchdog_s: float = Field(10.0, gt=0)
    request_timeout_s: float = Field(10.0, gt=0)
    session_timeout_s: float = Field(120.0, gt=0)

    @model_validator(mode="after")
    def _lifetime(self) -> ProfileOptions:
        if self.lifetime_count < 3 * self.keepalive_count:
            raise ValueError(
                f"lifetime_count {self.lifetime_count} < 3 x keepalive_count {self.keepalive_count} "
                "(OPC UA Part 4 §5.13.2); raise lifetime_count"
            )
        return self

    @property
    def keepalive_s(self) -> float:
        return self.publishing_interval_ms * self.keepalive_count / 1000.0

    @property
    def dead_after_s(self) -> float:
        return self.keepalive_s * self.dead_after_keepalives


class Options(BaseModel):
    """Site-wide ``drivers.opcua`` options."""

    model_config = ConfigDict(extra="forbid")

    reconnect_min_s: float = Field(1.0, gt=0)
    reconnect_max_s: float = Field(30.0, gt=0)
    connect_timeout_s: float = Field(10.0, gt=0)


# ----------------------------------------------------------------------------- node refs
@dataclass(frozen=True, slots=True)
class NodeRef:
    """An expanded remote address: ``kind`` is ``node`` or ``browse_path``."""

    kind: Literal["node", "browse_path"]
    text: str
    namespace: str | None = None

    def __str__(self) -> str:
        return self.text


def expand_template(template: str, device: str, index: int | None) -> str:
    """Fill ``{device}``/``{index}``; a missing index for a template that needs one is an error."""
    if "{index" in template and index is None:
        raise MappingError(f"{template!r} uses {{index}} but the device is not a child device")
    return template.format(device=device, index=index if index is not None else 0)


_NODEID_PREFIXES = ("ns=", "nsu=", "i=", "s=", "g=", "b=")


def resolve_node(ref: NodeRef, namespaces: Sequence[str]) -> ua.NodeId:
    """A :class:`NodeRef` of kind ``node`` as a NodeId, given the server's NamespaceArray."""
    text = ref.text
    if text.startswith(_NODEID_PREFIXES):
        try:
            nid = ua.NodeId.from_string(text)
        except (ValueError, TypeError, ua.UaStringParsingError) as e:
            raise MappingError(f"{text!r} is not a NodeId ({e})") from None
        uri = getattr(nid, "NamespaceUri", None)
        if uri:
            return ua.NodeId(nid.Identifier, _ns_index(uri, namespaces), nid.NodeIdType)
        return nid
    if not ref.namespace:
        raise MappingError(
            f"node {text!r} has no namespace: write 'ns=<n>;s={text}' or set the profile's "
            "options.namespace to the server's namespace URI"
        )
    return ua.NodeId(text, _ns_index(ref.namespace, namespaces), ua.NodeIdType.String)


def _ns_index(uri: str, namespaces: Sequence[str]) -> int:
    try:
        return list(namespaces).index(uri)
    except ValueError:
        raise MappingError(
            f"the server does not declare namespace {uri!r} (it has: {', '.join(namespaces)})"
        ) from None


def browse_path(ref: NodeRef, namespaces: Sequence[str]) -> ua.BrowsePath:
    """A :class:`NodeRef` of kind ``browse_path`` as a BrowsePath from the Objects folder."""
    elements = []
    default_ns = _ns_index(ref.namespace, namespaces) if ref.namespace else None
    for part in ref.text.strip("/").split("/"):
        if not part:
            raise MappingError(f"browse path {ref.text!r} has an empty element")
        ns_text, sep, name = part.partition(":")
        if sep and ns_text.isdigit():
            ns = int(ns_text)
        elif default_ns is not None:
            ns, name = default_ns, part
        else:
            raise MappingError(
                f"browse path element {part!r} of {ref.text!r} has no namespace: write "
                f"'<ns>:{part}' or set the profile's options.namespace"
            )
        el = ua.RelativePathElement()
        el.ReferenceTypeId = ua.NodeId(ua.ObjectIds.HierarchicalReferences)
        el.IsInverse = False
        el.IncludeSubtypes = True
        el.TargetName = ua.QualifiedName(name, ns)
        elements.append(el)
    bp = ua.BrowsePath()
    bp.StartingNode = ua.NodeId(ua.ObjectIds.ObjectsFolder)
    bp.RelativePath = ua.RelativePath(Elements=elements)
    return bp


# ----------------------------------------------------------------------------- items
@dataclass(frozen=True, slots=True)
class ItemSpec:
    """One profile point of one device, ready to monitor: tag index -> remote node."""

    tag: int
    device: str
    point: str
    dtype: str
    ref: NodeRef
    sampling_interval_ms: float
    variant_type: VariantName
    call_object: NodeRef | None = None
    call_method: NodeRef | None = None
    call_pass_value: bool = True


def device_items(
    device_path: str,
    object_name: str,
    index: int | None,
    first_tag: int,
    points: Sequence[Any],
    options: ProfileOptions,
) -> list[ItemSpec]:
    """Expand a profile's points for one device (``points``: the profile's PointConfig list)."""
    out: list[ItemSpec] = []
    for k, p in enumerate(points):
        src = PointSource.model_validate(p.source)
        try:
            if src.node is not None:
                ref = NodeRef("node", expand_template(src.node, object_name, index), options.namespace)
            else:
                ref = NodeRef("browse_path", expand_template(src.browse_path or "", object_name, index),
                              options.namespace)
            cobj = cmeth = None
            if src.call is not None:
                cobj = NodeRef("node", expand_template(src.call.object, object_name, index), options.namespace)
                cmeth = NodeRef("node", expand_template(src.call.method, object_name, index), options.namespace)
        except MappingError as e:
            raise MappingError(f"{device_path}/{p.name}: {e}") from None
        out.append(ItemSpec(
            tag=first_tag + k, device=device_path, point=p.name, dtype=p.type, ref=ref,
            sampling_interval_ms=(src.sampling_interval_ms if src.sampling_interval_ms is not None
                                  else options.sampling_interval_ms),
            variant_type=src.variant_type or DEFAULT_VARIANT[p.type],
            call_object=cobj, call_method=cmeth,
            call_pass_value=src.call.pass_value if src.call else True,
        ))
    return out


# ----------------------------------------------------------------------------- values
def posix(ts: datetime | None) -> float | None:
    """An OPC UA DateTime (asyncua: datetime, naive = UTC) as POSIX seconds."""
    if ts is None:
        return None
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=UTC)
    t = ts.timestamp()
    # OPC UA's "no time" (1601-01-01) comes out as a large negative number
    return t if t > 0 else None


class ValueRejected(ValueError):
    """A received value does not fit the point's type (counted as a rejected sample)."""


def numeric_value(value: Any, dtype: str) -> float:
    """A received scalar as the float the tag database stores for a numeric point."""
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    if isinstance(value, int):
        return float(value)
    if isinstance(value, float):
        if dtype in ("int", "bool") and math.isfinite(value) and not value.is_integer():
            raise ValueRejected(f"expected an integer for a {dtype} point, got {value!r}")
        return value
    raise ValueRejected(f"expected a number for a {dtype} point, got {type(value).__name__} {value!r}")


@dataclass(frozen=True, slots=True)
class Decoded:
    """One received DataValue: value (None when the server sent none), status, source time."""

    value: float | str | None
    status: int
    source_ts: float | None


def decode(dv: ua.DataValue, dtype: str) -> Decoded:
    """Decode a DataValue for a point of type ``dtype``; raises :class:`ValueRejected`.

    The status code is kept as sent (a Bad code from the device stays Bad, Part 8 §6.3). The
    source timestamp is the device's (Part 4 §7.11); when absent, the server timestamp.
    """
    status = int(dv.StatusCode.value) if dv.StatusCode is not None else Q.Good
    ts = posix(dv.SourceTimestamp) or posix(dv.ServerTimestamp)
    raw = dv.Value.Value if dv.Value is not None else None
    if raw is None:
        if Q.is_good(status):
            raise ValueRejected("Good status with no value")
        return Decoded(None, status, ts)
    if isinstance(raw, (list, tuple)):
        raise ValueRejected(f"expected a scalar, got an array of {len(raw)}")
    if dtype == "string":
        return Decoded(raw if isinstance(raw, str) else str(raw), status, ts)
    return Decoded(numeric_value(raw, dtype), status, ts)


def variant(value: Any, variant_type: VariantName) -> ua.Variant:
    """The Variant written for ``value``; raises ValueError when it does not fit the type."""
    vt = getattr(ua.VariantType, variant_type)
    if variant_type == "Boolean":
        if not isinstance(value, bool):
            raise ValueError(f"expected a bool for {variant_type}, got {value!r}")
        return ua.Variant(value, vt)
    if variant_type == "String":
        return ua.Variant(str(value), vt)
    if variant_type in ("Float", "Double"):
        return ua.Variant(float(value), vt)
    iv = int(value)
    if iv != value:
        raise ValueError(f"expected an integer for {variant_type}, got {value!r}")
    lo, hi = _INT_RANGES[variant_type]
    if not lo <= iv <= hi:
        raise ValueError(f"{iv} outside the {variant_type} range [{lo}, {hi}]")
    return ua.Variant(iv, vt)


def status_of(code: ua.StatusCode | int | None) -> int:
    """An asyncua StatusCode (or int) as the plain int the tag database stores."""
    if code is None:
        return Q.Good
    return int(code.value) if isinstance(code, ua.StatusCode) else int(code)
