#!/bin/sh
# One `raftmw compare` per plugin row of the README's table "What each plugin buys".
# Usage: benchmarks/plugin_rows.sh OUTDIR [ROW...]   (rows: actors backpressure
# circuit_breaker adaptive_timeout lock_free all); each row writes OUTDIR/ROW.json.
# Small on purpose (a shared 2-core machine): REPEAT runs per side (ABBA), SECONDS_PER_RUN
# each, CLIENTS writers; OVERLOAD_RATE open-loop writes/s for the backpressure row.
set -eu
out=$1; shift
mkdir -p "$out"
REPEAT=${REPEAT:-3}
SECONDS_PER_RUN=${SECONDS_PER_RUN:-3}
CLIENTS=${CLIENTS:-32}
OVERLOAD_RATE=${OVERLOAD_RATE:-5000}
rows=${*:-actors backpressure circuit_breaker adaptive_timeout lock_free all}
common="--repeat $REPEAT --seconds $SECONDS_PER_RUN --clients $CLIENTS --json"
for row in $rows; do
  case $row in
    actors) args="--b-flag actors=on --fault stuck-peer" ;;
    backpressure) args="--b-flag backpressure=on --fault overload --overload-rate $OVERLOAD_RATE" ;;
    circuit_breaker) args="--b-flag circuit_breaker=on --fault dead-peer" ;;
    adaptive_timeout) args="--b-flag adaptive_timeout=on --fault slow-link" ;;
    lock_free) args="--b-flag lock_free=on --fault none" ;;
    all) args="--b-flag actors=on --b-flag backpressure=on --b-flag circuit_breaker=on \
--b-flag adaptive_timeout=on --b-flag lock_free=on --fault none" ;;
    *) echo "unknown row: $row" >&2; exit 2 ;;
  esac
  echo "$(date -u +%H:%M:%S) $row: raftmw compare --a-name off --b-name on $args $common" >&2
  # shellcheck disable=SC2086
  raftmw compare --a-name off --b-name on $args $common > "$out/$row.json"
done
