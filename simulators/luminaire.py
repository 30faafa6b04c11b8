"""LED luminaire model shared by every lighting simulator (Modbus cabinets, DALI gateways).

Pure numpy, no I/O, vectorised over ``n`` luminaires, and driven by a time argument: the model
never reads a clock itself, so a simulator running on a :class:`scada.clock.SteppedClock`
integrates a simulated year exactly and a 200,000-luminaire city steps in a few milliseconds.

Physics (deliberately simple, but with the shapes a control engineer expects):

* **Dimming curve.** Light level ``x`` (0..1) to input power fraction
  ``f(x) = 0.08 + 0.62 x + 0.30 x^2`` for ``x > 0``: an LED driver at 10 % light still draws
  ~14.5 % of its rated power (driver losses dominate at low load), 100 % light draws 100 %.
  At level 0 a powered driver still draws its standby power (~0.5 W, the DALI-2 / D4i
  "standby power" of the control gear, IEC 62386-250 energy reporting).
* **Constant light output (CLO).** LEDs lose flux with age; a CLO driver compensates by
  raising its current, so input power grows with operating hours:
  ``clo = 1 + 0.10 * min(h, 100,000) / 50,000`` (+10 % at 50,000 h).
* **Energy** (``energy_wh``) integrates input power over the time argument: trapezoid during a
  fade, exact for piecewise-constant power because :meth:`LuminaireBank.command` and
  :meth:`LuminaireBank.set_powered` first integrate up to the command time.
* **Operating hours** count lamp-on time (light > 0); **starts** count off->on transitions of
  the light output (IEC 62386-253 D4i "light source start counter").
* **Driver temperature** follows a first-order lag (tau 15 min) towards ambient + a rise
  proportional to the load; above 85 °C (or with the thermal fault injected) the driver
  derates: light is capped at 60 % (D4i "thermal derating" / IEC 62386-253 control gear
  over-temperature).
* **Failures** as DALI-2 / D4i diagnostics bits (IEC 62386-253 "failure status", IEC 62386-102
  lamp failure, IEC 62386-207 LED open/short): lamp failure and LED open give no light and
  standby power; driver failure gives no light and no power; LED short keeps the light but a
  string is bypassed (80 % power); supply under/over-voltage is derived from ``supply_v``
  (below 195.5 V = 230 V - 15 %, above 253 V = 230 V + 10 %) or injected.

State arrays are public and read-only by convention: simulators encode them into protocol
registers/payloads; only the methods below change them.
"""

from __future__ import annotations

from typing import Any

import numpy as np

# D4i / DALI-2 diagnostics bits (IEC 62386-253 §9 failure status, IEC 62386-102 status byte)
FAULT_LAMP = 0x0001
FAULT_DRIVER = 0x0002
FAULT_LED_OPEN = 0x0004
FAULT_LED_SHORT = 0x0008
FAULT_THERMAL = 0x0010
FAULT_UNDERVOLT = 0x0020
FAULT_OVERVOLT = 0x0040

FAULT_NAMES: dict[str, int] = {
    "lamp_failure": FAULT_LAMP,
    "driver_failure": FAULT_DRIVER,
    "led_open": FAULT_LED_OPEN,
    "led_short": FAULT_LED_SHORT,
    "thermal_derating": FAULT_THERMAL,
    "undervoltage": FAULT_UNDERVOLT,
    "overvoltage": FAULT_OVERVOLT,
}

#: no light at all (output dark whatever the command)
_DARK = FAULT_LAMP | FAULT_DRIVER | FAULT_LED_OPEN

STANDBY_W = 0.5
CLO_GAIN_PER_H = 0.10 / 50_000.0
CLO_MAX_H = 100_000.0
THERMAL_LIMIT_C = 85.0
THERMAL_CAP = 60.0
THERMAL_TAU_S = 900.0
THERMAL_FAULT_EXTRA_C = 45.0
UNDERVOLT_V = 230.0 * 0.85
OVERVOLT_V = 230.0 * 1.10


def power_fraction(level_pct: np.ndarray) -> np.ndarray:
    """Input-power fraction of rated power at light level ``level_pct`` (0 for level 0)."""
    x = np.asarray(level_pct, dtype=np.float64) * 0.01
    return np.where(x > 0.0, 0.08 + x * (0.62 + 0.30 * x), 0.0)


class LuminaireBank:
    """``n`` LED luminaires stepped together; indices are luminaire numbers 0..n-1.

    ``idx`` arguments accept an int, a slice, an index array, a boolean mask or ``None`` (all).
    """

    def __init__(
        self,
        n: int,
        nominal_w: float | np.ndarray,
        *,
        start_time: float,
        seed: int = 0,
        operating_h: np.ndarray | float = 0.0,
        ambient_c: float | np.ndarray = 15.0,
    ):
        if n < 0:
            raise ValueError(f"luminaire count must be >= 0, got {n}")
        self.n = int(n)
        rng = np.random.default_rng(seed)
        self.nominal_w = np.broadcast_to(np.asarray(nominal_w, dtype=np.float64), (n,)).copy()
        if np.any(self.nominal_w <= 0):
            raise ValueError("nominal_w must be > 0 W for every luminaire")
        self.t = float(start_time)
        self.level = np.zeros(n)
        self.target = np.zeros(n)
        self.power_w = np.zeros(n)
        self.energy_wh = np.zeros(n)
        self.operating_h = np.broadcast_to(np.asarray(operating_h, dtype=np.float64), (n,)).copy()
        self.starts = np.zeros(n, dtype=np.int64)
        self.ambient_c = np.broadcast_to(np.asarray(ambient_c, dtype=np.float64), (n,)).copy()
        #: per-unit spread of the thermal rise at full load (housing, mounting), 25-35 K
        self._rise_k = rng.uniform(25.0, 35.0, n)
        self.driver_temp_c = self.ambient_c.copy()
        #: mains voltage at the cabinet feeding each luminaire, set by the cabinet model
        self.mains_v = np.full(n, 230.0)
        #: per-unit cable drop (V per W drawn), 0.002-0.01 V/W
        self._drop_v_per_w = rng.uniform(0.002, 0.01, n)
        self.supply_v = self.mains_v.copy()
        self.faults = np.zeros(n, dtype=np.uint16)
        self._injected = np.zeros(n, dtype=np.uint16)
        self.powered = np.zeros(n, dtype=bool)
        self.ignore_commands = np.zeros(n, dtype=bool)
        # linear fade: level goes from _fade_from at _fade_t0 to target at _fade_t1
        self._fade_from = np.zeros(n)
        self._fade_t0 = np.full(n, self.t)
        self._fade_t1 = np.full(n, self.t)
        #: latest fade end over all luminaires: past it, level == target (fast path)
        self._fade_until = self.t

    # --- commands -----------------------------------------------------------------------
    @staticmethod
    def _ix(idx: Any) -> Any:
        return slice(None) if idx is None else idx

    def command(self, idx: Any, level: float | np.ndarray, now: float, fade_s: float = 0.0) -> None:
        """Command light level(s) in % (clipped to 0-100), reached linearly over ``fade_s``.

        Luminaires flagged ``ignore_commands`` keep their target (fault: command not followed).
        """
        self.step(now)
        ix = self._ix(idx)
        sel = np.zeros(self.n, dtype=bool)
        sel[ix] = True
        new = np.zeros(self.n)
        new[ix] = np.clip(np.asarray(level, dtype=np.float64), 0.0, 100.0)
        sel &= ~self.ignore_commands
        self._fade_from[sel] = self.level_commanded()[sel]
        self.target[sel] = new[sel]
        self._fade_t0[sel] = now
        self._fade_t1[sel] = now + max(0.0, float(fade_s))
        self._fade_until = max(self._fade_until, now + max(0.0, float(fade_s)))
        self._update_instant(now)

    def level_commanded(self) -> np.ndarray:
        """Driver output level along the fade, before failures and derating (0 when unpowered)."""
        return self._fade_level(self.t)

    def set_powered(self, idx: Any, on: bool, now: float) -> None:
        """Mains on/off (cabinet contactor). On restore the driver goes straight to its target."""
        self.step(now)
        ix = self._ix(idx)
        self.powered[ix] = bool(on)
        # DALI power-on: no fade; the level jumps to the (remembered) target
        self._fade_from[ix] = self.target[ix]
        self._fade_t0[ix] = now
        self._fade_t1[ix] = now
        self._update_instant(now)

    def set_mains(self, idx: Any, volts: float | np.ndarray, now: float) -> None:
        """Mains voltage at the feeding cabinet (per phase), for supply-voltage diagnostics."""
        self.step(now)
        self.mains_v[self._ix(idx)] = volts
        self._update_instant(now)

    def inject(self, idx: Any, fault_bits: int) -> None:
        """Force fault bits (FAULT_* flags) on; they take effect at once and stay until cleared."""
        ix = self._ix(idx)
        self._injected[ix] |= np.uint16(fault_bits)
        self._update_instant(self.t)

    def clear(self, idx: Any, fault_bits: int | None = None) -> None:
        """Clear injected fault bits (all of them when ``fault_bits`` is None)."""
        ix = self._ix(idx)
        if fault_bits is None:
            self._injected[ix] = 0
        else:
            self._injected[ix] &= np.uint16(~fault_bits & 0xFFFF)
        self._update_instant(self.t)

    def reset_energy(self, idx: Any) -> None:
        """Energy counter back to 0 (fault: meter reset / driver replaced)."""
        self.energy_wh[self._ix(idx)] = 0.0

    # --- time ---------------------------------------------------------------------------
    def _fade_level(self, t: float | np.ndarray) -> np.ndarray:
        if np.ndim(t) == 0 and t >= self._fade_until:
            return np.where(self.powered, self.target, 0.0)
        span = self._fade_t1 - self._fade_t0
        with np.errstate(divide="ignore", invalid="ignore"):
            frac = np.where(span > 0, (t - self._fade_t0) / span, 1.0)
        np.clip(frac, 0.0, 1.0, out=frac)
        lv = self._fade_from + (self.target - self._fade_from) * frac
        lv[~self.powered] = 0.0
        return lv

    def _state_at(self, t: float | np.ndarray, temp: np.ndarray,
                  ops_h: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(light level, power, faults, supply voltage) at ``t`` for given temperature, hours."""
        faults = self._injected.copy()
        hot = temp > THERMAL_LIMIT_C
        if hot.any():
            faults[hot] |= FAULT_THERMAL
        light = self._fade_level(t)
        any_fault = bool(faults.any())
        if any_fault:
            thermal = (faults & FAULT_THERMAL) != 0
            light[thermal & (light > THERMAL_CAP)] = THERMAL_CAP
            light[(faults & _DARK) != 0] = 0.0
        clo = 1.0 + CLO_GAIN_PER_H * np.minimum(ops_h, CLO_MAX_H)
        p = self.nominal_w * clo * power_fraction(light)
        if any_fault:
            short = (faults & FAULT_LED_SHORT) != 0
            p[short] *= 0.8
        np.maximum(p, STANDBY_W, out=p)
        if any_fault:
            p[(faults & FAULT_DRIVER) != 0] = 0.0
        unpowered = ~self.powered
        p[unpowered] = 0.0
        supply = self.mains_v - self._drop_v_per_w * p
        supply[unpowered] = 0.0
        under = supply < UNDERVOLT_V
        under &= self.powered
        if under.any():
            faults[under] |= FAULT_UNDERVOLT
        over = supply > OVERVOLT_V
        if over.any():
            faults[over] |= FAULT_OVERVOLT
        return light, p, faults, supply

    def _update_instant(self, t: float) -> None:
        """Refresh the instantaneous outputs at ``t`` after a command (no time elapses)."""
        self._commit(*self._state_at(t, self.driver_temp_c, self.operating_h))

    def _commit(self, light: np.ndarray, p: np.ndarray, faults: np.ndarray,
                supply: np.ndarray) -> None:
        """Install new outputs; a dark->lit transition of the light output is one start."""
        self.starts += (light > 0) & (self.level <= 0)
        self.level, self.power_w, self.faults, self.supply_v = light, p, faults, supply

    def step(self, now: float) -> None:
        """Advance to ``now``: fades, power, energy (trapezoid), hours, starts, temperature."""
        dt = float(now) - self.t
        if dt < 0:
            raise ValueError(f"luminaire model: time went backwards ({now} < {self.t})")
        if dt == 0:
            return
        p0 = self.power_w
        on0 = self.level > 0
        # temperature first-order lag towards the load-dependent steady state
        t_ss = self.ambient_c + self._rise_k * (p0 / self.nominal_w)
        if self._injected.any():
            t_ss[(self._injected & FAULT_THERMAL) != 0] += THERMAL_FAULT_EXTRA_C
        temp = t_ss + (self.driver_temp_c - t_ss) * np.exp(-dt / THERMAL_TAU_S)
        light, p1, faults, supply = self._state_at(now, temp, self.operating_h)
        # energy: split the interval at each fade's end so constant power after it is exact
        if self._fade_until > self.t:
            te = np.clip(self._fade_t1, self.t, now)
            pe = self._state_at(te, temp, self.operating_h)[1]
            e_ws = 0.5 * (p0 + pe) * (te - self.t) + p1 * (now - te)
        else:
            e_ws = 0.5 * (p0 + p1) * dt
        self.energy_wh += e_ws / 3600.0
        on1 = light > 0
        self.operating_h += (on0.astype(np.float64) + on1) * (0.5 * dt / 3600.0)
        self.t = float(now)
        self._commit(light, p1, faults, supply)
        self.driver_temp_c = temp

    # --- helpers for simulators -----------------------------------------------------------
    def status_word(self, idx: Any = None) -> np.ndarray:
        """uint16 status of luminaires ``idx`` (all by default): fault bits 0-6 (FAULT_*),
        bit 8 powered, bit 9 lamp on, bit 10 fading."""
        ix = self._ix(idx)
        s = self.faults[ix].astype(np.uint16)
        s |= self.powered[ix].astype(np.uint16) << 8
        s |= (self.level[ix] > 0).astype(np.uint16) << 9
        s |= (self._fade_t1[ix] > self.t).astype(np.uint16) << 10
        return s
