"""Execution: wanted levels -> as few protocol commands as possible -> verified.

Command minimisation follows what each protocol offers:

* **Modbus cabinet** (points ``group_level`` and ``contactor_cmd``): when every scheduled
  luminaire behind the cabinet wants the same level, one write of the cabinet-wide
  ``group_level`` register; level 0 for all switches the contactor off instead (and dusk
  switches it on first). A cabinet whose luminaires want different levels gets individual
  ``level_cmd`` writes (the register map has no sub-group register).
* **DALI gateway** (``broadcast_level``, ``group00_level`` .. ``group15_level``): broadcast when
  the gateway's luminaires agree (IEC 62386-102 broadcast addressing), else one DALI group
  command per group whose members agree (group address, IEC 62386-102 9.6), else individual
  ``level_cmd`` (short address) for the rest.
* Anything else with ``level_cmd``: individual writes.

Commands are planned from the *difference* between the wanted levels and the levels last
commanded (see :class:`Commander`), so a steady night sends nothing and an override of one
street sends a few commands, not the whole city's. Commands go through :meth:`scada.runtime.Runtime.write` at most
``rate_limit`` per second of the injected clock.

Verification: every luminaire covered by a command must report ``level`` within ``tolerance``
of the command by ``fade + verify_after`` seconds later (about N polls); the check is one
vectorised comparison over the tag database arrays. A luminaire that does not follow raises
"dimming_not_followed" through the alarm service's ``set_condition`` (when it has one), and is
counted in the ``_schedules/<area>/not_followed`` tag either way.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .. import quality as Q
from ..site import DeviceInstance, Site

log = logging.getLogger("scada.schedules")


@dataclass
class Command:
    """One write: ``tag`` path, ``value``, and the luminaire indices it moves (for verification)."""

    tag: str
    value: Any
    kind: str  # contactor | fade | cabinet | broadcast | group | single
    covers: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int64))
    level: float = float("nan")


class Fleet:
    """The scheduled luminaires of a site and how each can be reached (arrays, one row each)."""

    def __init__(self, site: Site):
        lums: list[DeviceInstance] = []
        for d in site.all_devices():
            names = {p.name for p in d.profile.points}
            if d.kind == "luminaire" and "level_cmd" in names and d.enabled:
                lums.append(d)
        self.devices = lums
        self.paths = [d.path for d in lums]
        self.areas = [d.area for d in lums]
        self.groups = [d.attrs.get("group", "") for d in lums]
        self.nominal_w = np.array([float(d.attrs.get("nominal_w", 0) or 0) for d in lums])
        self.legacy_w = np.array([float(d.attrs.get("legacy_w", 0) or 0) for d in lums])
        self.parent_paths = [d.parent or "" for d in lums]
        parents: dict[str, DeviceInstance] = {}
        for d in site.all_devices():
            if d.children:
                parents[d.path] = d
        self.parents = parents
        # sort order by parent for reduceat
        self.parent_list = sorted({p for p in self.parent_paths})
        pidx = {p: i for i, p in enumerate(self.parent_list)}
        self.parent_of = np.array([pidx[p] for p in self.parent_paths], dtype=np.int64)
        self.order = np.argsort(self.parent_of, kind="stable")
        sorted_p = self.parent_of[self.order]
        self.starts = (
            np.flatnonzero(np.r_[True, sorted_p[1:] != sorted_p[:-1]])
            if len(lums)
            else np.empty(0, np.int64)
        )
        self.parent_kind: list[str] = []
        self.parent_fade: list[bool] = []  # cabinet has a group_fade_s register
        for p in self.parent_list:
            dev = parents.get(p)
            names = {x.name for x in dev.profile.points} if dev is not None else set()
            self.parent_fade.append("group_fade_s" in names)
            if "group_level" in names:
                self.parent_kind.append(
                    "cabinet+contactor" if "contactor_cmd" in names else "cabinet"
                )
            elif "broadcast_level" in names:
                self.parent_kind.append("dali")
            else:
                self.parent_kind.append("none")

    def __len__(self) -> int:
        return len(self.paths)

    def bind(self, tagdb: Any) -> None:
        """Tag indices of each luminaire's ``level`` (reported) and ``level_cmd``."""

        def idx(point: str) -> np.ndarray:
            found = (tagdb.find(f"{p}/{point}") for p in self.paths)
            return np.array([-1 if i is None else i for i in found], dtype=np.int64)

        self.level_idx = idx("level")
        self.failure_idx = [idx("lamp_failure"), idx("driver_failure")]


def _uniform(vals: np.ndarray) -> tuple[bool, float]:
    """(all scheduled members agree, the level) ignoring NaN (unscheduled) members."""
    v = vals[~np.isnan(vals)]
    if v.size == 0:
        return False, float("nan")
    lo, hi = float(v.min()), float(v.max())
    return (hi - lo) < 1e-9, lo


def _mode(vals: np.ndarray) -> float:
    """Most common level among ``vals`` (no NaN); the lowest on ties (deterministic)."""
    u, c = np.unique(vals, return_counts=True)
    return float(u[np.argmax(c)])


class Commander:
    """Turns a wanted-level vector into the minimal command list.

    It remembers the level last *commanded* to each luminaire (and each cabinet's contactor),
    so only luminaires whose wanted level differs cause commands, and for each cabinet or
    gateway with changes it picks the cheaper of two plans: commands for the changed
    luminaires only (DALI group commands where a whole group agrees, else individual), or one
    broad command at the most common level followed by commands for the exceptions.
    """

    def __init__(self, fleet: Fleet):
        self.fleet = fleet
        self.commanded = np.full(len(fleet), np.nan)
        self.contactor: dict[str, bool] = {}
        self.fade: dict[str, float] = {}
        self._last: np.ndarray | None = None
        self._unsent = 0

    def forget(self) -> None:
        """Forget what was commanded (after a reconnect: re-send everything on the next plan)."""
        self.commanded[:] = np.nan
        self.contactor.clear()
        self.fade.clear()
        self._last = None

    def plan(self, wanted: np.ndarray, fades: np.ndarray | None = None) -> list[Command]:
        """Commands that bring the fleet to ``wanted`` (NaN: leave alone), contactors first.

        ``fades`` (s per luminaire, the profile's fade) is written to a cabinet's
        ``group_fade_s`` register before its ``group_level`` when it differs from the last one.
        """
        if (
            self._last is not None
            and self._unsent == 0
            and np.array_equal(wanted, self._last, equal_nan=True)
        ):
            return []  # nothing changed since a plan that was fully carried out
        cmds = self._plan(wanted, fades)
        self._last = wanted.copy()
        self._unsent = len(cmds)
        return cmds

    def _plan(self, wanted: np.ndarray, fades: np.ndarray | None) -> list[Command]:
        f = self.fleet
        first: list[Command] = []
        out: list[Command] = []
        last: list[Command] = []
        ends = np.r_[f.starts[1:], len(f)] if len(f) else np.empty(0, np.int64)
        for a, b in zip(f.starts, ends, strict=True):
            idx = f.order[a:b]
            pi = f.parent_of[idx[0]]
            parent, kind = f.parent_list[pi], f.parent_kind[pi]
            vals = wanted[idx]
            sched = idx[~np.isnan(vals)]
            if sched.size == 0:
                continue
            w = wanted[sched]
            if kind == "cabinet+contactor":
                on = bool(w.max() > 0)
                if self.contactor.get(parent) != on:
                    cmd = Command(
                        f"{parent}/contactor_cmd",
                        on,
                        "contactor",
                        sched,
                        0.0 if not on else float("nan"),
                    )
                    (first if on else last).append(cmd)
                if not on:
                    continue  # contactor open: levels are moot
            changed = sched[~np.isclose(self.commanded[sched], w, atol=1e-9, equal_nan=False)]
            if changed.size == 0:
                continue
            if kind.startswith("cabinet"):
                cab = self._cabinet(parent, sched, changed, wanted)
                if fades is not None and f.parent_fade[pi] and cab[0].kind == "cabinet":
                    fade = float(np.max(fades[sched]))
                    if self.fade.get(parent) != fade:
                        out.append(
                            Command(
                                f"{parent}/group_fade_s", fade, "fade", np.empty(0, dtype=np.int64)
                            )
                        )
                out += cab
            elif kind == "dali":
                out += self._dali(parent, sched, changed, wanted)
            else:
                out += self._singles(changed, wanted)
        return first + out + last

    def _cabinet(
        self, parent: str, sched: np.ndarray, changed: np.ndarray, wanted: np.ndarray
    ) -> list[Command]:
        return self._broad_or_narrow(f"{parent}/group_level", "cabinet", sched, changed, wanted,
                                     lambda targets: self._singles(targets, wanted))

    def _dali(
        self, parent: str, sched: np.ndarray, changed: np.ndarray, wanted: np.ndarray
    ) -> list[Command]:
        return self._broad_or_narrow(f"{parent}/broadcast_level", "broadcast", sched, changed, wanted,
                                     lambda targets: self._groups(parent, sched, targets, wanted))

    @staticmethod
    def _broad_or_narrow(
        tag: str, kind: str, sched: np.ndarray, changed: np.ndarray, wanted: np.ndarray,
        narrow_of: Callable[[np.ndarray], list[Command]],
    ) -> list[Command]:
        """Fewest commands for one cabinet or gateway: its one broad command (cabinet-wide
        register, DALI broadcast) when every scheduled luminaire wants the same level; else the
        cheaper of the narrow commands for what changed, or the broad command at the most
        common level plus narrow commands for the exceptions."""
        same, lvl = _uniform(wanted[sched])
        if same:
            return [Command(tag, lvl, kind, sched, lvl)]
        narrow = narrow_of(changed)
        m = _mode(wanted[sched])
        broad = [Command(tag, m, kind, sched, m), *narrow_of(sched[wanted[sched] != m])]
        return broad if len(broad) < len(narrow) else narrow

    def _groups(
        self, parent: str, sched: np.ndarray, targets: np.ndarray, wanted: np.ndarray
    ) -> list[Command]:
        """Bring ``targets`` to their wanted level: one DALI group command (IEC 62386-102 group
        address) per group whose scheduled members all want the same level, else individual."""
        f = self.fleet
        if targets.size == 0:
            return []
        gs = np.array([str(f.groups[i]) for i in sched], dtype=object)
        tg = np.array([str(f.groups[i]) for i in targets], dtype=object)
        out: list[Command] = []
        rest: list[np.ndarray] = []
        for g in np.unique(tg):
            members = sched[gs == g]
            gsame, glvl = _uniform(wanted[members])
            gn = int(g) if g.isdigit() else -1
            if gsame and 0 <= gn <= 15:
                out.append(Command(f"{parent}/group{gn:02d}_level", glvl, "group", members, glvl))
            else:
                rest.append(targets[tg == g])
        if rest:
            out += self._singles(np.concatenate(rest), wanted)
        return out

    def _singles(self, idx: np.ndarray, wanted: np.ndarray) -> list[Command]:
        return [
            Command(
                f"{self.fleet.paths[i]}/level_cmd",
                float(wanted[i]),
                "single",
                np.array([i]),
                float(wanted[i]),
            )
            for i in idx
        ]

    def mark_sent(self, cmd: Command) -> None:
        """Record a command the device accepted (a refused one is planned again next time)."""
        self._unsent = max(0, self._unsent - 1)
        if cmd.kind == "fade":
            self.fade[cmd.tag.rsplit("/", 1)[0]] = float(cmd.value)
            return
        if cmd.kind == "contactor":
            self.contactor[cmd.tag.rsplit("/", 1)[0]] = bool(cmd.value)
            if not cmd.value:
                self.commanded[cmd.covers] = 0.0
            return
        self.commanded[cmd.covers] = cmd.level


class Verifier:
    """Expected level and deadline per luminaire; one vectorised check per tick."""

    def __init__(self, fleet: Fleet, tolerance: float):
        n = len(fleet)
        self.fleet = fleet
        self.tolerance = tolerance
        self.expected = np.full(n, np.nan)
        self.deadline = np.full(n, np.nan)
        self.failing = np.zeros(n, dtype=bool)

    def expect(self, covers: np.ndarray, level: float, deadline: float) -> None:
        self.expected[covers] = level
        self.deadline[covers] = deadline

    def _judge(self, tagdb: Any, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(luminaires that can be judged, whether each follows its expected level): a level
        that is not Good, or a luminaire reporting a lamp/driver failure, is not judged."""
        li = self.fleet.level_idx[rows]
        known = li >= 0
        rows, li = rows[known], li[known]
        val = tagdb.value[li]
        good = Q.good_mask(tagdb.quality[li])
        broken = np.zeros(rows.size, dtype=bool)
        for fi in self.fleet.failure_idx:
            t = fi[rows]
            ok = t >= 0
            broken[ok] |= np.nan_to_num(tagdb.value[t[ok]]) > 0.5
        judged = good & ~broken
        follows = np.abs(val - self.expected[rows]) <= self.tolerance
        return rows[judged], follows[judged]

    def check(self, tagdb: Any, now: float) -> tuple[np.ndarray, np.ndarray]:
        """(newly failing, newly recovered) luminaire indices at ``now``."""
        due = np.flatnonzero(self.deadline <= now)
        if due.size == 0:
            return due, due
        self.deadline[due] = np.nan
        due, follows = self._judge(tagdb, due)
        bad = due[~follows]
        okk = due[follows]
        new_bad = bad[~self.failing[bad]]
        recovered = okk[self.failing[okk]]
        self.failing[bad] = True
        self.failing[okk] = False
        return new_bad, recovered

    def recheck(self, tagdb: Any, rows: np.ndarray | None = None) -> np.ndarray:
        """Failing luminaires (of ``rows``, default all) that follow their last command now,
        marked recovered: a luminaire that obeys again is cleared when it reports so, not only
        at the next command (which may be hours away). Those with a command in flight wait
        for its deadline."""
        cand = np.flatnonzero(self.failing) if rows is None else rows[self.failing[rows]]
        cand = cand[np.isnan(self.deadline[cand])]
        if cand.size == 0:
            return cand
        cand, follows = self._judge(tagdb, cand)
        recovered = cand[follows]
        self.failing[recovered] = False
        return recovered
