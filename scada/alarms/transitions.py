"""The ISA-18.2 / OPC UA Part 9 alarm transitions, as data: one table a reader reviews on one screen.

An alarm's annunciation state is the (ActiveState, AckedState) pair of OPC UA Part 9; ISA-18.2
names its four values. Hiding (shelved, suppressed by design, out of service) is orthogonal
(:mod:`scada.alarms.model`): it decides whether a transition is journaled and announced
(:func:`journaled`) and, for an alarm hidden by design, which arrow a level change takes (the
``hidden`` column: nobody was shown it, so nobody has to acknowledge it)::

                 RAISE                   ACK
      Normal ---------> Unack-Active ---------> Ack-Active
       ^  ^                |    ^  ^               |  |
       |  |          CLEAR |    |  +---- WORSE ----+  | CLEAR
       |  |                v    | RAISE               |
       |  +---- ACK ---- Unack-RTN                    |
       +----------------------------------------------+

   hidden by design, CLEAR goes straight to Normal; BETTER (level down, still active) stays put.

The engine applies the table to whole batches with array look-ups (:data:`NEXT`), so a flood of
10,000 raises is one ``take``; :data:`TABLE` is what a reviewer reads and what builds the arrays.
The shelving state machine (Part 9 ShelvedStateMachineType) is :data:`SHELVING`.
"""

from __future__ import annotations

import numpy as np

from . import model as M

# ---------------------------------------------------------------- states: (active, unacked) bits
NORMAL, UNACK_RTN, ACK_ACTIVE, UNACK_ACTIVE = 0, 1, 2, 3
STATE_NAMES = {NORMAL: M.NORMAL, UNACK_RTN: M.UNACK_RTN, ACK_ACTIVE: M.ACK_ACTIVE,
               UNACK_ACTIVE: M.UNACK_ACTIVE}

# ---------------------------------------------------------------- events
RAISE, CLEAR, WORSE, BETTER, ACK = range(5)
#: the journal event written for each level event (an ACK is the operator's ``ack``)
EVENT_NAMES = {RAISE: M.RAISE, CLEAR: M.CLEAR, WORSE: M.LEVEL, BETTER: M.LEVEL, ACK: M.ACK}

# ---------------------------------------------------------------- effects (bit flags)
NONE = 0
RAISED_AT = 1    # stamp the raise time (Part 9 ActiveState.TransitionTime)
CHATTER = 2      # count the raise for chattering detection (ISA-18.2 chattering alarm)
MESSAGE = 4      # re-render a message template that shows the value or the limit
REFUSE = 8       # not allowed in this state: InvalidAlarmState (Part 9 BadConditionBranchAlreadyAcked)

# ---------------------------------------------------------------- THE TABLE
#  (state,        event ) : (shown: new state,  hidden by design: new state, effects)
TABLE: dict[tuple[int, int], tuple[int, int, int]] = {
    (NORMAL,       RAISE ): (UNACK_ACTIVE, UNACK_ACTIVE, RAISED_AT | CHATTER | MESSAGE),
    (UNACK_RTN,    RAISE ): (UNACK_ACTIVE, UNACK_ACTIVE, RAISED_AT | CHATTER | MESSAGE),
    (UNACK_ACTIVE, CLEAR ): (UNACK_RTN,    NORMAL,       NONE),
    (ACK_ACTIVE,   CLEAR ): (NORMAL,       NORMAL,       NONE),
    (UNACK_ACTIVE, WORSE ): (UNACK_ACTIVE, UNACK_ACTIVE, MESSAGE),
    (ACK_ACTIVE,   WORSE ): (UNACK_ACTIVE, UNACK_ACTIVE, MESSAGE),
    (UNACK_ACTIVE, BETTER): (UNACK_ACTIVE, UNACK_ACTIVE, MESSAGE),
    (ACK_ACTIVE,   BETTER): (ACK_ACTIVE,   ACK_ACTIVE,   MESSAGE),
    (UNACK_ACTIVE, ACK   ): (ACK_ACTIVE,   ACK_ACTIVE,   NONE),
    (UNACK_RTN,    ACK   ): (NORMAL,       NORMAL,       NONE),
    (NORMAL,       ACK   ): (NORMAL,       NORMAL,       REFUSE),
    (ACK_ACTIVE,   ACK   ): (ACK_ACTIVE,   ACK_ACTIVE,   REFUSE),
}
# a level event that cannot happen in a state (CLEAR while normal ...) leaves it as it is

#  shelving (Part 9 ShelvedStateMachineType): (shelved, action) -> shelved; None = refused
SHELVING: dict[tuple[int, str], int | None] = {
    (M.UNSHELVED, "timed"): M.TIMED, (M.ONESHOT, "timed"): M.TIMED, (M.TIMED, "timed"): M.TIMED,
    (M.UNSHELVED, "oneshot"): M.ONESHOT, (M.ONESHOT, "oneshot"): M.ONESHOT,
    (M.TIMED, "oneshot"): M.ONESHOT,
    (M.ONESHOT, "unshelve"): M.UNSHELVED, (M.TIMED, "unshelve"): M.UNSHELVED,
    (M.UNSHELVED, "unshelve"): None,
    (M.TIMED, "expired"): M.UNSHELVED,        # TimedShelve's time ran out
    (M.ONESHOT, "normal"): M.UNSHELVED,       # a one-shot shelve ends when the alarm clears
}


def journaled(shelved: np.ndarray, suppressed: np.ndarray, oos: np.ndarray) -> np.ndarray:
    """Transitions are journaled and announced unless the alarm is hidden by design
    (suppressed or out of service) and not shelved: a shelved alarm's history is kept."""
    return ~((suppressed | oos) & (shelved == M.UNSHELVED))


# ---------------------------------------------------------------- the table as arrays
def _arrays() -> tuple[np.ndarray, np.ndarray]:
    nxt = np.empty((2, 4, 5), dtype=np.int8)  # [hidden, state, event] -> new state
    eff = np.zeros((4, 5), dtype=np.int8)     # [state, event] -> effects
    for s in range(4):
        for ev in range(5):
            nxt[:, s, ev] = s
    for (s, ev), (shown, hidden, fx) in TABLE.items():
        nxt[0, s, ev], nxt[1, s, ev], eff[s, ev] = shown, hidden, fx
    return nxt, eff


NEXT, EFFECTS = _arrays()


def state_of(level: np.ndarray, acked: np.ndarray) -> np.ndarray:
    """Table state codes from the store's columns."""
    return ((level != 0).astype(np.int8) << 1) | (~acked).astype(np.int8)


def level_events(old: np.ndarray, new: np.ndarray) -> np.ndarray:
    """RAISE / CLEAR / WORSE / BETTER for a change of limit level ``old`` -> ``new``."""
    worse = np.abs(new.astype(np.int16)) > np.abs(old.astype(np.int16))
    return np.where(old == 0, RAISE,
                    np.where(new == 0, CLEAR, np.where(worse, WORSE, BETTER))).astype(np.int8)


def next_state(state: int, event: int, hidden: bool = False) -> tuple[int, int]:
    """One look-up: (new state, effects)."""
    return int(NEXT[int(hidden), state, event]), int(EFFECTS[state, event])


def state_code(level: int, acked: bool) -> int:
    """The table state of one alarm."""
    return (int(level != 0) << 1) | int(not acked)
