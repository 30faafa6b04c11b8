"""Alarm engine benchmark: condition evaluations per second on tag-change batches (vectorised
engine vs a per-condition Python loop, same run, same rows) and raise-to-journal latency under a
flood of 10,000 alarms in one batch (to the journal write; with fsync=always to the end of its fsync).

    /tmp/venv/bin/python bench/alarms.py [--luminaires 50000] [--floods 20] [--json out.json]

Targets (issue 6): >= 1,000,000 condition evaluations/s; raise-to-journal p99 < 10 ms for a
10,000-alarm batch. Every loop is bounded in count and in time. Figures on a shared 2-core
machine are noisy: read ratios, not the third digit.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scada import quality as Q
from scada.alarms.engine import AlarmEngine
from scada.alarms.journal import Journal
from scada.clock import RealClock
from scada.sections.alarms import AlarmDef, AlarmsConfig
from scada.tags import Batch, PointDef, PointSchema, TagDatabase

LUM = PointSchema("lum", (
    PointDef("level", unit="%"), PointDef("level_cmd", unit="%", access="rw"),
    PointDef("lamp_failure", "bool"), PointDef("driver_temp_c", unit="degC"),
    PointDef("power_w", unit="W"),
))
CAB = PointSchema("cab", (PointDef("comm_ok", "bool"), PointDef("contactor", "bool"),
                         PointDef("mains_ok", "bool")))
CAB_DEFS = [
    AlarmDef(name="comm_lost", kind="quality", point="comm_ok", priority=2, category="cabinet"),
    AlarmDef(name="mains_failure", point="mains_ok", equals=False, priority=2, category="cabinet"),
]
DEFS = [
    AlarmDef(name="lamp_failure", point="lamp_failure", category="lighting"),
    AlarmDef(name="driver_temp", kind="limit", point="driver_temp_c", hi=85, hihi=95, deadband=2,
             category="lighting"),
    AlarmDef(name="dimming_not_followed", kind="deviation", point="level", reference="level_cmd",
             tolerance=10, category="lighting"),
    AlarmDef(name="comm_lost", kind="quality", point="level", category="lighting"),
]


def pct(a: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(a), q)) if a else float("nan")


def build(n: int, directory: str, fsync: str) -> tuple[TagDatabase, AlarmEngine]:
    clock = RealClock()
    ncab = (n + 63) // 64
    db = TagDatabase(clock, capacity=n * len(LUM) + ncab * len(CAB) + 16)
    for k in range(n):  # luminaires first: tag index = k * len(LUM) + offset
        db.add_device(f"a/cab-{k // 64:05d}/lum-{k % 64:02d}", LUM)
    for j in range(ncab):
        db.add_device(f"a/cab-{j:05d}", CAB)
    eng = AlarmEngine(db, clock, Journal(directory, fsync=fsync),
                      config=AlarmsConfig(chatter={"count": 2, "window": 0}))  # no chattering here
    cabs = [f"a/cab-{j:05d}" for j in range(ncab)]
    cab_first = n * len(LUM) + np.arange(ncab, dtype=np.int64) * len(CAB)
    for d in CAB_DEFS:  # one template over all devices at once, as site loading does
        eng.add_rows(d, cab_first + CAB.offsets[d.point], None, cabs, ["a"] * ncab,
                     [""] * ncab, "")
    lums = [f"a/cab-{k // 64:05d}/lum-{k % 64:02d}" for k in range(n)]
    parents: list[str | None] = [f"a/cab-{k // 64:05d}" for k in range(n)]
    first = np.arange(n, dtype=np.int64) * len(LUM)
    for d in DEFS:
        refs = first + LUM.offsets[d.reference] if d.reference else None
        eng.add_rows(d, first + LUM.offsets[d.point], refs, lums, ["a"] * n, [""] * n, "",
                     parents)
    eng.start()
    return db, eng


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--luminaires", type=int, default=50_000)
    ap.add_argument("--batches", type=int, default=20, help="throughput batches (bounded)")
    ap.add_argument("--floods", type=int, default=20, help="10k-alarm flood batches (bounded)")
    ap.add_argument("--flood-size", type=int, default=10_000)
    ap.add_argument("--max-seconds", type=float, default=60.0)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    n = args.luminaires
    out: dict[str, object] = {"luminaires": n,
                              "conditions": n * len(DEFS) + (n + 63) // 64 * len(CAB_DEFS)}
    t_end = time.monotonic() + args.max_seconds
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        db, eng = build(n, os.path.join(tmp, "j1"), "interval")
        out["build_s"] = time.perf_counter() - t0
        rng = np.random.default_rng(3)
        first = np.arange(n) * len(LUM)
        idx = np.concatenate([first + k for k in range(len(LUM))])
        base = np.concatenate([np.full(n, 50.0), np.full(n, 50.0), np.zeros(n),
                               np.full(n, 60.0), np.full(n, 40.0)])
        db.apply(Batch.of(idx, base, Q.Good))
        cab_first = n * len(LUM) + np.arange((n + 63) // 64) * len(CAB)
        cab_idx = np.concatenate([cab_first, cab_first + 1, cab_first + 2])
        db.apply(Batch.of(cab_idx, np.ones(len(cab_idx)), Q.Good))

        # --- throughput: every tag of every luminaire changes (noise inside the limits)
        ev0, t_eval = eng.stats["evaluations"], 0.0
        done = 0
        for _ in range(args.batches):
            if time.monotonic() > t_end:
                break
            vals = base + rng.normal(0, 1.0, len(base)) * (base > 0)
            b = Batch.of(idx, vals, Q.Good)
            t = time.perf_counter()
            db.apply(b)
            t_eval += time.perf_counter() - t
            done += 1
        evals = eng.stats["evaluations"] - ev0
        out["engine_evals_per_s"] = evals / t_eval if t_eval else 0.0
        out["engine_batch_ms"] = 1000 * t_eval / max(done, 1)

        # pure evaluation: vectorised vs per-condition loop on the same rows
        rows = np.arange(eng.n, dtype=np.int64)
        reps, t = 0, time.perf_counter()
        while reps < 10 and time.perf_counter() - t < 5:
            eng.cond.evaluate(rows, db.value, db.quality, time.time())
            reps += 1
        vec = reps * len(rows) / (time.perf_counter() - t)
        sub = rows[: min(len(rows), 40_000)]
        t = time.perf_counter()
        eng.cond.evaluate_loop(sub, db.value, db.quality, time.time())
        loop = len(sub) / (time.perf_counter() - t)
        out.update(vectorised_evals_per_s=vec, loop_evals_per_s=loop, speedup=vec / loop)

        # --- flood: flood_size lamp failures in one batch, raise -> journal written
        lamp = first[: args.flood_size] + LUM.offsets["lamp_failure"]
        for label, d in (("interval", eng), ("always", None)):
            if d is None:
                eng.close()
                db, d = build(min(n, args.flood_size), os.path.join(tmp, "j2"), "always")
                lamp = (np.arange(min(n, args.flood_size)) * len(LUM)
                        + LUM.offsets["lamp_failure"])
            lat: list[float] = []
            cpu: list[float] = []
            written: list[tuple[float, float]] = []
            orig = d.journal.write

            def timed_write(lines, orig=orig, written=written, d=d):
                r = orig(lines)
                p = d.journal.pending()
                if p is None:
                    written.append((time.perf_counter(), time.process_time()))
                else:  # fsync always: durable when the journal's writer thread has fsynced it
                    p.add_done_callback(lambda _f: written.append((time.perf_counter(),
                                                                   time.process_time())))
                return r

            d.journal.write = timed_write  # type: ignore[method-assign]
            told: list[float] = []  # raise -> the listeners (OPC UA A&C, notifications) told
            ann: list[float] = []
            d.listeners.append(lambda evs, told=told: told.append(time.perf_counter())
                               if not told else None)

            async def floods(d=d, db=db, lamp=lamp, lat=lat, cpu=cpu, written=written,
                             told=told, ann=ann) -> None:
                """As in the server: the journal's background task rotates and fsyncs between
                batches (a flood writes ~3.5 MB; rotations happen during the run)."""
                d.journal.fsync_interval = 0.1
                bg = asyncio.create_task(d.journal.run_fsync())
                try:
                    for _ in range(args.floods):
                        if time.monotonic() > t_end:
                            break
                        written.clear()
                        told.clear()
                        b = Batch.of(lamp, np.ones(len(lamp)), Q.Good)
                        t, tc = time.perf_counter(), time.process_time()
                        db.apply(b)
                        await d.durable()
                        for _ in range(1000):  # fsync always: told from a loop callback
                            if told:
                                break
                            await asyncio.sleep(0)
                        ann.append(1000 * (told[0] - t))
                        lat.append(1000 * (written[0][0] - t))
                        cpu.append(1000 * (written[0][1] - tc))
                        db.apply(Batch.of(lamp, np.zeros(len(lamp)), Q.Good))
                        for c in d.retained().tolist():  # acknowledged: the next flood raises
                            d.st.acked[c] = True
                        await asyncio.sleep(0.15)  # operators between floods; flusher runs
                finally:
                    bg.cancel()
                    await asyncio.gather(bg, return_exceptions=True)

            asyncio.run(floods())
            out["journal_rotations_" + label] = d.journal.stats["rotations"]
            # the first flood of never-raised alarms also builds their journal line fragments
            cold, cold_cpu = (lat[0], cpu[0]) if lat else (float("nan"), float("nan"))
            lat, cpu = lat[1:], cpu[1:]
            out[f"flood_{label}"] = {"alarms": len(lamp), "batches": len(lat),
                                     "p50_ms": pct(lat, 50), "p99_ms": pct(lat, 99),
                                     "max_ms": max(lat) if lat else float("nan"),
                                     "cpu_p50_ms": pct(cpu, 50), "cpu_p99_ms": pct(cpu, 99),
                                     "cold_ms": cold, "cold_cpu_ms": cold_cpu,
                                     "told_p50_ms": pct(ann[1:], 50),
                                     "told_p99_ms": pct(ann[1:], 99)}
        d.close()
    out["rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"alarm engine benchmark: {n} luminaires, {out['conditions']} conditions "
          f"(built in {out['build_s']:.1f} s)")
    print(f"  engine on change batches : {out['engine_evals_per_s'] / 1e6:8.2f} M evaluations/s "
          f"({out['engine_batch_ms']:.1f} ms per batch of {len(idx)} changed tags, incl. tag db)"
          f"   target >= 1.0 M/s")
    print(f"  vectorised evaluate      : {vec / 1e6:8.2f} M evaluations/s")
    print(f"  per-condition loop       : {loop / 1e6:8.3f} M evaluations/s   "
          f"(baseline, same rows)  -> x{vec / loop:.0f}")
    for label in ("interval", "always"):
        f = out[f"flood_{label}"]
        print(f"  flood of {f['alarms']} alarms in one batch, fsync={label:<8}: raise->journal "
              f"p50 {f['p50_ms']:.2f} ms  p99 {f['p99_ms']:.2f} ms  max {f['max_ms']:.2f} ms "
              f"over {f['batches']} more floods   target p99 < 10 ms")
        print(f"{'':>38}raise->listeners told: p50 {f['told_p50_ms']:.2f} ms  "
              f"p99 {f['told_p99_ms']:.2f} ms")
        print(f"{'':>38}process CPU time raise->journal: p50 {f['cpu_p50_ms']:.2f} ms  "
              f"p99 {f['cpu_p99_ms']:.2f} ms (wall minus time the shared machine gave others)")
        print(f"{'':>38}first flood of never-raised alarms (line fragments built): "
              f"{f['cold_ms']:.2f} ms wall, {f['cold_cpu_ms']:.2f} ms CPU")
    print(f"  peak RSS {out['rss_mb']:.0f} MB; load average during the run "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
