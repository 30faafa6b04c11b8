"""Suppression by design (ISA-18.2 §10.3, IEC 62682 §10.3; OPC UA Part 9 §5.8.2 SuppressedState).

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
    def __init__(self) -> None:
        self._target: list[int] = []
        self._kind: list[int] = []
        self._src: list[int] = []
        self._eq: list[float] = []
        self.n = 0
        self.target = np.zeros(0, dtype=np.int64)
        self.on = np.zeros(0, dtype=np.bool_)
        self.count = np.zeros(0, dtype=np.int32)

    def add(self, target: int, kind: int, src: int, equals: float = 1.0) -> None:
        self._target.append(target)
        self._kind.append(kind)
        self._src.append(src)
        self._eq.append(equals)

    def build(self, ntags: int, nconds: int) -> None:
        self.n = len(self._target)
        self.target = np.asarray(self._target, dtype=np.int64)
        self.kind = np.asarray(self._kind, dtype=np.int8)
        self.src = np.asarray(self._src, dtype=np.int64)
        self.eq = np.asarray(self._eq, dtype=np.float64)
        self.on = np.zeros(self.n, dtype=np.bool_)
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
        """Re-evaluate ``rules``; return (targets whose rule count crossed zero, new state)."""
        if len(rules) == 0:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.bool_)
        kind = self.kind[rules]
        src = self.src[rules]
        new = self.on[rules].copy()
        a = kind == 0
        if a.any():
            new[a] = raw[src[a]] != 0
        p = ~a
        if p.any():
            s = src[p]
            ok = (quality[s] & _BAD) == 0
            new[p] = np.where(ok, np.abs(value[s] - self.eq[rules[p]]) < 1e-9, new[p])
        flip = new != self.on[rules]
        if not flip.any():
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.bool_)
        fr = rules[flip]
        self.on[fr] = new[flip]
        t = self.target[fr]
        ut = np.unique(t)
        before = self.count[ut] > 0
        np.add.at(self.count, t, np.where(new[flip], 1, -1).astype(np.int32))
        after = self.count[ut] > 0
        ch = before != after
        return ut[ch], after[ch]

    def suppressed(self, conds: np.ndarray) -> np.ndarray:
        return self.count[conds] > 0
