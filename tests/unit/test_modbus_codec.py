"""Pure codec tests: every type, word and byte order, scale/offset, strings, bits, frames."""

from __future__ import annotations

import struct

import numpy as np
import pytest
from pydantic import ValidationError

from drivers.modbus import codec
from drivers.modbus.codec import (
    CodecError,
    ExceptionResponse,
    MalformedFrame,
    PointSource,
    RequestDecoder,
    decode_value,
    encode_value,
    registers_to_bytes,
)
from scada import quality as Q


def src(**kw):
    kw.setdefault("address", 0)
    return PointSource(**kw)


# ----------------------------------------------------------------------------- point source
def test_defaults_and_inferred_types():
    assert src().type == "uint16" and src().table == "holding"
    assert src(table="coil").type == "bool"
    assert src(bit=3).type == "bool"
    assert src(type="float32").size == 2
    assert src(type="string", count=8).size == 8
    assert src(table="discrete").size == 1


@pytest.mark.parametrize(
    "kw, words",
    [
        ({"table": "coil", "type": "int16"}, "type must be bool"),
        ({"table": "coil", "bit": 2}, "bit applies to registers"),
        ({"type": "int16", "bit": 2}, "type must be bool"),
        ({"type": "string"}, "needs count"),
        ({"type": "int32", "count": 2}, "count is only for strings"),
        ({"scale": 0}, "non-zero"),
        ({"type": "bool", "scale": 2}, "apply to numbers"),
        ({"address": 65535, "type": "float32"}, "past 65535"),
        ({"register": 4}, "Extra inputs"),
        ({"type": "float16"}, "float32"),
    ],
)
def test_invalid_sources_are_refused_with_a_reason(kw, words):
    with pytest.raises(ValidationError) as e:
        src(**kw)
    assert words in str(e.value)


# ----------------------------------------------------------------------------- scalar codec
def be(fmt: str, v) -> list[int]:
    return codec.bytes_to_registers(struct.pack(fmt, v))


@pytest.mark.parametrize(
    "type_, fmt, value",
    [
        ("int16", ">h", -1234), ("uint16", ">H", 65000), ("int32", ">i", -70_000_000),
        ("uint32", ">I", 4_000_000_000), ("int64", ">q", -(2**40) - 7),
        ("uint64", ">Q", 2**50 + 3), ("float32", ">f", 3.5), ("float64", ">d", -1e-3),
    ],
)
def test_every_type_big_endian_matches_struct(type_, fmt, value):
    s = src(type=type_)
    regs = be(fmt, value)
    assert decode_value(s, registers_to_bytes(regs)) == pytest.approx(value)
    assert encode_value(s, value) == regs


def test_word_swapped_float_and_byte_swapped_int():
    regs = be(">f", 230.5)
    swapped = [regs[1], regs[0]]
    s = src(type="float32", word_order="little")
    assert decode_value(s, registers_to_bytes(swapped)) == pytest.approx(230.5)
    assert encode_value(s, 230.5) == swapped
    raw = struct.pack(">I", 0x11223344)
    byteswapped = bytes([raw[1], raw[0], raw[3], raw[2]])
    s2 = src(type="uint32", byte_order="little")
    assert decode_value(s2, byteswapped) == 0x11223344
    s3 = src(type="uint32", word_order="little", byte_order="little")
    assert decode_value(s3, raw[::-1]) == 0x11223344


def test_scale_offset_round_trip_and_range():
    s = src(type="int16", scale=0.1, offset=-40)
    assert encode_value(s, -12.5) == [(275 & 0xFFFF)]
    assert decode_value(s, registers_to_bytes([275])) == pytest.approx(-12.5)
    neg = src(type="int16", scale=0.1)
    assert decode_value(neg, registers_to_bytes([0xFF9C])) == pytest.approx(-10.0)
    with pytest.raises(CodecError, match="outside int16"):
        encode_value(neg, 4000.0)
    with pytest.raises(CodecError, match="outside uint16"):
        encode_value(src(), -1)
    with pytest.raises(CodecError, match="finite"):
        encode_value(src(type="float32"), float("nan"))


def test_strings_both_byte_orders():
    s = src(type="string", count=4)
    regs = encode_value(s, "LUM-7")
    assert registers_to_bytes(regs) == b"LUM-7\x00\x00\x00"
    assert decode_value(s, registers_to_bytes(regs)) == "LUM-7"
    sl = src(type="string", count=2, byte_order="little")
    assert registers_to_bytes(encode_value(sl, "ABCD")) == b"BADC"
    assert decode_value(sl, b"BADC") == "ABCD"
    with pytest.raises(CodecError, match="does not fit"):
        encode_value(s, "x" * 9)


def test_bits_in_registers_and_set_bit():
    s = src(bit=9)
    assert decode_value(s, registers_to_bytes([1 << 9])) is True
    assert decode_value(s, registers_to_bytes([1 << 8])) is False
    assert codec.set_bit(0x0001, 9, True) == 0x0201
    assert codec.set_bit(0xFFFF, 0, False) == 0xFFFE
    # little byte order: the low byte comes first, logical bit 9 is bit 1 of the second byte
    sl = src(bit=9, byte_order="little")
    assert decode_value(sl, bytes([0x00, 0x02])) is True
    assert decode_value(sl, bytes([0x02, 0x00])) is False
    assert codec.set_bit(0x0000, 9, True, "little") == 0x0200 >> 8


# ----------------------------------------------------------------------------- vectorised decode
def test_request_decoder_matches_scalar_decode_for_mixed_points():
    rng = np.random.default_rng(7)
    regs = rng.integers(0, 65536, size=60).tolist()
    data = registers_to_bytes(regs)
    start = 100
    pts = [
        (1, src(type="int16", address=0, scale=0.1), 100),
        (2, src(type="uint32", address=0, word_order="little"), 102),
        (3, src(type="float32", address=0, byte_order="little"), 104),
        (4, src(type="int64", address=0), 110),
        (5, src(bit=3, address=0), 120),
        (6, src(type="bool", address=0), 121),
        (7, src(type="uint16", address=0, offset=5), 130),
        (8, src(type="string", count=3, address=0), 140),
        (9, src(type="float64", address=0, word_order="little", byte_order="little"), 150),
        (10, src(bit=15, address=0, byte_order="little"), 155),
    ]
    dec = RequestDecoder.from_points("holding", start, 60, pts)
    vals, texts = dec.decode(data)
    got = dict(zip(dec.tags.tolist(), vals.tolist(), strict=True))
    for tag, s, addr in pts:
        rel = addr - start
        want = decode_value(s, data[2 * rel: 2 * (rel + s.size)])
        if s.type == "string":
            assert texts == [(8, want)]
        elif isinstance(want, float) and np.isnan(want):
            assert np.isnan(got[tag])
        else:
            assert got[tag] == pytest.approx(float(want)), (tag, s)
    assert set(dec.all_tags.tolist()) == set(range(1, 11))


def test_combined_decoder_equals_the_requests_decoded_one_by_one():
    rng = np.random.default_rng(3)
    reqs = [
        ("coil", 0, 11, [(100, src(table="coil"), 0), (101, src(table="coil"), 10)]),
        ("holding", 10, 7, [(1, src(type="int16", scale=0.1), 10), (2, src(bit=4), 11),
                            (3, src(type="uint32", word_order="little"), 12),
                            (4, src(type="string", count=2), 14)]),
        ("discrete", 3, 3, [(102, src(table="discrete", address=3), 5)]),
        ("input", 0, 6, [(5, src(type="int16", offset=3), 0), (6, src(type="float32"), 2),
                         (7, src(bit=15, byte_order="little"), 5)]),
    ]
    decs, datas, want = [], [], {}
    for table, start, count, pts in reqs:
        dec = RequestDecoder.from_points(table, start, count, pts)
        n = (count + 7) // 8 if table in ("coil", "discrete") else 2 * count
        data = rng.integers(0, 256, size=n).astype(np.uint8).tobytes()
        v, tx = dec.decode(data)
        want.update(zip(dec.tags.tolist(), v.tolist(), strict=True))
        want.update(dict(tx))
        decs.append(dec)
        datas.append(data)
    comb = RequestDecoder.combine(decs, [len(d) for d in datas])
    v, tx = comb.decode(b"".join(datas))
    got = dict(zip(comb.tags.tolist(), v.tolist(), strict=True))
    got.update(dict(tx))
    assert got.keys() == want.keys()
    for k, w in want.items():
        assert got[k] == (w if isinstance(w, str) else pytest.approx(w, nan_ok=True)), k


def test_shifted_decoder_feeds_the_same_values_to_other_tags():
    pts = [(1, src(type="int16", scale=0.5), 0), (2, src(bit=2), 1), (3, src(type="string", count=1), 2)]
    dec = RequestDecoder.from_points("holding", 0, 3, pts)
    data = registers_to_bytes([0xFFFE, 0b100, 0x4142])
    v, tx = dec.decode(data)
    moved = dec.shifted(1000)
    v2, tx2 = moved.decode(data)
    assert moved.tags.tolist() == [t + 1000 for t in dec.tags.tolist()]
    assert v2.tolist() == v.tolist() == [-1.0, 1.0]
    assert tx2 == [(1003, "AB")] and tx == [(3, "AB")]


def test_coil_decoder_unpacks_lsb_first():
    # spec §6.1: coil 0 is the LSB of the first data byte
    pts = [(1, src(table="coil"), 0), (2, src(table="coil"), 9), (3, src(table="coil"), 10)]
    dec = RequestDecoder.from_points("coil", 0, 11, pts)
    vals, _ = dec.decode(bytes([0b0000_0001, 0b0000_0010]))
    assert vals.tolist() == [1.0, 1.0, 0.0]


def test_decoder_refuses_points_outside_request():
    with pytest.raises(ValueError, match="outside request"):
        RequestDecoder.from_points("holding", 0, 2, [(1, src(type="float64"), 0)])


# ----------------------------------------------------------------------------- frames
def test_read_request_frame_layout():
    pdu = codec.read_pdu(codec.FC_READ_HOLDING, 0x1234, 10)
    assert codec.frame(7, 3, pdu) == bytes.fromhex("0007 0000 0006 03 03 1234 000a".replace(" ", ""))


def test_write_pdus():
    assert codec.write_coil_pdu(5, True) == bytes.fromhex("050005ff00")
    assert codec.write_register_pdu(1, 0xABCD) == bytes.fromhex("060001abcd")
    assert codec.write_registers_pdu(2, [1, 2]) == bytes.fromhex("10000200020400010002")
    with pytest.raises(CodecError):
        codec.write_registers_pdu(0, [0] * 124)


def test_parse_header_rejects_garbage():
    assert codec.parse_header(bytes.fromhex("00070000000601")) == (7, 0, 5, 1)
    with pytest.raises(MalformedFrame, match="protocol id"):
        codec.parse_header(b"\xde\xad\xbe\xef\xde\xad\xbe")
    with pytest.raises(MalformedFrame, match="length"):
        codec.parse_header(bytes.fromhex("00010000000001"))
    with pytest.raises(MalformedFrame, match="length"):
        codec.parse_header(bytes.fromhex("00010000ffff01"))
    with pytest.raises(MalformedFrame, match="7"):
        codec.parse_header(b"\x00\x01")


def test_parse_response_checks_everything():
    rq = codec.read_pdu(3, 0, 2)
    assert codec.parse_response(rq, bytes.fromhex("030400010002")) == bytes.fromhex("00010002")
    with pytest.raises(ExceptionResponse) as e:
        codec.parse_response(rq, bytes.fromhex("830b"))
    assert e.value.code == 0x0B
    for bad in ("0304000100", "03050001000200", "040400010002", "03", "", "8302ff"):
        with pytest.raises(MalformedFrame):
            codec.parse_response(rq, bytes.fromhex(bad))
    coils = codec.read_pdu(1, 0, 9)
    assert codec.parse_response(coils, bytes.fromhex("01020102")) == b"\x01\x02"
    with pytest.raises(MalformedFrame):
        codec.parse_response(coils, bytes.fromhex("010101"))
    w = codec.write_register_pdu(1, 5)
    assert codec.parse_response(w, w) == b""
    with pytest.raises(MalformedFrame, match="echo"):
        codec.parse_response(w, codec.write_register_pdu(1, 6))
    wm = codec.write_registers_pdu(1, [5, 6])
    assert codec.parse_response(wm, wm[:5]) == b""


def test_random_bytes_never_raise_anything_but_protocol_errors():
    rng = np.random.default_rng(1)
    rq = codec.read_pdu(3, 0, 4)
    for _ in range(2000):
        junk = rng.integers(0, 256, size=int(rng.integers(0, 12))).astype(np.uint8).tobytes()
        try:
            codec.parse_response(rq, junk)
        except (MalformedFrame, ExceptionResponse):
            pass
        try:
            codec.parse_header(junk[:7].ljust(7, b"\x00"))
        except MalformedFrame:
            pass


def test_exception_status_table():
    assert codec.read_status(0x02) == Q.BadConfigurationError
    assert codec.read_status(0x04) == Q.BadDeviceFailure
    assert codec.read_status(0x06) == Q.UncertainLastUsableValue
    assert codec.read_status(0x0B) == Q.BadCommunicationError
    assert codec.read_status(0x7F) == Q.BadUnexpectedError
    assert codec.write_status(0x03) == Q.BadOutOfRange
    assert codec.write_status(0x06) == Q.BadResourceUnavailable


# ----------------------------------------------------------------------------- stream framing
def _proto():
    """A framer bound to a link that is never connected, with two requests in flight."""
    import asyncio

    from drivers.modbus.client import ModbusLink, _Protocol

    link = ModbusLink("127.0.0.1", 1, now=lambda: 0.0, max_in_flight=4)
    p = _Protocol(link)
    loop = asyncio.get_running_loop()
    futs = {1: loop.create_future(), 2: loop.create_future()}
    p.pending = {1: (1, futs[1]), 2: (7, futs[2])}
    return link, p, futs


async def test_stream_framing_any_chunking_and_garbage():
    frames = [codec.frame(1, 1, bytes.fromhex("030400010002")), codec.frame(2, 7, bytes.fromhex("8302"))]
    stream = b"".join(frames)
    for cut in range(1, len(stream)):
        link, p, futs = _proto()
        p.data_received(stream[:cut])
        p.data_received(stream[cut:])
        # each answer goes to the request of its transaction id, whatever the segmentation
        assert futs[1].result() == bytes.fromhex("030400010002") and futs[2].result() == bytes.fromhex("8302")
        assert not p.buf and link.stats["malformed"] == link.stats["stale"] == 0
    link, p, futs = _proto()
    p.data_received(stream[:10])  # half a frame: nothing yet, no error
    assert not futs[1].done() and link.stats["malformed"] == 0
    link, p, futs = _proto()
    p.data_received(frames[0] + b"\xde\xad\xbe\xef\x00\x00\x00")
    assert futs[1].result() == bytes.fromhex("030400010002")
    assert isinstance(futs[2].exception(), MalformedFrame) and link.stats["malformed"] == 1
    link, p, futs = _proto()
    p.data_received(codec.frame(9, 1, b"\x03\x00"))  # an answer nobody asked for: stale
    assert isinstance(futs[1].exception(), MalformedFrame) and link.stats["stale"] == 1
    link, p, futs = _proto()
    p.data_received(codec.frame(1, 5, b"\x03\x00"))  # the right transaction, the wrong unit
    assert isinstance(futs[1].exception(), MalformedFrame) and link.stats["stale"] == 1
    link, p, futs = _proto()
    p.abandoned.add(9)  # a late answer to a request given up after its timeout: discarded
    p.data_received(codec.frame(9, 1, b"\x03\x00") + frames[0])
    assert futs[1].result() == bytes.fromhex("030400010002") and link.stats["stale"] == 1
    for f in futs.values():
        if not f.done():
            f.cancel()


async def test_random_streams_never_raise_from_the_framer():
    rng = np.random.default_rng(11)
    for _ in range(500):
        _link, p, futs = _proto()
        data = rng.integers(0, 256, size=int(rng.integers(1, 64))).astype(np.uint8).tobytes()
        if rng.random() < 0.5:  # sometimes a plausible header first
            data = codec.frame(int(rng.integers(0, 65536)), 1, data[:20]) + data
        i = 0
        while i < len(data):
            n = int(rng.integers(1, 9))
            p.data_received(data[i:i + n])
            i += n
        for f in futs.values():
            if f.done() and f.exception() is None:
                assert 1 <= len(f.result()) <= codec.MAX_PDU
            elif not f.done():
                f.cancel()
