"""Sessions, CSRF tokens and login rate limits of the web console.

* A session is a random token (``secrets.token_urlsafe(32)``) in an HttpOnly, SameSite=Strict
  cookie (Secure when the console speaks HTTPS) mapped, in memory, to the caller's
  :class:`~scada.operations.Identity` and a CSRF token of its own. The store is bounded: beyond
  ``max_sessions`` the least recently used session is closed. A session unused for
  ``idle_timeout`` seconds of the server's clock (:mod:`scada.clock`, injectable) is closed on
  its next use.
* Every state-changing request carries the session's CSRF token (header ``X-CSRF-Token`` or
  form field ``csrf``), compared in constant time.
* Logins are limited per client address and per account name: a sliding window of attempts
  on the same clock; beyond it the answer is ``429`` until the oldest attempt leaves the
  window. The account lockout of the operator API (shared with OPC UA) still applies.
"""

from __future__ import annotations

import hmac
import secrets
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any

from ..operations import Identity

COOKIE = "scada_session"


@dataclass
class Session:
    token: str
    csrf: str
    identity: Identity
    created: float
    last_used: float
    address: str
    #: live-update clients of this session (closed with it)
    streams: set[Any] = field(default_factory=set)


class SessionStore:
    """In-memory sessions, bounded in number, with an idle timeout on an injectable clock."""

    def __init__(self, clock: Any, idle_timeout: float, max_sessions: int):
        self.clock = clock
        self.idle_timeout = idle_timeout
        self.max_sessions = max_sessions
        self._by_token: OrderedDict[str, Session] = OrderedDict()
        self.stats = {"created": 0, "expired": 0, "evicted": 0, "closed": 0}

    def __len__(self) -> int:
        return len(self._by_token)

    def create(self, identity: Identity, address: str) -> Session:
        now = self.clock.time()
        s = Session(secrets.token_urlsafe(32), secrets.token_urlsafe(32), identity, now, now, address)
        self._by_token[s.token] = s
        self.stats["created"] += 1
        while len(self._by_token) > self.max_sessions:
            _, old = self._by_token.popitem(last=False)
            self.stats["evicted"] += 1
            _close_streams(old)
        return s

    def get(self, token: str | None, *, touch: bool = True) -> tuple[Session | None, str]:
        """(session, "") or (None, why): ``missing``, ``unknown`` or ``expired``."""
        if not token:
            return None, "missing"
        s = self._by_token.get(token)
        if s is None:
            return None, "unknown"
        now = self.clock.time()
        if now - s.last_used > self.idle_timeout:
            self._by_token.pop(token, None)
            self.stats["expired"] += 1
            _close_streams(s)
            return None, "expired"
        if touch:
            s.last_used = now
            self._by_token.move_to_end(token)
        return s, ""

    def close(self, token: str) -> Session | None:
        s = self._by_token.pop(token, None)
        if s is not None:
            self.stats["closed"] += 1
            _close_streams(s)
        return s

    def close_all(self) -> None:
        for s in list(self._by_token.values()):
            _close_streams(s)
        self._by_token.clear()


def _close_streams(s: Session) -> None:
    for c in list(s.streams):
        c.close("session closed")
    s.streams.clear()


def csrf_ok(session: Session, given: str | None) -> bool:
    return bool(given) and hmac.compare_digest(session.csrf.encode(), str(given).encode())


class RateLimiter:
    """Sliding-window attempt counter per key (client address or account name), bounded in
    keys: the oldest keys are forgotten first when ``max_keys`` is reached."""

    def __init__(self, clock: Any, limit: int, window: float, max_keys: int = 10_000):
        self.clock = clock
        self.limit = limit
        self.window = window
        self.max_keys = max_keys
        self._hits: OrderedDict[str, deque[float]] = OrderedDict()

    def hit(self, key: str) -> float:
        """Count one attempt; 0.0 when allowed, else the seconds until the next is."""
        now = self.clock.time()
        q = self._hits.get(key)
        if q is None:
            q = self._hits[key] = deque()
            while len(self._hits) > self.max_keys:
                self._hits.popitem(last=False)
        self._hits.move_to_end(key)
        while q and now - q[0] >= self.window:
            q.popleft()
        if len(q) >= self.limit:
            return max(0.001, self.window - (now - q[0]))
        q.append(now)
        return 0.0
