"""HistoryRead (OPC UA Part 11 §6.4) for our tag variables, delegated to the historian service.

asyncua's own HistoryManager only knows raw reads from its storage interface; we answer
``ReadRawModifiedDetails`` and ``ReadProcessedDetails`` ourselves from the historian's
``read_raw`` / ``read_processed`` (numpy arrays), and leave other nodes to asyncua.

Continuation points are stateless (Part 11 §6.4.2 allows any encoding): the source timestamp
just after the last value returned, so a server restart never invalidates a client's read.
"""

from __future__ import annotations

import logging
import math
import struct
from datetime import UTC, datetime
from typing import Any

from asyncua import ua

from .. import quality as Q
from .address_space import VARIANT, _variant

log = logging.getLogger(__name__)

#: Part 13 aggregate NodeIds -> the historian's aggregate names.
AGGREGATES = {
    ua.ObjectIds.AggregateFunction_Average: "avg",
    ua.ObjectIds.AggregateFunction_TimeAverage: "time_avg",
    ua.ObjectIds.AggregateFunction_Minimum: "min",
    ua.ObjectIds.AggregateFunction_Maximum: "max",
    ua.ObjectIds.AggregateFunction_Start: "first",
    ua.ObjectIds.AggregateFunction_End: "last",
    ua.ObjectIds.AggregateFunction_Count: "count",
    ua.ObjectIds.AggregateFunction_Total: "integral",
}

_MIN_DT = datetime(1601, 1, 2, tzinfo=UTC)


def _secs(dt: datetime | None, default: float) -> float:
    if dt is None or dt <= _MIN_DT:
        return default
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.timestamp()


def _dt(t: float) -> datetime:
    return datetime.fromtimestamp(float(t), UTC)


def _cont(t: float) -> bytes:
    return struct.pack("<d", t)


def _uncont(b: bytes) -> float | None:
    if not b or len(b) != 8:
        return None
    return struct.unpack("<d", b)[0]


async def read_history(service: Any, params: ua.HistoryReadParameters, fallback: Any) -> list[ua.HistoryReadResult]:
    """Answer a HistoryRead request; ``fallback(params)`` handles nodes that are not our tags."""
    details = params.HistoryReadDetails
    historian = service.runtime.services.get("historian")
    out: list[ua.HistoryReadResult] = []
    for rv in params.NodesToRead:
        i = service.tag_index(rv.NodeId)
        if i is None:
            sub = ua.HistoryReadParameters(HistoryReadDetails=details, TimestampsToReturn=params.TimestampsToReturn,
                                           ReleaseContinuationPoints=params.ReleaseContinuationPoints,
                                           NodesToRead=[rv])
            out.extend(await fallback(sub))
            continue
        res = ua.HistoryReadResult()
        if historian is None or not hasattr(historian, "read_raw"):
            res.StatusCode = ua.StatusCode(ua.StatusCodes.BadHistoryOperationUnsupported)
            out.append(res)
            continue
        p = service.runtime.tagdb.point(i)
        try:
            if isinstance(details, ua.ReadRawModifiedDetails) and not details.IsReadModified:
                res = await _raw(historian, i, p, details, rv)
            elif isinstance(details, ua.ReadProcessedDetails):
                res = await _processed(historian, i, details, rv, len(out))
            else:
                res.StatusCode = ua.StatusCode(ua.StatusCodes.BadHistoryOperationUnsupported)
        except Exception:
            log.exception("history read of %s failed", service.runtime.tagdb.path(i))
            res = ua.HistoryReadResult()
            res.StatusCode = ua.StatusCode(ua.StatusCodes.BadHistoryOperationInvalid)
        out.append(res)
    return out


async def _raw(historian: Any, i: int, p: Any, details: ua.ReadRawModifiedDetails,
               rv: ua.HistoryReadValueId) -> ua.HistoryReadResult:
    t0 = _secs(details.StartTime, 0.0)
    t1 = _secs(details.EndTime, 4102444800.0)  # 2100-01-01 when open-ended
    c = _uncont(rv.ContinuationPoint)
    if c is not None:
        t0 = c
    limit = int(details.NumValuesPerNode or 0) or 10_000
    limit = min(limit, 10_000)
    times, values, quals = await historian.read_raw(i, t0, t1, limit + 1)
    res = ua.HistoryReadResult()
    res.HistoryData = ua.HistoryData()
    n = len(times)
    more = n > limit
    vt = VARIANT[p.data_type]
    dvs = []
    for k in range(min(n, limit)):
        q = int(quals[k])
        var = ua.Variant(None, ua.VariantType.Null) if q & 0x80000000 else _variant(p.dtype, values[k], vt)
        t = _dt(times[k])
        dvs.append(ua.DataValue(var, ua.StatusCode(q), t, t))
    res.HistoryData.DataValues = dvs
    if more:
        res.ContinuationPoint = _cont(float(times[limit]))
    if not dvs:
        res.StatusCode = ua.StatusCode(ua.StatusCodes.GoodNoData)
    return res


async def _processed(historian: Any, i: int, details: ua.ReadProcessedDetails, rv: ua.HistoryReadValueId,
                     k: int) -> ua.HistoryReadResult:
    res = ua.HistoryReadResult()
    aggs = details.AggregateType or []
    if k >= len(aggs) and len(aggs) != 1:
        res.StatusCode = ua.StatusCode(ua.StatusCodes.BadAggregateListMismatch)
        return res
    agg = aggs[k] if k < len(aggs) else aggs[0]
    name = AGGREGATES.get(agg.Identifier) if agg.NamespaceIndex == 0 else None
    if name is None:
        res.StatusCode = ua.StatusCode(ua.StatusCodes.BadAggregateNotSupported)
        return res
    t0 = _secs(details.StartTime, 0.0)
    t1 = _secs(details.EndTime, t0)
    interval = float(details.ProcessingInterval or 0) / 1000.0
    if interval <= 0 or t1 <= t0:
        interval = max(t1 - t0, 1.0)
    if (t1 - t0) / interval > 100_000:
        res.StatusCode = ua.StatusCode(ua.StatusCodes.BadTooManyOperations)
        return res
    starts, values, quals = await historian.read_processed(i, t0, t1, interval, name)
    res.HistoryData = ua.HistoryData()
    dvs = []
    for j in range(len(starts)):
        q = int(quals[j])
        v = float(values[j])
        var = ua.Variant(None, ua.VariantType.Null) if (q & 0x80000000 or math.isnan(v)) else ua.Variant(
            v, ua.VariantType.Double)
        t = _dt(starts[j])
        dvs.append(ua.DataValue(var, ua.StatusCode(q if q != Q.Uncertain else Q.Uncertain), t, t))
    res.HistoryData.DataValues = dvs
    return res
