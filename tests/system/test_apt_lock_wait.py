"""scripts/test.sh installs its system packages through scripts/apt-get-wait.sh, which waits for
another package manager's lock instead of aborting with rc 100 (issue 15).

Real apt-get against a real lock: the test holds the lists lock of a private apt state
directory (the same fcntl lock apt takes), with no sources, so `apt-get update` touches
nothing on the machine and nothing on the network."""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

pytestmark = [
    pytest.mark.system,
    pytest.mark.timeout(120),
    pytest.mark.skipif(shutil.which("apt-get") is None, reason="needs Debian's apt-get"),
    pytest.mark.skipif(os.geteuid() != 0, reason="apt-get update runs as root"),
]

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "apt-get-wait.sh"


def private_apt(tmp_path: Path) -> tuple[list[str], Path]:
    """apt-get options pointing every state and cache directory into ``tmp_path``."""
    lists = tmp_path / "lists"
    (lists / "partial").mkdir(parents=True)
    (tmp_path / "archives" / "partial").mkdir(parents=True)
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list").write_text("")
    opts = ["-o", f"Dir::State::Lists={lists}", "-o", f"Dir::Etc::SourceList={tmp_path / 'sources.list'}",
            "-o", f"Dir::Etc::SourceParts={tmp_path / 'sources.list.d'}",
            "-o", f"Dir::Cache::Archives={tmp_path / 'archives'}",
            "-o", f"Dir::Cache={tmp_path / 'cache'}"]
    return opts, lists / "lock"


def test_apt_get_update_waits_for_a_held_lock(tmp_path):
    opts, lock = private_apt(tmp_path)
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o640)
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # what another apt-get holds
        plain = subprocess.run(["apt-get", *opts, "-o", "DPkg::Lock::Timeout=300", "update"],
                               capture_output=True, text=True, timeout=60)
        # the premise: apt itself does not wait for this lock, even with DPkg::Lock::Timeout
        assert plain.returncode == 100 and "Could not get lock" in plain.stderr, plain.stderr
        proc = subprocess.Popen([str(SCRIPT), *opts, "update"], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True,
                                env={**os.environ, "APT_LOCK_WAIT": "90"})
        first = proc.stderr.readline()  # printed once apt met the lock
        assert "another process holds apt's lock" in first, first + proc.stderr.read()
        assert proc.poll() is None
    finally:
        os.close(fd)  # the other package manager is done
    _out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "Could not get lock" not in err.replace(first, "")


def test_apt_get_gives_up_after_the_wait_and_returns_apts_error(tmp_path):
    opts, lock = private_apt(tmp_path)
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o640)
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        res = subprocess.run([str(SCRIPT), *opts, "update"], capture_output=True, text=True,
                             timeout=60, env={**os.environ, "APT_LOCK_WAIT": "2"})
    finally:
        os.close(fd)
    assert res.returncode == 100
    assert res.stderr.rstrip().endswith(f"E: Unable to lock directory {lock.parent}/"), res.stderr


def test_test_sh_calls_apt_only_through_the_waiting_wrapper():
    lines = [line for line in (SCRIPT.parent / "test.sh").read_text().splitlines()
             if not line.lstrip().startswith("#")]
    bare = [line for line in lines if re.search(r"(?<![\w/.-])apt-get\s+(-|update|install)", line)]
    assert bare == []
    assert sum("scripts/apt-get-wait.sh update" in line for line in lines) == 1
    assert sum("scripts/apt-get-wait.sh install" in line for line in lines) == 1
