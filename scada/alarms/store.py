"""The alarm state store: one column per OPC UA Part 9 state variable, one row per alarm.

Columns rather than objects: a city has millions of potential alarms and a flood changes
10,000 of them in one batch, so every state change is an array operation on the rows it
concerns. The numeric state lives in numpy arrays grown by doubling (:meth:`AlarmStore.grow`)
and trimmed once the site is declared (:meth:`AlarmStore.trim`); the per-alarm text (identity,
message template) lives in Python lists, touched only on transitions.

=================  =========  ============================================================
column             dtype      meaning
=================  =========  ============================================================
level              int8       limit level after the delays (0 normal, +-1 Hi/Lo, +-2 HiHi/LoLo)
acked              bool       AckedState
shelved            int8       ShelvingState (model.UNSHELVED / ONESHOT / TIMED)
shelve_until       float64    TimedShelve expiry, POSIX s (NaN: none)
suppressed         bool       SuppressedState (designed suppression)
oos                bool       OutOfServiceState (device under works)
chattering         bool       ``chatter.count`` raises within ``chatter.window``
pend_t/pend_level  f64/int8   on-/off-delay deadline and the level it will apply
raised_at          float64    time of the last raise
value              float64    value at the last transition
unsupp_t/_from     float64    delayed end of suppression: deadline / when the cause cleared
ext_on             bool       an external condition OR-ed into a tag-based alarm
rt/rt_pos          f64[k]/i16 ring buffer of the last ``k`` raise times (chattering)
=================  =========  ============================================================
"""

from __future__ import annotations

import numpy as np

from . import model as M

#: column name -> fill value of new rows (the dtype is the column's)
FILL: dict[str, object] = {
    "level": 0, "acked": True, "shelved": 0, "shelve_until": np.nan, "suppressed": False,
    "oos": False, "chattering": False, "pend_t": np.nan, "pend_level": 0, "raised_at": np.nan,
    "value": np.nan, "unsupp_t": np.nan, "unsupp_from": np.nan, "ext_on": False, "rt": np.nan,
    "rt_pos": 0,
}
_DTYPES = {
    "level": np.int8, "acked": np.bool_, "shelved": np.int8, "shelve_until": np.float64,
    "suppressed": np.bool_, "oos": np.bool_, "chattering": np.bool_, "pend_t": np.float64,
    "pend_level": np.int8, "raised_at": np.float64, "value": np.float64,
    "unsupp_t": np.float64, "unsupp_from": np.float64, "ext_on": np.bool_, "rt": np.float64,
    "rt_pos": np.int16,
}


class AlarmStore:
    """Columns of alarm state (see the module table); ``cap`` rows allocated, the engine's
    ``n`` used."""

    COLUMNS = tuple(FILL)

    level: np.ndarray
    acked: np.ndarray
    shelved: np.ndarray
    shelve_until: np.ndarray
    suppressed: np.ndarray
    oos: np.ndarray
    chattering: np.ndarray
    pend_t: np.ndarray
    pend_level: np.ndarray
    raised_at: np.ndarray
    value: np.ndarray
    unsupp_t: np.ndarray
    unsupp_from: np.ndarray
    ext_on: np.ndarray
    rt: np.ndarray
    rt_pos: np.ndarray

    def __init__(self, cap: int = 1024, chatter_count: int = 3):
        for name in self.COLUMNS:
            shape = (cap, chatter_count) if name == "rt" else (cap,)
            setattr(self, name, np.full(shape, FILL[name], dtype=_DTYPES[name]))

    @property
    def cap(self) -> int:
        return len(self.level)

    def grow(self, need: int) -> bool:
        """Room for ``need`` rows (doubling); True if the columns were reallocated."""
        cap = self.cap
        if need <= cap:
            return False
        new = max(need, 2 * cap)
        for name in self.COLUMNS:
            old = getattr(self, name)
            arr = np.full((new, *old.shape[1:]), FILL[name], dtype=old.dtype)
            arr[:cap] = old
            setattr(self, name, arr)
        return True

    def reset(self, n: int) -> None:
        """Every row below ``n`` back to its default state (a full reload from the journal
        follows: :meth:`scada.alarms.engine.AlarmEngine.reload`)."""
        for name in self.COLUMNS:
            getattr(self, name)[:n] = FILL[name]

    def trim(self, cap: int) -> None:
        """Give back the spare capacity of the doubling growth."""
        for name in self.COLUMNS:
            a = getattr(self, name)
            if len(a) > cap:
                setattr(self, name, a[:cap].copy())

    # ------------------------------------------------------------ derived views
    def hidden(self, rows: np.ndarray | slice) -> np.ndarray:
        """Shelved, suppressed or out of service (not annunciated)."""
        return (self.shelved[rows] != 0) | self.suppressed[rows] | self.oos[rows]

    def retained(self, n: int) -> np.ndarray:
        """Rows an operator must see (OPC UA Part 9 Retain): active or unacknowledged."""
        return np.nonzero((self.level[:n] != 0) | ~self.acked[:n])[0]

    def not_default(self, n: int) -> np.ndarray:
        """Rows not in the default state (Normal, in service, not shelved or suppressed)."""
        return np.nonzero((self.level[:n] != 0) | ~self.acked[:n] | (self.shelved[:n] != 0)
                          | self.suppressed[:n] | self.oos[:n])[0]

    def counts(self, n: int) -> dict[str, int]:
        hidden = self.hidden(slice(0, n))
        ret = (self.level[:n] != 0) | ~self.acked[:n]
        return {
            "alarms": n,
            "active": int((ret & ~hidden).sum()),
            "unacknowledged": int((~self.acked[:n] & ~hidden).sum()),
            "suppressed": int((ret & self.suppressed[:n] & ~self.oos[:n]).sum()),
            "shelved": int((self.shelved[:n] != 0).sum()),
            "out_of_service": int(self.oos[:n].sum()),
            "chattering": int(self.chattering[:n].sum()),
        }

    def state_name(self, c: int) -> str:
        """ISA-18.2 state name of row ``c``."""
        return M.state_name(int(self.level[c]) != 0, bool(self.acked[c]), int(self.shelved[c]),
                            bool(self.suppressed[c]), bool(self.oos[c]))

    def record_raise(self, rows: np.ndarray, now: float, window: float) -> np.ndarray:
        """Record a raise of ``rows`` at ``now`` in the ring buffers; return the rows that just
        became chattering (the ring's ``k`` raises within ``window``)."""
        pos = self.rt_pos[rows].astype(np.int64)
        self.rt[rows, pos] = now
        nxt = (pos + 1) % self.rt.shape[1]
        self.rt_pos[rows] = nxt
        oldest = self.rt[rows, nxt]  # the slot to be overwritten next holds the oldest time
        with np.errstate(invalid="ignore"):
            chat = (now - oldest) <= window
        was = self.chattering[rows]
        self.chattering[rows] = chat
        return rows[chat & ~was]
