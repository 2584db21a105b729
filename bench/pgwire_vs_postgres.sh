#!/usr/bin/env bash
# Trivial reads over the PostgreSQL protocol: `tessera serve` beside a PostgreSQL 15
# server started here, in the same run, measured with pgbench.
#
#   bench/pgwire_vs_postgres.sh [SECONDS]      (default 10 s per measurement)
#
# Prints `SELECT 1` latency p50/p99 (one client, from pgbench's per-transaction log) and
# tps for 1 and 8 clients, for `SELECT 1` and for a point read of a 1000-row table by a
# random key, with the ratio Tessera / PostgreSQL. Needs Debian's postgresql-15 (server
# and pgbench). Tessera is built with the dev profile (dependencies at opt-level 2), as
# the tests use it; set PROFILE=release for a release build.
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-10}"
profile="${PROFILE:-dev}"
pgbin=/usr/lib/postgresql/15/bin
work="$(mktemp -d /tmp/tessera-pgbench.XXXXXX)"
chmod 755 "$work"
tport=55433
pport=55432

cargo build --quiet --profile "$profile" -p tessera-server --bin tessera
target="${CARGO_TARGET_DIR:-target}"
dir="$profile"; [ "$profile" = dev ] && dir=debug
tessera="$target/$dir/tessera"

cleanup() {
    [ -n "${tpid:-}" ] && kill "$tpid" 2>/dev/null || true
    as_postgres "$pgbin/pg_ctl" -D "$work/pg" -m immediate stop >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT

# PostgreSQL refuses to run as root: run it as the postgres user when we are root.
as_postgres() {
    if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}
mkdir -p "$work/pg" "$work/sock"
[ "$(id -u)" = 0 ] && chown postgres "$work/pg" "$work/sock"
as_postgres "$pgbin/initdb" -D "$work/pg" -A trust -U postgres >/dev/null
as_postgres "$pgbin/pg_ctl" -D "$work/pg" -o "-p $pport -k $work/sock" -l "$work/sock/pg.log" -w start >/dev/null

"$tessera" serve --data-dir "$work/tessera" --pg-listen "127.0.0.1:$tport" 2>"$work/tessera.log" &
tpid=$!
for _ in $(seq 50); do psql -X -q -h 127.0.0.1 -p $tport -U tessera -c 'SELECT 1' tessera >/dev/null 2>&1 && break; sleep 0.2; done

setup="CREATE TABLE accounts AS SELECT CAST(g AS INT) AS id, g * 2.5 AS balance FROM generate_series(1, 1000) AS t(g)"
psql -X -q -h 127.0.0.1 -p $pport -U postgres -c "$setup" postgres
psql -X -q -h 127.0.0.1 -p $tport -U tessera -c "$setup" tessera
echo 'SELECT 1;' > "$work/select1.sql"
printf '\\set a random(1, 1000)\nSELECT balance FROM accounts WHERE id = :a;\n' > "$work/point.sql"

# run NAME PORT USER DB SCRIPT CLIENTS [extra pgbench args] -> prints tps
run() {
    local port=$2 user=$3 db=$4 script=$5 clients=$6; shift 6
    pgbench -n -h 127.0.0.1 -p "$port" -U "$user" -f "$script" -c "$clients" -j 2 -T "$secs" "$@" "$db" 2>&1 \
        | awk '/^tps = / { printf "%.0f", $3 }'
}

# p50/p99 of `SELECT 1` with one client, in microseconds, from pgbench's log.
latency() {
    local port=$1 user=$2 db=$3
    (cd "$work" && rm -f lat.* && pgbench -n -h 127.0.0.1 -p "$port" -U "$user" -f select1.sql -c 1 \
        -T "$secs" -l --log-prefix=lat "$db" >/dev/null 2>&1)
    cat "$work"/lat.* | python3 -c '
import sys
lat = sorted(int(line.split()[2]) for line in sys.stdin)
pick = lambda q: lat[min(len(lat) - 1, int(q * len(lat)))]
print(f"{pick(0.50)} {pick(0.99)}")'
}

read -r t50 t99 <<<"$(latency $tport tessera tessera)"
read -r p50 p99 <<<"$(latency $pport postgres postgres)"
ratio() { python3 -c "print(f'{$1 / $2:.2f}')"; }

echo
echo "command: bench/pgwire_vs_postgres.sh $secs   (profile $profile, $(nproc) cores, pgbench -j 2 -T $secs)"
echo
printf '| %-40s | %12s | %12s | %14s |\n' measurement Tessera "PostgreSQL 15" "Tessera / PG"
printf '|%s|%s|%s|%s|\n' "------------------------------------------" "--------------" "--------------" "----------------"
printf '| %-40s | %12s | %12s | %14s |\n' "SELECT 1 latency p50 (us)" "$t50" "$p50" "$(ratio $t50 $p50)"
printf '| %-40s | %12s | %12s | %14s |\n' "SELECT 1 latency p99 (us)" "$t99" "$p99" "$(ratio $t99 $p99)"
for script in select1 point; do
    for clients in 1 8; do
        for mode in simple prepared; do
            t=$(run x $tport tessera tessera "$work/$script.sql" $clients -M $mode)
            p=$(run x $pport postgres postgres "$work/$script.sql" $clients -M $mode)
            printf '| %-40s | %12s | %12s | %14s |\n' "$script tps, $clients client(s), -M $mode" "$t" "$p" "$(ratio $t $p)"
        done
    done
done
