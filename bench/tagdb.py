"""Tag database throughput and memory (issue 2).

1,000,000 numeric tags; batches of 10,000 samples applied with per-tag deadband detection and
one subscriber receiving the changes. Baseline, in the same run: the same batches applied by a
per-tag Python loop over a dict (what a naive SCADA does). Targets: >= 5,000,000 updates/s with
fan-out; <= 200 bytes per numeric tag.

Field-data screening is on (issue 16), as in a real site: every point has an EU range (2 % of
the samples fall outside it and become BadOutOfRange), one point per device is an integer
(rounded), one a cumulative counter (classified against its last reading), and the
future/late source-time checks run on every sample.

    python bench/tagdb.py [--tags 1000000] [--batch 10000] [--seconds 5]
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import time
import tracemalloc

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench._util import rss_bytes, save
from scada import quality as Q
from scada.clock import RealClock
from scada.tags import Batch, PointDef, PointSchema, TagDatabase

POINTS = 10  # tags per device (a luminaire has about that many)
RANGE_HIGH = 1e9


def build(n_tags: int) -> TagDatabase:
    # like a luminaire: ranged analogue points, an integer (p1) and an energy counter (p9)
    schema = PointSchema("lum", tuple(
        PointDef(f"p{k}", "int" if k == 1 else "float", "W", deadband=0.5 if k % 2 else 0.0,
                 eu_low=0.0, eu_high=RANGE_HIGH, counter=k == POINTS - 1)
        for k in range(POINTS)
    ))
    db = TagDatabase(RealClock(), capacity=n_tags)
    for d in range(n_tags // POINTS):
        db.add_device(f"area-{d % 23:02d}/cab-{d // 64:05d}/lum-{d % 64:02d}", schema)
    return db


def make_batches(n_tags: int, batch: int, count: int, rng: np.random.Generator,
                 base: np.ndarray | None = None):
    """``count`` batches moving on from ``base`` (the initial read; changed in place)."""
    out = []
    base = rng.uniform(0, 100, n_tags) if base is None else base
    for _ in range(count):
        idx = rng.choice(n_tags, batch, replace=False).astype(np.int64)
        # half the samples move by more than the deadband, half by less
        step = np.where(rng.random(batch) < 0.5, rng.uniform(1, 5, batch), rng.uniform(0, 0.4, batch))
        base[idx] += step
        vals = base[idx].copy()
        vals[rng.random(batch) < 0.02] = -1.0  # 2 % implausible readings
        out.append(Batch(idx, vals, Q.Good, time.time()))
    return out


def bench_ours(db: TagDatabase, batches, seconds: float) -> tuple[float, float, int]:
    received = [0]

    def subscriber(ch):
        received[0] += len(ch)

    db.subscribe(subscriber, name="bench")
    originals = [b.values.copy() for b in batches]
    implausible = [b.values < 0 for b in batches]
    n = 0
    t0 = time.perf_counter()
    deadline = t0 + seconds
    i = 0
    while time.perf_counter() < deadline and i < 100_000:
        k = i % len(batches)
        b = batches[k]
        if i >= len(batches):  # a replayed batch moves on, as live readings (and counters) do
            np.add(originals[k], 500.0 * (i // len(batches)), out=b.values)
            b.values[implausible[k]] = -1.0
        b.source_ts = time.time()  # stamped now (an older stamp would be late)
        db.apply(b)
        n += len(b)
        i += 1
    dt = time.perf_counter() - t0
    return n / dt, received[0] / dt, received[0]


def bench_baseline(n_tags: int, batches, seconds: float) -> float:
    """Per-tag dict loop: the same change detection and a per-change subscriber call."""
    paths = [f"t{i}" for i in range(n_tags)]
    state = {p: [float("nan"), Q.BadWaitingForInitialData, 0.0] for p in paths}
    deadband = [0.5 if (i % POINTS) % 2 else 0.0 for i in range(n_tags)]
    received = [0]

    def subscriber(path, value, quality, ts):
        received[0] += 1

    n = 0
    t0 = time.perf_counter()
    deadline = t0 + seconds
    for b in batches:
        if time.perf_counter() > deadline:
            break
        for k in range(len(b.indices)):
            i = int(b.indices[k])
            v = float(b.values[k])
            st = state[paths[i]]
            if st[1] != b.quality or not (abs(v - st[0]) <= deadband[i]):
                st[0], st[1], st[2] = v, b.quality, b.source_ts
                subscriber(paths[i], v, b.quality, b.source_ts)
        n += len(b.indices)
    return n / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tags", type=int, default=1_000_000)
    ap.add_argument("--batch", type=int, default=10_000)
    ap.add_argument("--seconds", type=float, default=5.0)
    a = ap.parse_args()
    rng = np.random.default_rng(1)

    gc.collect()
    rss0 = rss_bytes()
    tracemalloc.start()
    t0 = time.perf_counter()
    db = build(a.tags)
    build_s = time.perf_counter() - t0
    traced, _peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    rss1 = rss_bytes()
    per_tag = traced / a.tags
    per_tag_rss = (rss1 - rss0) / a.tags

    # initial read of every tag (first sample = a change from BadWaitingForInitialData)
    first = rng.uniform(0, 100, a.tags)
    db.apply(Batch(np.arange(a.tags, dtype=np.int64), first.copy(), Q.Good, time.time()))
    batches = make_batches(a.tags, a.batch, 200, rng, first)
    ups, cps, _changes = bench_ours(db, batches, a.seconds)
    screened = {k: db.stats[k] for k in ("implausible", "counter_glitches", "late_samples")}
    base = bench_baseline(a.tags, batches, min(a.seconds, 5.0))

    figures = {
        "tags": a.tags, "batch": a.batch, "build_s": round(build_s, 2),
        "bytes_per_tag_tracemalloc": round(per_tag, 1), "bytes_per_tag_rss": round(per_tag_rss, 1),
        "updates_per_s": round(ups), "changes_delivered_per_s": round(cps),
        "baseline_dict_loop_updates_per_s": round(base), "ratio_vs_baseline": round(ups / base, 1),
        "screening": screened,
        "targets": {"updates_per_s": 5_000_000, "bytes_per_tag": 200},
    }
    print(f"tag database: {a.tags:,} numeric tags built in {build_s:.2f} s")
    print(f"  memory: {per_tag:.1f} B/tag (tracemalloc), {per_tag_rss:.1f} B/tag (RSS delta)   target <= 200")
    print(f"  apply: {ups:,.0f} updates/s with deadband detection, plausibility screening and 1 "
          f"subscriber ({cps:,.0f} changes/s delivered)   target >= 5,000,000")
    print(f"  screening: {screened['implausible']:,} implausible, {screened['counter_glitches']:,} "
          f"counter glitches, {screened['late_samples']:,} late samples")
    print(f"  baseline per-tag dict loop: {base:,.0f} updates/s  -> ratio {ups / base:.1f}x")
    print(f"  figures saved to {save('tagdb', figures)}")


if __name__ == "__main__":
    main()
