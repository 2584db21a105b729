#!/usr/bin/env bash
# Starts `tessera serve` (PostgreSQL protocol and Flight SQL) on a scratch data
# directory and runs bench/fetch_10m.py against it. Needs psycopg, pyarrow and
# adbc_driver_flightsql (pip). PROFILE=release for a release build (default dev).
set -euo pipefail
cd "$(dirname "$0")/.."
profile="${PROFILE:-dev}"
cargo build --quiet --profile "$profile" -p tessera-server --bin tessera
dir="$profile"; [ "$profile" = dev ] && dir=debug
work="$(mktemp -d /tmp/tessera-fetch.XXXXXX)"
"${CARGO_TARGET_DIR:-target}/$dir/tessera" serve --data-dir "$work/db" \
    --pg-listen 127.0.0.1:55533 --flight-listen 127.0.0.1:55551 2>"$work/log" &
pid=$!
trap 'kill $pid 2>/dev/null; rm -rf "$work"' EXIT
for _ in $(seq 50); do psql -X -q -h 127.0.0.1 -p 55533 -U tessera -c 'SELECT 1' tessera >/dev/null 2>&1 && break; sleep 0.2; done
python3 bench/fetch_10m.py postgresql://tessera@127.0.0.1:55533/tessera grpc://127.0.0.1:55551
