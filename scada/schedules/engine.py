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

A command is sent only when its target differs from what was last sent; sending a broader
command (broadcast, cabinet register) forgets the narrower ones it overrode, so they are sent
again when needed. Commands go through :meth:`scada.runtime.Runtime.write` at most
``rate_limit`` per second of the injected clock.

Verification: every luminaire covered by a command must report ``level`` within ``tolerance``
of the command by ``fade + verify_after`` seconds later (about N polls); the check is one
vectorised comparison over the tag database arrays. A luminaire that does not follow raises
"dimming_not_followed" through the alarm service's ``set_condition`` (when it has one), and is
counted in the ``_schedules/<area>/not_followed`` tag either way.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .. import quality as Q
from ..site import DeviceInstance, Site

log = logging.getLogger("scada.schedules")

LEVEL_POINTS = ("level_cmd",)


@dataclass
class Command:
    """One write: ``tag`` path, ``value``, and the luminaire indices it moves (for verification)."""

    tag: str
    value: Any
    kind: str  # contactor | cabinet | broadcast | group | single
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
        for p in self.parent_list:
            dev = parents.get(p)
            names = {x.name for x in dev.profile.points} if dev is not None else set()
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


class Commander:
    """Turns a wanted-level vector into the minimal command list, remembering what was sent."""

    def __init__(self, fleet: Fleet):
        self.fleet = fleet
        self.sent: dict[str, Any] = {}

    def forget(self, prefix: str) -> None:
        for k in [k for k in self.sent if k.startswith(prefix)]:
            del self.sent[k]

    def _emit(self, out: list[Command], cmd: Command) -> None:
        if self.sent.get(cmd.tag) == cmd.value:
            return
        out.append(cmd)

    def plan(self, wanted: np.ndarray) -> list[Command]:
        """Commands that bring the fleet to ``wanted`` (NaN: leave alone), contactors first."""
        f = self.fleet
        out: list[Command] = []
        ends = np.r_[f.starts[1:], len(f)] if len(f) else np.empty(0, np.int64)
        for _pi, (a, b) in enumerate(zip(f.starts, ends, strict=True)):
            idx = f.order[a:b]
            parent = f.parent_list[f.parent_of[idx[0]]]
            kind = f.parent_kind[f.parent_of[idx[0]]]
            vals = wanted[idx]
            sched = idx[~np.isnan(vals)]
            if sched.size == 0:
                continue
            same, lvl = _uniform(vals)
            if kind.startswith("cabinet"):
                has_contactor = kind == "cabinet+contactor"
                anyon = bool(np.nanmax(vals) > 0)
                if has_contactor:
                    self._emit(
                        out,
                        Command(
                            f"{parent}/contactor_cmd",
                            anyon,
                            "contactor",
                            sched,
                            lvl if same else float("nan"),
                        ),
                    )
                if same and (lvl > 0 or not has_contactor):
                    self._emit(out, Command(f"{parent}/group_level", lvl, "cabinet", sched, lvl))
                elif not same:
                    self._singles(out, sched, wanted)
            elif kind == "dali":
                if same:
                    self._emit(
                        out, Command(f"{parent}/broadcast_level", lvl, "broadcast", sched, lvl)
                    )
                    continue
                groups = np.array([str(f.groups[i]) for i in sched], dtype=object)
                rest: list[np.ndarray] = []
                for g in np.unique(groups):
                    members = sched[groups == g]
                    gsame, glvl = _uniform(wanted[members])
                    try:
                        gn = int(g)
                    except ValueError:
                        gn = -1
                    if gsame and 0 <= gn <= 15:
                        self._emit(
                            out,
                            Command(f"{parent}/group{gn:02d}_level", glvl, "group", members, glvl),
                        )
                    else:
                        rest.append(members)
                if rest:
                    self._singles(out, np.concatenate(rest), wanted)
            else:
                self._singles(out, sched, wanted)
        # contactor on before levels, off after: sort so contactor-on first, contactor-off last
        out.sort(
            key=lambda c: (
                0 if (c.kind == "contactor" and c.value) else (2 if c.kind == "contactor" else 1)
            )
        )
        return out

    def _singles(self, out: list[Command], idx: np.ndarray, wanted: np.ndarray) -> None:
        for i in idx:
            v = float(wanted[i])
            self._emit(
                out, Command(f"{self.fleet.paths[i]}/level_cmd", v, "single", np.array([i]), v)
            )

    def mark_sent(self, cmd: Command) -> None:
        """Remember ``cmd`` as sent; a broader command makes narrower cached ones stale."""
        parent = cmd.tag.rsplit("/", 1)[0]
        if cmd.kind in ("broadcast", "cabinet"):
            self.forget(parent + "/group")
            for i in cmd.covers:
                self.sent.pop(f"{self.fleet.paths[i]}/level_cmd", None)
        elif cmd.kind == "group":
            for i in cmd.covers:
                self.sent.pop(f"{self.fleet.paths[i]}/level_cmd", None)
            self.sent.pop(parent + "/broadcast_level", None)
        elif cmd.kind == "single":
            p = self.fleet.parent_paths[int(cmd.covers[0])]
            if p:
                self.sent.pop(p + "/broadcast_level", None)
                self.sent.pop(p + "/group_level", None)
                self.forget(p + "/group0")
                self.forget(p + "/group1")
        self.sent[cmd.tag] = cmd.value


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

    def check(self, tagdb: Any, now: float) -> tuple[np.ndarray, np.ndarray]:
        """(newly failing, newly recovered) luminaire indices at ``now``."""
        due = np.flatnonzero(self.deadline <= now)
        if due.size == 0:
            return due, due
        self.deadline[due] = np.nan
        li = self.fleet.level_idx[due]
        known = li >= 0
        due, li = due[known], li[known]
        val = tagdb.value[li]
        good = Q.good_mask(tagdb.quality[li])
        broken = np.zeros(due.size, dtype=bool)
        for fi in self.fleet.failure_idx:
            t = fi[due]
            ok = t >= 0
            broken[ok] |= np.nan_to_num(tagdb.value[t[ok]]) > 0.5
        judged = good & ~broken
        follows = np.abs(val - self.expected[due]) <= self.tolerance
        bad = due[judged & ~follows]
        okk = due[judged & follows]
        new_bad = bad[~self.failing[bad]]
        recovered = okk[self.failing[okk]]
        self.failing[bad] = True
        self.failing[okk] = False
        return new_bad, recovered
