#!/usr/bin/env bash
# apt-get that waits for another package manager (unattended-upgrades, a parallel CI job, an
# engineer's apt) instead of failing with rc 100 on its lock.
#
# DPkg::Lock::Timeout makes apt wait for dpkg's locks (install, remove). `apt-get update` also
# takes /var/lib/apt/lists/lock (and install /var/cache/apt/archives/lock), and apt does not
# wait for those (checked with apt 2.6): a "Could not get lock" failure is retried every 3 s
# until APT_LOCK_WAIT seconds (default 300) have passed. Any other failure is returned as is.
#
#   scripts/apt-get-wait.sh update -qq
#   scripts/apt-get-wait.sh install -y --no-install-recommends mosquitto
set -uo pipefail
wait_s="${APT_LOCK_WAIT:-300}"
deadline=$((SECONDS + wait_s))
err="$(mktemp)"
trap 'rm -f "$err"' EXIT
while :; do
  rc=0
  apt-get -o DPkg::Lock::Timeout="$wait_s" "$@" 2>"$err" || rc=$?
  if [ "$rc" -ne 0 ] && grep -q "Could not get lock" "$err" && [ "$SECONDS" -lt "$deadline" ]; then
    echo "apt-get: another process holds apt's lock ($(grep -m1 'Could not get lock' "$err" | sed 's/^E: //')); waiting, $((deadline - SECONDS)) s left" >&2
    sleep 3
    continue
  fi
  cat "$err" >&2
  exit "$rc"
done
