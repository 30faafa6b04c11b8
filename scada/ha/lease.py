"""Who is active: an election on an etcd lease, with fencing tokens (issue 22,
docs/redundancy.md "How the active is chosen").

The two servers never decide between themselves; etcd (Raft, a quorum of its members) does.
Each server runs one :class:`Elector`:

1. it grants itself a lease of ``lease_ttl`` seconds and keeps it alive (one renewal every
   ``lease_ttl / 6``, from a thread: see :class:`Renewer`), for as long as it can reach etcd;
2. **campaign**: one transaction "if the election key does not exist, put ``key = this node's
   URLs`` attached to my lease; else read it". The winner's fencing token is the etcd revision of
   that put: etcd revisions only grow, so every new term gets a larger token than every earlier
   one, whoever wins it. The loser is standby, learns the holder from the value and watches the
   key (and campaigns again every ``lease_ttl / 4`` in case a watch event was lost);
3. **step down before the lease can expire**: etcd expires the lease ``lease_ttl`` after the
   last renewal *it received*, which is after the renewal was *sent*. So the active measures from
   the moment it sent its last successful renewal and, when ``lease_ttl / 2`` has passed without
   a newer success, fences itself (:meth:`HaState.demote` to ``fenced``: writes stop at once)
   while the lease is still valid and before the standby can win. Clock drift between the
   machines does not matter, only the rates of their monotonic clocks over a few seconds;
4. when the session ends (etcd unreachable, the lease found expired, the key deleted by an
   operator, shutdown) the server fences itself, revokes its lease if it still can (a graceful
   stop of the active hands over at once instead of after ``lease_ttl``) and starts again from 1.

A paused process (a long GC pause, a VM frozen) may wake up believing it is still active for a
moment: the fencing token is what makes it harmless; every writer stamps its write with
:meth:`HaState.check`'s token and a store refuses a token older than one it has seen
(docs/redundancy.md, "Fencing").

Time here is the machine's monotonic clock, not the site's injectable clock: lease TTLs are
counted by etcd in real seconds, whatever rate a simulated site runs at.

The same contract on other engines (docs/redundancy.md): a Consul session with ``TTL`` and
``LockDelay`` plus ``KV acquire`` (the token: the key's ``ModifyIndex``); a ZooKeeper ephemeral
sequential node under the election path, lowest sequence wins (the token: its ``czxid``); a
Kubernetes ``coordination.k8s.io/v1`` Lease updated with optimistic concurrency (the token:
``leaseTransitions``, or the object's ``resourceVersion``).

Client: the **aetcd** asyncio gRPC client (works against Debian's etcd 3.4; it speaks to one
endpoint, so this module rotates between the configured ones on connection failures).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import socket
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import aetcd
from aetcd import exceptions as etcd_errors
from aetcd.rtypes import EventKind

from ..errors import ScadaError
from .role import HaState, Role

log = logging.getLogger("scada.ha.lease")

#: errors that mean "this etcd endpoint cannot answer now": try the next one
ETCD_ERRORS: tuple[type[BaseException], ...] = (etcd_errors.ClientError, OSError,
                                                asyncio.TimeoutError)


class LeaseLost(ScadaError, ConnectionError):
    """This server's lease expired, could not be renewed in time, or its election key went."""


def _now() -> float:
    return time.monotonic()


def endpoint_hostport(url: str) -> tuple[str, int]:
    u = urlsplit(url if "://" in url else f"http://{url}")
    return u.hostname or "127.0.0.1", int(u.port or 2379)


#: gRPC channel options: reconnect quickly after a partition heals (gRPC's default backoff
#: grows to two minutes, which would keep a healed server out of the pair that long)
CHANNEL_OPTIONS = {
    "grpc.initial_reconnect_backoff_ms": 200,
    "grpc.min_reconnect_backoff_ms": 200,
    "grpc.max_reconnect_backoff_ms": 1000,
}


class EtcdEndpoints:
    """An aetcd client on one of several endpoints; :meth:`rotate` moves to the next one."""

    def __init__(self, endpoints: list[str], timeout: float):
        self.endpoints = list(endpoints)
        self.timeout = timeout
        self._i = 0
        self.client: aetcd.Client | None = None

    @property
    def current(self) -> str:
        return self.endpoints[self._i]

    async def connect(self) -> aetcd.Client:
        if self.client is None:
            host, port = endpoint_hostport(self.current)
            c = aetcd.Client(host=host, port=port, timeout=self.timeout,  # type: ignore[arg-type]
                             options=dict(CHANNEL_OPTIONS))
            await c.connect()
            self.client = c
        return self.client

    async def close(self) -> None:
        c, self.client = self.client, None
        if c is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(c.close(), timeout=1.0)

    async def rotate(self) -> None:
        await self.close()
        self._i = (self._i + 1) % len(self.endpoints)


#: no HTTP proxy from the environment between a server and its etcd
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class Renewer:
    """Renews a lease from a thread of its own, through etcd's JSON gateway
    (``POST /v3/lease/keepalive``, one blocking HTTP request per renewal, rotating between the
    endpoints on failure).

    Why a thread: the renewals measure whether the *process* is alive, and must not stop while
    the event loop is busy for a few seconds (at Dijon size, the start-up of the services or the
    first poll of 34,000 luminaires after a promotion held the loop for more than
    ``lease_ttl / 2``, and the pair flapped). The fencing side stays on the loop: the watchdog
    and :meth:`HaState.check` compare the monotonic clock with the last renewal this thread
    reports, so a process whose loop is stalled writes nothing anyway."""

    def __init__(self, elector: Elector, lease_id: int, start: int):
        self.e = elector
        self.lease_id = lease_id
        self._i = start
        self.lost: str | None = None
        self._loop = asyncio.get_running_loop()
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True,
                                       name=f"ha-lease-{elector.ha.node}")

    def start(self) -> Renewer:
        self.thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def _renew(self, url: str) -> int:
        body = json.dumps({"ID": str(self.lease_id)}).encode()
        req = urllib.request.Request(f"{url}/v3/lease/keepalive", data=body, method="POST",
                                     headers={"Content-Type": "application/json"})
        with _OPENER.open(req, timeout=self.e.timeout) as r:
            answer = json.loads(r.read())
        return int((answer.get("result") or {}).get("TTL", 0))

    def _run(self) -> None:
        e = self.e
        eps = e.etcd.endpoints
        pause = e.renew_every
        while not self._stop.wait(pause):
            sent = _now()
            url = eps[self._i % len(eps)]
            try:
                ttl = self._renew(url)
            except (OSError, ValueError) as err:
                e.stats["renew_failures"] += 1
                e.last_error = f"lease renewal via {url}: {type(err).__name__} {err}"
                log.info("HA %s: lease renewal via %s failed (%s); retrying", e.ha.node, url, err)
                self._i += 1
                pause = min(e.renew_every, 0.25)
                continue
            if self._stop.is_set():
                return
            if ttl <= 0:
                self.lost = f"etcd says lease {self.lease_id:x} has expired"
                self._loop.call_soon_threadsafe(e._kick.set)
                return
            e._renewed(sent)
            pause = e.renew_every


class Elector:
    """Campaigns for ``key`` on etcd for ``ha``'s node and drives its role (see the module
    docstring). Run :meth:`run` as a supervised task; cancel it to leave the pair."""

    def __init__(self, ha: HaState, endpoints: list[str], key: str, ttl: float,
                 info: dict[str, Any] | None = None, *,
                 status: Callable[[], dict[str, Any]] | None = None):
        if ha.role is Role.SINGLE:
            raise ValueError("an elector needs a node of a pair (HaState role starting)")
        self.ha = ha
        self.key = key
        self.kb = key.encode()
        self.status_key = f"{key}/nodes/{ha.node}".encode()
        self.ttl = float(ttl)
        self.grant_ttl = max(1, math.ceil(ttl))
        #: the active fences itself this long after sending its last successful renewal
        self.step_down_after = self.ttl * 0.5
        self.renew_every = self.ttl / 6
        self.timeout = max(0.2, self.ttl / 6)
        self.session_id = uuid.uuid4().hex[:12]
        self.info = {"node": ha.node, "host": socket.gethostname(), "pid": os.getpid(),
                     "session": self.session_id, **(info or {})}
        self.status_fn = status
        self.etcd = EtcdEndpoints(endpoints, self.timeout)
        self.lease_id: int | None = None
        self._my_leases: set[int] = set()
        #: monotonic time at which the last successful renewal (or the grant) was sent
        self.renewed_at: float | None = None
        #: token of the term this server holds or is being promoted into
        self.term: int | None = None
        self.became_active_at: float | None = None
        self._kick = asyncio.Event()
        self._key_gone: str | None = None
        self._promoting: asyncio.Future[None] | None = None
        self._published: tuple[Role, str | None] | None = None
        self.stats = {"sessions": 0, "campaigns": 0, "renewals": 0, "terms": 0,
                      "step_downs": 0, "endpoint_failures": 0, "renew_failures": 0}
        self.last_error = ""
        self.ha.listen(lambda _role: self._kick.set())

    # ----------------------------------------------------------------- public
    def snapshot(self) -> dict[str, Any]:
        age = None if self.renewed_at is None else _now() - self.renewed_at
        return {"endpoint": self.etcd.current, "lease": self.lease_id, "term": self.term,
                "renewal_age_s": age, "lease_ttl": self.ttl, "key": self.key,
                "last_error": self.last_error, **self.stats}

    async def run(self) -> None:
        """Sessions until cancelled; a lost session fences this server and starts another."""
        delay = min(1.0, self.ttl / 5)
        try:
            while True:
                try:
                    await self._session()
                except LeaseLost as e:
                    self.last_error = str(e)
                    log.warning("HA %s: %s", self.ha.node, e)
                except ETCD_ERRORS as e:
                    self.stats["endpoint_failures"] += 1
                    self.last_error = f"etcd {self.etcd.current}: {type(e).__name__} {e}"
                    log.warning("HA %s: etcd %s unreachable or failing (%s: %s); trying the "
                                "next endpoint", self.ha.node, self.etcd.current,
                                type(e).__name__, e)
                    await self.etcd.rotate()
                await asyncio.sleep(delay)
        finally:
            await self.etcd.close()

    # ----------------------------------------------------------------- one session
    async def _session(self) -> None:
        self.stats["sessions"] += 1
        client = await self.etcd.connect()
        sent = _now()
        lease = await client.lease(self.grant_ttl)
        self.lease_id = int(lease.id)
        self._my_leases.add(self.lease_id)
        self.renewed_at = sent
        self.ha.lease_deadline = sent + self.step_down_after
        self._key_gone = None
        log.info("HA %s: lease %x granted by %s (ttl %d s)", self.ha.node, self.lease_id,
                 self.etcd.current, self.grant_ttl)
        watch = await client.watch(self.kb)
        renewer = Renewer(self, self.lease_id, self.etcd.endpoints.index(self.etcd.current)).start()
        tasks = [asyncio.ensure_future(self._follow(watch)),
                 asyncio.ensure_future(self._watchdog())]
        reason = "session ended"
        next_status = 0.0
        try:
            while True:
                # cleared first: a kick during this iteration (a role change while an RPC was
                # awaited) makes the wait below return at once instead of being lost
                self._kick.clear()
                for t in tasks:
                    if t.done():
                        t.result()  # raises what ended it
                        raise LeaseLost("the etcd watch of the election key ended")
                if self._key_gone:
                    raise LeaseLost(self._key_gone)
                if renewer.lost:
                    raise LeaseLost(renewer.lost)
                if self.term is None:
                    won = await self._campaign(client)
                    if won is not None:
                        self.term = won
                        self._promoting = asyncio.ensure_future(self._promote(won))
                elif self._promoting is not None and self._promoting.done():
                    p, self._promoting = self._promoting, None
                    p.result()  # a failed promotion hook ends the session (fenced)
                if _now() >= next_status or self._published != (self.ha.role, self.ha.holder):
                    next_status = _now() + 1.0
                    await self._publish_status(client)
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._kick.wait(),
                                           timeout=self.ttl / 4 if self.term is None else 1.0)
        except BaseException as e:
            reason = str(e) or type(e).__name__
            if isinstance(e, asyncio.CancelledError):
                reason = "server shutting down"
            raise
        finally:
            renewer.stop()
            for t in tasks:
                t.cancel()
            # fence first (no await before the role changes), then tidy up with bounded waits:
            # the runtime's shutdown budget is a few seconds
            await self._end_term(reason)
            await self._revoke(client)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(watch.cancel(), timeout=self.timeout)

    async def _watchdog(self) -> None:
        """Fence this server ``lease_ttl / 2`` after the last successful renewal was sent,
        whatever the rest of the session is waiting for (an RPC to a partitioned etcd)."""
        while True:
            renewed = self.renewed_at if self.renewed_at is not None else _now()
            left = renewed + self.step_down_after - _now()
            if left <= 0:
                age = _now() - renewed
                reason = (f"no lease renewal succeeded for {age:.1f} s (limit "
                          f"{self.step_down_after:.1f} s = lease_ttl/2): stepped down before "
                          "the lease could expire")
                await self._end_term(reason)
                raise LeaseLost(reason)
            await asyncio.sleep(left)

    async def _promote(self, token: int) -> None:
        await self.ha.promote(token)
        self.became_active_at = _now()

    async def _end_term(self, reason: str) -> None:
        """Fence at once (the role changes before any await in :meth:`HaState.demote`)."""
        p, self._promoting = self._promoting, None
        if p is not None and not p.done():
            p.cancel()  # promotion hooks still running: it never becomes active
        if self.term is None and self.ha.role is not Role.ACTIVE:
            return
        self.term = None
        self.stats["step_downs"] += 1
        await self.ha.demote(Role.FENCED, reason)

    async def _revoke(self, client: aetcd.Client) -> None:
        """Give the lease back (best effort): the election key goes with it, so the other server
        takes over now instead of after the TTL."""
        lid, self.lease_id = self.lease_id, None
        if lid is None:
            return
        try:
            await asyncio.wait_for(client.revoke_lease(lid), timeout=self.timeout)
            self._my_leases.discard(lid)
        except (*ETCD_ERRORS, asyncio.CancelledError):
            pass  # it expires by itself within the TTL

    def _renewed(self, sent: float) -> None:
        """A renewal sent at ``sent`` succeeded (called from the renewer's thread: plain
        assignments of floats, read by the loop's watchdog and by :meth:`HaState.check`)."""
        self.renewed_at = max(self.renewed_at or sent, sent)
        self.ha.lease_deadline = self.renewed_at + self.step_down_after
        self.stats["renewals"] += 1

    async def _campaign(self, client: aetcd.Client) -> int | None:
        """One election transaction: the fencing token when this server won, else None (the
        holder is recorded)."""
        self.stats["campaigns"] += 1
        tr = client.transactions
        value = json.dumps({**self.info, "lease": self.lease_id}).encode()
        ok, resp = await client.transaction(
            compare=[tr.create(self.kb) == 0],
            success=[tr.put(self.kb, value, lease=self.lease_id)],
            failure=[tr.get(self.kb)])
        if ok:
            token = int(resp[0].response_put.header.revision)
            self.stats["terms"] += 1
            log.warning("HA %s: won the election (key %s), fencing token %d", self.ha.node,
                        self.key, token)
            return token
        kvs = resp[0] if resp else []
        if not kvs:  # deleted between the compare and the read: campaign again at once
            self._kick.set()
            return None
        raw, meta = kvs[0]
        info = self._decode(raw, meta)
        holder = info.get("node")
        if holder == self.ha.node and int(meta.lease) != self.lease_id:
            if int(meta.lease) in self._my_leases:
                # our own key from a session that ended (we were fenced, it is not expired
                # yet): we hold no term, so giving that lease back is safe and quicker
                log.info("HA %s: revoking the lease %x of an earlier session of this server",
                         self.ha.node, int(meta.lease))
                with contextlib.suppress(*ETCD_ERRORS):
                    await asyncio.wait_for(client.revoke_lease(int(meta.lease)), self.timeout)
                self._my_leases.discard(int(meta.lease))
                self._kick.set()
                return None
            log.error("HA %s: another process (host %s, pid %s) holds the lease as node %s: "
                      "are both servers started with --node %s?", self.ha.node,
                      info.get("host"), info.get("pid"), holder, holder)
        self._set_holder(info)
        if self.ha.role in (Role.STARTING, Role.FENCED):
            await self.ha.demote(Role.STANDBY, f"{holder} holds the lease")
        return None

    @staticmethod
    def _decode(raw: bytes, meta: Any) -> dict[str, Any]:
        try:
            info = json.loads(raw)
            if not isinstance(info, dict):
                raise ValueError("not an object")
        except ValueError:
            info = {"node": raw.decode("utf-8", "replace")[:64]}
        info["token"] = int(meta.create_revision)
        info["lease"] = int(meta.lease)
        return info

    def _set_holder(self, info: dict[str, Any] | None) -> None:
        if info is None:
            if self.ha.holder is not None:
                log.info("HA %s: nobody holds the lease", self.ha.node)
            self.ha.set_holder(None)
            return
        if info.get("node") != self.ha.holder:
            log.info("HA %s: lease holder is %s (token %s)", self.ha.node, info.get("node"),
                     info.get("token"))
        self.ha.set_holder(info.get("node"), info)

    async def _follow(self, watch: Any) -> None:
        """Learn from the watch who holds the key; wake the campaign when it goes."""
        async for ev in watch:
            if ev.kind == EventKind.DELETE:
                if self.term is not None:
                    self._key_gone = "the election key was deleted while this server held it"
                self._set_holder(None)
            else:
                info = self._decode(ev.kv.value, ev.kv)
                if self.term is not None and info["lease"] != self.lease_id:
                    self._key_gone = (f"the election key was overwritten by {info.get('node')} "
                                      "while this server held it")
                if info["lease"] != self.lease_id:
                    self._set_holder(info)
            self._kick.set()

    async def _publish_status(self, client: aetcd.Client) -> None:
        """This node's role under ``<key>/nodes/<node>`` on its lease, for ``scada ha status``."""
        shown = (self.ha.role, self.ha.holder)
        st: dict[str, Any] = {"node": self.ha.node, "role": self.ha.role.value,
                              "token": self.ha.token, "holder": self.ha.holder,
                              "time": time.time(), **{k: self.info.get(k) for k in
                                                      ("host", "pid", "opcua", "web",
                                                       "replication")}}
        if self.status_fn is not None:
            try:
                st.update(self.status_fn())
            except Exception as e:  # status is informative; never fail the election on it
                st["status_error"] = repr(e)
        await client.put(self.status_key, json.dumps(st, default=str).encode(),
                         lease=self.lease_id)
        self._published = shown  # what was sent, not the role now (it may have changed since)


async def read_pair(endpoints: list[str], key: str, rpc_timeout: float = 3.0) -> dict[str, Any]:
    """What etcd knows of a pair, for ``scada ha status``: the holder with its token and lease
    time left, and each node's last published status."""
    etcd = EtcdEndpoints(endpoints, rpc_timeout)
    errors = []
    try:
        for _ in endpoints:
            try:
                c = await etcd.connect()
                out: dict[str, Any] = {"endpoint": etcd.current, "key": key, "holder": None,
                                       "nodes": {}}
                got = await c.get(key.encode())
                if got is not None:
                    info = Elector._decode(got.value, got)
                    lt = await c.get_lease_info(info["lease"], keys=False)
                    info["ttl_left"] = int(lt.TTL)
                    info["granted_ttl"] = int(lt.grantedTTL)
                    out["holder"] = info
                prefix = f"{key}/nodes/".encode()
                for kv in await c.get_prefix(prefix):
                    try:
                        st = json.loads(kv.value)
                    except ValueError:
                        continue
                    out["nodes"][kv.key.decode()[len(prefix):]] = st
                return out
            except ETCD_ERRORS as e:
                errors.append(f"{etcd.current}: {type(e).__name__} {e}")
                await etcd.rotate()
    finally:
        await etcd.close()
    raise ConnectionError("no etcd endpoint answered: " + "; ".join(errors))
