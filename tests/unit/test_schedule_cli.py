"""``scada schedule preview | explain | override`` through click, on a small site file."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from cli import main
from scada.users import hash_password
from tests.unit.test_schedule_engine import site_yaml


@pytest.fixture(scope="module")
def pw_hash() -> str:
    return hash_password("secret-password")


@pytest.fixture
def site(tmp_path, pw_hash):
    p = tmp_path / "site.yaml"
    users = (
        "users:\n"
        f"  - {{name: eve, role: engineer, password_hash: '{pw_hash}'}}\n"
        f"  - {{name: olga, role: operator, password_hash: '{pw_hash}'}}\n"
    )
    p.write_text(site_yaml(str(tmp_path / "state")) + users)
    return p


def run(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def test_preview_prints_sun_steps_and_energy(site):
    r = run("schedule", "preview", str(site), "--date", "2026-12-21")
    assert r.exit_code == 0, r.output
    out = r.output
    assert "sunset 16:51" in out and "sunrise 08:24" in out and "civil dusk" in out
    assert "22:00     70 %" in out
    assert "switch-off (dawn+10min)" in out
    assert "expected energy" in out and "saved" in out
    r2 = run("schedule", "preview", str(site), "--date", "2026-07-14", "--area", "centre")
    assert "profile 'full' (rule holidays): 4 luminaires" in r2.output
    bad = CliRunner().invoke(
        main, ["schedule", "preview", str(site), "--date", "2026-12-21", "--area", "nowhere"]
    )
    assert bad.exit_code != 0 and "nowhere" in bad.output


def test_explain_names_the_winning_rule(site):
    r = run(
        "schedule",
        "explain",
        "centre/cab-1/lum-02",
        "--site",
        str(site),
        "--at",
        "2026-07-14 23:30",
    )
    assert r.exit_code == 0, r.output
    assert "[WINS ] holidays (priority 50, profile full): holiday 'Fête nationale'" in r.output
    assert "[match] everyday" in r.output
    assert "=> level 100 %" in r.output
    r = run(
        "schedule",
        "explain",
        "chenove/gw-1/lum-005",
        "--site",
        str(site),
        "--at",
        "2026-01-15 23:59",
    )
    assert "[WINS ] everyday" in r.output and "=> level 40 %" in r.output


