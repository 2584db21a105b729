"""Fetching a 10,000,000-row (i, j, v) result from `tessera serve`: over Flight SQL
(ADBC and plain pyarrow.flight), over the PostgreSQL protocol (psycopg rows, and COPY TO
STDOUT), and pyarrow reading the same rows from a local Parquet file, in one run.

    bench/fetch_10m.sh            (starts the server, then runs this)

MB/s counts the rows' Arrow size (8 + 8 + 8 bytes a row) for every client, so the
columns compare time for the same data.
"""
import os
import sys
import tempfile
import time

import adbc_driver_flightsql.dbapi as flight_sql
import psycopg
import pyarrow.flight as fl
import pyarrow.parquet as pq

pg_url, flight_uri = sys.argv[1], sys.argv[2]
ROWS, COLS = 10_000, 1_000  # a dense 10,000 x 1,000 matrix: 10,000,000 cells
QUERY = "SELECT i, j, v FROM big"

with psycopg.connect(pg_url, autocommit=True) as conn:
    conn.execute("DROP MATRIX IF EXISTS big")
    conn.execute(f"CREATE MATRIX big ({ROWS}, {COLS}) BLOCK (1000, 1000) AS "
                 f"SELECT * FROM rand({ROWS}, {COLS}, seed => 1)")
MB = ROWS * COLS * 24 / 1e6
results = []


def timed(name, fetch, repeat=2):
    best = None
    for _ in range(repeat):
        start = time.perf_counter()
        rows = fetch()
        elapsed = time.perf_counter() - start
        assert rows == ROWS * COLS, (name, rows)
        best = elapsed if best is None else min(best, elapsed)
    results.append((name, best))


# Flight SQL through ADBC: an Arrow table.
with flight_sql.connect(flight_uri) as conn, conn.cursor() as cur:
    def adbc():
        cur.execute(QUERY)
        return cur.fetch_arrow_table().num_rows
    timed("Flight SQL, ADBC fetch_arrow_table", adbc)


# Flight SQL with pyarrow.flight alone (CommandStatementQuery built by hand).
def field(number, payload):
    def varint(n):
        out = bytearray()
        while True:
            byte, n = n & 0x7F, n >> 7
            out.append(byte | (0x80 if n else 0))
            if not n:
                return bytes(out)
    return varint(number << 3 | 2) + varint(len(payload)) + payload


client = fl.FlightClient(flight_uri)
descriptor = fl.FlightDescriptor.for_command(
    field(1, b"type.googleapis.com/arrow.flight.protocol.sql.CommandStatementQuery")
    + field(2, field(1, QUERY.encode())))


def pyarrow_flight():
    info = client.get_flight_info(descriptor)
    table = None
    rows = 0
    for endpoint in info.endpoints:
        table = client.do_get(endpoint.ticket).read_all()
        rows += table.num_rows
    pyarrow_flight.table = table
    return rows


timed("Flight SQL, pyarrow.flight read_all", pyarrow_flight)

# The PostgreSQL protocol through psycopg: binary rows, and COPY TO STDOUT (text).
with psycopg.connect(pg_url, autocommit=True) as conn:
    def rows():
        with conn.cursor(binary=True) as cur:
            cur.execute(QUERY)
            n = 0
            while batch := cur.fetchmany(100_000):
                n += len(batch)
            return n
    timed("pgwire, psycopg binary rows", rows, repeat=1)

    def copy():
        n = 0
        with conn.cursor() as cur, cur.copy(f"COPY ({QUERY}) TO STDOUT") as copy:
            for block in copy:
                n += bytes(block).count(b"\n")
        return n
    timed("pgwire, psycopg COPY TO STDOUT", copy)

# pyarrow reading the same rows from a local Parquet file.
with tempfile.TemporaryDirectory() as tmp:
    path = os.path.join(tmp, "big.parquet")
    pq.write_table(pyarrow_flight.table, path)
    timed("local Parquet, pyarrow.parquet.read_table", lambda: pq.read_table(path).num_rows)

print(f"\nFetching {ROWS * COLS:,} (i, j, v) rows ({MB:.0f} MB as Arrow): bench/fetch_10m.sh\n")
print(f"| {'client':<42} | {'seconds':>8} | {'MB/s':>8} |")
print(f"|{'-' * 44}|{'-' * 10}|{'-' * 10}|")
for name, seconds in results:
    print(f"| {name:<42} | {seconds:>8.2f} | {MB / seconds:>8.0f} |")
