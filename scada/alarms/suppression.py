"""Suppression by design (ISA-18.2 / IEC 62682 designed suppression; OPC UA Part 9 SuppressedState).

Rules are declared on alarm templates (:class:`scada.sections.alarms.SuppressRule`) and resolved
against the site model: ``of: parent`` is the device's ``DeviceInstance.parent`` (the cabinet of
a luminaire, the gateway of a DALI luminaire). Examples from the standard profiles:

* a luminaire's ``comm_lost`` is suppressed while its cabinet's ``comm_lost`` or
  ``supply_lost`` is active: one red dot for the cabinet, not 64;
* a luminaire's ``lamp_failure`` is suppressed while its cabinet's ``contactor`` is off
  (scheduled off: the lamp is dark by design);
* a junction's ``flashing`` alarm is suppressed while its ``flash_cmd`` commands flashing.

Each rule is a row (target alarm, source alarm or source tag, value); an alarm is suppressed
while the count of its true rules is > 0. A batch only touches the rules whose source changed
(CSR indexes source tag -> rules and source alarm -> rules), so a cabinet fault updates its 64
luminaires' rules in one vectorised step.
"""

from __future__ import annotations

import numpy as np

from .conditions import csr_gather

_BAD = np.uint32(0x80000000)

SRC_ALARM, SRC_POINT = 0, 1


def _csr(keys: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    order = np.argsort(keys, kind="stable")
    counts = np.bincount(keys, minlength=n) if len(keys) else np.zeros(n, dtype=np.int64)
    ptr = np.zeros(len(counts) + 1, dtype=np.int64)
    np.cumsum(counts, out=ptr[1:])
    return ptr, order.astype(np.int64)


def _gather(ptr: np.ndarray, order: np.ndarray, keys: np.ndarray) -> np.ndarray:
    keys = keys[(keys >= 0) & (keys < len(ptr) - 1)]
    return np.unique(csr_gather(ptr, order, keys)[0])


class SuppressionTable:
    """Rules -> groups of alarms. A rule is (source alarm or source tag + value, group); a
    group is a set of alarms: one alarm (a template's ``suppressed_by``), or the selected
    alarms of a device (``alarms.suppressed_by``: a cabinet's mains failure hides
    all its luminaires' alarms). A group is on while any of its rules is on; an alarm is
    suppressed while any of its groups is on. Both counts are kept incrementally, so a batch
    costs in proportion to the rules whose source changed."""

    def __init__(self) -> None:
        self._rgroup: list[int] = []
        self._kind: list[int] = []
        self._src: list[int] = []
        self._eq: list[float] = []
        self._groups: dict[tuple, int] = {}
        self._members: list[list[int]] = []
        self.n = 0
        self.group = np.zeros(0, dtype=np.int64)
        self.on = np.zeros(0, dtype=np.bool_)
        self.gcount = np.zeros(0, dtype=np.int32)
        self.count = np.zeros(0, dtype=np.int32)

    def group_of(self, key: tuple, members: list[int]) -> int:
        g = self._groups.get(key)
        if g is None:
            g = self._groups[key] = len(self._members)
            self._members.append(list(members))
        return g

    def add(self, target: int, kind: int, src: int, equals: float = 1.0) -> None:
        """A rule suppressing one alarm (``target``): its implicit one-alarm group."""
        self._rgroup.append(-1 - target)
        self._kind.append(kind)
        self._src.append(src)
        self._eq.append(equals)

    def add_many(self, targets: np.ndarray, kind: int, srcs: np.ndarray,
                 equals: float = 1.0) -> None:
        """One rule per target alarm (same kind and value), sources aligned with targets."""
        self._rgroup.extend((-1 - targets).tolist())
        self._kind.extend([kind] * len(targets))
        self._src.extend(np.asarray(srcs, dtype=np.int64).tolist())
        self._eq.extend([equals] * len(targets))

    def add_group_rule(self, group: int, kind: int, src: int, equals: float = 1.0) -> None:
        self._rgroup.append(group)
        self._kind.append(kind)
        self._src.append(src)
        self._eq.append(equals)

    def build(self, ntags: int, nconds: int) -> None:
        """Freeze the rules into arrays. Group ids: ``0..nconds-1`` are the one-alarm groups
        (group c = alarm c), device groups follow. Rules declared twice (a template's and the
        site's default) are kept once."""
        g = np.asarray(self._rgroup, dtype=np.int64)
        g = np.where(g < 0, -1 - g, nconds + g)
        kind = np.asarray(self._kind, dtype=np.int8)
        src = np.asarray(self._src, dtype=np.int64)
        eq = np.asarray(self._eq, dtype=np.float64)
        if len(g):
            order = np.lexsort((eq, src, kind, g))
            g, kind, src, eq = g[order], kind[order], src[order], eq[order]
            dup = np.zeros(len(g), dtype=np.bool_)
            dup[1:] = (g[1:] == g[:-1]) & (kind[1:] == kind[:-1]) & (src[1:] == src[:-1]) & (
                eq[1:] == eq[:-1])
            g, kind, src, eq = g[~dup], kind[~dup], src[~dup], eq[~dup]
        self._rgroup, self._kind, self._src, self._eq = [], [], [], []
        self.n = len(g)
        self.group, self.kind, self.src, self.eq = g, kind, src, eq
        self.on = np.zeros(self.n, dtype=np.bool_)
        ng = nconds + len(self._members)
        self.gcount = np.zeros(max(ng, 1), dtype=np.int32)
        sizes = np.concatenate([np.ones(nconds, dtype=np.int64),
                                np.asarray([len(m) for m in self._members], dtype=np.int64)])
        self._mptr = np.zeros(ng + 1, dtype=np.int64)
        np.cumsum(sizes, out=self._mptr[1:])
        self._mrows = np.concatenate([np.arange(nconds, dtype=np.int64)]
                                     + [np.asarray(m, dtype=np.int64) for m in self._members])
        self._members = []
        self._groups = {}
        self.count = np.zeros(max(nconds, 1), dtype=np.int32)
        pt = self.kind == SRC_POINT
        self._tag_rules = np.nonzero(pt)[0]
        self._alarm_rules = np.nonzero(~pt)[0]
        self._tptr, self._torder = _csr(self.src[self._tag_rules], ntags)
        self._aptr, self._aorder = _csr(self.src[self._alarm_rules], nconds)

    def grow_conds(self, nconds: int) -> None:
        if nconds > len(self.count):
            c = np.zeros(max(nconds, 2 * len(self.count)), dtype=np.int32)
            c[: len(self.count)] = self.count
            self.count = c

    def rules_for(self, tags: np.ndarray | None, conds: np.ndarray | None) -> np.ndarray:
        parts = []
        if tags is not None and len(tags) and len(self._tag_rules):
            parts.append(self._tag_rules[_gather(self._tptr, self._torder, tags)])
        if conds is not None and len(conds) and len(self._alarm_rules):
            parts.append(self._alarm_rules[_gather(self._aptr, self._aorder, conds)])
        if not parts:
            return np.zeros(0, dtype=np.int64)
        return parts[0] if len(parts) == 1 else np.unique(np.concatenate(parts))

    def all_rules(self) -> np.ndarray:
        return np.arange(self.n, dtype=np.int64)

    def update(self, rules: np.ndarray, raw: np.ndarray, value: np.ndarray,
               quality: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Re-evaluate ``rules``; return (alarms whose suppression changed, new state)."""
        none = np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.bool_)
        if len(rules) == 0:
            return none
        kind = self.kind[rules]
        src = self.src[rules]
        new = self.on[rules].copy()
        a = kind == SRC_ALARM
        if a.any():
            new[a] = raw[src[a]] != 0
        p = ~a
        if p.any():
            s = src[p]
            ok = (quality[s] & _BAD) == 0
            new[p] = np.where(ok, np.abs(value[s] - self.eq[rules[p]]) < 1e-9, new[p])
        flip = new != self.on[rules]
        if not flip.any():
            return none
        fr = rules[flip]
        self.on[fr] = new[flip]
        g = self.group[fr]
        ug = np.unique(g)
        gbefore = self.gcount[ug] > 0
        np.add.at(self.gcount, g, np.where(new[flip], 1, -1).astype(np.int32))
        gafter = self.gcount[ug] > 0
        gch = gbefore != gafter
        if not gch.any():
            return none
        ug, gon = ug[gch], gafter[gch]
        start = self._mptr[ug]
        cnt = self._mptr[ug + 1] - start
        members = self._mrows[np.repeat(start - np.concatenate(([0], np.cumsum(cnt)[:-1])), cnt)
                              + np.arange(int(cnt.sum()))]
        delta = np.repeat(np.where(gon, 1, -1).astype(np.int32), cnt)
        um = np.unique(members)
        before = self.count[um] > 0
        np.add.at(self.count, members, delta)
        after = self.count[um] > 0
        ch = before != after
        return um[ch], after[ch]

    def suppressed(self, conds: np.ndarray) -> np.ndarray:
        return self.count[conds] > 0
