"""Named transforms of the mapping language, shared by the drivers: pure, vectorised, no I/O.

A point's ``source`` may name transforms applied after the protocol decode and the linear
``scale``/``offset`` (raw -> raw x scale + offset -> transform 1 -> transform 2 ...); writes
apply the inverses in reverse order. Each is a small pydantic model, so the loader validates
them with file:line errors and ``scada schema`` lists them:

* ``dali_arc`` - the DALI standard dimming curve (IEC 62386-102 §9.3, "logarithmic dimming
  curve"): arc power level n = 1..254 gives X(n) = 10^((n - 1) / (253 / 3) - 1) % of full light
  (1 -> 0.1 %, 254 -> 100 %), 0 is off (0 %). 255 is MASK (IEC 62386-102 §9.4: "no change" /
  unknown), not a level: like any raw value outside 0..254 or not whole, it becomes NaN, which
  the tag database shows as ``BadOutOfRange``. Writes: the percentage is turned into the
  nearest arc level (a level above 0 and below 0.1 % into arc 1, the physical minimum).
* ``{lookup: {raw: value, ...}, default: value}`` - a table (status codes, modes): a raw value
  not in the table gives ``default``, or NaN (``BadOutOfRange``) without one. Writes: the raw
  key whose value is the one written.
* ``{bits: [first, last]}`` - an unsigned bit field inside an integer (bit 0 = least
  significant, both ends included): ``{bits: [4, 6]}`` of 0b0101_0000 is 5. Read-only.

``forward`` maps a float64 array (NaN stays NaN); ``inverse`` maps one value and raises
:class:`ValueError` naming the limit when the device cannot represent it.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, WithJsonSchema, model_validator

#: IEC 62386-102 §9.3: 253/3 arc power levels per decade of light.
_DALI_STEPS_PER_DECADE = 253.0 / 3.0


def dali_arc_to_percent(arc: np.ndarray) -> np.ndarray:
    """Arc power level -> % of full light on the standard logarithmic curve (NaN outside 0..254)."""
    a = np.asarray(arc, dtype=np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        out = np.power(10.0, (a - 1.0) / _DALI_STEPS_PER_DECADE - 1.0)
        out = np.where(a == 0.0, 0.0, out)
        ok = (a >= 0.0) & (a <= 254.0) & (a == np.floor(a))
    return np.where(ok, out, np.nan)


def percent_to_dali_arc(percent: float) -> int:
    """% of full light -> the nearest arc power level (0 = off; above 0, at least arc 1)."""
    p = float(percent)
    if not math.isfinite(p) or p < 0.0 or p > 100.0:
        raise ValueError(f"{percent!r} % is outside the DALI dimming range 0..100 %")
    if p == 0.0:
        return 0
    n = round(1.0 + (math.log10(p) + 1.0) * _DALI_STEPS_PER_DECADE)
    return max(1, min(254, n))


class _T(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    def forward(self, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def inverse(self, v: float) -> float:
        raise NotImplementedError


class DaliArc(_T):
    """``dali_arc``: IEC 62386-102 logarithmic arc power level (0..254) <-> % of full light."""

    name: Literal["dali_arc"] = "dali_arc"

    def forward(self, x: np.ndarray) -> np.ndarray:
        return dali_arc_to_percent(x)

    def inverse(self, v: float) -> float:
        return float(percent_to_dali_arc(v))


def _num_key(k: Any) -> float:
    try:
        return float(k)
    except (TypeError, ValueError):
        raise ValueError(f"lookup key {k!r} is not a number (keys are the raw values)") from None


class Lookup(_T):
    """``{lookup: {raw: value}, default: value}``: a table from raw values to values."""

    lookup: dict[float, float] = Field(min_length=1)
    default: float | None = None

    @model_validator(mode="before")
    @classmethod
    def _keys(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("lookup"), dict):
            table = {}
            for k, v in data["lookup"].items():
                if isinstance(v, bool):
                    v = float(v)
                table[_num_key(k)] = v
            data = {**data, "lookup": table}
        return data

    def forward(self, x: np.ndarray) -> np.ndarray:
        keys = np.fromiter(self.lookup.keys(), np.float64, len(self.lookup))
        vals = np.fromiter(self.lookup.values(), np.float64, len(self.lookup))
        order = np.argsort(keys)
        keys, vals = keys[order], vals[order]
        x = np.asarray(x, dtype=np.float64)
        pos = np.clip(np.searchsorted(keys, x), 0, len(keys) - 1)
        hit = keys[pos] == x
        miss = np.nan if self.default is None else self.default
        return np.where(hit, vals[pos], miss)

    def inverse(self, v: float) -> float:
        for k, val in self.lookup.items():
            if val == float(v):
                return k
        raise ValueError(f"{v!r} is not one of the table's values {sorted(set(self.lookup.values()))}")


class BitField(_T):
    """``{bits: [first, last]}``: the unsigned field of bits first..last (bit 0 = LSB)."""

    bits: tuple[int, int]

    @model_validator(mode="after")
    def _range(self) -> BitField:
        lo, hi = self.bits
        if not 0 <= lo <= hi <= 63:
            raise ValueError(f"bits: expected [first, last] with 0 <= first <= last <= 63, got {list(self.bits)}")
        return self

    def forward(self, x: np.ndarray) -> np.ndarray:
        lo, hi = self.bits
        x = np.asarray(x, dtype=np.float64)
        ok = np.isfinite(x) & (x >= 0) & (x == np.floor(x)) & (x < 2.0**63)
        ints = np.where(ok, x, 0).astype(np.int64)
        field = (ints >> lo) & ((1 << (hi - lo + 1)) - 1)
        return np.where(ok, field.astype(np.float64), np.nan)

    def inverse(self, v: float) -> float:
        raise ValueError(f"a bit field ({list(self.bits)}) is read-only: write the whole register "
                         "as its own point")


def _by_name(v: Any) -> Any:
    if isinstance(v, str):
        if v == "dali_arc":
            return {"name": "dali_arc"}
        raise ValueError(f"unknown transform {v!r}; named transforms: dali_arc "
                         "(or a mapping: {lookup: {...}} / {bits: [first, last]})")
    return v


#: JSON Schema of one transform as written in a site file (``scada schema``)
_ONE_SCHEMA: dict[str, Any] = {"anyOf": [
    {"const": "dali_arc", "description": "IEC 62386-102 logarithmic dimming curve: arc 0..254 <-> % of full light"},
    {"type": "object", "description": "table from raw values to values",
     "properties": {"lookup": {"type": "object", "additionalProperties": {"type": ["number", "boolean"]}},
                    "default": {"type": ["number", "null"]}},
     "required": ["lookup"], "additionalProperties": False},
    {"type": "object", "description": "unsigned bit field [first, last] of an integer (bit 0 = LSB)",
     "properties": {"bits": {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 63},
                             "minItems": 2, "maxItems": 2}},
     "required": ["bits"], "additionalProperties": False},
]}

OneTransform = Annotated[DaliArc | Lookup | BitField, BeforeValidator(_by_name)]


def _as_list(v: Any) -> Any:
    if v is None:
        return None
    return v if isinstance(v, list) else [v]


#: The ``transform`` key of a point source: one transform or a list applied in order.
TransformSpec = Annotated[
    list[OneTransform] | None, BeforeValidator(_as_list),
    WithJsonSchema({"anyOf": [_ONE_SCHEMA, {"type": "array", "items": _ONE_SCHEMA}, {"type": "null"}],
                    "description": "named transforms after scale/offset, applied in order"}),
]


class Pipeline:
    """Transforms of one point, applied in order (inverse: in reverse)."""

    __slots__ = ("steps",)

    def __init__(self, steps: list[Any]):
        self.steps = tuple(steps)

    def __bool__(self) -> bool:
        return bool(self.steps)

    def forward(self, x: np.ndarray) -> np.ndarray:
        for t in self.steps:
            x = t.forward(x)
        return x

    def inverse(self, v: float) -> float:
        for t in reversed(self.steps):
            v = t.inverse(v)
        return v

    def settle(self, v: float) -> float:
        """The value the device will actually hold after writing ``v`` (the curve's or
        table's nearest representable value): what a read-back is compared with."""
        return float(self.forward(np.asarray([self.inverse(v)], dtype=np.float64))[0])

    @property
    def writable(self) -> bool:
        return not any(isinstance(t, BitField) for t in self.steps)


def pipeline(spec: list[Any] | None) -> Pipeline | None:
    return Pipeline(list(spec)) if spec else None


class TransformTable:
    """Tag index -> pipeline for the transformed tags of one driver (or one station): applies
    them to a decoded batch in one pass per distinct pipeline."""

    def __init__(self, by_tag: dict[int, Pipeline]):
        tags = sorted(by_tag)
        self.tags = np.asarray(tags, dtype=np.int64)
        ids: dict[int, int] = {}
        self.pipelines: list[Pipeline] = []
        which = []
        for t in tags:
            p = by_tag[t]
            k = ids.get(id(p))
            if k is None:
                k = ids[id(p)] = len(self.pipelines)
                self.pipelines.append(p)
            which.append(k)
        self.which = np.asarray(which, dtype=np.int64)
        self.by_tag = by_tag

    def __bool__(self) -> bool:
        return len(self.tags) > 0

    def apply(self, idx: np.ndarray, vals: np.ndarray) -> np.ndarray:
        """Values of ``idx`` with each transformed tag's pipeline applied (a new array)."""
        if not len(self.tags) or not len(idx):
            return vals
        pos = np.clip(np.searchsorted(self.tags, idx), 0, len(self.tags) - 1)
        hit = self.tags[pos] == idx
        if not hit.any():
            return vals
        out = vals.copy()
        rows = np.flatnonzero(hit)
        w = self.which[pos[rows]]
        for k in np.unique(w).tolist():
            r = rows[w == k]
            out[r] = self.pipelines[k].forward(vals[r])
        return out

    def get(self, tag: int) -> Pipeline | None:
        return self.by_tag.get(tag)
