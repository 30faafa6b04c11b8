"""The runtime: builds the tag database from a site, starts drivers and services as supervised
asyncio tasks, routes commands to the owning driver, and shuts down cleanly.

* Drivers are found by protocol name in the ``scada.drivers`` entry points, services (historian,
  alarms, schedules, OPC UA server, ...) by the factories in ``scada.services``
  (``factory(runtime) -> Service | None``; ``None`` when the site disables it).
* A crashed task is logged and restarted with exponential backoff; it never takes the server
  down. SIGINT/SIGTERM stop everything within the shutdown budget (5 s), services flushing
  what they must (:meth:`Service.aclose`).
* Writes (from OPC UA clients, the CLI or schedules) come to :meth:`Runtime.write`, which checks
  the tag (exists, writable, type, EU range, device in service) and asks the owning driver; the
  caller gets the driver's real outcome as an OPC UA status code.
* Health tags under ``_system/``: per driver the :data:`scada.driver.STANDARD_HEALTH` points,
  and ``_system/server/*`` (event-loop lag, tag count, updates per second).
"""

from __future__ import annotations

import asyncio
import contextvars
import errno
import gc
import logging
import math
import os
import signal
import time as _time
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from importlib.metadata import entry_points
from typing import Any

from . import memdiag
from . import quality as Q
from .clock import Clock, RealClock
from .driver import STANDARD_HEALTH, Driver, DriverContext, Health
from .errors import (
    CannotListen,
    CannotStart,
    ConfigError,
    ScadaError,
    UnknownTagError,
    WriteRefused,
)
from .ha.role import Fenced, HaState, Role
from .operations import Operations
from .sections.ha import HaConfig
from .site import Site
from .tags import UA_TYPE_RANGE, Batch, PointDef, TagDatabase

log = logging.getLogger("scada.runtime")

SERVICE_ORDER = ("historian", "alarms", "schedules", "opcua", "web")

#: services that act on the city (schedules step and send commands): in a redundant pair they
#: run on the active server only (started at promotion, stopped at demotion)
ACTIVE_ONLY_SERVICES = ("schedules",)

#: seconds between two malloc_trim calls (see scada.memdiag.trim: without it a city server's RSS
#: creeps up by megabytes a minute through heap fragmentation)
TRIM_INTERVAL = 60.0

SERVER_HEALTH = (
    PointDef("tags", "int", "", "tags in the tag database"),
    PointDef("devices", "int", "", "devices in the tag database"),
    PointDef("updates_per_s", "float", "1/s", "samples applied per second (last interval)"),
    PointDef("changes_per_s", "float", "1/s", "changes published per second (last interval)"),
    PointDef("loop_lag_ms", "float", "ms", "event-loop lag measured by the health task"),
    PointDef("task_restarts", "int", "", "supervised tasks restarted after a crash"),
    PointDef("subscriber_errors", "int", "", "exceptions raised by change subscribers"),
    PointDef("rss_mb", "float", "MB", "resident memory of the server process"),
    PointDef("trim_ms", "float", "ms", "duration of the last malloc_trim (every minute, in a "
             "worker thread; the event loop's own allocations wait for it)"),
)


class Service(ABC):
    """A long-running part of the server fed by the tag database (historian, alarms, ...)."""

    name: str = "service"

    @abstractmethod
    async def run(self) -> None:
        """Work until cancelled."""

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Flush and release resources; called once at shutdown, after ``run`` is cancelled."""


Writer = Callable[[int, Any], Awaitable[int]]

#: Who is writing, for handlers that audit or check roles (set by :meth:`Runtime.write`).
_CALLER: contextvars.ContextVar[str | None] = contextvars.ContextVar("scada_caller", default=None)


def current_user() -> str | None:
    """The user on whose behalf the current write runs (None: the server itself)."""
    return _CALLER.get()


class Runtime:
    """One server process: tag database + drivers + services on one event loop."""

    def __init__(self, site: Site, clock: Clock | None = None, *, shutdown_timeout: float = 5.0,
                 node: str | None = None):
        self.site = site
        self.clock = clock or RealClock()
        self.shutdown_timeout = shutdown_timeout
        mg = site.config.alarms.memory_growth
        #: RSS trend over a day (alarm ``_system/server/memory_growth``, raised by the alarms)
        self.memory_trend = memdiag.RssTrend(mg.window, mg.min_span)
        self.tagdb = TagDatabase(self.clock, capacity=site.tag_count + 1024,
                                 future_tolerance=site.config.site.future_tolerance_s)
        self.drivers: dict[str, Driver] = {}
        self.services: dict[str, Service] = {}
        self._device_driver: dict[int, Driver] = {}
        self._writers: dict[int, Writer] = {}  # device index -> handler for server-owned tags
        self._claimed: set[int] = set()  # devices without driver whose values a caller writes
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._stopping = asyncio.Event()
        #: a service that could not start at all (see :meth:`supervise`)
        self.fatal: CannotStart | None = None
        self._fatal_event = asyncio.Event()
        #: per supervised task, set once its first run has failed or returned
        self._first_done: dict[str, asyncio.Event] = {}
        self.restarts = 0
        self._health: dict[str, tuple[Health, int]] = {}
        #: per fencing token, writes sent to devices and server handlers: [count, first, last]
        #: (wall-clock times: the audit of who wrote in which term, compared across the pair),
        #: and writes refused because this server was not active
        self.ha_writes: dict[int, list[float]] = {}
        self.ha_refused = 0
        self._driver_tag_idx: Any = None
        self._bg: set[asyncio.Future[None]] = set()
        self._register_devices()
        #: absolute state directory (journal, audit log, spool, overrides, certificates)
        self.state_dir = site.state_dir
        #: the operator API every front end calls (role matrix, areas, audit: scada/operations)
        self.operations = Operations(self)
        #: this server's role in a redundant pair (single: alone, always active; scada/ha)
        self.ha = HaState()
        #: the etcd election of a pair (scada.ha.lease.Elector; None for a single server)
        self.elector: Any = None
        ha = site.config.ha
        if ha is not None:
            if not node:
                raise ConfigError(
                    f"{site.path}: this site is a redundant pair (ha: nodes "
                    f"{', '.join(ha.nodes)}): say which one this server is with "
                    "--node NAME (or the environment variable SCADA_NODE)")
            if node not in ha.nodes:
                raise ConfigError(f"{site.path}: --node {node!r} is not a node of the pair "
                                  f"(ha.nodes: {', '.join(ha.nodes)})")
            self.ha = HaState(node, Role.STARTING)
            self.ha.listen(self._on_role)

    # ----------------------------------------------------------------- building
    def _register_devices(self) -> None:
        for dev in self.site.all_devices():
            dev.first_tag = self.tagdb.add_device(
                dev.path, self.site.schemas[dev.profile_name], dev.attrs or None
            )
        h = Health(SERVER_HEALTH)
        self._health["server"] = (h, self.tagdb.add_tags("_system/server", SERVER_HEALTH))

    def load_drivers(self, only: list[str] | None = None) -> None:
        """Instantiate one driver per protocol used by the site (validation only, no I/O).

        Loading every driver (``only`` None: ``scada check``, ``run``, ``demo``) also refuses,
        with :class:`ConfigError`, a configured device that nothing would write
        (:meth:`unowned_devices`): every configured tag gets a writer."""
        by_proto = self.site.by_protocol()
        eps = {ep.name: ep for ep in entry_points(group="scada.drivers")}
        missing = [p for p in by_proto if p not in eps]
        if missing:
            raise ConfigError(
                [f"{self.site.path}: no driver installed for protocol {p!r} "
                 f"(installed: {', '.join(sorted(eps)) or 'none'})" for p in missing]
            )
        for proto, devices in by_proto.items():
            if only is not None and proto not in only:
                continue
            cls: type[Driver] = eps[proto].load()
            points = STANDARD_HEALTH + tuple(
                p for p in cls.health_points if p.name not in {s.name for s in STANDARD_HEALTH}
            )
            health = Health(points)
            first = self.tagdb.add_tags(f"_system/{proto}", points)
            self._health[proto] = (health, first)
            health.set("devices", len(devices))
            ctx = DriverContext(
                protocol=proto, site=self.site, tagdb=self.tagdb, clock=self.clock,
                devices=devices, options=self.site.config.drivers.get(proto, {}), health=health,
            )
            drv = cls(ctx)
            self.drivers[proto] = drv
            for dev in devices:
                self._device_driver[self.tagdb.device_index(dev.path)] = drv
        if only is None:
            unowned = self.unowned_devices()
            if unowned:
                raise ConfigError(unowned)

    def load_services(self, only: list[str] | None = None) -> None:
        """Create the services registered under ``scada.services`` (factories may return None)."""
        eps = {ep.name: ep for ep in entry_points(group="scada.services")}
        order = [n for n in SERVICE_ORDER if n in eps] + sorted(set(eps) - set(SERVICE_ORDER))
        for name in order:
            if only is not None and name not in only:
                continue
            factory = eps[name].load()
            try:
                svc = factory(self)
            except (ValueError, ScadaError) as e:
                # a service refusing the site's configuration (a backend that is not
                # installed, options it cannot use): one clear error, not a traceback
                if isinstance(e, ConfigError):
                    raise ConfigError([f"{name}: {m}" for m in e.errors]) from e
                raise ConfigError(f"{name}: {e}") from e
            except OSError as e:  # a state directory or file it cannot create or open
                raise CannotStart(f"the {name} service cannot start: {e}") from e
            if svc is not None:
                self.services[name] = svc

    def add_service(self, svc: Service) -> None:
        self.services[svc.name] = svc

    def register_writer(self, device_path: str, handler: Writer) -> None:
        """Route writes to a server-owned device's tags (computed tags, overrides) to ``handler``.
        The caller owns the device: it writes its live values (see :meth:`claim`)."""
        self._writers[self.tagdb.device_index(device_path)] = handler

    def claim(self, device_path: str) -> None:
        """Declare that the caller (a service, a test) writes the live values of a configured
        device that has no protocol driver; :meth:`start` refuses a site where such a device
        has no owner (its tags would stay BadWaitingForInitialData forever)."""
        self._claimed.add(self.tagdb.device_index(device_path))

    def unowned_devices(self) -> list[str]:
        """Configured devices whose tags nothing writes (no protocol driver, no writer, no
        claim), one message per device entry of the site (its children counted in it)."""
        groups: dict[str, list[str]] = {}
        for dev in self.site.all_devices():
            if dev.protocol or not dev.enabled:
                continue
            d = self.tagdb.device_index(dev.path)
            if d not in self._writers and d not in self._claimed:
                groups.setdefault(dev.parent or dev.path, []).append(dev.path)
        out = []
        for top, paths in groups.items():
            profiles = sorted({self.site.device(p).profile_name for p in paths})
            kids = [p for p in paths if p != top]
            what = f"device {top}" if top in paths else f"children of {top}"
            if kids:
                what += f" ({len(kids)} child device{'s' if len(kids) != 1 else ''}: {', '.join(kids[:3])}"
                what += ", ...)" if len(kids) > 3 else ")"
            out.append(f"{self.site.origins.get(top, self.site.path)}: {what}: profile "
                       f"{', '.join(repr(p) for p in profiles)} has no protocol, so nothing writes "
                       "its tags (they would stay BadWaitingForInitialData); give the profile a "
                       "protocol (astro for the astronomical clock) or remove the device")
        return out

    # ----------------------------------------------------------------- commands
    def set_out_of_service(self, device_path: str, oos: bool, *, user: str | None = None,
                           comment: str = "") -> int:
        """Put a device under works (``oos=True``) or back in service: THE entry point.

        The state lives in the tag database (:meth:`TagDatabase.set_out_of_service`): while out
        of service every tag of the device reads ``BadOutOfService`` whatever its driver
        publishes, and writes to it are refused. The alarm engine follows the change (its
        alarms of the device are hidden and journaled as out of service, with ``user`` and
        ``comment``). Role checks and audit belong to the caller (the operations layer).

        Returns ``Good`` (also when the device already was in that state) or
        ``BadNodeIdUnknown`` for an unknown device.
        """
        try:
            self.tagdb.set_out_of_service(device_path, oos, user=user, comment=comment)
        except UnknownTagError as e:
            log.info("out of service refused: %s", e)
            return Q.BadNodeIdUnknown
        return Q.Good

    def check_write(self, tag: int | str, value: Any) -> tuple[int, Any]:
        """Validate a write without sending it: returns (tag index, coerced value) or raises
        :class:`~scada.errors.WriteRefused` with the OPC UA status to report."""
        try:
            i = self.tagdb.index(tag) if isinstance(tag, str) else int(tag)
            info = self.tagdb.info(i)
        except UnknownTagError as e:
            raise WriteRefused(str(e), Q.BadNodeIdUnknown) from None
        p = info.point
        if not p.writable:
            raise WriteRefused(f"{info.path} is read-only", Q.BadNotWritable)
        if self.tagdb.is_out_of_service(info.device_index):
            raise WriteRefused(f"{info.device} is out of service", Q.BadOutOfService)
        v = coerce(p, value)
        if v is None:
            raise WriteRefused(f"{info.path} expects a {p.dtype}"
                               f"{' (a whole number)' if p.dtype == 'int' else ''}, got {value!r}",
                               Q.BadTypeMismatch)
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            if (p.eu_low is not None and v < p.eu_low) or (p.eu_high is not None and v > p.eu_high):
                raise WriteRefused(
                    f"{info.path}: {v} outside [{p.eu_low}, {p.eu_high}] {p.unit}", Q.BadOutOfRange
                )
            lo, hi = UA_TYPE_RANGE.get(p.data_type, (-math.inf, math.inf))
            if not lo <= v <= hi:
                raise WriteRefused(f"{info.path}: {v} does not fit its OPC UA data type {p.data_type} "
                                   f"[{lo:g}, {hi:g}]", Q.BadOutOfRange)
        return i, v

    async def write(self, tag: int | str, value: Any, *, user: str | None = None) -> int:
        """Send a write to the owning driver (or server-side handler); return its status code.

        ``user`` names who asked (an OPC UA session's user, the CLI's operator); handlers read
        it with :func:`current_user` to audit or check roles.
        """
        token = _CALLER.set(user)
        try:
            return await self._write(tag, value)
        finally:
            _CALLER.reset(token)

    async def _write(self, tag: int | str, value: Any) -> int:
        try:
            i, v = self.check_write(tag, value)
        except WriteRefused as e:
            log.info("write refused: %s (%s)", e, Q.name(e.status))
            return e.status
        d = int(self.tagdb.device_of[i])
        handler = self._writers.get(d)
        drv = self._device_driver.get(d)
        if handler is None and drv is None:
            return Q.BadNotWritable
        owner = "server handler" if handler is not None else f"driver {drv.ctx.protocol}"  # type: ignore[union-attr]
        try:
            # fencing, right before the device or the server-side store is asked: a standby
            # (or an active that just lost its lease) refuses, naming the active server
            token = self.ha.check()
        except Fenced as e:
            log.info("write to %s refused: %s", self.tagdb.path(i), e)
            self.ha_refused += 1
            return Q.BadNotWritable
        now = _time.time()
        w = self.ha_writes.get(token)
        if w is None:
            self.ha_writes[token] = [1, now, now]
        else:
            w[0] += 1
            w[2] = now
        try:
            if handler is not None:
                return int(await handler(i, v))
            return int(await drv.write(i, v))  # type: ignore[union-attr]
        except Exception:
            log.exception("%s failed writing %r to %s", owner, v, self.tagdb.path(i))
            return Q.BadInternalError

    # ----------------------------------------------------------------- supervision
    def supervise(self, name: str, factory: Callable[[], Awaitable[None]], *,
                  fatal_first: bool = False) -> asyncio.Task[None]:
        """Run ``factory()`` as a task restarted with backoff whenever it crashes.

        ``fatal_first``: if the *first* run fails with an ``OSError`` (a port that cannot be
        listened on: in use, not local, privileged; a directory that cannot be created), the
        setting is wrong and retrying cannot help: the error is recorded in :attr:`fatal` and
        :meth:`serve_forever` stops the server and raises it, one line for the operator
        instead of a traceback every backoff period. A later failure is retried as usual.
        """
        first_done = self._first_done.setdefault(name, asyncio.Event())

        async def runner() -> None:
            delay = 1.0
            while not self._stopping.is_set():
                started = _time.monotonic()
                try:
                    await factory()
                    if self._stopping.is_set():
                        return
                    log.warning("task %s returned; restarting", name)
                except asyncio.CancelledError:
                    raise
                except Exception as e:
                    if fatal_first and not first_done.is_set() and isinstance(e, OSError):
                        self.fatal = _start_error(name, e)
                        log.error("%s", self.fatal)
                        first_done.set()
                        self._fatal_event.set()
                        return
                    log.exception("task %s crashed; restarting in %.1f s", name, delay)
                first_done.set()
                self.restarts += 1
                if _time.monotonic() - started > 60:
                    delay = 1.0
                await asyncio.sleep(delay)
                delay = min(delay * 2, 60.0)

        task = asyncio.create_task(runner(), name=name)
        self._tasks[name] = task
        return task

    async def start(self) -> None:
        """Start drivers, services and the health task (returns once they are launched)."""
        # A city loads millions of long-lived objects (site model, alarm conditions, schedules);
        # a full garbage collection scanning them stalls the event loop for hundreds of ms.
        # Collect once now and move them to the permanent generation (gc.freeze), so later
        # collections only look at what the running server allocates.
        gc.collect()
        gc.freeze()
        memdiag.tune_malloc()  # before the worker threads exist (see scada.memdiag)
        await asyncio.to_thread(self.operations.start)  # demo accounts (scrypt) before front ends
        for name, svc in self.services.items():
            if name in ACTIVE_ONLY_SERVICES and not self.ha.is_active():
                continue  # started at promotion (see _on_role)
            self.supervise(f"service:{name}", svc.run, fatal_first=True)
        if self.ha.is_active():
            for proto, drv in self.drivers.items():
                self.supervise(f"driver:{proto}", drv.run)
        self.supervise("health", self._health_loop)
        if self.site.config.ha is not None:
            self._start_elector(self.site.config.ha)
        diag = os.environ.get("SCADA_MEMDIAG")
        if diag:
            cons = tuple(c for svc in self.services.values()
                         if (c := getattr(getattr(svc, "backend", None), "_con", None)) is not None)
            self.supervise("memdiag", lambda: memdiag.run(float(diag), cons))

    # ----------------------------------------------------------------- redundant pair
    def _start_elector(self, ha: HaConfig) -> None:
        from .ha.lease import Elector  # the etcd client only for a pair

        me = ha.nodes[self.ha.node]
        info = {"opcua": me.opcua, "web": me.web, "replication": me.replication}
        self.elector = Elector(self.ha, ha.etcd, ha.election_key(self.site.name), ha.lease_ttl,
                               info, status=self.ha_status)
        elector = self.elector

        async def campaign_once_started() -> None:
            # the services' start-up (a city's address space, the alarm states) holds the loop
            # for seconds: campaign after it, not while a won lease could not be looked after
            await self._services_up()
            await elector.run()

        self.supervise("ha:elector", campaign_once_started)

    async def _services_up(self) -> None:
        """Until every running service with a ``started`` event has set it or ended its first
        run (active-only services are not running yet)."""
        for name, svc in self.services.items():
            started = getattr(svc, "started", None)
            done = self._first_done.get(f"service:{name}")
            if not isinstance(started, asyncio.Event) or done is None:
                continue
            waits = [asyncio.ensure_future(started.wait()), asyncio.ensure_future(done.wait())]
            try:
                await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for w in waits:
                    w.cancel()

    def ha_status(self) -> dict[str, Any]:
        """What this server publishes of itself for ``scada ha status``: writes per term and
        the replication service's status when there is one."""
        out: dict[str, Any] = {"writes_refused": self.ha_refused,
                               "writes_by_token": {str(k): list(v) for k, v in self.ha_writes.items()}}
        repl = self.services.get("replication")
        status = getattr(repl, "status", None)
        if callable(status):
            out["replication"] = status()
        return out

    def _on_role(self, role: Role) -> None:
        """Start what acts on the city when this server becomes active; stop it (and close its
        device connections) when it stops being active. Called synchronously on every role
        change, so a demotion stops polling before anything else runs."""
        if self._stopping.is_set():
            return
        if role is Role.ACTIVE:
            for name in ACTIVE_ONLY_SERVICES:
                svc = self.services.get(name)
                if svc is not None and f"service:{name}" not in self._tasks:
                    self.supervise(f"service:{name}", svc.run)
            for proto, drv in self.drivers.items():
                if f"driver:{proto}" not in self._tasks:
                    self.supervise(f"driver:{proto}", drv.run)
            return
        stopped = []
        for name in [f"service:{n}" for n in ACTIVE_ONLY_SERVICES] + [f"driver:{p}" for p in self.drivers]:
            t = self._tasks.pop(name, None)
            if t is not None:
                t.cancel()
                stopped.append(t)
        if stopped:
            t = asyncio.ensure_future(self._close_drivers(stopped))
            self._bg.add(t)
            t.add_done_callback(self._bg.discard)
        # the standby shows its device tags as not connected, never a stale Good
        self.tagdb.mark(self._driver_tags(), Q.BadNotConnected)

    def _driver_tags(self) -> Any:
        """Indices of every tag a protocol driver owns (one array, one change batch)."""
        if self._driver_tag_idx is None:
            import numpy as np

            parts = [np.arange(self.tagdb.device_first(d),
                               self.tagdb.device_first(d) + len(self.tagdb.device_schema(d)),
                               dtype=np.int64) for d in sorted(self._device_driver)]
            self._driver_tag_idx = np.concatenate(parts) if parts else np.zeros(0, np.int64)
        return self._driver_tag_idx

    async def _close_drivers(self, tasks: list[asyncio.Task[None]]) -> None:
        """After a demotion: wait for the stopped tasks, then drop the device connections (many
        devices accept one Modbus connection: the new active needs it)."""
        await asyncio.wait(tasks, timeout=self.shutdown_timeout)
        for drv in self.drivers.values():
            try:
                await asyncio.wait_for(drv.aclose(), self.shutdown_timeout)
            except TimeoutError:
                log.warning("driver %s did not close its device connections within %.0f s of "
                            "the demotion", drv.ctx.protocol, self.shutdown_timeout)
            except Exception:
                log.exception("driver %s failed closing its connections after demotion",
                              drv.ctx.protocol)

    async def _health_loop(self) -> None:
        loop = asyncio.get_running_loop()
        last_stats = dict(self.tagdb.stats)
        last_t = last_trim = loop.time()
        while True:
            t0 = loop.time()
            await asyncio.sleep(1.0)
            lag = max(0.0, loop.time() - t0 - 1.0)
            now = loop.time()
            dt = max(1e-6, now - last_t)
            st = self.tagdb.stats
            srv, _ = self._health["server"]
            srv.set("updates_per_s", (st["samples"] - last_stats["samples"]) / dt)
            srv.set("changes_per_s", (st["changes"] - last_stats["changes"]) / dt)
            srv.set("loop_lag_ms", lag * 1000.0)
            rss = memdiag.rss_bytes() / 2**20
            srv.set("rss_mb", rss)
            self.memory_trend.add(self.clock.time(), rss)
            if now - last_trim >= TRIM_INTERVAL:
                last_trim = now
                t_trim = _time.perf_counter()
                await asyncio.to_thread(memdiag.trim)
                srv.set("trim_ms", (_time.perf_counter() - t_trim) * 1000.0)
            last_stats, last_t = dict(st), now
            self.publish_health()

    def publish_health(self) -> None:
        """Publish every health counter as one batch."""
        srv, _ = self._health["server"]
        srv.set("tags", len(self.tagdb))
        srv.set("devices", self.tagdb.device_count)
        srv.set("task_restarts", self.restarts)
        srv.set("subscriber_errors", self.tagdb.stats["subscriber_errors"])
        idx: list[int] = []
        vals: list[float] = []
        for h, first in self._health.values():
            for k, p in enumerate(h.points):
                idx.append(first + k)
                v = h.values.get(p.name, 0.0)
                vals.append(v if math.isfinite(v) else float("nan"))
        self.tagdb.apply(Batch.of(idx, vals, Q.Good, self.clock.time()))

    async def stop(self) -> None:
        """Cancel every task, then close drivers and services, all within the shutdown budget."""
        self._stopping.set()
        gc.unfreeze()  # what start() froze becomes collectable again (tests start many runtimes)
        tasks = list(self._tasks.values())
        for t in tasks:
            t.cancel()
        deadline = asyncio.get_running_loop().time() + self.shutdown_timeout
        if tasks:
            await asyncio.wait(tasks, timeout=max(0.1, self.shutdown_timeout / 2))
        names = [f"driver:{p}" for p in self.drivers] + [f"service:{n}" for n in reversed(list(self.services))]
        closers = [asyncio.ensure_future(drv.aclose()) for drv in self.drivers.values()]
        closers += [asyncio.ensure_future(svc.aclose()) for svc in reversed(list(self.services.values()))]
        remaining = max(0.1, deadline - asyncio.get_running_loop().time())
        if closers:
            _done, pending = await asyncio.wait(closers, timeout=remaining)
            for name, fut in zip(names, closers, strict=True):
                if fut in pending:
                    log.error("%s did not close within the %.0f s shutdown budget; abandoned",
                              name, self.shutdown_timeout)
                    fut.cancel()
                elif fut.exception() is not None:
                    log.error("%s failed while closing: %r", name, fut.exception())
        self._tasks.clear()
        self.operations.close()

    async def serve_forever(self, ready: Callable[[], None] | None = None) -> None:
        """Start, wait for SIGINT/SIGTERM, stop. For ``scada run`` and ``scada demo``."""
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        installed = []
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.add_signal_handler(sig, stop.set)
                installed.append(sig)
            except (NotImplementedError, RuntimeError):
                pass
        try:
            await self.start()
            # "running" is said once the services that listen do (or failed to)
            await self._wait_first_start(stop)
            if self.fatal is None and not stop.is_set():
                if ready:
                    ready()
                waits = [asyncio.ensure_future(e.wait()) for e in (stop, self._fatal_event)]
                try:
                    await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    for w in waits:
                        w.cancel()
            if self.fatal is None:
                log.info("shutdown requested")
        finally:
            for sig in installed:
                loop.remove_signal_handler(sig)
            t0 = _time.monotonic()
            await self.stop()
            log.info("stopped in %.2f s", _time.monotonic() - t0)
        if self.fatal is not None:
            raise self.fatal

    async def _wait_first_start(self, stop: asyncio.Event) -> None:
        """Until every service with a ``started`` event has set it or ended its first run
        (a failed first run is retried in the background, or is :attr:`fatal`)."""
        for name, svc in self.services.items():
            started = getattr(svc, "started", None)
            if not isinstance(started, asyncio.Event):
                continue
            waits = [asyncio.ensure_future(e.wait())
                     for e in (started, self._first_done[f"service:{name}"], stop)]
            try:
                await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for w in waits:
                    w.cancel()
            if stop.is_set() or self.fatal is not None:
                return


def _start_error(task: str, e: OSError) -> CannotStart:
    """The one line for a service's failed first start. A socket that cannot be bound keeps
    the service's own message (it names the address and the setting)."""
    if isinstance(e, CannotStart):
        return e
    if e.errno in (errno.EADDRINUSE, errno.EADDRNOTAVAIL) or (
            e.errno == errno.EACCES and e.filename is None):
        return CannotListen(e.strerror if e.strerror and e.filename is None else str(e))
    return CannotStart(f"the {task.removeprefix('service:')} service cannot start: {e}")


def coerce(p: PointDef, value: Any) -> Any:
    """Convert a written value to the point's type; None when it cannot be (BadTypeMismatch)."""
    try:
        if p.dtype == "string":
            return value if isinstance(value, str) else None
        if p.dtype == "bool":
            if isinstance(value, bool):
                return value
            if isinstance(value, (int, float)) and value in (0, 1):
                return bool(value)
            if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "on", "off"):
                return value.lower() in ("true", "1", "on")
            return None
        if p.dtype == "int":
            if isinstance(value, bool):
                return None
            if isinstance(value, str):
                value = float(value)
            if isinstance(value, float) and not value.is_integer():
                return None
            return int(value)
        if isinstance(value, bool):
            return None
        v = float(value)
        return v if math.isfinite(v) else None
    except (TypeError, ValueError):
        return None
