# One module (over ~600 lines): the simulator of one device class (Modbus register map, contactor, metering) over the shared luminaire model.
"""Lighting cabinet (segment) controllers as Modbus TCP servers, over the shared luminaire model.

``serve_site(site, clock, devices)`` serves every ``kind: cabinet`` Modbus device of a site (and
its luminaire children) at its ``connection`` host/port/unit. Cabinets sharing a host:port are
served by one listener and told apart by unit id. The register map is documented in
``docs/devices/modbus-cabinet.md`` and declared below (``CAB_IR`` ...); the profiles
``config/profiles/cabinet-modbus.yaml`` and ``luminaire-modbus.yaml`` describe the same map
for the generic driver.

Scale: one :class:`~simulators.luminaire.LuminaireBank` holds every luminaire of the process;
registers are encoded on read, vectorised per request from the numpy state (no per-register
Python work and no register copy to keep in sync). The bank is stepped lazily on read (at most
every half real second of clock time) and by a 1 s ticker, so a 34,000-luminaire city costs a
few numpy passes per second plus pymodbus' per-request work.

pymodbus 3.16 is used for framing and the listener; the request handler is subclassed so that

* each request is answered from its own PDU (pymodbus' stock handler reads ``last_pdu`` after
  awaiting the datastore, so a delayed answer could carry the next request's transaction id);
* faults can delay an answer (slow), drop it (silent), or replace it with a Modbus exception
  (Modbus Application Protocol V1.1b3 §7: 0x02 illegal data address, 0x04 server device
  failure, 0x06 server device busy, 0x0B gateway target device failed to respond).

Every complete request in a TCP segment is answered, each from its own PDU (pymodbus' own
handler answers the first one only): the driver may have requests to several unit ids of one
connection outstanding at once.
"""

from __future__ import annotations

import asyncio
import logging
import math
import zlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pymodbus.constants import ExcCodes
from pymodbus.datastore import ModbusServerContext
from pymodbus.exceptions import ModbusIOException
from pymodbus.pdu import ExceptionResponse
from pymodbus.server import ModbusTcpServer
from pymodbus.server.requesthandler import ServerRequestHandler
from pymodbus.transaction import TransactionManager

from scada.clock import Clock
from scada.site import DeviceInstance, Site

from .faults import FaultError
from .luminaire import FAULT_NAMES, LuminaireBank

log = logging.getLogger("simulators.cabinet")

# --- register map (docs/devices/modbus-cabinet.md) ----------------------------------------------
#: cabinet input registers (FC4), addresses 0-31
CAB_IR_SIZE = 32
IR_STATUS, IR_LUM_COUNT, IR_V_L1, IR_V_L2, IR_V_L3, IR_FREQ = 0, 1, 2, 3, 4, 5
IR_POWER = 6          # uint32 x0.1 W, high word first
IR_ENERGY = 8         # uint32 Wh, LOW word first (meter module word order "CDAB")
IR_I_L1 = 10          # uint16 x0.01 A per phase, 10..12
IR_UPTIME = 14        # uint32 s, high word first
IR_LUM_FAULTY = 16    # luminaires reporting a failure bit
IR_LUM_UNREACHABLE = 17
#: cabinet holding registers (FC3/6/16), addresses 0-31
CAB_HR_SIZE = 32
HR_GROUP_LEVEL, HR_GROUP_FADE = 0, 1
#: coils (FC1/5/15) and discrete inputs (FC2)
COIL_CONTACTOR = 0
DI_CONTACTOR, DI_DOOR, DI_BREAKER, DI_MAINS, DI_COMM_OK = 0, 1, 2, 3, 4
DI_COUNT = 5
#: cabinet status word bits (IR 0)
ST_CONTACTOR, ST_DOOR, ST_BREAKER, ST_MAINS, ST_COMM_OK, ST_LUM_FAULT = (1 << i for i in range(6))
#: luminaire block layout (offsets inside each block, in IR and HR)
BLOCK_BASE, BLOCK_SIZE = 1000, 16
LIR_STATUS, LIR_LEVEL, LIR_POWER, LIR_ENERGY, LIR_OP_TIME, LIR_STARTS = 0, 1, 2, 3, 5, 7
LIR_TEMP, LIR_SUPPLY_V, LIR_NOMINAL_W = 9, 10, 11
LHR_LEVEL_CMD, LHR_FADE = 0, 1
#: luminaire status bit 7: supply fault (under- or over-voltage)
LST_SUPPLY = 0x0080

LINE_LOSS = 0.03          # cable losses between cabinet meter and luminaires (3 % of load)
CONTROLLER_W = 6.0        # the controller, modem and meter themselves
POWER_FACTOR = 0.95

CABINET_FAULTS = ("offline", "silent", "slow", "exception", "door_open", "breaker_trip",
                  "energy_reset", "mains_voltage")
LUMINAIRE_FAULTS = (*FAULT_NAMES, "unreachable", "ignore_commands", "energy_reset")
EXCEPTION_CODES = {int(c) for c in (ExcCodes.ILLEGAL_ADDRESS, ExcCodes.DEVICE_FAILURE,
                                    ExcCodes.DEVICE_BUSY, ExcCodes.GATEWAY_NO_RESPONSE,
                                    ExcCodes.ILLEGAL_FUNCTION, ExcCodes.ILLEGAL_VALUE,
                                    ExcCodes.GATEWAY_PATH_UNAVIABLE)}

_FC_TABLE = {1: "coil", 5: "coil", 15: "coil", 2: "discrete", 3: "holding", 6: "holding",
             16: "holding", 4: "input"}
MAX_REGS, MAX_BITS = 125, 2000   # Modbus Application Protocol §6.3/§6.1 quantity limits


def split32(v: np.ndarray, high_first: bool = True) -> np.ndarray:
    """uint32 values -> (n, 2) uint16 words in the given word order."""
    u = np.asarray(v).astype(np.uint64) & 0xFFFFFFFF
    hi = (u >> 16).astype(np.uint16)
    lo = (u & 0xFFFF).astype(np.uint16)
    return np.stack((hi, lo) if high_first else (lo, hi), axis=-1)


def u16(v: np.ndarray | float, scale: float = 1.0) -> np.ndarray:
    """Scaled, rounded, clipped to uint16 (a register's engineering value / scale)."""
    return np.clip(np.rint(np.asarray(v, dtype=np.float64) / scale), 0, 0xFFFF).astype(np.uint16)


def i16(v: np.ndarray | float, scale: float = 1.0) -> np.ndarray:
    """Scaled, rounded, clipped to int16, as the uint16 register bit pattern."""
    r = np.clip(np.rint(np.asarray(v, dtype=np.float64) / scale), -0x8000, 0x7FFF)
    return r.astype(np.int16).view(np.uint16)


def u32(v: np.ndarray | float, scale: float = 1.0) -> np.ndarray:
    return np.clip(np.rint(np.asarray(v, dtype=np.float64) / scale), 0, 0xFFFFFFFF).astype(np.uint64)


def _clip16(x: float) -> int:
    return min(max(round(x), 0), 0xFFFF)


def _clip32(x: float) -> int:
    return min(max(round(x), 0), 0xFFFFFFFF)


def encode_luminaire_ir(bank: LuminaireBank, ix: np.ndarray) -> np.ndarray:
    """Input-register blocks of luminaires ``ix`` (bank indices): (len(ix), BLOCK_SIZE) uint16."""
    out = np.zeros((len(ix), BLOCK_SIZE), dtype=np.uint16)
    st = bank.status_word(ix)
    supply = (st & 0x0060) != 0
    out[:, LIR_STATUS] = st | np.where(supply, LST_SUPPLY, 0).astype(np.uint16)
    out[:, LIR_LEVEL] = u16(bank.level[ix], 0.1)
    out[:, LIR_POWER] = u16(bank.power_w[ix], 0.1)
    out[:, LIR_ENERGY:LIR_ENERGY + 2] = split32(u32(bank.energy_wh[ix], 0.1))
    out[:, LIR_OP_TIME:LIR_OP_TIME + 2] = split32(u32(bank.operating_h[ix] * 3600.0))
    out[:, LIR_STARTS:LIR_STARTS + 2] = split32(np.minimum(bank.starts[ix], 0xFFFFFFFF))
    out[:, LIR_TEMP] = i16(bank.driver_temp_c[ix], 0.1)
    out[:, LIR_SUPPLY_V] = u16(bank.supply_v[ix], 0.1)
    out[:, LIR_NOMINAL_W] = u16(bank.nominal_w[ix])
    return out


@dataclass
class Cabinet:
    """One simulated cabinet controller: its own state plus a slice of the luminaire bank."""

    dev: DeviceInstance
    no: int                       # cabinet number in the world
    first: int                    # first bank index of its luminaires
    count: int
    block_of: np.ndarray          # block number (index-1) of each luminaire, ascending
    block_base: int
    block_size: int
    contactor: bool = True
    door_open: bool = False
    breaker_tripped: bool = False
    group_level_raw: int = 1000   # x0.1 %
    group_fade_raw: int = 0       # x0.1 s
    #: views into the world's per-cabinet arrays (phase voltages, meter, mains ok, override)
    phase_v: np.ndarray = field(default_factory=lambda: np.full(3, 230.0), repr=False)
    _meter: np.ndarray = field(default_factory=lambda: np.zeros(1), repr=False)
    _mains: np.ndarray = field(default_factory=lambda: np.ones(1, dtype=bool), repr=False)
    _override: np.ndarray = field(default_factory=lambda: np.full(1, np.nan), repr=False)
    # communication faults (offline / silent / slow / exception)
    offline: bool = False
    silent: bool = False
    delay_s: float = 0.0
    exception: int | None = None
    faults: dict[str, dict[str, Any]] = field(default_factory=dict)
    lum_paths: list[str] = field(default_factory=list)

    @property
    def lum(self) -> slice:
        return slice(self.first, self.first + self.count)

    @property
    def unit(self) -> int:
        return int(self.dev.connection.get("unit", 1))

    @property
    def meter_wh(self) -> float:
        """Active energy import counter of the cabinet's 3-phase meter (Wh)."""
        return float(self._meter[0])

    @meter_wh.setter
    def meter_wh(self, wh: float) -> None:
        self._meter[0] = wh

    @property
    def mains_override(self) -> float | None:
        v = float(self._override[0])
        return None if math.isnan(v) else v

    @mains_override.setter
    def mains_override(self, volts: float | None) -> None:
        self._override[0] = np.nan if volts is None else volts

    @property
    def mains_present(self) -> bool:
        return bool(self._mains[0])

    @property
    def feeding(self) -> bool:
        """Luminaires have mains: contactor closed, breaker in, mains present."""
        return self.contactor and not self.breaker_tripped and self.mains_present


class World:
    """Every cabinet of a ``serve_site`` call, their luminaires, and the clock that drives them."""

    def __init__(self, clock: Clock, cabinets_devs: list[DeviceInstance], seed: int):
        self.clock = clock
        now = clock.time()
        self.t0 = now
        self.cabinets: list[Cabinet] = []
        self.by_path: dict[str, Cabinet] = {}
        self.lum_path: dict[str, tuple[Cabinet, int]] = {}
        nominal: list[float] = []
        first = 0
        for no, dev in enumerate(cabinets_devs):
            kids = sorted((c for c in dev.children if c.kind == "luminaire" and c.enabled),
                          key=lambda c: c.index or 0)
            opts = dev.children[0].profile.options if dev.children else {}
            cab = Cabinet(
                dev=dev, no=no, first=first, count=len(kids),
                block_of=np.array([(c.index or 1) - 1 for c in kids], dtype=np.int64),
                block_base=int(opts.get("block_base", BLOCK_BASE)),
                block_size=int(opts.get("block_size", BLOCK_SIZE)),
            )
            if len(kids) and (cab.block_of.min() < 0 or len(np.unique(cab.block_of)) != len(kids)):
                raise ValueError(
                    f"{dev.path}: luminaire numbers must be unique and start at 1 (block n is at "
                    f"block_base + (n-1)*block_size); check the children's start/count")
            if cab.block_size < BLOCK_SIZE:
                raise ValueError(
                    f"{dev.path}: luminaire profile block_size {cab.block_size} is smaller than "
                    f"the simulator's {BLOCK_SIZE}-register block; use block_size >= {BLOCK_SIZE}")
            for k, c in enumerate(kids):
                nominal.append(float(c.attrs.get("nominal_w", 40.0)))
                self.lum_path[c.path] = (cab, first + k)
                cab.lum_paths.append(c.path)
            first += len(kids)
            self.cabinets.append(cab)
            self.by_path[dev.path] = cab
        n = first
        rng = np.random.default_rng(seed)
        op_h = rng.uniform(0.0, 30_000.0, n)       # a city whose LEDs were fitted over ~7 years
        self.bank = LuminaireBank(n, np.array(nominal) if n else 40.0, start_time=now,
                                  seed=seed, operating_h=op_h)
        self.bank.energy_wh[:] = op_h * self.bank.nominal_w * 0.7   # history: ~70 % mean load
        self.cab_of = np.zeros(n, dtype=np.int64)
        self.phase_of = np.zeros(n, dtype=np.int64)
        nc = len(self.cabinets)
        self.phase_v = np.full((nc, 3), 230.0)
        self.meter = np.zeros(nc)
        self.mains_ok = np.ones(nc, dtype=bool)
        self.override = np.full(nc, np.nan)
        for cab in self.cabinets:
            no = cab.no
            self.cab_of[cab.lum] = no
            self.phase_of[cab.lum] = np.arange(cab.count) % 3
            cab.phase_v = self.phase_v[no]
            cab._meter = self.meter[no:no + 1]
            cab._mains = self.mains_ok[no:no + 1]
            cab._override = self.override[no:no + 1]
            cab.meter_wh = float(self.bank.energy_wh[cab.lum].sum() * (1 + LINE_LOSS))
        nonempty = [c.no for c in self.cabinets if c.count > 0]
        self._ne_idx = np.array(nonempty, dtype=np.int64)
        self._ne_starts = np.array([self.cabinets[k].first for k in nonempty], dtype=np.int64)
        self._last_meter_t = now
        self._v_offset = rng.uniform(-4.0, 4.0, (len(self.cabinets), 3))
        self._v_phase = rng.uniform(0.0, 2 * math.pi, len(self.cabinets))
        self.unreachable = np.zeros(n, dtype=bool)
        self.level_cmd_raw = np.full(n, 1000, dtype=np.uint16)   # controller's stored setpoints
        self.fade_raw = np.zeros(n, dtype=np.uint16)
        self._cab_power = np.zeros(len(self.cabinets))
        self._cab_phase_power = np.zeros((len(self.cabinets), 3))
        rate = clock.rate
        #: how stale (clock seconds) a read may see the model: half a real second
        self.max_stale = 0.0 if math.isinf(rate) else 0.5 * rate
        self._update_mains(now)
        for cab in self.cabinets:
            self.bank.set_powered(cab.lum, cab.feeding, now)
        self.bank.command(None, 100.0, now)
        self._aggregate()

    # --- time ------------------------------------------------------------------------------
    def _update_mains(self, now: float) -> None:
        if not self.cabinets:
            return
        day = 2 * math.pi * ((now % 86400.0) / 86400.0)
        v = 231.0 + self._v_offset + 3.0 * np.sin(day + self._v_phase)[:, None]
        forced = ~np.isnan(self.override)
        if forced.any():
            v[forced] = self.override[forced, None]
        self.phase_v[:] = v                       # in place: cabinets hold row views
        self.mains_ok[:] = (v > 100.0).all(axis=1)
        self.bank.mains_v[:] = v[self.cab_of, self.phase_of]

    def sync(self, force: bool = False) -> float:
        """Step the model to the clock if it is staler than ``max_stale`` (or ``force``)."""
        now = self.clock.time()
        if force or now - self.bank.t > self.max_stale:
            self._update_mains(now)
            self.step(now)
        return now

    def step(self, now: float) -> None:
        if now <= self.bank.t:
            return
        e0 = self.bank.energy_wh.copy()
        self.bank.step(now)
        if self.bank.n:
            # energy_reset of a luminaire happens between steps, so this delta is never negative
            de = self.bank.energy_wh - e0
            self.meter[self._ne_idx] += np.add.reduceat(de, self._ne_starts) * (1 + LINE_LOSS)
        dt_h = (now - self._last_meter_t) / 3600.0
        self.meter += (CONTROLLER_W * dt_h) * self.mains_ok
        self._last_meter_t = now
        self._aggregate()

    def _aggregate(self) -> None:
        """Cabinet power and per-phase power from the luminaires (one bincount)."""
        nc = len(self.cabinets)
        if not nc:
            return
        if self.bank.n:
            pp = np.bincount(self.cab_of * 3 + self.phase_of, weights=self.bank.power_w,
                             minlength=nc * 3).reshape(nc, 3)
        else:
            pp = np.zeros((nc, 3))
        pp *= 1 + LINE_LOSS
        pp += (CONTROLLER_W / 3) * self.mains_ok[:, None]
        self._cab_phase_power = pp
        self._cab_power = pp.sum(axis=1)

    def refresh_power(self, cab: Cabinet, now: float) -> None:
        """After a contactor/breaker change: feed or cut the cabinet's luminaires."""
        self.bank.set_powered(cab.lum, cab.feeding, now)
        self._aggregate()

    # --- encoding ----------------------------------------------------------------------------
    def cabinet_ir(self, cab: Cabinet, now: float) -> list[int]:
        """Input registers 0-31 of a cabinet (plain ints: 32 values are cheaper than numpy)."""
        sl = cab.lum
        lum_faulty = int(np.count_nonzero(self.bank.faults[sl] & 0x007F))
        unreachable = int(np.count_nonzero(self.unreachable[sl]))
        st = ((ST_CONTACTOR if cab.contactor else 0) | (ST_DOOR if cab.door_open else 0)
              | (ST_BREAKER if cab.breaker_tripped else 0) | (ST_MAINS if cab.mains_present else 0)
              | (ST_COMM_OK if unreachable == 0 else 0) | (ST_LUM_FAULT if lum_faulty else 0))
        volts = cab.phase_v.tolist()
        phase_w = self._cab_phase_power[cab.no].tolist()
        power = _clip32(self._cab_power[cab.no] * 10.0)
        energy = _clip32(cab.meter_wh)
        uptime = _clip32(now - self.t0)
        r = [0] * CAB_IR_SIZE
        r[IR_STATUS] = st
        r[IR_LUM_COUNT] = cab.count
        for k in range(3):
            r[IR_V_L1 + k] = _clip16(volts[k] * 10.0)
            r[IR_I_L1 + k] = _clip16(phase_w[k] / (max(volts[k], 1.0) * POWER_FACTOR) * 100.0)
        r[IR_FREQ] = 5000 + round(2 * math.sin(now / 97.0))
        r[IR_POWER], r[IR_POWER + 1] = power >> 16, power & 0xFFFF          # ABCD
        r[IR_ENERGY], r[IR_ENERGY + 1] = energy & 0xFFFF, energy >> 16      # CDAB
        r[IR_UPTIME], r[IR_UPTIME + 1] = uptime >> 16, uptime & 0xFFFF
        r[IR_LUM_FAULTY] = lum_faulty
        r[IR_LUM_UNREACHABLE] = unreachable
        return r

    def cabinet_hr(self, cab: Cabinet) -> list[int]:
        r = [0] * CAB_HR_SIZE
        r[HR_GROUP_LEVEL] = cab.group_level_raw
        r[HR_GROUP_FADE] = cab.group_fade_raw
        return r

    def cabinet_di(self, cab: Cabinet) -> list[bool]:
        unreachable = bool(self.unreachable[cab.lum].any())
        return [cab.contactor, cab.door_open, cab.breaker_tripped, cab.mains_present,
                not unreachable]


class Endpoint:
    """One listening host:port and the cabinets (unit ids) behind it."""

    def __init__(self, world: World, host: str, port: int):
        self.world = world
        self.host = host
        self.port = port
        self.units: dict[int, Cabinet] = {}
        self.server: _CabinetServer | None = None
        self.tasks: set[asyncio.Task[None]] = set()
        self.requests = 0
        self.context = _Context(self)
        self._release = asyncio.Event()

    # --- lifecycle ------------------------------------------------------------------------
    async def start(self) -> None:
        server = _CabinetServer(self)
        try:
            await server.serve_forever(background=True)
        except RuntimeError as e:
            paths = ", ".join(c.dev.path for c in self.units.values())
            raise OSError(
                f"cabinet simulator {paths}: cannot listen on {self.host}:{self.port} ({e}); "
                "is another process using that port? Choose free ports in the site file"
            ) from None
        self.server = server
        self._release = asyncio.Event()

    async def stop(self) -> None:
        server, self.server = self.server, None
        self._release.set()           # silent requests end without an answer
        for t in list(self.tasks):
            t.cancel()
        if self.tasks:
            await asyncio.gather(*self.tasks, return_exceptions=True)
        if server is not None:
            await server.shutdown()

    async def apply_offline(self) -> None:
        """Listener up unless every unit on it is offline (socket closed = connection refused)."""
        want_up = not all(c.offline for c in self.units.values())
        if want_up and self.server is None:
            await self.start()
        elif not want_up and self.server is not None:
            await self.stop()

    def release_silent(self) -> None:
        self._release.set()
        self._release = asyncio.Event()

    # --- requests ---------------------------------------------------------------------------
    async def answer(self, pdu: Any) -> Any | None:
        """The response PDU for ``pdu``, or None to stay silent."""
        self.requests += 1
        cab = self.units.get(pdu.dev_id)
        if cab is not None:
            if cab.silent or cab.offline:
                await self._release.wait()
                return None
            if cab.delay_s > 0:
                await asyncio.sleep(cab.delay_s)
            if cab.exception is not None:
                return ExceptionResponse(pdu.function_code, cab.exception)
        return await pdu.datastore_update(self.context, pdu.dev_id)

    def read(self, unit: int, fc: int, address: int, count: int) -> list[int] | list[bool] | ExcCodes:
        cab = self.units.get(unit)
        if cab is None:
            return ExcCodes.GATEWAY_NO_RESPONSE
        table = _FC_TABLE.get(fc)
        if table is None:
            return ExcCodes.ILLEGAL_FUNCTION
        limit = MAX_BITS if table in ("coil", "discrete") else MAX_REGS
        if not 1 <= count <= limit:
            return ExcCodes.ILLEGAL_VALUE
        w = self.world
        now = w.sync()
        end = address + count
        if table == "coil":
            if end > 1:
                return ExcCodes.ILLEGAL_ADDRESS
            return [cab.contactor]
        if table == "discrete":
            if end > DI_COUNT:
                return ExcCodes.ILLEGAL_ADDRESS
            return w.cabinet_di(cab)[address:end]
        area = CAB_IR_SIZE if table == "input" else CAB_HR_SIZE
        if end <= area:
            regs = w.cabinet_ir(cab, now) if table == "input" else w.cabinet_hr(cab)
            return regs[address:end]
        return self._read_blocks(cab, table, address, end)

    def _blocks(self, cab: Cabinet, address: int, end: int) -> tuple[np.ndarray, int, int] | ExcCodes:
        """Bank indices of luminaire blocks covering [address, end), and the block range."""
        if address < cab.block_base or cab.count == 0:
            return ExcCodes.ILLEGAL_ADDRESS
        b0 = (address - cab.block_base) // cab.block_size
        b1 = (end - 1 - cab.block_base) // cab.block_size
        lo = int(np.searchsorted(cab.block_of, b0))
        hi = int(np.searchsorted(cab.block_of, b1, side="right"))
        if hi - lo != b1 - b0 + 1:
            return ExcCodes.ILLEGAL_ADDRESS        # a block with no luminaire behind it
        ix = np.arange(cab.first + lo, cab.first + hi)
        if self.world.unreachable[ix].any():
            return ExcCodes.GATEWAY_NO_RESPONSE
        return ix, b0, b1

    def _read_blocks(self, cab: Cabinet, table: str, address: int, end: int) -> list[int] | ExcCodes:
        got = self._blocks(cab, address, end)
        if isinstance(got, ExcCodes):
            return got
        ix, b0, _ = got
        w = self.world
        if table == "input":
            blk = encode_luminaire_ir(w.bank, ix)
        else:
            blk = np.zeros((len(ix), BLOCK_SIZE), dtype=np.uint16)
            blk[:, LHR_LEVEL_CMD] = w.level_cmd_raw[ix]
            blk[:, LHR_FADE] = w.fade_raw[ix]
        if cab.block_size > BLOCK_SIZE:
            blk = np.pad(blk, ((0, 0), (0, cab.block_size - BLOCK_SIZE)))
        flat = blk.reshape(-1)
        off = address - (cab.block_base + b0 * cab.block_size)
        return flat[off:off + (end - address)].tolist()

    def write(self, unit: int, fc: int, address: int, values: list[int] | list[bool]) -> ExcCodes | None:
        cab = self.units.get(unit)
        if cab is None:
            return ExcCodes.GATEWAY_NO_RESPONSE
        table = _FC_TABLE.get(fc)
        w = self.world
        now = w.sync(force=True)
        end = address + len(values)
        if table == "coil":
            if end > 1:
                return ExcCodes.ILLEGAL_ADDRESS
            cab.contactor = bool(values[0])
            w.refresh_power(cab, now)
            return None
        if table != "holding":
            return ExcCodes.ILLEGAL_FUNCTION
        if end <= CAB_HR_SIZE:
            regs = w.cabinet_hr(cab)
            regs[address:end] = values
            if end > HR_GROUP_FADE + 1:
                return ExcCodes.ILLEGAL_ADDRESS     # reserved registers are read-only
            if regs[HR_GROUP_LEVEL] > 1000:
                return ExcCodes.ILLEGAL_VALUE
            cab.group_fade_raw = int(regs[HR_GROUP_FADE])
            if address <= HR_GROUP_LEVEL < end:
                self.group_command(cab, int(regs[HR_GROUP_LEVEL]), now)
            return None
        got = self._blocks(cab, address, end)
        if isinstance(got, ExcCodes):
            return got
        ix, b0, _ = got
        off = np.arange(address, end) - cab.block_base - b0 * cab.block_size
        slot = off % cab.block_size
        blk_ix = ix[off // cab.block_size]
        vals = np.asarray(values, dtype=np.int64)
        if np.any((slot != LHR_LEVEL_CMD) & (slot != LHR_FADE)):
            return ExcCodes.ILLEGAL_ADDRESS
        if np.any(vals[slot == LHR_LEVEL_CMD] > 1000):
            return ExcCodes.ILLEGAL_VALUE
        fade = slot == LHR_FADE
        w.fade_raw[blk_ix[fade]] = vals[fade]
        lv = slot == LHR_LEVEL_CMD
        targets, levels = blk_ix[lv], vals[lv]
        w.level_cmd_raw[targets] = levels
        fades = w.fade_raw[targets]
        for f in np.unique(fades).tolist():     # one vectorised command per fade time
            same = fades == f
            w.bank.command(targets[same], levels[same] / 10.0, now, fade_s=f / 10.0)
        w._aggregate()
        return None

    def group_command(self, cab: Cabinet, raw: int, now: float) -> None:
        """Group level: every reachable luminaire of the cabinet, and their level_cmd echo."""
        w = self.world
        cab.group_level_raw = raw
        sl = cab.lum
        reach = ~w.unreachable[sl]
        w.level_cmd_raw[sl][reach] = raw
        idx = np.arange(sl.start, sl.stop)[reach]
        w.bank.command(idx, raw / 10.0, now, fade_s=cab.group_fade_raw / 10.0)
        w._aggregate()


class _Context(ModbusServerContext):
    """Datastore that encodes registers from the model on read and commands it on write."""

    def __init__(self, endpoint: Endpoint):  # no super().__init__: it logs a v4 deprecation
        self.endpoint = endpoint
        self.old_simulator = True
        self.simdevices = []

    async def async_getValues(self, device_id: int, func_code: int, address: int,
                              count: int = 1) -> list[int] | list[bool] | ExcCodes:
        return self.endpoint.read(device_id, func_code, address, count)

    async def async_setValues(self, device_id: int, func_code: int, address: int,
                              values: Any) -> ExcCodes | None:
        return self.endpoint.write(device_id, func_code, address, list(values))

    def device_ids(self) -> list[int]:
        return list(self.endpoint.units)


class _Handler(ServerRequestHandler):
    """Per-connection handler: one task per request, answered from its own PDU."""

    def callback_data(self, data: bytes, addr: tuple | None = None) -> int:
        # every complete request in the bytes received (a client may have several requests
        # outstanding to different unit ids: MBAP transaction ids pair the answers)
        used = 0
        while used < len(data):
            try:
                n = TransactionManager.callback_data(self, data[used:], addr)
            except ModbusIOException as exc:
                fc = 0x00 if exc.fcode is None else exc.fcode
                self.server_send(ExceptionResponse(fc, ExcCodes.ILLEGAL_FUNCTION,
                                                   device_id=exc.dev_id,
                                                   transaction=exc.transaction_id), addr)
                return len(data)
            pdu = self.last_pdu
            if not n:
                break
            used += n
            if pdu is not None:
                ep: Endpoint = self.server.endpoint
                task = self.loop.create_task(self._serve(pdu, addr))
                ep.tasks.add(task)
                task.add_done_callback(ep.tasks.discard)
        return used

    async def _serve(self, pdu: Any, addr: tuple | None) -> None:
        ep: Endpoint = self.server.endpoint
        try:
            response = await ep.answer(pdu)
        except Exception:  # a model bug must not kill the listener: answer 0x04 and log
            log.exception("cabinet simulator %s:%d failed to answer %s", ep.host, ep.port, pdu)
            response = ExceptionResponse(pdu.function_code, ExcCodes.DEVICE_FAILURE)
        if response is None or self.transport is None:
            return
        response.transaction_id = pdu.transaction_id
        response.dev_id = pdu.dev_id
        self.server_send(response, addr)


class _CabinetServer(ModbusTcpServer):
    def __init__(self, endpoint: Endpoint):
        self.endpoint = endpoint
        super().__init__(endpoint.context, address=(endpoint.host, endpoint.port))

    def callback_new_connection(self) -> _Handler:
        return _Handler(self, self.trace_packet, self.trace_pdu, self.trace_connect)


class CabinetSimulators:
    """Handle returned by :func:`serve_site`: the world, its endpoints and the fault API."""

    def __init__(self, world: World, endpoints: list[Endpoint]):
        self.world = world
        self.endpoints = endpoints
        self._ep_of: dict[str, Endpoint] = {}
        for ep in endpoints:
            for cab in ep.units.values():
                self._ep_of[cab.dev.path] = ep
        self._ticker: asyncio.Task[None] | None = None
        self._pending: set[asyncio.Task[None]] = set()

    @property
    def requests(self) -> int:
        return sum(ep.requests for ep in self.endpoints)

    async def start(self) -> None:
        started: list[Endpoint] = []
        try:
            for ep in self.endpoints:
                await ep.start()
                started.append(ep)
        except BaseException:
            for ep in started:
                await ep.stop()
            raise
        self._ticker = asyncio.get_running_loop().create_task(self._tick(), name="cabinet-sim-ticker")

    async def _tick(self) -> None:
        """Keep the model close to the clock even when nobody reads (energy is exact anyway)."""
        while True:
            await asyncio.sleep(1.0)
            self.world.sync(force=True)

    async def aclose(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
            await asyncio.gather(self._ticker, return_exceptions=True)
            self._ticker = None
        await self.settle()
        for ep in self.endpoints:
            await ep.stop()

    # --- fault API (simulators/faults.py) ------------------------------------------------
    def fault_names(self, device_path: str) -> tuple[str, ...]:
        if device_path in self.world.by_path:
            return CABINET_FAULTS + tuple(f for f in LUMINAIRE_FAULTS if f not in CABINET_FAULTS)
        if device_path in self.world.lum_path:
            return LUMINAIRE_FAULTS
        raise FaultError(f"unknown device {device_path!r}: not a simulated Modbus cabinet or luminaire")

    def inject(self, device_path: str, fault_name: str, **params: Any) -> None:
        """Apply a fault now. Cabinet faults on a cabinet path; luminaire faults on a luminaire
        path, or on a cabinet path to hit all of its luminaires at once."""
        self._apply(device_path, fault_name, params, on=True)

    def clear(self, device_path: str, fault_name: str | None = None) -> None:
        """Clear one fault, or every fault when ``fault_name`` is None, of a device and (for a
        cabinet) of its luminaires."""
        if fault_name is not None:
            self._apply(device_path, fault_name, {}, on=False)
            return
        cab = self.world.by_path.get(device_path)
        if cab is None:
            cab, _ = self._lum(device_path)
        for key in list(cab.faults):
            path, _, name = key.rpartition("#") if "#" in key else (cab.dev.path, "", key)
            if path == device_path or path.startswith(device_path + "/"):
                self._apply(path, name, {}, on=False)

    def active_faults(self) -> list[dict[str, Any]]:
        out = []
        for cab in self.world.cabinets:
            for key, params in cab.faults.items():
                path, _, name = key.rpartition("#") if "#" in key else (cab.dev.path, "", key)
                out.append({"path": path, "fault": name, "params": params})
        return out

    def _lum(self, path: str) -> tuple[Cabinet, int]:
        try:
            return self.world.lum_path[path]
        except KeyError:
            raise FaultError(
                f"unknown device {path!r}: not a simulated Modbus cabinet or luminaire") from None

    def _schedule(self, coro: Any) -> None:
        """Run a listener start/stop soon (inject() is synchronous); settle() awaits it."""
        task = asyncio.get_running_loop().create_task(coro)
        self._pending.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._pending.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("cabinet simulator: listener change failed: %s", task.exception())

    def _apply(self, path: str, name: str, params: dict[str, Any], on: bool) -> None:
        w = self.world
        now = w.sync()     # within max_stale: exact on a stepped clock
        if path in w.by_path and name in CABINET_FAULTS:
            cab = w.by_path[path]
            self._cabinet_fault(cab, name, params, on, now)
            if on and name != "energy_reset":
                cab.faults[name] = dict(params)
            else:
                cab.faults.pop(name, None)
            return
        if path in w.by_path:
            if name not in LUMINAIRE_FAULTS:
                raise FaultError(
                    f"{path}: unknown fault {name!r}; cabinet faults: {', '.join(CABINET_FAULTS)}; "
                    f"luminaire faults (applied to all its luminaires): {', '.join(LUMINAIRE_FAULTS)}")
            for lum_path in w.by_path[path].lum_paths:
                self._apply(lum_path, name, params, on)
            return
        cab, i = self._lum(path)
        if name not in LUMINAIRE_FAULTS:
            raise FaultError(f"{path}: unknown luminaire fault {name!r}; known: {', '.join(LUMINAIRE_FAULTS)}")
        if params:
            raise FaultError(f"{path}: fault {name!r} takes no parameters, got {sorted(params)}")
        b = w.bank
        if name in FAULT_NAMES:
            (b.inject if on else b.clear)(i, FAULT_NAMES[name])
        elif name == "unreachable":
            w.unreachable[i] = on
        elif name == "ignore_commands":
            b.ignore_commands[i] = on
        elif name == "energy_reset" and on:
            b.reset_energy(i)
        w._aggregate()
        key = f"{path}#{name}"
        if on and name != "energy_reset":
            cab.faults[key] = {}
        else:
            cab.faults.pop(key, None)

    def _cabinet_fault(self, cab: Cabinet, name: str, params: dict[str, Any], on: bool,
                       now: float) -> None:
        w = self.world
        ep = self._ep_of[cab.dev.path]
        allowed = {"slow": {"delay"}, "exception": {"code"}, "mains_voltage": {"volts"}}.get(name, set())
        extra = set(params) - allowed
        if extra:
            raise FaultError(f"{cab.dev.path}: fault {name!r} does not take {sorted(extra)}; "
                             f"parameters: {sorted(allowed) or 'none'}")
        if name == "offline":
            cab.offline = on
            self._schedule(ep.apply_offline())
            if not on:
                ep.release_silent()
        elif name == "silent":
            cab.silent = on
            if not on:
                ep.release_silent()
        elif name == "slow":
            delay = float(params.get("delay", 2.0))
            if on and not 0 < delay <= 600:
                raise FaultError(f"{cab.dev.path}: slow delay must be in (0, 600] s, got {delay}")
            cab.delay_s = delay if on else 0.0
        elif name == "exception":
            code = int(params.get("code", 4))
            if on and code not in EXCEPTION_CODES:
                raise FaultError(f"{cab.dev.path}: exception code {code} is not a Modbus exception "
                                 f"this simulator sends; use one of {sorted(EXCEPTION_CODES)}")
            cab.exception = code if on else None
        elif name == "door_open":
            cab.door_open = on
        elif name == "breaker_trip":
            cab.breaker_tripped = on
            w.refresh_power(cab, now)
        elif name == "energy_reset":
            if on:
                cab.meter_wh = 0.0
        elif name == "mains_voltage":
            volts = float(params.get("volts", 0.0))
            cab.mains_override = volts if on else None
            w._update_mains(now)
            w.refresh_power(cab, now)

    async def settle(self) -> None:
        """Wait until listeners stopped/started by offline faults are in their new state."""
        while self._pending:
            await asyncio.gather(*self._pending, return_exceptions=True)


def _seed(site: Site) -> int:
    return zlib.crc32(site.name.encode("utf-8"))


async def serve_site(site: Site, clock: Clock, devices: list[DeviceInstance]) -> CabinetSimulators:
    """Serve every Modbus cabinet among ``devices`` (entry point ``scada.simulators``: modbus)."""
    cabinets = [d for d in devices if d.parent is None and d.kind == "cabinet" and d.enabled]
    skipped = [d.path for d in devices if d.parent is None and d.kind != "cabinet"]
    if skipped:
        log.warning("modbus simulator: %d devices are not cabinets and are not simulated: %s",
                    len(skipped), ", ".join(skipped[:5]) + (" ..." if len(skipped) > 5 else ""))
    world = World(clock, cabinets, _seed(site))
    endpoints: dict[tuple[str, int], Endpoint] = {}
    for cab in world.cabinets:
        conn = cab.dev.connection
        try:
            key = (str(conn.get("host", "127.0.0.1")), int(conn["port"]))
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"{cab.dev.path}: connection needs host and port to be simulated, "
                             f"got {conn!r}") from None
        ep = endpoints.setdefault(key, Endpoint(world, *key))
        if cab.unit in ep.units:
            raise ValueError(f"{cab.dev.path}: unit {cab.unit} on {key[0]}:{key[1]} is already "
                             f"used by {ep.units[cab.unit].dev.path}")
        ep.units[cab.unit] = cab
    handle = CabinetSimulators(world, list(endpoints.values()))
    await handle.start()
    return handle
