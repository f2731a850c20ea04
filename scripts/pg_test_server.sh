#!/usr/bin/env bash
# A throwaway PostgreSQL server for the fault tests: Debian's binaries, a fresh cluster in /tmp,
# listening on 127.0.0.1 only, trust auth for the test user. Prints the URL on `start`.
# Usage: scripts/pg_test_server.sh start|stop
set -euo pipefail
PORT="${CONDCONV_NAS_PG_PORT:-55432}"
DIR="${CONDCONV_NAS_PG_DIR:-/tmp/condconv-nas-pg}"
BIN="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)"
[ -x "$BIN/pg_ctl" ] || { echo "PostgreSQL server binaries not found (apt-get install postgresql)" >&2; exit 2; }
as_owner() {  # the server refuses to run as root: use Debian's postgres user then
  if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}
case "${1:-}" in
  start)
    if as_owner "$BIN/pg_ctl" -D "$DIR" status >/dev/null 2>&1; then
      echo "postgresql://condconv@127.0.0.1:$PORT/condconv_test"; exit 0
    fi
    rm -rf "$DIR"; mkdir -p "$DIR"
    [ "$(id -u)" -eq 0 ] && chown postgres: "$DIR"
    as_owner "$BIN/initdb" -D "$DIR" -U condconv -A trust >/dev/null
    as_owner "$BIN/pg_ctl" -D "$DIR" -l "$DIR/server.log" -w \
      -o "-c listen_addresses=127.0.0.1 -p $PORT -k $DIR -c max_connections=200" start >/dev/null
    as_owner "$BIN/createdb" -h 127.0.0.1 -p "$PORT" -U condconv condconv_test
    echo "postgresql://condconv@127.0.0.1:$PORT/condconv_test"
    ;;
  stop)
    as_owner "$BIN/pg_ctl" -D "$DIR" -m fast stop >/dev/null 2>&1 || true
    rm -rf "$DIR"
    ;;
  *) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
