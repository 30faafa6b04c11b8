"""Architecture layers (import-linter contracts in pyproject.toml) and status-code values."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_import_contracts_hold():
    exe = shutil.which("lint-imports") or os.path.join(os.path.dirname(sys.executable), "lint-imports")
    if not os.path.exists(exe):
        pytest.fail("import-linter is not installed (it is in the [test] extra)")
    res = subprocess.run([exe], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr


def test_status_codes_match_opcua_table():
    ua = pytest.importorskip("asyncua.ua")
    from scada import quality as Q

    wrong = {name: hex(v) for v, name in Q.NAMES.items() if getattr(ua.StatusCodes, name, None) != v}
    assert wrong == {}
