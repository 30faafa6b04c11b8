"""Import benchmark: `scada historian import` of a long CSV of counter readings (issue 17).

    python bench/import.py [--luminaires 500] [--readings 35040] [--bad-every 100000]

Generates (with DuckDB, in a temporary directory) the auditor's file: 15-minute energy-counter
readings in kWh of ``--luminaires`` luminaires (500 x 35,040 = a year, 17.5 M rows), one bad row
every ``--bad-every`` rows (a value that is not a number). Then, in the same run:

* baseline: DuckDB's own CSV reader on the same file (typed read, count and sum of the values);
* the import into an embedded store (its default options: fsync on), rows/s, with the rows
  rejected checked against the bad rows planted;
* the same file imported again (idempotent: every block skipped, nothing stored).

Target: >= 1,000,000 rows/s (PASS/FAIL printed). Figures saved to bench/results/import.json.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import duckdb

from bench._util import save
from historian.embedded import EmbeddedBackend
from historian.transfer import Mapping, import_file

TARGET = 1_000_000


def make_csv(path: str, n_lum: int, n_read: int, bad_every: int) -> int:
    """Long CSV ``ts,tag,value``; returns the number of bad rows planted."""
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    n = n_lum * n_read
    con.execute(f"""
        COPY (
          SELECT strftime(make_timestamptz(1735686000000000 + (i % {n_read}) * 900000000), '%Y-%m-%dT%H:%M:%SZ') AS ts,
                 'centre/cab-' || lpad(((i // {n_read}) // 40)::VARCHAR, 3, '0') || '/lum-'
                   || lpad(((i // {n_read}) % 40)::VARCHAR, 2, '0') || '/energy_wh' AS tag,
                 CASE WHEN {bad_every} > 0 AND i % {bad_every} = {bad_every} - 1 THEN 'n/a'
                      ELSE round((i % {n_read}) * 0.01 + (i // {n_read}) * 0.001, 3)::VARCHAR END AS value
          FROM range({n}) t(i) ORDER BY i
        ) TO '{path}' (FORMAT csv, HEADER true)""")
    con.close()
    return n // bad_every if bad_every > 0 else 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--luminaires", type=int, default=500)
    ap.add_argument("--readings", type=int, default=35_040, help="readings per luminaire (35,040: a year of 15 min)")
    ap.add_argument("--bad-every", type=int, default=100_000)
    a = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="bench-import-")
    try:
        path = os.path.join(tmp, "readings.csv")
        t = time.perf_counter()
        n_bad = make_csv(path, a.luminaires, a.readings, a.bad_every)
        rows = a.luminaires * a.readings
        size = os.path.getsize(path)
        print(f"generated {rows:,} rows ({size / 1e6:,.0f} MB, {n_bad} bad rows) in {time.perf_counter() - t:.1f} s")

        con = duckdb.connect(config={"threads": 2})
        t = time.perf_counter()
        n, _ = con.execute(f"SELECT count(*), sum(TRY_CAST(value AS DOUBLE)) FROM read_csv('{path}', header=true, "
                           "auto_detect=false, columns={'ts': 'TIMESTAMPTZ', 'tag': 'VARCHAR', 'value': 'VARCHAR'})"
                           ).fetchone()
        base = time.perf_counter() - t
        con.close()
        print(f"baseline: DuckDB read_csv (typed, count + sum)   {base:7.2f} s  {n / base:>12,.0f} rows/s")

        b = EmbeddedBackend(os.path.join(tmp, "store"), {})
        t = time.perf_counter()
        res = import_file(b, path, Mapping(unit="kWh"))
        dt = time.perf_counter() - t
        rate = res.rows / dt
        ok_rej = res.n_rejected == n_bad
        print(f"scada historian import (embedded store, fsync)   {dt:7.2f} s  {rate:>12,.0f} rows/s "
              f"= {rate / (n / base):.2f} x DuckDB's reader; stored {res.stored:,}, rejected {res.n_rejected:,} "
              f"({'as planted' if ok_rej else f'planted {n_bad}: WRONG'})")
        t = time.perf_counter()
        again = import_file(b, path, Mapping(unit="kWh"))
        dt2 = time.perf_counter() - t
        print(f"same file again (idempotent)                     {dt2:7.2f} s  stored {again.stored:,}, "
              f"{again.skipped_blocks} blocks skipped")
        b.close()
        verdict = "PASS" if rate >= TARGET and ok_rej and again.stored == 0 else "FAIL"
        print(f"{verdict}: import {rate:,.0f} rows/s (target >= {TARGET:,})")
        print("saved", save("import", {"rows": rows, "baseline_s": base, "baseline_rows_s": n / base,
                                       "import_s": dt, "import_rows_s": rate, "rejected": res.n_rejected,
                                       "planted_bad": n_bad, "reimport_s": dt2, "reimport_stored": again.stored,
                                       "verdict": verdict}))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
