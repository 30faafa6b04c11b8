"""OPC UA client driver: junction controllers (and any OPC UA device) into the tag database.

How it works (docs/devices/traffic-controller.md has the keep-alive reasoning and figures):

* Devices are grouped into **sessions**: one client session per endpoint (+ security, user and
  subscription options); many junctions on one server share it. Each session is its own task,
  so a failing endpoint never delays the others; the first attempts run concurrently and one
  message lists every device that could not be reached (ophyd-async's habit).
* **Subscriptions, not polling** (OPC UA Part 4 §5.12-5.13): one subscription per session with
  a monitored item per point (ClientHandle = tag index). All data-change notifications of one
  Publish response become ONE :class:`~scada.tags.Batch`; each sample keeps the device's status
  code and source timestamp. A bad status with no value keeps the last value (``ctx.mark``).
* **Dead sessions**: asyncua 2.1's ``auto_reconnect`` rebuilds sessions behind our back (tags
  could not be marked Bad meanwhile), and its server-state probe (``watchdog_intervall``, 1 s
  by default) dropped busy sessions (50,000 items: 3 of 5 runs). We detect loss three ways:
  transport closed (asyncua's ``connection_lost_callback``), a Bad StatusChangeNotification
  (Part 4 §7.20.4), and no Publish response (data or keep-alive) for ``dead_after_keepalives``
  keep-alive periods. asyncua's own probe runs every ``watchdog_s`` (10 s by default). Then the
  tags go ``BadCommunicationError`` (last value kept), the client is discarded and a NEW client
  reconnects with jittered exponential backoff (reusing a client after a loss can hang: asyncua
  issue #1660), recreating session, subscription and monitored items; the initial
  notifications bring the tags back to Good.
* **Writes** go to the device as a Write of the Value attribute (Part 4 §5.10.4) or a method
  Call (§5.11.2); the device's own status code is returned to the caller.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from asyncua import Client, ua
from asyncua.crypto import security_policies
from asyncua.crypto.uacrypto import CertProperties
from pydantic import ValidationError

from drivers.base import Backoff, Driver, DriverContext, PointDef, RateLimitedLog
from scada import quality as Q
from scada.errors import ConfigError, DriverError
from scada.site import DeviceInstance
from scada.tags import Batch

from .mapping import (
    Connection,
    ItemSpec,
    MappingError,
    Options,
    PointSource,
    ProfileOptions,
    ValueRejected,
    browse_path,
    decode,
    device_items,
    resolve_node,
    status_of,
    variant,
)

log = logging.getLogger("drivers.opcua")

_POLICIES = {
    "Basic256Sha256": security_policies.SecurityPolicyBasic256Sha256,
    "Aes128_Sha256_RsaOaep": security_policies.SecurityPolicyAes128Sha256RsaOaep,
}
_MODES = {"Sign": ua.MessageSecurityMode.Sign, "SignAndEncrypt": ua.MessageSecurityMode.SignAndEncrypt}

#: Monitored items created per CreateMonitoredItems request (keeps each message well under the
#: server's MaxMessageSize on a city-sized session).
CREATE_CHUNK = 1000

#: What a lost or unreachable server raises through asyncua.
_NET_ERRORS = (OSError, ConnectionError, TimeoutError, asyncio.TimeoutError, ua.UaError)


class OpcUaConnectError(DriverError, ConnectionError):
    """Some devices could not be reached; ``failures`` maps device path -> reason."""

    def __init__(self, failures: dict[str, str]):
        self.failures = dict(failures)
        lines = [f"  {dev}: {why}" for dev, why in sorted(failures.items())]
        super().__init__(
            f"{len(failures)} OPC UA device(s) not connected:\n" + "\n".join(lines)
        )


@dataclass(slots=True)
class _Resolved:
    """A monitored point once resolved on the current session."""

    spec: ItemSpec
    nodeid: ua.NodeId | None = None
    call_object: ua.NodeId | None = None
    call_method: ua.NodeId | None = None


class _Session:
    """One client session to one endpoint, carrying every device behind it."""

    def __init__(self, drv: OpcUaDriver, conn: Connection, opts: ProfileOptions,
                 devices: list[tuple[DeviceInstance, list[ItemSpec]]]):
        self.drv = drv
        self.ctx = drv.ctx
        self.conn = conn
        self.opts = opts
        self.devices = devices
        self.specs: dict[int, ItemSpec] = {s.tag: s for _, items in devices for s in items}
        self.tags = np.fromiter(sorted(self.specs), dtype=np.int64, count=len(self.specs))
        self.resolved: dict[int, _Resolved] = {}
        self.client: Client | None = None
        self.connected = False
        self.first_done = asyncio.Event()
        self.last_error: str | None = None
        self.reconnects = 0
        self._lost: asyncio.Event | None = None
        self._lost_reason = ""
        self._last_publish = 0.0

    @property
    def name(self) -> str:
        """Endpoint, plus the first device when several sessions share an endpoint."""
        if self.drv.sessions_per_endpoint.get(self.conn.endpoint, 1) > 1:
            return f"{self.conn.endpoint} [{self.devices[0][0].path}...]"
        return self.conn.endpoint

    # ---------------------------------------------------------------- lifecycle
    async def run(self) -> None:
        opt = self.drv.options
        backoff = Backoff(base=opt.reconnect_min_s, cap=opt.reconnect_max_s)
        rl = self.drv.rlog
        while True:
            try:
                async with asyncio.timeout(opt.connect_timeout_s):
                    namespaces = await self._open()
                await self._subscribe(namespaces)
            except _NET_ERRORS as e:
                await self._down(f"connect failed: {_describe(e)}")
            except MappingError as e:
                await self._down(f"configuration does not match the server: {e}")
            else:
                backoff.reset()
                self.last_error = None
                self.connected = True
                self.first_done.set()
                self.drv.update_connected()
                rl.available(self.name, "OPC UA %s: connected (%d devices, %d items)",
                             self.name, len(self.devices), len(self.specs))
                reason = await self._watch()
                self.reconnects += 1
                await self._down(reason)
            delay = backoff.next()
            await asyncio.sleep(delay)

    async def _down(self, reason: str) -> None:
        """Session lost or never made: tags BadCommunicationError (last values kept)."""
        was = self.connected
        self.connected = False
        self.last_error = reason
        self.ctx.health.inc("errors")
        self.ctx.mark(self.tags, Q.BadCommunicationError)
        self.drv.update_connected()
        self.first_done.set()
        self.drv.rlog.unavailable(
            self.name, "OPC UA %s: %s %s; devices %s BadCommunicationError, retrying with backoff",
            self.name, "lost:" if was else "unreachable:", reason,
            ", ".join(d.path for d, _ in self.devices[:5]) + (" ..." if len(self.devices) > 5 else ""),
        )
        await self._close()

    async def _close(self) -> None:
        """Discard the client: CloseSession if the server still listens, then the socket."""
        client = self.client
        if client is None:
            return
        client.connection_lost_callback = None
        try:
            async with asyncio.timeout(2.0):
                await client.disconnect()
        except _NET_ERRORS as e:
            log.debug("OPC UA %s: disconnect of a dead session: %r", self.name, e)
        finally:
            client.disconnect_socket()
            self.client = None

    async def aclose(self) -> None:
        self.connected = False
        await self._close()

    # ---------------------------------------------------------------- connect
    def _make_client(self) -> Client:
        o = self.opts
        c = Client(self.conn.endpoint, timeout=o.request_timeout_s, watchdog_intervall=o.watchdog_s)
        c.name = "city-scada OPC UA driver"
        c.application_uri = "urn:city-scada:driver:opcua"
        c.session_timeout = int(o.session_timeout_s * 1000)
        if self.conn.username:
            c.set_user(self.conn.username)
            if self.conn.password is not None:
                c.set_password(self.conn.password)
        return c

    async def _open(self) -> list[str]:
        """Secure channel + activated session; returns the server's NamespaceArray."""
        await self._close()
        client = self._make_client()
        self.client = client
        conn = self.conn
        if conn.security_policy != "None":
            # the files are read here, whole, in a worker thread that closes them: asyncua reads
            # them with anyio, and a connect cancelled meanwhile (connect timeout, shutdown)
            # leaked the open file (an unclosed-file warning seen under CPU load, issue 15)
            cert, key, server = await asyncio.to_thread(
                _read_files, conn.certificate, conn.private_key, conn.server_certificate)
            await client.set_security(
                _POLICIES[conn.security_policy], cert, key,
                server_certificate=server, mode=_MODES[conn.mode],
            )
        self._lost = asyncio.Event()
        self._lost_reason = ""

        async def on_lost(exc: Exception) -> None:
            self._signal_lost(f"connection lost ({_describe(exc)})")

        client.connection_lost_callback = on_lost
        await client.connect()
        return list(await client.get_namespace_array())

    async def _subscribe(self, namespaces: list[str]) -> None:
        """Resolve the nodes, create the subscription and its monitored items. Not under the
        connect timeout: a city-sized session creates thousands of items on a busy server;
        each request is bounded by ``request_timeout_s`` instead."""
        client = self.client
        if client is None:  # pragma: no cover - set by _open
            raise ConnectionError("no client")
        loop = asyncio.get_running_loop()
        await self._resolve(client, namespaces)
        params = ua.CreateSubscriptionParameters(
            RequestedPublishingInterval=self.opts.publishing_interval_ms,
            RequestedLifetimeCount=self.opts.lifetime_count,
            RequestedMaxKeepAliveCount=self.opts.keepalive_count,
            MaxNotificationsPerPublish=0,
            PublishingEnabled=True,
            Priority=0,
        )
        self._last_publish = loop.time()
        result = await client.uaclient.create_subscription(params, callback=self._on_publish)
        await self._monitor(client, result.SubscriptionId)
        self._last_publish = loop.time()

    async def _resolve(self, client: Client, namespaces: Sequence[str]) -> None:
        """NodeIds of every point: direct ones locally, browse paths in one batched
        TranslateBrowsePathsToNodeIds (Part 4 §5.8.4). Unresolvable points get the server's
        status (BadNoMatch...) or BadConfigurationError, the others go on."""
        self.resolved.clear()
        paths: list[tuple[int, ua.BrowsePath]] = []
        bad: dict[int, list[int]] = {}
        for tag, spec in self.specs.items():
            r = _Resolved(spec)
            try:
                if spec.ref.kind == "node":
                    r.nodeid = resolve_node(spec.ref, namespaces)
                else:
                    paths.append((tag, browse_path(spec.ref, namespaces)))
                if spec.call_object is not None and spec.call_method is not None:
                    r.call_object = resolve_node(spec.call_object, namespaces)
                    r.call_method = resolve_node(spec.call_method, namespaces)
            except MappingError as e:
                self.drv.rlog.every(f"map:{spec.device}", self.ctx.clock.time(),
                                    "OPC UA %s/%s: %s", spec.device, spec.point, e)
                bad.setdefault(Q.BadConfigurationError, []).append(tag)
                continue
            self.resolved[tag] = r
        for k in range(0, len(paths), CREATE_CHUNK):
            chunk = paths[k:k + CREATE_CHUNK]
            results = await client.uaclient.translate_browsepaths_to_nodeids([bp for _, bp in chunk])
            for (tag, _), res in zip(chunk, results, strict=True):
                st = status_of(res.StatusCode)
                if Q.is_good(st) and res.Targets:
                    t = res.Targets[0].TargetId
                    self.resolved[tag].nodeid = ua.NodeId(t.Identifier, t.NamespaceIndex, t.NodeIdType)
                else:
                    spec = self.specs[tag]
                    self.drv.rlog.every(f"bp:{spec.device}", self.ctx.clock.time(),
                                        "OPC UA %s/%s: browse path %s not found (%s)",
                                        spec.device, spec.point, spec.ref, Q.name(st))
                    del self.resolved[tag]
                    bad.setdefault(st if Q.is_bad(st) else Q.BadNodeIdUnknown, []).append(tag)
        for st, tags in bad.items():
            self.ctx.mark(tags, st)

    async def _monitor(self, client: Client, sub_id: int) -> None:
        reqs: list[ua.MonitoredItemCreateRequest] = []
        for tag, r in self.resolved.items():
            if r.nodeid is None:
                continue
            rv = ua.ReadValueId(NodeId=r.nodeid, AttributeId=ua.AttributeIds.Value)
            mp = ua.MonitoringParameters(
                ClientHandle=tag, SamplingInterval=r.spec.sampling_interval_ms,
                QueueSize=self.opts.queue_size, DiscardOldest=True,
            )
            reqs.append(ua.MonitoredItemCreateRequest(
                ItemToMonitor=rv, MonitoringMode=ua.MonitoringMode.Reporting, RequestedParameters=mp,
            ))
        bad: dict[int, list[int]] = {}
        for k in range(0, len(reqs), CREATE_CHUNK):
            chunk = reqs[k:k + CREATE_CHUNK]
            params = ua.CreateMonitoredItemsParameters(
                SubscriptionId=sub_id, ItemsToCreate=chunk, TimestampsToReturn=ua.TimestampsToReturn.Both,
            )
            results = await client.uaclient.create_monitored_items(params)
            for req, res in zip(chunk, results, strict=True):
                st = status_of(res.StatusCode)
                if Q.is_bad(st):
                    tag = int(req.RequestedParameters.ClientHandle)
                    spec = self.specs[tag]
                    self.drv.rlog.every(f"mi:{spec.device}", self.ctx.clock.time(),
                                        "OPC UA %s/%s: node %s refused (%s)",
                                        spec.device, spec.point, spec.ref, Q.name(st))
                    bad.setdefault(st, []).append(tag)
        for st, tags in bad.items():
            self.ctx.mark(tags, st)

    # ---------------------------------------------------------------- liveness
    def _signal_lost(self, reason: str) -> None:
        if self._lost is not None and not self._lost.is_set():
            self._lost_reason = reason
            self._lost.set()

    async def _watch(self) -> str:
        """Return (with the reason) when the session is dead."""
        lost = self._lost
        if lost is None:  # pragma: no cover - set by _open
            return "no session"
        loop = asyncio.get_running_loop()
        dead_after = self.opts.dead_after_s
        tick = max(0.02, min(1.0, self.opts.keepalive_s / 4))
        while True:
            try:
                async with asyncio.timeout(tick):
                    await lost.wait()
                return self._lost_reason
            except TimeoutError:
                pass
            silent = loop.time() - self._last_publish
            if silent > dead_after:
                return (f"no Publish response for {silent:.1f} s (> {self.opts.dead_after_keepalives:g} "
                        f"keep-alive periods of {self.opts.keepalive_s:g} s)")

    # ---------------------------------------------------------------- notifications
    def _on_publish(self, result: ua.PublishResult) -> None:
        """One Publish response -> at most one Batch (plus marks for value-less bad codes)."""
        self._last_publish = asyncio.get_running_loop().time()
        msg = result.NotificationMessage
        if not msg.NotificationData:
            return  # keep-alive
        for nd in msg.NotificationData:
            if isinstance(nd, ua.DataChangeNotification):
                self._datachange(nd)
            elif isinstance(nd, ua.StatusChangeNotification):
                st = status_of(nd.Status)
                if Q.is_bad(st):
                    self._signal_lost(f"subscription status {Q.name(st)}")

    def _datachange(self, nd: ua.DataChangeNotification) -> None:
        idx: list[int] = []
        vals: list[Any] = []
        qual: list[int] = []
        stamps: list[float] = []
        marks: dict[int, list[int]] = {}
        has_str = False
        now = self.ctx.clock.time()
        for item in nd.MonitoredItems:
            tag = int(item.ClientHandle)
            spec = self.specs.get(tag)
            if spec is None:
                self.ctx.health.inc("rejected")
                continue
            try:
                d = decode(item.Value, spec.dtype)
            except ValueRejected as e:
                self.ctx.health.inc("rejected")
                self.drv.rlog.every(f"rej:{spec.device}", now, "OPC UA %s/%s: value rejected: %s",
                                    spec.device, spec.point, e)
                marks.setdefault(Q.BadConfigurationError, []).append(tag)
                continue
            if d.value is None:
                marks.setdefault(d.status, []).append(tag)
                continue
            idx.append(tag)
            vals.append(d.value)
            qual.append(d.status)
            stamps.append(d.source_ts if d.source_ts is not None else now)
            has_str = has_str or isinstance(d.value, str)
        if idx:
            if has_str:
                arr = np.empty(len(vals), dtype=object)
                arr[:] = vals
                batch = Batch(np.asarray(idx, dtype=np.int64), arr, np.asarray(qual, dtype=np.uint32),
                              np.asarray(stamps, dtype=np.float64))
            else:
                batch = Batch(np.asarray(idx, dtype=np.int64), np.asarray(vals, dtype=np.float64),
                              np.asarray(qual, dtype=np.uint32), np.asarray(stamps, dtype=np.float64))
            self.ctx.publish(batch)
        for st, tags in marks.items():
            self.ctx.mark(tags, st)

    # ---------------------------------------------------------------- commands
    async def write(self, tag: int, value: Any) -> int:
        # Not ``self.connected``: the initial notifications (tags Good) may arrive before the
        # connect sequence returns; a resolved node on a live client is enough to write.
        r = self.resolved.get(tag)
        client = self.client
        if client is None:
            return Q.BadCommunicationError
        if r is None:  # not resolved yet, or the node is not on this server
            return Q.BadConfigurationError if self.connected else Q.BadCommunicationError
        spec = r.spec
        try:
            if r.call_object is not None and r.call_method is not None:
                args = [variant(value, spec.variant_type)] if spec.call_pass_value else []
                req = ua.CallMethodRequest(ObjectId=r.call_object, MethodId=r.call_method, InputArguments=args)
                res = await client.uaclient.call([req])
                return status_of(res[0].StatusCode)
            if r.nodeid is None:
                return Q.BadConfigurationError
            wv = ua.WriteValue(NodeId=r.nodeid, AttributeId=ua.AttributeIds.Value,
                               Value=ua.DataValue(variant(value, spec.variant_type)))
            res = await client.uaclient.write(ua.WriteParameters(NodesToWrite=[wv]))
            return status_of(res[0])
        except ValueError as e:
            log.info("OPC UA %s/%s: write of %r refused locally: %s", spec.device, spec.point, value, e)
            return Q.BadTypeMismatch
        except ua.UaStatusCodeError as e:
            return int(e.code)
        except _NET_ERRORS as e:
            log.warning("OPC UA %s/%s: write failed: %s", spec.device, spec.point, _describe(e))
            return Q.BadCommunicationError


def _describe(e: BaseException) -> str:
    text = str(e)
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def _read_files(*paths: str | None) -> list[CertProperties | None]:
    """Certificate and key files as asyncua content (bytes and their format), read whole."""
    return [None if p is None else
            CertProperties(Path(p).read_bytes(), extension=Path(p).suffix.lstrip(".").lower() or None)
            for p in paths]


def _load_file(path: str | None) -> str | None:
    if path is None:
        return None
    if not Path(path).is_file():
        raise FileNotFoundError(path)
    return path


class OpcUaDriver(Driver):
    """Every OPC UA device of the site, one session per endpoint."""

    protocol = "opcua"
    Connection = Connection
    PointSource = PointSource
    ProfileOptions = ProfileOptions
    Options = Options
    health_points = (
        PointDef("sessions", "int", "", "client sessions (one per endpoint)"),
        PointDef("reconnects", "int", "", "sessions rebuilt after a loss"),
    )

    def __init__(self, ctx: DriverContext):
        super().__init__(ctx)
        errors: list[str] = []
        try:
            self.options = Options.model_validate(ctx.options or {})
        except ValidationError as e:
            raise ConfigError([f"drivers.opcua: {e}"]) from None
        self.rlog = RateLimitedLog(ctx.log)
        groups: dict[str, tuple[Connection, ProfileOptions, list[tuple[DeviceInstance, list[ItemSpec]]]]] = {}
        for dev in ctx.devices:
            try:
                conn = Connection.model_validate(dev.connection)
                opts = ProfileOptions.model_validate(dev.profile.options)
                for f in (conn.certificate, conn.private_key, conn.server_certificate):
                    _load_file(f)
                items = device_items(dev.path, conn.object or dev.id, dev.index, dev.first_tag,
                                     dev.profile.points, opts)
            except (ValidationError, MappingError, FileNotFoundError) as e:
                what = f"file not found: {e}" if isinstance(e, FileNotFoundError) else str(e)
                errors.append(f"{dev.path} (profile {dev.profile_name}): {what}")
                continue
            key = json.dumps([conn.model_dump(exclude={"object"}), opts.model_dump()], sort_keys=True)
            groups.setdefault(key, (conn, opts, []))[2].append((dev, items))
        if errors:
            raise ConfigError(errors)
        self.sessions = [_Session(self, c, o, devs) for c, o, devs in groups.values()]
        self.sessions_per_endpoint: dict[str, int] = {}
        for s in self.sessions:
            self.sessions_per_endpoint[s.conn.endpoint] = self.sessions_per_endpoint.get(s.conn.endpoint, 0) + 1
        self._by_tag: dict[int, _Session] = {t: s for s in self.sessions for t in s.specs}
        ctx.health.set("sessions", len(self.sessions))

    def update_connected(self) -> None:
        h = self.ctx.health
        h.set("connected", sum(len(s.devices) for s in self.sessions if s.connected))
        h.set("reconnects", sum(s.reconnects for s in self.sessions))

    async def run(self) -> None:
        try:
            async with asyncio.TaskGroup() as tg:
                for s in self.sessions:
                    tg.create_task(s.run(), name=f"opcua:{s.name}")
                tg.create_task(self._report_first_round(), name="opcua:first-round")
        finally:
            await self.aclose()

    async def _report_first_round(self) -> None:
        await asyncio.gather(*(s.first_done.wait() for s in self.sessions))
        failures = self.failures()
        if failures:
            self.ctx.log.warning("%s", OpcUaConnectError(failures))
        else:
            self.ctx.log.info("OPC UA: all %d devices connected over %d sessions",
                              sum(len(s.devices) for s in self.sessions), len(self.sessions))

    def failures(self) -> dict[str, str]:
        """Device path -> reason, for every device whose session is not connected now."""
        return {d.path: s.last_error or "not connected yet"
                for s in self.sessions if not s.connected for d, _ in s.devices}

    async def wait_connected(self, within_s: float) -> None:
        """Wait until every session is connected; raise :class:`OpcUaConnectError` listing
        every device still unreachable after ``within_s`` seconds (real time)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within_s
        while loop.time() < deadline:
            if all(s.connected for s in self.sessions):
                return
            await asyncio.sleep(0.02)
        failures = self.failures()
        if failures:
            raise OpcUaConnectError(failures)

    async def write(self, tag: int, value: Any) -> int:
        s = self._by_tag.get(tag)
        if s is None:
            return Q.BadNodeIdUnknown
        return await s.write(tag, value)

    async def aclose(self) -> None:
        await asyncio.gather(*(s.aclose() for s in self.sessions), return_exceptions=True)
