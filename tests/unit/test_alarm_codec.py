"""The alarm journal codec (one format, one writer, one reader) and the transition table.

tests/data/alarm_journal_v1/ holds a journal written by main 6080f38, before the codec (its
hand-written line formats: flood lines with the defaults left out, full flood lines, operator
action lines with the identity first, device out-of-service lines), with what that version's
reader and a restarted engine made of it (make_journal.py wrote them). Today's reader and engine must read
it the same way."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from scada.alarms import codec, transitions
from scada.alarms import model as M
from scada.alarms.journal import read_journal
from scada.clock import SteppedClock
from tests.fixtures.alarms import make_env

OLD = Path(__file__).resolve().parents[1] / "data" / "alarm_journal_v1"


def test_a_journal_written_before_the_codec_reads_the_same(tmp_path) -> None:
    expected = json.loads((OLD / "expected_entries.json").read_text(encoding="utf-8"))
    got = read_journal(OLD / "journal-000001.jsonl")
    assert got == expected
    kinds = {(e["event"], "oos" in e) for e in got}
    assert ("raise", True) in kinds and ("out_of_service", True) in kinds


def test_an_engine_restores_a_journal_written_before_the_codec(tmp_path) -> None:
    journal_dir = tmp_path / "state" / "alarms"
    journal_dir.mkdir(parents=True)
    shutil.copy(OLD / "journal-000001.jsonl", journal_dir)
    want = json.loads((OLD / "expected_restored.json").read_text(encoding="utf-8"))
    env = make_env(tmp_path, SteppedClock(1_780_000_000.0), nlum=8)
    try:
        e = env.engine
        assert e.seq == want["seq"]
        got = {a: e.view(c).as_dict() for a, c in e.by_id.items()}
        assert got == want["views"]
        assert [list(x) for x in env.oos_calls] == want["oos_calls"] == [["north/cab-2", True]]
    finally:
        e.close()


def test_the_writer_writes_what_the_reader_reads() -> None:
    ident = codec.identity("a/d/x", "a/d", "a", "x", "lighting", 3, 500, external=True)
    raw = codec.line(7, 12.5, M.SHELVE, M.SHELVED, 1, False, M.TIMED, 99.0, False, False,
                     "olga", 'said "é"', float("nan"), ident, "msg")
    e = codec.decode(raw.decode())
    assert list(e) == [f for f in codec.FIELDS if f in e]  # members in the described order
    assert e["user"] == "olga" and e["comment"] == 'said "é"' and e["value"] is None
    assert e["kind"] == "external" and e["shelve_until"] == 99.0
    # a flood line leaves the defaults out; the reader puts them back
    lines = codec.bulk_lines(1, 3.0, M.RAISE, [0, 1], [1, 2], [1.0, float("inf")],
                             np.zeros(2, bool), np.zeros(2, np.int8), np.full(2, np.nan),
                             np.zeros(2, bool), np.zeros(2, bool), [None, None],
                             lambda c: codec.message_tail(ident, f"m{c}"), lambda c: ident,
                             lambda c: f"m{c}")
    got = [codec.decode(x.decode()) for x in lines]
    assert [len(x) for x in lines] < [len(raw)] * 2
    assert [(g["seq"], g["active"], g["value"], g["message"]) for g in got] == [
        (1, 1, 1.0, "m0"), (2, 2, None, "m1")]
    assert all(g[k] == v for g in got for k, v in codec.DEFAULTS.items())


@pytest.mark.parametrize(("state", "acked", "active"), [
    (transitions.NORMAL, True, False), (transitions.UNACK_RTN, False, False),
    (transitions.ACK_ACTIVE, True, True), (transitions.UNACK_ACTIVE, False, True)])
def test_table_states_are_the_part9_flag_pairs(state, acked, active) -> None:
    assert transitions.state_code(int(active), acked) == state
    assert transitions.STATE_NAMES[state] == M.state_name(active, acked, 0, False, False)


def test_the_table_refuses_an_ack_of_an_acknowledged_alarm() -> None:
    for (state, event), (shown, hidden, fx) in transitions.TABLE.items():
        if event == transitions.ACK:
            assert bool(fx & transitions.REFUSE) == (state in (transitions.NORMAL,
                                                               transitions.ACK_ACTIVE))
        # raising or worsening asks for an acknowledgement; a clear of a hidden alarm does not
        if event in (transitions.RAISE, transitions.WORSE):
            assert shown == hidden == transitions.UNACK_ACTIVE
        if event == transitions.CLEAR:
            assert not shown & 2 and hidden == transitions.NORMAL
