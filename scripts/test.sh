#!/usr/bin/env bash
# Install what the tests need (system packages + Python test extras) and run them.
# Used by the README's test command and by .ci/run.
set -euo pipefail
cd "$(dirname "$0")/.."
if command -v apt-get >/dev/null 2>&1; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  need=""
  command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || need="$need mosquitto"
  command -v victoria-metrics >/dev/null 2>&1 || [ -x /usr/bin/victoria-metrics ] || need="$need victoria-metrics"
  # the web console's browser tests drive Debian's Chromium through Playwright (no browser download)
  [ -x /usr/bin/chromium ] || need="$need chromium"
  # the redundant pair's election (issue 22): fixtures start private etcd members
  [ -x /usr/bin/etcd ] || need="$need etcd-server etcd-client"
  if [ -n "$need" ]; then
    # waits for another apt/dpkg (their lock) instead of aborting with rc 100
    $SUDO env DEBIAN_FRONTEND=noninteractive scripts/apt-get-wait.sh update -qq
    $SUDO env DEBIAN_FRONTEND=noninteractive scripts/apt-get-wait.sh install -y -qq --no-install-recommends $need
  fi
  # the packages' own services are not wanted: fixtures start private instances
  ($SUDO systemctl disable --now mosquitto victoria-metrics etcd >/dev/null 2>&1 || true)
fi
PY="${PYTHON:-python3}"
if [ -z "${VIRTUAL_ENV:-}" ]; then
  [ -d .venv ] || "$PY" -m venv .venv
  . .venv/bin/activate
fi
python -m pip install -q --upgrade pip >/dev/null
python -m pip install -q -e ".[test]"
set +e
python -m pytest -q -p no:cacheprovider "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
  echo "pytest collected no tests: that is a failure" >&2
  exit 1
fi
exit "$rc"
