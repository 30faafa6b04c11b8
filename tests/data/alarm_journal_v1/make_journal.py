"""Generate an alarm journal in the format of main 6080f38 (before the codec), and what main's
reader and a restarted engine make of it:

    cd <checkout of 6080f38> && python make_journal.py <checkout> <out dir> <scratch dir>
"""

import json
import shutil
import sys
from pathlib import Path

sys.path.insert(0, sys.argv[1])

from scada.alarms.journal import read_journal
from scada.clock import SteppedClock
from tests.fixtures.alarms import make_env

CAB = "centre/cab-1"
LUM = "centre/cab-1/lum-01"
out = Path(sys.argv[2])
tmp = Path(sys.argv[3])
shutil.rmtree(tmp, ignore_errors=True)
tmp.mkdir(parents=True)
clock = SteppedClock(1_780_000_000.0)
env = make_env(tmp, clock, nlum=8)
e = env.engine
env.set({f"{CAB}/comm_ok": 1, f"{CAB}/contactor": 1, f"{CAB}/voltage_l1": 230,
         f"{CAB}/door_open": 0, f"{CAB}/power_w": 1000})
lums = [f"centre/cab-1/lum-0{i}" for i in range(1, 9)]
env.set({f"{x}/level": 100 for x in lums} | {f"{x}/level_cmd": 100 for x in lums}
        | {f"{x}/lamp_failure": 0 for x in lums} | {f"{x}/power_w": 50 for x in lums})
env.set({f"{x}/lamp_failure": 1 for x in lums[:4]})  # flood lines, defaults left out
e.acknowledge(f"{LUM}/lamp_failure", user="olga", comment="crew sent \u00e9 \"quoted\"")
e.add_comment(f"{lums[1]}/lamp_failure", user="olga", comment="second look")
env.set({f"{CAB}/voltage_l1": 250})  # limit High, message shows the value
env.set({f"{CAB}/voltage_l1": 256})  # level HighHigh
e.acknowledge(f"{CAB}/voltage", user="o")
e.shelve(f"{lums[2]}/lamp_failure", user="eve", comment="known", duration=7200)
e.shelve(f"{lums[3]}/lamp_failure", user="eve", comment="one shot")
env.set({f"{x}/lamp_failure": 0 for x in lums[:3]})  # full flood lines (one is shelved)
env.set({f"{lums[3]}/lamp_failure": 0})  # one-shot shelve ends
e.unshelve(f"{lums[2]}/lamp_failure", user="eve")
for _ in range(3):  # chattering, auto-shelved
    env.set({f"{lums[4]}/lamp_failure": 1})
    env.set({f"{lums[4]}/lamp_failure": 0})
env.set({f"{lums[5]}/lamp_failure": 1})
env.set({f"{CAB}/contactor": 0})  # suppression of retained alarms
e.set_out_of_service("north/cab-2", True, user="eve", comment="works")  # device line
e.set_condition(LUM, "schedule_not_followed", True, priority=2, category="lighting",
                message="level 100 % but {50} %")  # external condition
seq = e.seq
e.close()
out.mkdir(parents=True, exist_ok=True)
src = tmp / "state" / "alarms"
for f in sorted(src.glob("journal-*.jsonl")):
    shutil.copy(f, out / f.name)
(out / "expected_entries.json").write_text(
    json.dumps(read_journal(str(src)), indent=0, ensure_ascii=False))
tmp3 = tmp.parent / (tmp.name + "_restore")
shutil.rmtree(tmp3, ignore_errors=True)
(tmp3 / "state" / "alarms").mkdir(parents=True)
for f in sorted(src.glob("journal-*.jsonl")):
    shutil.copy(f, tmp3 / "state" / "alarms" / f.name)
env3 = make_env(tmp3, SteppedClock(1_780_000_000.0), nlum=8)
e3 = env3.engine
restored = {a: e3.view(c).as_dict() for a, c in e3.by_id.items()}
(out / "expected_restored.json").write_text(json.dumps(
    {"seq": e3.seq, "views": restored, "oos_calls": env3.oos_calls}, indent=0,
    ensure_ascii=False, sort_keys=True))
e3.close()
print(seq, len(restored))
