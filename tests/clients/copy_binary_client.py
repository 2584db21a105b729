"""psycopg 3's binary COPY against `tessera serve` (run by tests/copy_binary.rs with the
server's port): `cursor.copy("COPY t FROM STDIN (FORMAT binary)")` with `write_row`
into a table of every type binary COPY reads, NULLs included, and `COPY ... TO STDOUT
(FORMAT binary)` read back row by row, compared with the values Python wrote; the same
for a matrix (its (i, j, v) cells) and a matmul, compared with NumPy; text COPY with
several columns named. Prints "ok" when every check holds; an assertion names the one
that did not."""
import datetime as dt
import sys

import numpy as np
import psycopg

port = int(sys.argv[1])
conn = psycopg.connect(f"host=127.0.0.1 port={port} user=tessera dbname=tessera", autocommit=True)
cur = conn.cursor()

cur.execute(
    "CREATE TABLE kinds (a SMALLINT, b INT, c BIGINT, d REAL, e DOUBLE, f BOOLEAN, "
    "g TEXT, h VARCHAR, k DATE, m TIMESTAMP)"
)
types = ["int2", "int4", "int8", "float4", "float8", "bool", "text", "varchar", "date", "timestamp"]
rows = [
    (1, 2, 3, 1.5, 2.25, True, "plain", "x", dt.date(2024, 1, 2), dt.datetime(2024, 1, 2, 3, 4, 5, 678901)),
    (-32768, -2**31, -2**63, -0.0, 1e-300, False, "tab\there, newline\nthere; é ✓", "",
     dt.date(1999, 12, 31), dt.datetime(1970, 1, 1)),
    (None, None, None, None, None, None, None, None, None, None),
    (32767, 2**31 - 1, 2**63 - 1, float("inf"), float("-inf"), True, "\\N", "NULL",
     dt.date(2000, 1, 1), dt.datetime(2000, 1, 1, 0, 0, 0, 1)),
]
with cur.copy("COPY kinds FROM STDIN (FORMAT binary)") as copy:
    copy.set_types(types)
    for row in rows:
        copy.write_row(row)
assert cur.rowcount == len(rows), cur.rowcount

back = []
with cur.copy("COPY kinds TO STDOUT (FORMAT binary)") as copy:
    copy.set_types(types)
    for row in copy.rows():
        back.append(row)
assert cur.rowcount == len(rows), cur.rowcount
key = lambda r: (r[2] is None, r[2] or 0)
assert sorted(back, key=key) == sorted(rows, key=key), (back, rows)

# A query's result, binary, with the columns named in the COPY.
with cur.copy("COPY (SELECT c, g FROM kinds WHERE a > 0 ORDER BY c) TO STDOUT WITH (FORMAT binary)") as copy:
    copy.set_types(["int8", "text"])
    assert list(copy.rows()) == [(3, "plain"), (2**63 - 1, "\\N")]

# Some columns only: the others are NULL.
with cur.copy("COPY kinds (c, g) FROM STDIN WITH (FORMAT binary)") as copy:
    copy.set_types(["int8", "text"])
    copy.write_row((42, "only two"))
cur.execute("SELECT a, c, g, m FROM kinds WHERE c = 42")
assert cur.fetchall() == [(None, 42, "only two", None)]

# NaN survives the round trip. The CREATE goes through the extended protocol, as ADBC
# sends it: DDL answers no rows (libpq's COMMAND_OK), not the new table's columns.
cur.execute("CREATE TABLE nans (x DOUBLE)", prepare=True)
assert cur.pgresult.status == psycopg.pq.ExecStatus.COMMAND_OK, cur.pgresult.status
assert cur.description is None, cur.description
with cur.copy("COPY nans FROM STDIN (FORMAT binary)") as copy:
    copy.set_types(["float8"])
    copy.write_row((float("nan"),))
with cur.copy("COPY nans TO STDOUT (FORMAT binary)") as copy:
    copy.set_types(["float8"])
    (x,), = list(copy.rows())
    assert np.isnan(x)

# A matrix: its cells in, binary; the matmul out, binary; both checked with NumPy.
rng = np.random.default_rng(7)
a = rng.standard_normal((5, 4))
b = rng.standard_normal((4, 3))
for name, m in (("a", a), ("b", b)):
    cur.execute(f"CREATE MATRIX {name} ({m.shape[0]}, {m.shape[1]}) BLOCK (2, 2)")
    with cur.copy(f"COPY {name} FROM STDIN (FORMAT binary)") as copy:
        copy.set_types(["int8", "int8", "float8"])
        for (i, j), v in np.ndenumerate(m):
            copy.write_row((i, j, float(v)))
    assert cur.rowcount == m.size, cur.rowcount


def read_matrix(sql, shape):
    out = np.full(shape, np.nan)
    with cur.copy(f"COPY ({sql}) TO STDOUT (FORMAT binary)") as copy:
        copy.set_types(["int8", "int8", "float8"])
        for i, j, v in copy.rows():
            out[i, j] = v
    return out


got_a = np.zeros(a.shape)
with cur.copy("COPY a TO STDOUT (FORMAT binary)") as copy:
    copy.set_types(["int8", "int8", "float8"])
    for i, j, v in copy.rows():
        got_a[i, j] = v
assert np.array_equal(got_a, a)
product = read_matrix("SELECT i, j, v FROM matmul(a, b)", (5, 3))
assert np.allclose(product, a @ b, rtol=1e-12, atol=1e-12), product - a @ b

# Binary data into the wrong type is refused with its row and field named.
try:
    with cur.copy("COPY nans FROM STDIN (FORMAT binary)") as copy:
        copy.set_types(["int4"])
        copy.write_row((7,))
    raise AssertionError("an int4 was read as a float8")
except psycopg.Error as e:
    assert e.sqlstate == "22P03", (e.sqlstate, str(e))
    assert "row 1, field 1 (x)" in str(e), str(e)

print("ok")
