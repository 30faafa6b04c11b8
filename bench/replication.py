"""Replication benchmark (issue 22): a Dijon-size pair under an alarm flood.

The active is a real process (34,000 luminaires, 4 alarms each: the alarm test site), the
standby is this process (the same site, its replication service following the active over a
loopback socket). Figures:

* baseline (same run): the active's flood-to-announce latency with no standby connected;
* with the standby (synchronous replication): the active's flood-to-announce latency, and the
  replication lag = time from the flood's batch on the active to the standby's alarm states
  holding its last transition (both clocks are this machine's CLOCK_MONOTONIC);
* the standby's CPU (this process: its runtime, alarm engine following hot, replication)
  while the active floods, as % of one core, over the whole flood window;
* after kill -9 of the active: transitions the active announced but the standby lacks (0),
  promotion time (hooks: alarms take over), and what a cold reload of the alarm states from
  the journal would take instead of the hot standby.

    .venv/bin/python bench/replication.py [--luminaires 34000] [--floods 10] [--flood-size 10000]
                                          [--period 3] [--json out.json]

Targets (issue 22): standby CPU < 5 % of one core; transitions lost 0. Every loop is bounded
in count and time; loopback only. The machine is shared (2 cores, other workers): read ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._util import cpu_seconds, free_port, percentile, save, verdict
from scada.ha.role import Role
from tests.fixtures.ha_replication import make_node, start

REPO = Path(__file__).resolve().parents[1]

ACTIVE = """
import asyncio, sys, time, os
from pathlib import Path
import numpy as np
sys.path.insert(0, {repo!r})
from scada.tags import Batch
from tests.fixtures.ha_replication import make_node, start, good_cabinet

async def main():
    a = make_node(Path({tmp!r}), "a", {port}, {{"a": "127.0.0.1:{port}"}}, nlum={nlum})
    await start(a)
    await a.rt.ha.promote(5)
    good_cabinet(a)
    lamps = a.lamps({nlum})
    told = asyncio.Event()
    def announced(evs):
        told.set()
    a.engine.listeners.append(announced)
    rng = np.random.default_rng(1)
    state = np.zeros({nlum})

    async def floods(phase, n):
        for k in range(n):
            sel = rng.choice({nlum}, {size}, replace=False)
            state[sel] = 1.0 - state[sel]  # these lamps fail (or recover) at once
            told.clear()
            c0 = time.process_time()
            t0 = time.monotonic()
            a.rt.tagdb.apply(Batch.of(lamps, state.copy(), 0, a.clock.time()))
            await asyncio.wait_for(told.wait(), 60)
            t1 = time.monotonic()
            print(phase, a.engine.seq, t0, t1, time.process_time() - c0, flush=True)
            await asyncio.sleep({period})
            await a.clock.advance(3600)  # an hour between floods: no chattering

    print("ready", flush=True)
    await floods("baseline", {floods})
    print("standby?", flush=True)
    for _ in range(6000):
        st = a.repl.status()
        if st["standbys"] and st["lag_records"] == 0 and st["standbys"][0]["bytes"] > 0:
            break
        await asyncio.sleep(0.05)
    await asyncio.sleep(1.0)
    print("idle-start", flush=True)
    await asyncio.sleep({idle})  # the pair at rest: heartbeats only
    print("replicated-start", time.monotonic(), flush=True)
    await floods("replicated", {floods})
    print("done", flush=True)
    await asyncio.sleep(600)

asyncio.run(main())
"""


async def run(args: argparse.Namespace) -> dict[str, object]:
    out: dict[str, object] = {"luminaires": args.luminaires, "alarms_per_luminaire": 4,
                              "flood_size": args.flood_size, "floods": args.floods,
                              "period_s": args.period}
    with tempfile.TemporaryDirectory() as tmp:
        pa, pb = free_port(), free_port()
        code = ACTIVE.format(repo=str(REPO), tmp=tmp, port=pa, nlum=args.luminaires,
                             size=args.flood_size, floods=args.floods, period=args.period,
                             idle=args.idle)
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", code, cwd=REPO, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL)
        assert proc.stdout is not None
        t_build = time.perf_counter()
        b = make_node(Path(tmp), "b", pb, {"a": f"127.0.0.1:{pa}"}, nlum=args.luminaires)
        await start(b)
        out["standby_build_s"] = round(time.perf_counter() - t_build, 2)
        eb = b.engine
        applied: list[tuple[int, float]] = []
        eb.listeners.append(lambda evs: applied.append((evs[-1].seq, time.monotonic())))
        deadline = time.monotonic() + args.max_seconds

        async def line() -> list[str]:
            raw = await asyncio.wait_for(proc.stdout.readline(), max(1.0, deadline - time.monotonic()))
            if not raw:
                raise RuntimeError("the active process ended")
            return raw.decode().split()

        try:
            while (await line())[0] != "ready":
                pass
            base: list[list[str]] = []
            while (w := await line())[0] != "standby?":
                base.append(w)
            b.rt.ha.set_holder("a", {"replication": f"127.0.0.1:{pa}"})
            await b.rt.ha.demote(Role.STANDBY, "bench: a holds the lease")
            t_catch = time.monotonic()
            w = await line()  # idle-start: the standby acknowledged everything
            base_seq = int(base[-1][1])
            for _ in range(3000):  # ... and applied it (bounded wait)
                if eb.seq >= base_seq:
                    break
                await asyncio.sleep(0.01)
            out["catch_up_s"] = round(time.monotonic() - t_catch, 2)
            await asyncio.sleep(1.0)
            c0, w0 = cpu_seconds(), time.monotonic()
            w = await line()  # replicated-start
            out["standby_idle_cpu_pct_of_core"] = round(
                100 * (cpu_seconds() - c0) / (time.monotonic() - w0), 2)
            c0, w0 = cpu_seconds(), time.monotonic()
            if os.environ.get("REPL_PROFILE"):
                import cProfile
                prof = cProfile.Profile()
                prof.enable()
            rep: list[list[str]] = []
            while (w := await line())[0] != "done":
                rep.append(w)
            last_seq = int(rep[-1][1])
            for _ in range(2000):  # the standby holds the last flood (bounded wait)
                if eb.seq >= last_seq:
                    break
                await asyncio.sleep(0.01)
            c1, w1 = cpu_seconds(), time.monotonic()
            if os.environ.get("REPL_PROFILE"):
                import pstats
                prof.disable()
                pstats.Stats(prof, stream=sys.stderr).sort_stats("tottime").print_stats(25)
            proc.send_signal(signal.SIGKILL)
            await proc.wait()
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        lat_base = [1000 * (float(x[3]) - float(x[2])) for x in base]
        lat_rep = [1000 * (float(x[3]) - float(x[2])) for x in rep]
        cpu_active = [float(x[4]) for x in rep]
        lags = []
        for x in rep:
            seq, t0 = int(x[1]), float(x[2])
            t = next((tt for s, tt in applied if s >= seq), None)
            if t is not None:
                lags.append(1000 * (t - t0))
        out["active_announce_ms_baseline_p50"] = round(percentile(lat_base, 50), 1)
        out["active_announce_ms_baseline_max"] = round(max(lat_base), 1)
        out["active_announce_ms_replicated_p50"] = round(percentile(lat_rep, 50), 1)
        out["active_announce_ms_replicated_max"] = round(max(lat_rep), 1)
        out["announce_ratio_vs_baseline"] = round(
            percentile(lat_rep, 50) / max(1e-9, percentile(lat_base, 50)), 2)
        out["replication_lag_ms_p50"] = round(percentile(lags, 50), 1)
        out["replication_lag_ms_max"] = round(max(lags), 1) if lags else None
        out["transitions_per_flood"] = round((last_seq - int(base[-1][1])) / len(rep))
        window = w1 - w0
        out["standby_window_s"] = round(window, 1)
        out["standby_cpu_pct_of_core"] = round(100 * (c1 - c0) / window, 2)
        out["standby_cpu_ms_per_flood"] = round(1000 * (c1 - c0) / len(rep), 1)
        out["active_cpu_ms_per_flood"] = round(1000 * sum(cpu_active) / len(cpu_active), 1)
        out["standby_bytes"] = b.repl.status()["bytes"]
        out["lost_transitions"] = max(0, last_seq - eb.seq)
        # takeover: hot (what the standby does) vs a cold reload of the states from the journal
        t = time.perf_counter()
        await b.rt.ha.promote(6)
        out["promotion_s"] = round(time.perf_counter() - t, 3)
        t = time.perf_counter()
        eb.reload()
        out["cold_reload_s"] = round(time.perf_counter() - t, 3)
        await b.rt.stop()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--luminaires", type=int, default=34_000)
    ap.add_argument("--floods", type=int, default=10)
    ap.add_argument("--flood-size", type=int, default=10_000)
    ap.add_argument("--period", type=float, default=3.0, help="seconds between two floods")
    ap.add_argument("--idle", type=float, default=15.0, help="seconds of the pair at rest")
    ap.add_argument("--max-seconds", type=float, default=600.0)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    out = asyncio.run(run(args))
    out["verdict_standby_cpu_idle"] = verdict(out["standby_idle_cpu_pct_of_core"], 5.0)
    out["verdict_standby_cpu_flood"] = verdict(out["standby_cpu_pct_of_core"], 5.0)
    out["verdict_lost"] = verdict(out["lost_transitions"], 0, "eq")
    for k, v in out.items():
        print(f"{k:40s} {v}")
    path = save("replication", out)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)
    print(f"saved {path}", file=sys.stderr)



if __name__ == "__main__":
    main()
