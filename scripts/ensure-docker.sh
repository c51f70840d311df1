#!/usr/bin/env bash
# Make sure a Docker daemon answers (for sam local invoke): install Debian's docker.io and
# debootstrap when they are missing and we may, start dockerd in the background when no daemon
# answers, and wait for it.
set -euo pipefail
LOG=${DOCKERD_LOG:-/tmp/dockerd.log}
answers() { docker info >/dev/null 2>&1; }
missing=()
command -v dockerd >/dev/null || missing+=(docker.io)
command -v debootstrap >/dev/null || missing+=(debootstrap)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    echo "Missing ${missing[*]} and not root with apt-get: install them first." >&2; exit 1
  fi
fi
answers && exit 0
if [ "$(id -u)" != 0 ]; then
  echo "No Docker daemon answers and dockerd needs root: start it (sudo dockerd &)." >&2; exit 1
fi
# A daemon that is starting (another run got here first) owns the pid file: wait for it instead.
if ! { [ -f /var/run/docker.pid ] && kill -0 "$(cat /var/run/docker.pid)" 2>/dev/null; }; then
  setsid dockerd >"$LOG" 2>&1 < /dev/null &
fi
for _ in $(seq 120); do answers && exit 0; sleep 0.5; done
echo "dockerd did not answer within 60 s; see $LOG" >&2; tail -20 "$LOG" >&2; exit 1
