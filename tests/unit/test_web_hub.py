"""The live-update hub and the console's session store and rate limiter, without sockets:
area filtering, bounded queues (a slow client is dropped), alarm floods, tag watches,
idle timeout and bounded sessions on a stepped clock."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from scada.clock import SteppedClock
from scada.operations import Identity
from scada.web.hub import FLOOD, Hub
from scada.web.security import RateLimiter, SessionStore, csrf_ok


class _Db:
    def __init__(self, n: int = 10):
        self.value = np.zeros(n)
        self.subs: list = []

    def subscribe(self, fn, name=""):
        self.subs.append(fn)
        return fn

    def unsubscribe(self, h):
        self.subs.remove(h)

    def value_of(self, i):
        return float(self.value[i])

    def path(self, i):
        return f"centre/dev/t{i}"


def _ev(area: str, prio: int = 1):
    d = {"alarm_id": f"{area}/d/x", "area": area, "priority": prio, "value": None, "ts": 1.0,
         "shelve_until": None}
    return SimpleNamespace(area=area, as_dict=lambda: dict(d))


def _hub(queue: int = 10) -> tuple[Hub, _Db]:
    db = _Db()
    rt = SimpleNamespace(tagdb=db, services={})
    h = Hub(rt, max_clients=3, queue_size=queue)
    h.start()
    return h, db


ALL = Identity("a", "operator", None)
NORTH = Identity("n", "operator", frozenset({"north"}))


def test_alarm_events_go_only_to_clients_that_see_the_area():
    h, _ = _hub()
    a, n = h.connect(ALL), h.connect(NORTH)
    h._on_alarms([_ev("centre"), _ev("north")])
    assert a.queue.qsize() == 2 and n.queue.qsize() == 1
    assert "north/d/x" in n.queue.get_nowait()
    assert h.publish("device", {"x": 1}, "centre") == 1
    assert h.publish("device", {"x": 1}, None) == 2


def test_a_slow_client_is_dropped_not_grown():
    h, _ = _hub(queue=10)
    slow, fast = h.connect(ALL), h.connect(ALL)
    for _ in range(10):
        h.publish("x", {}, None)
        fast.queue.get_nowait()
    assert not slow.closed
    h.publish("x", {}, None)
    assert slow.closed and slow.reason == "overflow" and slow not in h.clients
    assert slow.queue.qsize() <= 10 and h.stats["dropped_clients"] == 1
    assert fast in h.clients


async def test_closed_client_reader_ends():
    h, _ = _hub()
    c = h.connect(ALL)
    h.publish("x", {"k": 1}, None)
    c.close("bye")
    assert (await c.next(1.0)).startswith("event: x")
    with pytest.raises(EOFError):
        await c.next(1.0)


def test_a_flood_becomes_one_reload_event():
    h, _ = _hub(queue=10)
    c = h.connect(NORTH)
    h._on_alarms([_ev("north") for _ in range(FLOOD + 1)])
    assert c.queue.qsize() == 1 and c.queue.get_nowait().startswith("event: alarms.reload")
    h._on_alarms([_ev("centre") for _ in range(FLOOD + 1)])
    assert c.queue.qsize() == 0


def test_max_clients_and_tag_watches():
    h, db = _hub()
    c1, c2, c3 = h.connect(ALL), h.connect(ALL), h.connect(ALL)
    assert h.connect(ALL) is None and h.stats["refused_clients"] == 1
    h.watch(c1, [1, 2])
    h.watch(c2, [2])
    ch = SimpleNamespace(indices=np.array([2, 5]), quality=np.array([0, 0], dtype=np.uint32),
                         source_ts=np.array([1.0, 1.0]), server_ts=1.0, strings=None)
    db.subs[0](ch)
    assert c1.queue.qsize() == 1 and c2.queue.qsize() == 1 and c3.queue.qsize() == 0
    c1.close()
    c2.close()
    assert h._refs == {} and not h._mask.any()


def test_sessions_idle_timeout_bound_and_csrf():
    clock = SteppedClock()
    s = SessionStore(clock, idle_timeout=60, max_sessions=2)
    a = s.create(ALL, "x")
    assert s.get(a.token)[0] is a
    clock._now += 61
    assert s.get(a.token) == (None, "expired")
    b, c, d = s.create(ALL, "x"), s.create(ALL, "x"), s.create(ALL, "x")
    assert len(s) == 2 and s.get(b.token) == (None, "unknown") and s.stats["evicted"] == 1
    assert csrf_ok(c, c.csrf) and not csrf_ok(c, d.csrf) and not csrf_ok(c, None)
    assert s.get(None) == (None, "missing")


def test_rate_limiter_sliding_window():
    clock = SteppedClock()
    r = RateLimiter(clock, limit=2, window=60)
    assert r.hit("k") == 0 and r.hit("k") == 0
    assert r.hit("k") == pytest.approx(60)
    assert r.hit("other") == 0
    clock._now += 60
    assert r.hit("k") == 0
