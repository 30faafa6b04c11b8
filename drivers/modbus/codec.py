# One module (over ~600 lines): pure encoding and decoding of one protocol (point sources, registers, MBAP frames), no I/O.
"""Pure Modbus encoding and decoding: point sources, register values, MBAP frames. No I/O.

Everything here works on bytes and numpy arrays so it is unit-tested without sockets (the
caproto / h11 habit: "bring your own I/O"); :mod:`drivers.modbus.client` moves the bytes.

References (Modbus Application Protocol Specification V1.1b3, "MBAP" = Modbus Messaging on
TCP/IP Implementation Guide V1.0b):

* §4.2 data encoding: addresses and data items are big-endian; a register is 16 bits. How a
  32/64-bit value or a string spans several registers is *not* specified, so each point says
  its ``word_order`` (which register holds the most significant word) and ``byte_order``
  (whether a device swaps the two bytes inside each register).
* §4.3/§4.4 data model: four tables (coils, discrete inputs, input registers, holding
  registers), each addressed 0..65535 in the PDU.
* §6.1-§6.4 read functions 0x01/0x02 (<= 2000 bits), 0x03/0x04 (<= 125 registers);
  §6.5/§6.6 write single coil/register (response echoes the request); §6.11/§6.12 write
  multiple coils (<= 1968) / registers (<= 123), response echoes address and quantity.
* §7 exception responses: function code + 0x80 and one exception code byte.
* MBAP §3.1.3: transaction id, protocol id (0), length (unit id + PDU bytes), unit id.

A point's value on the wire is ``raw``; its engineering value is ``raw * scale + offset``.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from drivers.transforms import Pipeline, TransformSpec, pipeline
from scada import quality as Q

Table = Literal["holding", "input", "coil", "discrete"]
ValueType = Literal[
    "bool", "int16", "uint16", "int32", "uint32", "int64", "uint64", "float32", "float64", "string"
]

#: Modbus function codes (spec §6).
FC_READ_COILS = 0x01
FC_READ_DISCRETE = 0x02
FC_READ_HOLDING = 0x03
FC_READ_INPUT = 0x04
FC_WRITE_COIL = 0x05
FC_WRITE_REGISTER = 0x06
FC_WRITE_COILS = 0x0F
FC_WRITE_REGISTERS = 0x10

READ_FC: dict[str, int] = {
    "coil": FC_READ_COILS, "discrete": FC_READ_DISCRETE,
    "holding": FC_READ_HOLDING, "input": FC_READ_INPUT,
}
BIT_TABLES = frozenset(("coil", "discrete"))
WRITABLE_TABLES = frozenset(("coil", "holding"))

MAX_READ_REGISTERS = 125   # §6.3 / §6.4
MAX_READ_BITS = 2000       # §6.1 / §6.2
MAX_WRITE_REGISTERS = 123  # §6.12
MAX_WRITE_COILS = 1968     # §6.11

#: registers per value type (strings: ``count``)
TYPE_REGISTERS: dict[str, int] = {
    "bool": 1, "int16": 1, "uint16": 1, "int32": 2, "uint32": 2,
    "int64": 4, "uint64": 4, "float32": 2, "float64": 4,
}
#: big-endian numpy dtype of each numeric type once its bytes are put in big-endian order
NUMPY_TYPE: dict[str, str] = {
    "int16": ">i2", "uint16": ">u2", "int32": ">i4", "uint32": ">u4",
    "int64": ">i8", "uint64": ">u8", "float32": ">f4", "float64": ">f8",
}
_INT_RANGE: dict[str, tuple[int, int]] = {
    "int16": (-(2**15), 2**15 - 1), "uint16": (0, 2**16 - 1),
    "int32": (-(2**31), 2**31 - 1), "uint32": (0, 2**32 - 1),
    "int64": (-(2**63), 2**63 - 1), "uint64": (0, 2**64 - 1),
}


class CodecError(ValueError):
    """A value cannot be encoded for a point (out of range, wrong type)."""


class MalformedFrame(ValueError):
    """A response that does not follow the protocol (wrong length, function, byte count...)."""


class ExceptionResponse(Exception):
    """The device answered with a Modbus exception (spec §7); ``code`` is the exception code."""

    def __init__(self, function: int, code: int):
        super().__init__(f"Modbus exception 0x{code:02X} ({EXCEPTION_NAMES.get(code, 'unknown')}) "
                         f"to function 0x{function:02X}")
        self.function = function
        self.code = code


# --------------------------------------------------------------------------- point source
class PointSource(BaseModel):
    """Where and how one profile point lives on a Modbus device (a point's ``source:``).

    ``address`` is the 0-based PDU address (spec §4.4: "register 40001" of a vendor manual is
    PDU address 0 of the holding table). For a child device (a luminaire behind a cabinet) it
    is relative to the child's block, see :class:`~drivers.modbus.driver.ProfileOptions`.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    table: Table = "holding"
    address: int = Field(ge=0, le=65535)
    type: ValueType | None = None
    bit: int | None = Field(None, ge=0, le=15)
    count: int | None = Field(None, ge=1, le=MAX_READ_REGISTERS)
    #: which register holds the most significant word: ``big`` (first) or ``little`` (last);
    #: or a vendor's byte-order name for the whole value, which sets byte_order too:
    #: ``ABCD`` (big/big), ``CDAB`` (little/big, "word swapped"), ``BADC`` (big/little,
    #: "byte swapped"), ``DCBA`` (little/little)
    word_order: Literal["big", "little", "ABCD", "CDAB", "BADC", "DCBA"] = "big"
    byte_order: Literal["big", "little"] = "big"
    scale: float = 1.0
    offset: float = 0.0
    #: named transforms after scale/offset (drivers/transforms.py): ``dali_arc``,
    #: ``{lookup: {...}}``, ``{bits: [first, last]}``
    transform: TransformSpec = None
    poll: str | None = None

    @model_validator(mode="after")
    def _consistent(self) -> PointSource:
        if self.word_order in VENDOR_ORDER:
            words, bytes_ = VENDOR_ORDER[self.word_order]
            if "byte_order" in self.model_fields_set and self.byte_order != bytes_:
                raise ValueError(f"word_order {self.word_order} means byte_order {bytes_!r}; drop "
                                 f"byte_order or use word_order {words!r}")
            object.__setattr__(self, "word_order", words)
            object.__setattr__(self, "byte_order", bytes_)
        t = self.type
        if self.table in BIT_TABLES:
            if t not in (None, "bool"):
                raise ValueError(f"a {self.table} is one bit: type must be bool, not {t!r}")
            if self.bit is not None:
                raise ValueError(f"bit applies to registers, not to a {self.table}")
            object.__setattr__(self, "type", "bool")
        elif t is None:
            object.__setattr__(self, "type", "bool" if self.bit is not None else "uint16")
        if self.bit is not None and self.type != "bool":
            raise ValueError(f"bit {self.bit} selects one bit: type must be bool, not {self.type!r}")
        if self.type == "string":
            if self.count is None:
                raise ValueError("a string needs count: the number of registers it spans")
        elif self.count is not None:
            raise ValueError(f"count is only for strings; a {self.type} spans "
                             f"{TYPE_REGISTERS[self.type]} register(s)")
        if self.scale == 0 or not math.isfinite(self.scale) or not math.isfinite(self.offset):
            raise ValueError("scale must be finite and non-zero, offset finite")
        if self.type in ("bool", "string") and (self.scale != 1.0 or self.offset != 0.0):
            raise ValueError(f"scale and offset apply to numbers, not to a {self.type}")
        if self.type in ("bool", "string") and self.transform:
            raise ValueError(f"transforms apply to numbers, not to a {self.type}")
        if self.address + self.size > 65536:
            raise ValueError(f"address {self.address} + {self.size} runs past 65535")
        return self

    @property
    def size(self) -> int:
        """Registers (or bits, for coils/discrete inputs) the point spans."""
        if self.table in BIT_TABLES:
            return 1
        if self.type == "string":
            return int(self.count or 0)
        return TYPE_REGISTERS[str(self.type)]

    @property
    def writable(self) -> bool:
        return self.table in WRITABLE_TABLES

    @property
    def pipe(self) -> Pipeline | None:
        return pipeline(self.transform)


#: Vendors' names for the order of a 32-bit value's bytes A (most significant) .. D on the wire
#: -> (word_order, byte_order). Used the same way for 64-bit values (register order, then the
#: bytes inside each register).
VENDOR_ORDER: dict[str, tuple[str, str]] = {
    "ABCD": ("big", "big"), "CDAB": ("little", "big"), "BADC": ("big", "little"), "DCBA": ("little", "little"),
}


# --------------------------------------------------------------------------- byte orders
def byte_permutation(nregs: int, word_order: str, byte_order: str) -> np.ndarray:
    """Byte positions (relative to the point's first register on the wire) that, taken in
    order, give the value's bytes most significant first.

    ``word_order: little`` means the first register holds the least significant word
    (the "word-swapped float" of many meters); ``byte_order: little`` means each register's
    two bytes are swapped against §4.2.
    """
    words = range(nregs) if word_order == "big" else range(nregs - 1, -1, -1)
    out: list[int] = []
    for w in words:
        out.extend((2 * w, 2 * w + 1) if byte_order == "big" else (2 * w + 1, 2 * w))
    return np.asarray(out, dtype=np.intp)


def registers_to_bytes(regs: list[int] | np.ndarray) -> bytes:
    return np.asarray(regs, dtype=">u2").tobytes()


def bytes_to_registers(data: bytes) -> list[int]:
    return np.frombuffer(data, dtype=">u2").astype(np.int64).tolist()


# --------------------------------------------------------------------------- scalar codec
def decode_value(src: PointSource, data: bytes) -> float | bool | str:
    """Decode one point from the bytes of its own registers/bits (slow path, for tests and
    writes; polling uses :class:`RequestDecoder`)."""
    if src.table in BIT_TABLES:
        return bool(data[0] & 1)
    if src.type == "bool":
        word = (data[0] << 8) | data[1] if src.byte_order == "big" else (data[1] << 8) | data[0]
        return bool((word >> (src.bit or 0)) & 1) if src.bit is not None else word != 0
    if src.type == "string":
        return _decode_string(data, src.byte_order)
    perm = byte_permutation(src.size, src.word_order, src.byte_order)
    raw = np.frombuffer(bytes(np.frombuffer(data, np.uint8)[perm]), NUMPY_TYPE[str(src.type)])[0]
    return float(raw) * src.scale + src.offset


def _decode_string(data: bytes, byte_order: str) -> str:
    b = np.frombuffer(data, np.uint8)
    if byte_order == "little":
        b = b.reshape(-1, 2)[:, ::-1].reshape(-1)
    return bytes(b).split(b"\x00", 1)[0].decode("latin-1").rstrip(" ")


def encode_value(src: PointSource, value: Any) -> list[int]:
    """Registers to write for ``value`` (engineering units) to a register point.

    Raises :class:`CodecError` naming the limit when the raw value does not fit the type.
    Coils are written with :func:`build_write_coil`; a bool in a register (``bit``) is a
    read-modify-write done by the driver with :func:`set_bit`.
    """
    t = str(src.type)
    if src.table in BIT_TABLES:
        raise CodecError(f"a {src.table} holds a bit; write it as a coil, not registers")
    if t == "string":
        raw = str(value).encode("latin-1", errors="strict")
        if len(raw) > 2 * src.size:
            raise CodecError(f"text of {len(raw)} bytes does not fit {src.size} registers")
        raw = raw.ljust(2 * src.size, b"\x00")
        b = np.frombuffer(raw, np.uint8)
        if src.byte_order == "little":
            b = b.reshape(-1, 2)[:, ::-1].reshape(-1)
        return bytes_to_registers(bytes(b))
    if t == "bool":
        return [1 if value else 0]
    x = (float(value) - src.offset) / src.scale
    if not math.isfinite(x):
        raise CodecError(f"value {value!r} is not a finite number")
    if t in _INT_RANGE:
        lo, hi = _INT_RANGE[t]
        r = round(x)
        if not lo <= r <= hi:
            raise CodecError(f"value {value} gives raw {r} outside {t} range [{lo}, {hi}] "
                             f"(scale {src.scale}, offset {src.offset})")
        be = int(r).to_bytes(TYPE_REGISTERS[t] * 2, "big", signed=t.startswith("int"))
    else:
        fmt = ">f" if t == "float32" else ">d"
        try:
            be = struct.pack(fmt, x)
        except OverflowError:
            raise CodecError(f"value {value} does not fit a {t}") from None
    perm = byte_permutation(src.size, src.word_order, src.byte_order)
    wire = bytearray(len(be))
    for i, p in enumerate(perm):
        wire[p] = be[i]
    return bytes_to_registers(bytes(wire))


def set_bit(word: int, bit: int, on: bool, byte_order: str = "big") -> int:
    """Register value with one bit set or cleared (read-modify-write of a bool-in-register)."""
    if byte_order == "little":
        word = ((word & 0xFF) << 8) | (word >> 8)
    word = (word | (1 << bit)) if on else (word & ~(1 << bit) & 0xFFFF)
    if byte_order == "little":
        word = ((word & 0xFF) << 8) | (word >> 8)
    return word


# --------------------------------------------------------------------------- vectorised decode
TABLE_CODE: dict[str, int] = {"holding": 0, "input": 1, "coil": 2, "discrete": 3}
TABLE_NAMES: tuple[str, ...] = ("holding", "input", "coil", "discrete")

_KIND_BIT_TABLE = ("coil-bit",)
_KIND_BIT_REG = ("register-bit",)
_KIND_STRING = ("string",)


class SourceTable:
    """The point sources of one profile compiled into columns, once per profile.

    Planning and decoding of a city's 500,000 points then work on integer arrays (table code,
    address, size, decode kind, scale, offset, bit number) instead of one Python object per
    point per device.
    """

    def __init__(self, sources: list[PointSource]):
        self.sources = list(sources)
        kinds: dict[tuple[str, ...], int] = {}
        kind: list[int] = []
        bit_no: list[int] = []
        for src in self.sources:
            if src.table in BIT_TABLES:
                k: tuple[str, ...] = _KIND_BIT_TABLE
                b = 0
            elif src.type == "bool":
                k = _KIND_BIT_REG
                b = -1 if src.bit is None else src.bit
                # a little-endian register swaps its bytes: bit b lives at b ^ 8
                b = b if b < 0 or src.byte_order == "big" else b ^ 8
            elif src.type == "string":
                k, b = _KIND_STRING, 0
            else:
                k, b = ("num", str(src.type), src.word_order, src.byte_order), 0
            kind.append(kinds.setdefault(k, len(kinds)))
            bit_no.append(b)
        self.kinds = list(kinds)
        n = len(self.sources)
        self.table = np.fromiter((TABLE_CODE[x.table] for x in self.sources), np.int64, n)
        self.address = np.fromiter((x.address for x in self.sources), np.int64, n)
        self.size = np.fromiter((x.size for x in self.sources), np.int64, n)
        self.kind = np.asarray(kind, dtype=np.int64)
        self.bit_no = np.asarray(bit_no, dtype=np.int64)
        self.scale = np.fromiter((x.scale for x in self.sources), np.float64, n)
        self.offset = np.fromiter((x.offset for x in self.sources), np.float64, n)
        self.perm: dict[int, np.ndarray] = {}
        self.dtype: dict[int, np.dtype] = {}
        for i, k in enumerate(self.kinds):
            if k[0] == "num":
                self.perm[i] = byte_permutation(TYPE_REGISTERS[k[1]], k[2], k[3])
                self.dtype[i] = np.dtype(NUMPY_TYPE[k[1]])


@dataclass(slots=True)
class _NumGroup:
    dtype: np.dtype
    tags: np.ndarray
    byte_idx: np.ndarray  # (n, nbytes) positions in the response data
    scale: np.ndarray | None
    offset: np.ndarray | None


class RequestDecoder:
    """Decodes every point covered by one read request from its response data in a few
    numpy operations (one per value type), whatever the number of points.

    Built once per planned request from columns: ``tags``, absolute PDU ``addresses`` (child
    block offset already added) and ``src`` (row of each point in ``sources``). Positions are
    kept in bytes of the response data, so :meth:`combine` can decode the concatenated data of
    every request of a poll group in one pass.
    """

    __slots__ = ("_cbits", "_num", "_rbits", "_strings", "count", "start", "table", "tags")

    def __init__(self, table: str, start: int, count: int, tags: np.ndarray, addresses: np.ndarray,
                 src: np.ndarray, sources: SourceTable):
        self.table = table
        self.start = start
        self.count = count
        tags = np.asarray(tags, dtype=np.int64)
        src = np.asarray(src, dtype=np.int64)
        rel = np.asarray(addresses, dtype=np.int64) - start
        bad = (rel < 0) | (rel + sources.size[src] > count)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise ValueError(f"point at {int(rel[i]) + start} outside request {start}+{count}")
        kind = sources.kind[src]
        self._num: list[_NumGroup] = []
        self._rbits: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None  # tags, byte pos, bit
        self._cbits: tuple[np.ndarray, np.ndarray] | None = None  # tags, bit position in the data
        self._strings: list[tuple[int, int, int, str]] = []
        for k in np.unique(kind).tolist():
            m = kind == k
            desc = sources.kinds[k]
            if desc[0] == "num":
                s_scale = sources.scale[src[m]]
                s_off = sources.offset[src[m]]
                self._num.append(_NumGroup(
                    sources.dtype[k], tags[m],
                    (2 * rel[m])[:, None] + sources.perm[k][None, :],
                    None if np.all(s_scale == 1.0) else s_scale,
                    None if np.all(s_off == 0.0) else s_off,
                ))
            elif desc == _KIND_STRING:
                for t, r, si in zip(tags[m].tolist(), rel[m].tolist(), src[m].tolist(), strict=True):
                    s0 = sources.sources[si]
                    self._strings.append((t, 2 * r, 2 * s0.size, s0.byte_order))
            elif desc == _KIND_BIT_TABLE:
                self._cbits = (tags[m], rel[m])
            else:
                self._rbits = (tags[m], 2 * rel[m], sources.bit_no[src[m]])
        self._finish()

    def _finish(self) -> None:
        parts = [g.tags for g in self._num]
        parts += [b[0] for b in (self._rbits, self._cbits) if b is not None]
        self.tags = np.concatenate(parts) if parts else np.zeros(0, np.int64)

    @classmethod
    def from_points(cls, table: str, start: int, count: int,
                    points: list[tuple[int, PointSource, int]]) -> RequestDecoder:
        """From ``(tag, source, absolute address)`` tuples (tests, one-off reads)."""
        st = SourceTable([p[1] for p in points])
        return cls(table, start, count, np.asarray([p[0] for p in points], np.int64),
                   np.asarray([p[2] for p in points], np.int64), np.arange(len(points)), st)

    @classmethod
    def combine(cls, decoders: list[RequestDecoder], lengths: list[int]) -> RequestDecoder:
        """One decoder for the concatenated response data of ``decoders`` (``lengths``: bytes
        of each response's data): a luminaire poll of 13 requests is decoded in ~5 numpy
        passes instead of ~60. Numeric groups of the same type are merged."""
        out = cls.__new__(cls)
        out.table, out.start, out.count = "mixed", 0, 0
        bases = np.cumsum([0, *lengths[:-1]]).tolist()
        num: dict[np.dtype, list[tuple[_NumGroup, int]]] = {}
        rb: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        cb: list[tuple[np.ndarray, np.ndarray]] = []
        out._strings = []
        for d, base in zip(decoders, bases, strict=True):
            for g in d._num:
                num.setdefault(g.dtype, []).append((g, base))
            if d._rbits is not None:
                rb.append((d._rbits[0], d._rbits[1] + base, d._rbits[2]))
            if d._cbits is not None:
                cb.append((d._cbits[0], d._cbits[1] + 8 * base))
            out._strings += [(t, o + base, n, bo) for t, o, n, bo in d._strings]
        out._num = []
        for dtype, gs in num.items():
            def col(attr: str, fill: float, gs: list[tuple[_NumGroup, int]] = gs) -> np.ndarray | None:
                if all(getattr(g, attr) is None for g, _ in gs):
                    return None
                return np.concatenate([getattr(g, attr) if getattr(g, attr) is not None
                                       else np.full(len(g.tags), fill) for g, _ in gs])
            out._num.append(_NumGroup(
                dtype, np.concatenate([g.tags for g, _ in gs]),
                np.concatenate([g.byte_idx + b for g, b in gs]), col("scale", 1.0), col("offset", 0.0)))
        out._rbits = tuple(np.concatenate(c) for c in zip(*rb, strict=True)) if rb else None  # type: ignore[assignment]
        out._cbits = tuple(np.concatenate(c) for c in zip(*cb, strict=True)) if cb else None  # type: ignore[assignment]
        out._finish()
        return out

    def shifted(self, offset: int) -> RequestDecoder:
        """The same decoder for tags ``offset`` further on (a station of the same shape: the
        plan of a cabinet with 48 luminaires is computed once for all such cabinets)."""
        out = RequestDecoder.__new__(RequestDecoder)
        out.table, out.start, out.count = self.table, self.start, self.count
        out._num = [_NumGroup(g.dtype, g.tags + offset, g.byte_idx, g.scale, g.offset) for g in self._num]
        out._rbits = (self._rbits[0] + offset, *self._rbits[1:]) if self._rbits is not None else None
        out._cbits = (self._cbits[0] + offset, self._cbits[1]) if self._cbits is not None else None
        out._strings = [(t + offset, o, n, bo) for t, o, n, bo in self._strings]
        out._finish()
        return out

    @property
    def string_tags(self) -> list[int]:
        return [s[0] for s in self._strings]

    @property
    def all_tags(self) -> np.ndarray:
        """Every tag this request feeds (numbers, bools and strings)."""
        if not self._strings:
            return self.tags
        return np.concatenate([self.tags, np.asarray(self.string_tags, np.int64)])

    def decode(self, data: bytes) -> tuple[np.ndarray, list[tuple[int, str]]]:
        """Values of :attr:`tags` (float64, same order) and the (tag, text) of string points.

        ``data`` is the response's data field (after the byte count), already length-checked
        by :func:`parse_response` (or several of them concatenated, for :meth:`combine`).
        """
        buf = np.frombuffer(data, dtype=np.uint8)
        out: list[np.ndarray] = []
        for g in self._num:
            v = buf[g.byte_idx].view(g.dtype).reshape(-1).astype(np.float64)
            if g.scale is not None:
                v *= g.scale
            if g.offset is not None:
                v += g.offset
            out.append(v)
        if self._rbits is not None:
            _, pos, no = self._rbits
            words = (buf[pos].astype(np.int64) << 8) | buf[pos + 1]
            out.append(np.where(no < 0, words != 0, (words >> np.maximum(no, 0)) & 1).astype(np.float64))
        if self._cbits is not None:
            out.append(np.unpackbits(buf, bitorder="little")[self._cbits[1]].astype(np.float64))
        values = np.concatenate(out) if len(out) > 1 else (out[0] if out else np.zeros(0, np.float64))
        texts = [(tag, _decode_string(data[o:o + n], bo)) for tag, o, n, bo in self._strings]
        return values, texts


# --------------------------------------------------------------------------- MBAP frames
MBAP_HEADER = struct.Struct(">HHHB")  # transaction id, protocol id, length, unit id
MAX_PDU = 253  # MBAP §3.1.3 / spec §4.1: PDU <= 253 bytes


def frame(tid: int, unit: int, pdu: bytes) -> bytes:
    """An MBAP ADU: header (length counts the unit id and the PDU) + PDU."""
    return MBAP_HEADER.pack(tid & 0xFFFF, 0, len(pdu) + 1, unit) + pdu


def read_pdu(fc: int, start: int, count: int) -> bytes:
    return struct.pack(">BHH", fc, start, count)


def write_coil_pdu(address: int, on: bool) -> bytes:
    return struct.pack(">BHH", FC_WRITE_COIL, address, 0xFF00 if on else 0x0000)


def write_register_pdu(address: int, value: int) -> bytes:
    return struct.pack(">BHH", FC_WRITE_REGISTER, address, value & 0xFFFF)


def write_registers_pdu(address: int, values: list[int]) -> bytes:
    if not 1 <= len(values) <= MAX_WRITE_REGISTERS:
        raise CodecError(f"write of {len(values)} registers: 1..{MAX_WRITE_REGISTERS} allowed (spec §6.12)")
    return struct.pack(f">BHHB{len(values)}H", FC_WRITE_REGISTERS, address, len(values),
                       2 * len(values), *(v & 0xFFFF for v in values))


def parse_header(head: bytes) -> tuple[int, int, int, int]:
    """(transaction id, protocol id, pdu length, unit id) of a 7-byte MBAP header.

    Raises :class:`MalformedFrame` for a protocol id other than 0 or a length that cannot hold
    a PDU, so a garbage stream is detected at its first bytes.
    """
    if len(head) != MBAP_HEADER.size:
        raise MalformedFrame(f"MBAP header of {len(head)} bytes, expected 7")
    tid, proto, length, unit = MBAP_HEADER.unpack(head)
    if proto != 0:
        raise MalformedFrame(f"protocol id {proto}, expected 0 (Modbus)")
    if not 2 <= length <= MAX_PDU + 1:
        raise MalformedFrame(f"MBAP length {length} outside 2..{MAX_PDU + 1}")
    return tid, proto, length - 1, unit


def parse_response(request: bytes, pdu: bytes) -> bytes:
    """Check a response PDU against its request PDU; return the data of a read (the bytes
    after the byte count) or ``b""`` for a write.

    Raises :class:`ExceptionResponse` for a §7 exception and :class:`MalformedFrame` for any
    mismatch (function, byte count, echo) - never ``struct.error`` or ``IndexError``.
    """
    if not pdu:
        raise MalformedFrame("empty PDU")
    fc = request[0]
    rfc = pdu[0]
    if rfc == fc | 0x80:
        if len(pdu) != 2:
            raise MalformedFrame(f"exception response of {len(pdu)} bytes, expected 2")
        raise ExceptionResponse(fc, pdu[1])
    if rfc != fc:
        raise MalformedFrame(f"function 0x{rfc:02X} in answer to 0x{fc:02X}")
    if fc in (FC_READ_COILS, FC_READ_DISCRETE, FC_READ_HOLDING, FC_READ_INPUT):
        count = (request[3] << 8) | request[4]
        want = (count + 7) // 8 if fc in (FC_READ_COILS, FC_READ_DISCRETE) else 2 * count
        if len(pdu) < 2 or pdu[1] != want or len(pdu) != 2 + want:
            got = pdu[1] if len(pdu) > 1 else None
            raise MalformedFrame(f"byte count {got} / PDU {len(pdu)} bytes for {count} "
                                 f"{'bits' if want != 2 * count else 'registers'}, expected {want}")
        return pdu[2:]
    if fc in (FC_WRITE_COIL, FC_WRITE_REGISTER):
        if pdu != request:
            raise MalformedFrame("write response does not echo the request (spec §6.5/§6.6)")
        return b""
    if fc in (FC_WRITE_COILS, FC_WRITE_REGISTERS):
        if pdu != request[:5]:
            raise MalformedFrame("write response does not echo address and quantity (spec §6.11/§6.12)")
        return b""
    raise MalformedFrame(f"unsupported function 0x{fc:02X}")


# --------------------------------------------------------------------------- exceptions -> status
EXCEPTION_NAMES: dict[int, str] = {
    0x01: "illegal function", 0x02: "illegal data address", 0x03: "illegal data value",
    0x04: "server device failure", 0x05: "acknowledge", 0x06: "server device busy",
    0x08: "memory parity error", 0x0A: "gateway path unavailable",
    0x0B: "gateway target device failed to respond",
}

#: Spec §7 exception code -> OPC UA status of the points a failed *read* covers.
#: 0x01-0x03 say the request does not fit the device (wrong table, address or quantity): the
#: profile is wrong, not the device (BadConfigurationError). 0x04/0x08 the device is broken
#: (BadDeviceFailure). 0x05/0x06 the device is alive but cannot answer now: the last value is
#: still usable (UncertainLastUsableValue, value kept). 0x0A/0x0B a gateway could not reach the
#: target (a luminaire behind a reachable cabinet): the device is lost (BadCommunicationError).
READ_EXCEPTION_STATUS: dict[int, int] = {
    0x01: Q.BadConfigurationError,
    0x02: Q.BadConfigurationError,
    0x03: Q.BadConfigurationError,
    0x04: Q.BadDeviceFailure,
    0x05: Q.UncertainLastUsableValue,
    0x06: Q.UncertainLastUsableValue,
    0x08: Q.BadDeviceFailure,
    0x0A: Q.BadCommunicationError,
    0x0B: Q.BadCommunicationError,
}

#: Spec §7 exception code -> OPC UA status returned to the writer.
WRITE_EXCEPTION_STATUS: dict[int, int] = {
    0x01: Q.BadNotSupported,
    0x02: Q.BadConfigurationError,
    0x03: Q.BadOutOfRange,
    0x04: Q.BadDeviceFailure,
    0x05: Q.Good,  # accepted, long processing: the read-back will confirm it
    0x06: Q.BadResourceUnavailable,
    0x08: Q.BadDeviceFailure,
    0x0A: Q.BadCommunicationError,
    0x0B: Q.BadCommunicationError,
}


def read_status(code: int) -> int:
    return READ_EXCEPTION_STATUS.get(code, Q.BadUnexpectedError)


def write_status(code: int) -> int:
    return WRITE_EXCEPTION_STATUS.get(code, Q.BadUnexpectedError)
