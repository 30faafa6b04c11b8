"""Accounts and password checks (who you are); what each role may do is the role matrix of
:mod:`scada.operations.roles`, which every front end goes through.

Roles are ordered ``viewer < operator < engineer < admin``. asyncua's default user manager
gives admin rights to anyone calling themselves ``admin``; this module replaces it.

Passwords are never stored: a site file holds ``scrypt$N$r$p$salt$hash`` lines produced by
:func:`hash_password` (``scada user add NAME --role R``), checked with a constant-time compare.
:class:`UserStore` locks an account after ``max_failures`` consecutive failed logins for
``lockout_s`` seconds of the injected clock, so guessing is slow even on a fast network.
Because scrypt is deliberately slow (~30-50 ms) and login runs on the event loop (asyncua's
ActivateSession handler is synchronous), a successful check is remembered as a keyed digest
held only in memory; repeated logins of the same user with the same password then cost a
single HMAC.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

from .clock import Clock, RealClock

Role = Literal["viewer", "agent", "operator", "engineer", "admin"]
#: ordered: each role may do what the roles before it may (agent: a field agent's tablet)
ROLES: tuple[Role, ...] = ("viewer", "agent", "operator", "engineer", "admin")
_RANK = {r: i for i, r in enumerate(ROLES)}

def check_role(role: str) -> Role:
    if role not in _RANK:
        raise ValueError(f"unknown role {role!r}; expected one of {', '.join(ROLES)}")
    return role  # type: ignore[return-value]


# ----------------------------------------------------------------------------- hashing
#: scrypt cost: N=2**14, r=8, p=1 is the interactive-login setting of the scrypt paper
#: (16 MiB of memory, tens of ms); stored in the hash line so it can be raised later.
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1


def _b64(b: bytes) -> str:
    return base64.b64encode(b).decode("ascii")


def hash_password(password: str, *, n: int = SCRYPT_N, r: int = SCRYPT_R, p: int = SCRYPT_P,
                  salt: bytes | None = None) -> str:
    """Salted scrypt hash line ``scrypt$N$r$p$salt_b64$hash_b64`` (what a site file stores)."""
    if not isinstance(password, str) or not password:
        raise ValueError("password must be a non-empty string")
    salt = salt if salt is not None else os.urandom(16)
    dk = hashlib.scrypt(password.encode("utf-8"), salt=salt, n=n, r=r, p=p,
                        maxmem=max(64 * 1024 * 1024, 256 * n * r), dklen=32)
    return f"scrypt${n}${r}${p}${_b64(salt)}${_b64(dk)}"


def _parse(hash_line: str) -> tuple[str, tuple[Any, ...], bytes, bytes]:
    parts = hash_line.split("$")
    try:
        if parts[0] == "scrypt" and len(parts) == 6:
            n, r, p = int(parts[1]), int(parts[2]), int(parts[3])
            return "scrypt", (n, r, p), base64.b64decode(parts[4]), base64.b64decode(parts[5])
        if parts[0] == "pbkdf2_sha256" and len(parts) == 4:
            return "pbkdf2_sha256", (int(parts[1]),), base64.b64decode(parts[2]), base64.b64decode(parts[3])
    except ValueError:
        pass
    raise ValueError(
        "password hash must look like 'scrypt$N$r$p$salt$hash' or 'pbkdf2_sha256$iterations$salt$hash' "
        "(generate one with `scada user add NAME --role ROLE`)"
    )


def validate_hash(hash_line: str) -> str:
    """Raise ``ValueError`` unless ``hash_line`` is a hash this module can verify."""
    _parse(hash_line)
    return hash_line


def verify(password: str, hash_line: str) -> bool:
    """Constant-time check of ``password`` against a stored hash line (False if malformed)."""
    if not isinstance(password, str):
        return False
    try:
        scheme, params, salt, expected = _parse(hash_line)
    except ValueError:
        return False
    pw = password.encode("utf-8")
    if scheme == "scrypt":
        n, r, p = params
        got = hashlib.scrypt(pw, salt=salt, n=n, r=r, p=p, maxmem=max(64 * 1024 * 1024, 256 * n * r),
                             dklen=len(expected))
    else:
        got = hashlib.pbkdf2_hmac("sha256", pw, salt, params[0], dklen=len(expected))
    return hmac.compare_digest(got, expected)


def generate_password(nbytes: int = 12) -> str:
    """A random password for generated accounts (URL-safe, ~16 characters)."""
    return secrets.token_urlsafe(nbytes)


# ----------------------------------------------------------------------------- store
@dataclass(frozen=True, slots=True)
class User:
    name: str
    role: Role


@dataclass(frozen=True, slots=True)
class AuthResult:
    """Outcome of a login: ``user`` when accepted, else ``reason`` for the audit log."""

    user: User | None
    reason: str  # "ok", "bad_password", "unknown_user", "locked", "throttled"

    @property
    def ok(self) -> bool:
        return self.user is not None


class UserStore:
    """Accounts with salted hashes, and lockout after repeated failures.

    Failures are counted per user name (including names that do not exist, so probing for
    names gets locked too); ``max_failures`` consecutive failures lock the name for
    ``lockout_s`` seconds of ``clock`` time. A success resets the count. The failure table is
    bounded (``max_tracked`` names) so a flood of random names cannot grow memory.
    """

    def __init__(self, users: Iterable[Any] = (), *, clock: Clock | None = None,
                 max_failures: int = 5, lockout_s: float = 300.0, max_tracked: int = 10_000,
                 max_checks_per_s: float = 20.0):
        self.clock = clock or RealClock()
        self.max_failures = max_failures
        self.lockout_s = lockout_s
        self.max_tracked = max_tracked
        self._users: dict[str, tuple[Role, str]] = {}
        self._failures: dict[str, tuple[int, float]] = {}  # name -> (count, locked_until)
        self._cache_key = os.urandom(32)
        self._verified: dict[str, bytes] = {}
        self._dummy = hash_password(secrets.token_hex(8))
        # token bucket of full hash checks: failed logins under rotating names would otherwise
        # cost ~40 ms of event loop each (the lockout is per name)
        self.max_checks_per_s = max_checks_per_s
        self._tokens = max_checks_per_s
        self._tokens_t = self.clock.time()
        for u in users:
            self.add(u.name, u.role, u.password_hash)

    def add(self, name: str, role: str, password_hash: str) -> None:
        """Add or replace an account (``password_hash`` from :func:`hash_password`)."""
        self._users[name] = (check_role(role), validate_hash(password_hash))
        self._verified.pop(name, None)

    def __contains__(self, name: object) -> bool:
        return name in self._users

    def __len__(self) -> int:
        return len(self._users)

    def role_of(self, name: str) -> Role | None:
        entry = self._users.get(name)
        return entry[0] if entry else None

    def locked(self, name: str) -> bool:
        return self._failures.get(name, (0, 0.0))[1] > self.clock.time()

    def _digest(self, password: str) -> bytes:
        return hmac.new(self._cache_key, password.encode("utf-8"), hashlib.sha256).digest()

    def authenticate(self, name: str | None, password: str | None) -> AuthResult:
        """Check a login. Never raises for bad input; the reason says what happened."""
        name = name or ""
        if self.locked(name):
            return AuthResult(None, "locked")
        entry = self._users.get(name)
        pw = password if isinstance(password, str) else ""
        cached = self._verified.get(name) if entry is not None else None
        if cached is not None and hmac.compare_digest(cached, self._digest(pw)):
            self._failures.pop(name, None)
            return AuthResult(User(name, entry[0]), "ok")
        if not self._take_token():
            return AuthResult(None, "throttled")
        if entry is None:
            verify(pw, self._dummy)  # same cost as a real check: no user-name oracle by timing
            self._fail(name)
            return AuthResult(None, "unknown_user")
        role, line = entry
        ok = verify(pw, line)
        if ok:
            self._verified[name] = self._digest(pw)
        if not ok:
            self._fail(name)
            return AuthResult(None, "locked" if self.locked(name) else "bad_password")
        self._failures.pop(name, None)
        return AuthResult(User(name, role), "ok")

    def _take_token(self) -> bool:
        now = self.clock.time()
        self._tokens = min(self.max_checks_per_s, self._tokens + (now - self._tokens_t) * self.max_checks_per_s)
        self._tokens_t = now
        if self._tokens < 1.0:
            return False
        self._tokens -= 1.0
        return True

    def _fail(self, name: str) -> None:
        count, until = self._failures.get(name, (0, 0.0))
        now = self.clock.time()
        if until and until <= now:
            count = 0  # a lock that expired starts a fresh count
        count += 1
        until = now + self.lockout_s if count >= self.max_failures else 0.0
        if name not in self._failures and len(self._failures) >= self.max_tracked:
            # forget the oldest unlocked entry (dicts keep insertion order)
            for k, (_c, u) in self._failures.items():
                if u <= now:
                    del self._failures[k]
                    break
            else:
                return
        self._failures[name] = (count, until)


def hash_line(name: str, role: str, password: str) -> dict[str, str]:
    """The site-file entry (``users:`` list item) for an account."""
    return {"name": name, "role": check_role(role), "password_hash": hash_password(password)}
