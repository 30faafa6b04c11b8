"""The replication stream's frames and handshake MACs (pure, scada.ha.wire) and the offsets
the active agrees with a standby (scada.ha.replication.Source on a temporary directory)."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from scada.ha import wire
from scada.ha.replication import FILE, LOG, Sink, Source, Stream, _Link


def body(frame: bytes) -> bytes:
    return frame[4:]


def test_a_frame_round_trips_and_carries_its_token() -> None:
    f = wire.encode({"t": "data", "f": "alarms/journal-000001.jsonl", "off": 3, "tok": 9},
                    b"abc\n")
    n = wire.frame_length(f[:4], 1 << 20)
    h, payload = wire.decode(f[4:4 + n])
    assert (h["t"], h["tok"], h["off"], payload) == ("data", 9, 3, b"abc\n")


@pytest.mark.parametrize("frame, why", [
    (struct.pack(">I", 1 << 30), "frame of"),
    (struct.pack(">I", 1), "frame of"),
])
def test_lengths_out_of_bounds_are_malformed(frame: bytes, why: str) -> None:
    with pytest.raises(wire.Malformed, match=why):
        wire.frame_length(frame, 4 << 20)


@pytest.mark.parametrize("raw, why", [
    (b"\x00", "shorter"),
    (struct.pack(">H", 50) + b"{}", "header longer"),
    (struct.pack(">H", 3) + b"{x}", "not JSON"),
    (struct.pack(">H", 2) + b"[]", "unknown frame type"),
    (struct.pack(">H", 13) + b'{"t":"nope"}' + b" ", "unknown frame type"),
    (body(wire.encode({"t": "sync"})) + b"extra", "payload of"),
    (body(wire.encode({"t": "sync", "tok": -1})), "fencing token"),
    (body(wire.encode({"t": "sync", "tok": True})), "fencing token"),
])
def test_malformed_bodies_are_refused_with_a_reason(raw: bytes, why: str) -> None:
    with pytest.raises(wire.Malformed, match=why):
        wire.decode(raw)


@pytest.mark.parametrize("path", ["", "alarms", "alarms/", "/etc/passwd", "alarms/../x",
                                  "alarms/a/../../b", "alarms//x", "alarms/.hidden",
                                  "alarms\\x", 5, None, "alarms/x\x00"])
def test_paths_that_could_leave_a_stream_are_refused(path: object) -> None:
    with pytest.raises(wire.Malformed):
        wire.check_path(path)


def test_macs_bind_the_secret_both_nonces_the_role_and_the_node() -> None:
    m = wire.mac(b"s" * 20, "client", "n1", "n2", "b")
    assert wire.check_mac(b"s" * 20, m, "client", "n1", "n2", "b")
    for args in [(b"t" * 20, m, "client", "n1", "n2", "b"), (b"s" * 20, m, "server", "n1", "n2", "b"),
                 (b"s" * 20, m, "client", "n1", "n3", "b"), (b"s" * 20, m, "client", "n1", "n2", "a"),
                 (b"s" * 20, None, "client", "n1", "n2", "b")]:
        assert not wire.check_mac(*args)


def _frames(src: Source, link: _Link) -> list[tuple[dict, bytes]]:
    frames, _lines = src.scan(link)
    return frames


def test_offsets_resume_a_log_replace_a_diverged_one_and_follow_deletes(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    stream_a = Stream("alarms", str(a), str(a), (("journal*.jsonl", LOG), ("snapshot.json", FILE)))
    stream_b = Stream("alarms", str(b), str(b), stream_a.patterns)
    sink = Sink([stream_b], str(tmp_path / "state-b"))
    src = Source([stream_a], chunk=8)
    (a / "journal-000001.jsonl").write_bytes(b'{"seq":1}\n{"seq":2}\n')
    (a / "snapshot.json").write_text("{}")

    def apply(frames: list[tuple[dict, bytes]]) -> None:
        for h, p in frames:
            if h["t"] == "data":
                sink.data(h, p)
            else:
                sink.delete(h)

    link = _Link("b", sink.inventory())
    apply(_frames(src, link))
    assert (b / "journal-000001.jsonl").read_bytes() == (a / "journal-000001.jsonl").read_bytes()
    assert (b / "snapshot.json").read_text() == "{}"
    # appended bytes only (pieces of `chunk`), nothing when nothing changed
    with open(a / "journal-000001.jsonl", "ab") as f:
        f.write(b'{"seq":3}\n')
    fr = _frames(src, link)
    assert [(h["off"], len(p)) for h, p in fr] == [(20, 8), (28, 2)]
    apply(fr)
    assert _frames(src, link) == []
    # a new connection resumes at the standby's size
    with open(a / "journal-000001.jsonl", "ab") as f:
        f.write(b'{"seq":4}\n')
    link2 = _Link("b", sink.inventory())
    fr = _frames(src, link2)
    assert [h["off"] for h, _p in fr] == [30, 38] and not any(h.get("tmp") for h, _ in fr)
    apply(fr)
    # the standby's copy diverged (it wrote lines the active never had): replaced, kept aside
    (b / "journal-000001.jsonl").write_bytes(b'{"seq":1}\n{"seq":9}\n')
    link3 = _Link("b", sink.inventory())
    fr = _frames(src, link3)
    assert fr[-1][0].get("diverged") == 1 and all(h.get("tmp") for h, _ in fr)
    apply(fr)
    assert (b / "journal-000001.jsonl").read_bytes() == (a / "journal-000001.jsonl").read_bytes()
    assert sink.stats["diverged"] == 1 and sink.alarms_reload
    assert list((tmp_path / "state-b" / "replication" / "diverged").rglob("journal-000001.jsonl"))
    # a file the active removed goes on the standby too; a stray one of the standby's as well
    (a / "snapshot.json").unlink()
    (b / "journal-000009.jsonl").write_bytes(b"")
    fr = _frames(src, link3)
    assert {h["f"] for h, _ in fr if h["t"] == "del"} == {"alarms/snapshot.json"}
    apply(fr)
    assert not (b / "snapshot.json").exists()
    link4 = _Link("b", sink.inventory())
    fr = _frames(src, link4)
    assert [h["f"] for h, _ in fr if h["t"] == "del"] == ["alarms/journal-000009.jsonl"]


def test_a_frame_for_a_path_outside_the_streams_or_at_a_wrong_offset_is_malformed(
        tmp_path: Path) -> None:
    s = Stream("alarms", str(tmp_path), str(tmp_path), (("journal*.jsonl", LOG),))
    sink = Sink([s], str(tmp_path))
    with pytest.raises(wire.Malformed, match="not in a replicated stream"):
        sink.data({"t": "data", "f": "alarms/evil.sh", "off": 0}, b"x")
    with pytest.raises(wire.Malformed, match="not in a replicated stream"):
        sink.data({"t": "data", "f": "secrets/journal-1.jsonl", "off": 0}, b"x")
    with pytest.raises(wire.Malformed, match="append at 5"):
        sink.data({"t": "data", "f": "alarms/journal-000001.jsonl", "off": 5}, b"x")


def test_sealed_frames_refuse_alteration_injection_replay_and_reordering() -> None:
    secret = b"k" * 24

    def pair() -> tuple[wire.Seal, wire.Seal]:
        return wire.Seal(secret, "s2c", "sn", "cn"), wire.Seal(secret, "s2c", "sn", "cn")

    tx, rx = pair()
    f1 = wire.encode({"t": "sync", "tok": 3, "r": 1}, seal=tx)
    f2 = wire.encode({"t": "data", "tok": 3, "f": "alarms/j.jsonl", "off": 0}, b"x\n", tx)
    assert wire.decode(f1[4:], rx)[0]["r"] == 1
    assert wire.decode(f2[4:], rx)[1] == b"x\n"
    # altered payload (a forged fencing token, say)
    tx, rx = pair()
    f = bytearray(wire.encode({"t": "sync", "tok": 3, "r": 1}, seal=tx))
    f[f.index(b'"tok":3') + 6] = ord("9")
    with pytest.raises(wire.Malformed, match="MAC"):
        wire.decode(bytes(f[4:]), rx)
    # replayed, reordered, injected without the key, the other direction's key
    tx, rx = pair()
    f1 = wire.encode({"t": "sync", "tok": 3, "r": 1}, seal=tx)
    f2 = wire.encode({"t": "sync", "tok": 3, "r": 2}, seal=tx)
    wire.decode(f1[4:], rx)
    with pytest.raises(wire.Malformed, match="MAC"):
        wire.decode(f1[4:], rx)  # replay of frame 0 where frame 1 is expected
    tx, rx = pair()
    f1 = wire.encode({"t": "sync", "tok": 3, "r": 1}, seal=tx)
    f2 = wire.encode({"t": "sync", "tok": 3, "r": 2}, seal=tx)
    with pytest.raises(wire.Malformed, match="MAC"):
        wire.decode(f2[4:], rx)
    _tx, rx = pair()
    forged = wire.encode({"t": "sync", "tok": 99, "r": 1}, seal=wire.Seal(b"x" * 24, "s2c", "sn", "cn"))
    with pytest.raises(wire.Malformed, match="MAC"):
        wire.decode(forged[4:], rx)
    _tx, rx = pair()
    other = wire.encode({"t": "ack", "r": 1}, seal=wire.Seal(secret, "c2s", "sn", "cn"))
    with pytest.raises(wire.Malformed, match="MAC"):
        wire.decode(other[4:], rx)
    with pytest.raises(wire.Malformed, match="shorter than its MAC"):
        wire.decode(b"\x00\x01", wire.Seal(secret, "s2c", "sn", "cn"))
