"""The schedules service: runs the dimming plan of the site on the injected clock.

Each tick (``schedules.tick``, and exactly at every step instant) it computes the wanted level
of every luminaire (calendars -> profile -> astronomical night, then active overrides, then the
optional photocell), turns it into the minimal command list (:mod:`.engine`), sends it through
:meth:`Runtime.write` rate-limited, and checks that the luminaires followed.

Server-owned tags per area (device ``_schedules/<area>``), writable from OPC UA through
:meth:`Runtime.register_writer`; the operator API (:mod:`scada.operations`) treats a write to
them as the ``schedule.override`` action (engineer) and audits it:

* ``override_level`` (% rw): writing starts an area override at that level for
  ``override_minutes`` (120 min when unset);
* ``override_minutes`` (min rw): writing 0 cancels the area's override, a positive value
  extends a running one to ``now + minutes``;
* ``override_active`` (bool), ``wanted_level`` (% mean over the area's scheduled luminaires),
  ``not_followed`` (luminaires failing verification), ``commands`` (commands sent).

Factory: :func:`create` (``scada.services`` entry point ``schedules``).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
from typing import Any

import numpy as np

from .. import astro
from .. import quality as Q
from ..runtime import Service, current_user
from ..tags import Batch, PointDef
from . import calendar
from .engine import Command, Commander, Fleet, Verifier
from .overrides import Override, OverrideStore, new_override
from .planner import Anchors, Plan, Scope, build_plan, day_number

log = logging.getLogger("scada.schedules")

AREA_POINTS = (
    PointDef(
        "override_level",
        "float",
        "%",
        "write: override the area at this level",
        "rw",
        history=True,
        eu_low=0.0,
        eu_high=100.0,
    ),
    PointDef(
        "override_minutes",
        "float",
        "min",
        "write: duration of the next override; 0 cancels the running one",
        "rw",
        history=True,
        eu_low=0.0,
        eu_high=10080.0,
    ),
    PointDef("override_active", "bool", "", "an override is running in this area"),
    PointDef("wanted_level", "float", "%", "mean level the schedule wants in this area"),
    PointDef("not_followed", "int", "", "luminaires that did not follow the last step"),
    PointDef("commands", "int", "", "commands sent by the schedule engine"),
)
_OFF = {p.name: k for k, p in enumerate(AREA_POINTS)}


class ScheduleService(Service):
    name = "schedules"

    def __init__(self, runtime: Any):
        self.runtime = runtime
        self.site = runtime.site
        self.cfg = runtime.site.config.schedules
        self.clock = runtime.clock
        info = self.site.config.site
        self.lat, self.lon, self.tz = info.latitude, info.longitude, info.timezone
        self.fleet = Fleet(self.site)
        self.fleet.bind(runtime.tagdb)
        self.scope = Scope(self.fleet.paths, self.fleet.areas, self.fleet.groups)
        self.commander = Commander(self.fleet)
        self.verifier = Verifier(self.fleet, self.cfg.tolerance)
        state = os.path.join(info.state_dir, "schedules")
        self.store = OverrideStore(state)
        self._wake = asyncio.Event()
        self._plan: Plan | None = None
        self._plan_day: int | None = None
        self._ov_masks: dict[str, np.ndarray] = {}
        self.commands_sent = 0
        self._area_first: dict[str, int] = {}
        self._area_idx: dict[str, np.ndarray] = {}
        areas = np.asarray(self.fleet.areas, dtype=object)
        for a in sorted(set(self.fleet.areas)):
            dev = f"_schedules/{a}"
            self._area_first[a] = runtime.tagdb.add_tags(dev, AREA_POINTS)
            self._area_idx[a] = np.flatnonzero(areas == a)
            runtime.register_writer(dev, self._writer(a))
        self._minutes: dict[str, float] = {}
        self._photocell_dark: bool | None = None
        self._alarmed_log = 0
        self._refused: set[tuple[str, int]] = set()
        # a luminaire that did not follow is re-verified each time it reports its level, so
        # its alarm clears when it obeys again, not at the next command (hours later)
        li = self.fleet.level_idx
        self._lum_rows = np.flatnonzero(li >= 0)
        order = np.argsort(li[self._lum_rows], kind="stable")
        self._lum_rows = self._lum_rows[order]
        self._lum_tags = li[self._lum_rows]
        self._recheck_rows: set[int] = set()
        self._recheck_task: asyncio.Task[None] | None = None
        self._sub = runtime.tagdb.subscribe(self._on_levels, "schedules:verify",
                                            only=self._lum_tags)

    # ----------------------------------------------------------------- planning
    def plan_for(self, t: float) -> tuple[Plan, int]:
        """The plan of the night containing ``t`` (cached per night)."""
        d = day_number(astro.night_of(t, self.tz))
        if self._plan is None or self._plan_day != d:
            anchors = Anchors.compute(self.lat, self.lon, self.tz, np.array([d]), self.cfg)
            self._plan = build_plan(self.cfg, anchors, self.scope)
            self._plan_day = d
        return self._plan, 0

    def _override_mask(self, o: Override) -> np.ndarray:
        m = self._ov_masks.get(o.id)
        if m is None:
            from ..sections.schedules import Rule

            rule = Rule(
                name="override", profile="-", areas=o.areas, devices=o.devices, groups=o.groups
            )
            m = calendar.scope_mask([rule], self.scope.areas, self.scope.paths, self.scope.groups)[
                :, 0
            ]
            self._ov_masks[o.id] = m
        return m

    def wanted(self, t: float) -> np.ndarray:
        """Level every luminaire should have at ``t`` (NaN: not scheduled)."""
        plan, row = self.plan_for(t)
        w = plan.levels(t, row)
        w = self._apply_photocell(t, plan, row, w)
        for o in sorted(self.store.active(t), key=lambda o: o.start):
            w = np.where(self._override_mask(o), o.level, w)
        return w

    def _apply_photocell(self, t: float, plan: Plan, row: int, w: np.ndarray) -> np.ndarray:
        """Light sensor as the switching source (hysteresis), astro clock when its quality is bad.

        The sensor may only move switching within ``max_shift`` of the astronomical dusk/dawn,
        so a dirty or covered cell cannot keep a street dark at midnight or lit at noon."""
        pc = self.cfg.photocell
        if pc is None:
            return w
        i = self.runtime.tagdb.find(pc.tag)
        if i is None or not Q.is_good(int(self.runtime.tagdb.quality[i])):
            self._photocell_dark = None
            return w  # fallback: astronomical clock
        lux = float(self.runtime.tagdb.value[i])
        if self._photocell_dark is None:
            self._photocell_dark = lux < pc.on_lux
        elif self._photocell_dark and lux > pc.off_lux:
            self._photocell_dark = False
        elif not self._photocell_dark and lux < pc.on_lux:
            self._photocell_dark = True
        dusk = float(plan.anchors.dusk[row])
        dawn = float(plan.anchors.dawn[row])
        near_dusk = abs(t - dusk) <= pc.max_shift
        near_dawn = abs(t - dawn) <= pc.max_shift
        if not (near_dusk or near_dawn):
            return w
        astro_night = dusk <= t < dawn
        if self._photocell_dark and not astro_night:
            # dark early (storm) or still dark after dawn: level of the night's edge
            edge = dusk + 1.0 if near_dusk else dawn - 1.0
            return np.where(np.isnan(w), w, plan.levels(edge, row))
        if not self._photocell_dark and astro_night:
            return np.where(np.isnan(w), w, 0.0)
        return w

    def next_change(self, t: float) -> float:
        """Next instant after ``t`` when the plan or an override changes something."""
        plan, row = self.plan_for(t)
        ts = plan.step_times(row)
        later = ts[ts > t]
        cands = [float(later[0])] if later.size else []
        cands += [o.expires for o in self.store.active(t)]
        return min(cands) if cands else float("inf")

    # ----------------------------------------------------------------- execution
    async def tick(self) -> list[Command]:
        """One evaluation: reload overrides, plan, send, verify, publish. Returns the commands."""
        now = self.clock.time()
        # a stat() per tick, a read of a few-hundred-byte local file only when it changed: kept
        # inline (not to_thread) so a stepped clock sees the override at the exact tick
        if self.store.reload_if_changed():
            self._ov_masks.clear()
        wanted = self.wanted(now)
        plan, row = self.plan_for(now)
        cmds = self.commander.plan(wanted, self._fades(plan, row))
        await self._send(cmds)
        await self._verify(self.clock.time())
        self._publish(now, wanted)
        return cmds

    async def _send(self, cmds: list[Command]) -> None:
        plan, row = self.plan_for(self.clock.time())
        fades = self._fades(plan, row)
        burst = max(1, int(self.cfg.rate_limit))
        for k, cmd in enumerate(cmds):
            if k and k % burst == 0:
                await self.clock.sleep(1.0)
            status = await self.runtime.write(cmd.tag, cmd.value)
            if not Q.is_good(status):
                # logged once per tag and status (an out-of-service cabinet refuses every tick)
                key = (cmd.tag, int(status))
                if key not in self._refused:
                    self._refused.add(key)
                    log.warning(
                        "schedule command %s = %r refused: %s; retried every tick until "
                        "accepted (check the device's connection or out-of-service state)",
                        cmd.tag,
                        cmd.value,
                        Q.name(status),
                    )
                continue
            if self._refused:
                self._refused = {k for k in self._refused if k[0] != cmd.tag}
            self.commands_sent += 1
            self.commander.mark_sent(cmd)
            level = cmd.level
            if cmd.kind == "contactor" and not cmd.value:
                level = 0.0
            if np.isfinite(level) and cmd.covers.size:
                fade = float(np.max(fades[cmd.covers])) if fades.size else 0.0
                self.verifier.expect(
                    cmd.covers, level, self.clock.time() + fade + self.cfg.verify_after
                )

    def _fades(self, plan: Plan, row: int) -> np.ndarray:
        fade_of = np.array([self.cfg.profiles[n].fade for n in plan.profile_names] + [0.0])
        return fade_of[plan.profile[:, row]][plan.klass]

    def _on_levels(self, changes: Any) -> None:
        """Tag database subscriber (luminaire levels): queue a re-verification of the failing
        luminaires that just reported (cheap: nothing to do while none is failing)."""
        if not self.verifier.failing.any():
            return
        pos = np.minimum(np.searchsorted(self._lum_tags, changes.indices),
                         self._lum_tags.size - 1)
        rows = self._lum_rows[pos[self._lum_tags[pos] == changes.indices]]
        rows = rows[self.verifier.failing[rows]]
        if rows.size == 0:
            return
        self._recheck_rows.update(rows.tolist())
        if self._recheck_task is None or self._recheck_task.done():
            self._recheck_task = asyncio.get_running_loop().create_task(
                self._recheck(), name="schedules:recheck")

    async def _recheck(self) -> None:
        while self._recheck_rows:
            rows = np.fromiter(self._recheck_rows, dtype=np.int64)
            self._recheck_rows.clear()
            ok = self.verifier.recheck(self.runtime.tagdb, rows)
            await self._report(np.zeros(0, dtype=np.int64), ok)

    async def _verify(self, now: float) -> None:
        bad, ok = self.verifier.check(self.runtime.tagdb, now)
        await self._report(bad, ok)

    async def _report(self, bad: np.ndarray, ok: np.ndarray) -> None:
        """Raise "dimming not followed" for ``bad``, clear it for ``ok``."""
        if bad.size == 0 and ok.size == 0:
            return
        alarms = self.runtime.services.get("alarms")
        setc = getattr(alarms, "set_condition", None)
        for i, active in [(int(i), True) for i in bad] + [(int(i), False) for i in ok]:
            path = self.fleet.paths[i]
            msg = (
                (
                    f"{path}: commanded {self.verifier.expected[i]:g} %, reports "
                    f"{self.runtime.tagdb.value[self.fleet.level_idx[i]]:g} % after the step; "
                    f"check the driver/ballast or its DALI address"
                )
                if active
                else f"{path}: follows the schedule again"
            )
            if setc is not None:
                r = setc(
                    path,
                    "dimming_not_followed",
                    active,
                    message=msg,
                    category="lighting",
                    priority=3,
                )
                if inspect.isawaitable(r):
                    await r
            if active:
                if self._alarmed_log < 20:
                    log.warning("dimming not followed: %s", msg)
                self._alarmed_log += 1

    def _publish(self, now: float, w: np.ndarray) -> None:
        active = self.store.active(now)
        idx: list[int] = []
        vals: list[float] = []
        for a, first in self._area_first.items():
            members = self._area_idx[a]
            ov = any(bool(self._override_mask(o)[members].any()) for o in active)
            wa = w[members]
            mean = float(np.nanmean(wa)) if np.isfinite(wa).any() else float("nan")
            idx += [
                first + _OFF["override_active"],
                first + _OFF["wanted_level"],
                first + _OFF["not_followed"],
                first + _OFF["commands"],
            ]
            vals += [
                float(ov),
                mean,
                float(self.verifier.failing[members].sum()),
                float(self.commands_sent),
            ]
            if a in self._minutes:
                idx.append(first + _OFF["override_minutes"])
                vals.append(self._minutes[a])
        self.runtime.tagdb.apply(Batch.of(idx, vals, Q.Good, now))

    async def run(self) -> None:
        while True:
            await self.tick()
            now = self.clock.time()
            nxt = min(self.next_change(now), now + self.cfg.tick)
            sleeper = asyncio.ensure_future(self.clock.sleep_until(nxt))
            waker = asyncio.ensure_future(self._wake.wait())
            try:
                await asyncio.wait({sleeper, waker}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                sleeper.cancel()
                waker.cancel()
            self._wake.clear()

    # ----------------------------------------------------------------- overrides (operator API)
    def find_override(self, override_id: str) -> Override | None:
        """An override by id or unique id prefix (active, expired or cancelled)."""
        self.store.reload_if_changed()
        hits = [o for o in self.store.overrides if o.id == override_id or o.id.startswith(override_id)]
        return hits[0] if len(hits) == 1 else None

    def overrides_changed(self) -> None:
        """The store changed (an operator action): re-plan now, not at the next tick."""
        self._ov_masks.clear()
        self._wake.set()

    async def aclose(self) -> None:
        self.runtime.tagdb.unsubscribe(self._sub)
        if self._recheck_task is not None:
            self._recheck_task.cancel()
            await asyncio.gather(self._recheck_task, return_exceptions=True)

    # ----------------------------------------------------------------- overrides from OPC UA
    def _writer(self, area: str):
        async def handler(i: int, value: Any) -> int:
            first = self._area_first[area]
            point = AREA_POINTS[i - first].name
            now = self.clock.time()
            # the writer's identity comes from Runtime.write(user=...) (the OPC UA session)
            user = current_user() or "opcua"
            if point == "override_level":
                minutes = self._minutes.get(area) or 120.0
                o = new_override(
                    level=float(value),
                    minutes=minutes,
                    now=now,
                    user=user,
                    reason="OPC UA write of override_level",
                    areas=[area],
                    source="opcua",
                )
                await asyncio.to_thread(self.store.add, o)
            elif point == "override_minutes":
                self._minutes[area] = float(value)
                for o in self.store.active(now):
                    if o.areas == [area]:
                        if float(value) == 0:
                            await asyncio.to_thread(self.store.update, o.id, cancelled=now)
                        else:
                            await asyncio.to_thread(
                                self.store.update, o.id, expires=now + float(value) * 60
                            )
            else:
                return Q.BadNotWritable
            self.runtime.tagdb.apply(Batch.of([i], [float(value)], Q.Good, now))
            self._ov_masks.clear()
            return Q.Good

        return handler


def create(runtime: Any) -> ScheduleService | None:
    """Return the schedules service, or None when the site has no schedules (or disables them)."""
    cfg = runtime.site.config.schedules
    if not cfg.enabled or not cfg.profiles:
        return None
    return ScheduleService(runtime)
