"""Password hashing and lockout (scada.users): pure, no sockets. The role matrix is tested in
tests/unit/test_operations.py."""

from __future__ import annotations

import pytest

from scada.clock import SteppedClock
from scada.sections.users import UserConfig
from scada.users import (
    UserStore,
    hash_password,
    verify,
)

FAST = {"n": 2**10}  # cheap scrypt cost for tests; the default is 2**14

def test_hash_is_salted_and_verifies():
    a = hash_password("s3cret", **FAST)
    b = hash_password("s3cret", **FAST)
    assert a != b and "s3cret" not in a
    assert a.startswith("scrypt$1024$8$1$")
    assert verify("s3cret", a) and verify("s3cret", b)
    assert not verify("s3cret ", a)
    assert not verify("", a)
    assert not verify("s3cret", "plain-text")


def test_default_cost_is_interactive_scrypt():
    line = hash_password("x")
    assert line.split("$")[1] == str(2**14)


def test_site_config_rejects_plain_text_password():
    with pytest.raises(ValueError, match="scada user add"):
        UserConfig(name="op", role="operator", password_hash="hunter2")
    UserConfig(name="op", role="operator", password_hash=hash_password("hunter2", **FAST))


def _store(clock):
    users = [UserConfig(name="op", role="operator", password_hash=hash_password("pw-op", **FAST)),
             UserConfig(name="admin", role="admin", password_hash=hash_password("pw-admin", **FAST))]
    return UserStore(users, clock=clock, max_failures=5, lockout_s=300)


def test_authenticate_roles_and_wrong_password():
    s = _store(SteppedClock())
    r = s.authenticate("op", "pw-op")
    assert r.ok and r.user.role == "operator"
    assert s.authenticate("op", "pw-op").ok  # cached path
    bad = s.authenticate("admin", "admin")
    assert not bad.ok and bad.reason == "bad_password"
    assert s.authenticate("nobody", "x").reason == "unknown_user"
    assert s.authenticate(None, None).reason == "unknown_user"


async def test_five_failures_lock_for_a_while():
    clock = SteppedClock()
    s = _store(clock)
    for _ in range(4):
        assert s.authenticate("op", "wrong").reason == "bad_password"
    assert s.authenticate("op", "wrong").reason == "locked"
    # even the right password is refused while locked
    assert s.authenticate("op", "pw-op").reason == "locked"
    await clock.advance(299)
    assert s.authenticate("op", "pw-op").reason == "locked"
    await clock.advance(2)
    assert s.authenticate("op", "pw-op").ok
    # success resets the count
    for _ in range(4):
        s.authenticate("op", "wrong")
    assert s.authenticate("op", "pw-op").ok


def test_failure_table_is_bounded():
    s = UserStore([], clock=SteppedClock(), max_tracked=10)
    s._dummy = hash_password("x", **FAST)
    for i in range(50):
        s.authenticate(f"probe{i}", "x")
    assert len(s._failures) <= 10


async def test_full_checks_are_rate_limited_cached_logins_are_not():
    clock = SteppedClock()
    s = _store(clock)
    s.max_checks_per_s = s._tokens = 3.0
    assert s.authenticate("op", "pw-op").ok  # 1 full check, then cached
    for k in range(2):
        assert s.authenticate(f"probe{k}", "x").reason == "unknown_user"
    assert s.authenticate("probe9", "x").reason == "throttled"
    assert s.authenticate("admin", "pw-admin").reason == "throttled"  # not cached yet
    assert s.authenticate("op", "pw-op").ok  # cached: no full check needed
    await clock.advance(1.0)
    assert s.authenticate("admin", "pw-admin").ok
