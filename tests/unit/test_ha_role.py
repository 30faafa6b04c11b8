"""The role contract of a redundant pair: who may write, promotion and demotion hooks."""

import asyncio

import pytest

from scada.ha.role import Fenced, HaState, Role


def test_single_server_always_writes_with_token_zero():
    ha = HaState()
    assert ha.is_active() and not ha.pair
    assert ha.check() == 0


def test_promotion_runs_hooks_before_writing_and_demotion_fences_at_once():
    async def main():
        ha = HaState("a", Role.STARTING)
        seen = []
        with pytest.raises(Fenced, match="not active"):
            ha.check()

        async def hook(token):
            # hooks run before the role changes: nothing writes while they replay
            seen.append((token, ha.role))

        async def down(reason):
            with pytest.raises(Fenced):
                ha.check()
            seen.append(reason)

        roles = []
        ha.listen(roles.append)
        ha.on_promote(hook)
        ha.on_demote(down)
        await ha.promote(7)
        assert ha.check() == 7 and ha.holder == "a"
        await ha.demote(Role.FENCED, "lease lost")
        assert seen == [(7, Role.STARTING), "lease lost"]
        assert roles == [Role.ACTIVE, Role.FENCED]
        with pytest.raises(ValueError):
            await ha.demote(Role.ACTIVE, "no")
        with pytest.raises(ValueError):
            await ha.promote(0)

    asyncio.run(main())


def test_a_write_after_the_lease_deadline_is_refused_even_before_the_elector_runs():
    """A process frozen past its renewal deadline (VM paused, GC) wakes up still 'active': the
    write it wakes up with is refused by the check itself."""
    import time

    async def main():
        ha = HaState("a", Role.STARTING)
        await ha.promote(3)
        ha.lease_deadline = time.monotonic() + 60
        assert ha.check() == 3
        ha.lease_deadline = time.monotonic() - 0.001
        with pytest.raises(Fenced, match="not renewed in time"):
            ha.check()
        assert ha.role is Role.ACTIVE  # the elector demotes; the check only refuses

    asyncio.run(main())
