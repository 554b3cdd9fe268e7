#!/usr/bin/env bash
# Start a throwaway PostgreSQL server on loopback for the tests that need one; prints the env line to export.
# Usage: eval "$(bash .ci/postgres.sh start)"; ...; bash .ci/postgres.sh stop
# `bash .ci/postgres.sh restart [SECONDS]` stops the server (fast: open sessions are cut), waits, starts it
# again (the fault tests and scripts/bench_chaos.py use it).
set -euo pipefail
PORT=${NASDD_PG_PORT:-55432}
STATE=/tmp/nasdd-pg-$PORT
case "${1:-start}" in
start)
  if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
    (apt-get update -qq && apt-get install -y -qq postgresql) >&2
  fi
  BIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
  rm -rf "$STATE" && mkdir -p "$STATE" && chown postgres "$STATE"
  runuser -u postgres -- "$BIN/initdb" -D "$STATE/data" -A trust -U postgres >&2
  runuser -u postgres -- "$BIN/pg_ctl" -D "$STATE/data" -l "$STATE/log" -w \
    -o "-c listen_addresses=127.0.0.1 -p $PORT -k $STATE -c max_connections=200" start >&2
  runuser -u postgres -- "$BIN/createdb" -h 127.0.0.1 -p "$PORT" nasdd_test >&2
  echo "export NASDD_TEST_POSTGRES=postgresql+psycopg2://postgres@127.0.0.1:$PORT/nasdd_test"
  ;;
restart)
  BIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
  runuser -u postgres -- "$BIN/pg_ctl" -D "$STATE/data" -m fast -w stop >&2
  sleep "${2:-0}"
  runuser -u postgres -- "$BIN/pg_ctl" -D "$STATE/data" -l "$STATE/log" -w \
    -o "-c listen_addresses=127.0.0.1 -p $PORT -k $STATE -c max_connections=200" start >&2
  ;;
stop)
  BIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
  [ -d "$STATE/data" ] && runuser -u postgres -- "$BIN/pg_ctl" -D "$STATE/data" -m fast -w stop >&2 || true
  rm -rf "$STATE"
  ;;
esac
