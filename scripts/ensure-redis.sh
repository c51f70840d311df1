#!/usr/bin/env bash
# Make sure a Redis answers on 127.0.0.1:6379: start a throwaway redis-server if none does,
# installing it from the distribution's packages when it is missing and we may.
set -euo pipefail
PORT=${REDIS_PORT:-6379}
answers() { (exec 3<>"/dev/tcp/127.0.0.1/$PORT" && printf 'PING\r\n' >&3 && head -c5 <&3 | grep -q PONG) 2>/dev/null; }
answers && exit 0
if ! command -v redis-server >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
  else
    echo "No Redis on 127.0.0.1:$PORT and no redis-server to start: install Redis first." >&2; exit 1
  fi
fi
redis-server --daemonize yes --bind 127.0.0.1 --port "$PORT" --save "" --appendonly no \
  --dir /tmp --logfile "/tmp/redis-$PORT.log"
for _ in $(seq 50); do answers && exit 0; sleep 0.1; done
echo "redis-server did not start on port $PORT" >&2; exit 1
