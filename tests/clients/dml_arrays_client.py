"""psycopg 3 against `tessera serve` (run by tests/dml.rs with the server's port):
UPDATE and DELETE on a table and on a matrix, checked against NumPy and the command
tags' row counts; a failing UPDATE commits nothing; array parameters (`= ANY(%s)` with
a Python list, text and binary), array literals and array results as Python lists.
Prints "ok" when every check holds; an assertion names the one that did not."""
import sys

import numpy as np
import psycopg
from psycopg import errors

port = int(sys.argv[1])
conn = psycopg.connect(host="127.0.0.1", port=port, user="tessera", dbname="tessera", autocommit=True)
cur = conn.cursor()
bcur = conn.cursor(binary=True)

# --- UPDATE / DELETE on a stored table -------------------------------------------------
cur.execute("CREATE TABLE emp (id BIGINT NOT NULL, dep TEXT, pay DOUBLE)")
rows = [(k, ["r", "p", "x"][k % 3], 100.0 + k) for k in range(30)]
cur.executemany("INSERT INTO emp VALUES (%s, %s, %s)", rows[:15])
cur.executemany("INSERT INTO emp VALUES (%s, %s, %s)", rows[15:])
expected = {k: (d, p) for k, d, p in rows}


def table():
    cur.execute("SELECT id, dep, pay FROM emp ORDER BY id")
    return {k: (d, p) for k, d, p in cur.fetchall()}


assert table() == expected

cur.execute("UPDATE emp SET pay = pay * 1.5 WHERE dep = %s AND id < %s", ("r", 20))
assert cur.statusmessage == "UPDATE 7", cur.statusmessage
assert cur.rowcount == 7, cur.rowcount
for k, (d, p) in list(expected.items()):
    if d == "r" and k < 20:
        expected[k] = (d, p * 1.5)
assert table() == expected

cur.execute("DELETE FROM emp WHERE dep = ANY(%s) AND pay > 120", (["p", "x"],))
removed = [k for k, (d, p) in expected.items() if d in ("p", "x") and p > 120]
assert cur.statusmessage == f"DELETE {len(removed)}", cur.statusmessage
for k in removed:
    del expected[k]
assert table() == expected

cur.execute("UPDATE emp SET dep = 'none' WHERE id > 1000")
assert cur.statusmessage == "UPDATE 0", cur.statusmessage

# A failing UPDATE (a cast that fails on some rows, a NULL into NOT NULL) commits nothing.
for bad, error in (
    ("UPDATE emp SET pay = CAST(dep || 'x' AS DOUBLE) WHERE id > 3", errors.Error),
    ("UPDATE emp SET id = NULL WHERE id = 5", errors.Error),
):
    try:
        cur.execute(bad)
        raise AssertionError(f"{bad} succeeded")
    except error:
        pass
    assert table() == expected, bad

# UPDATE ... FROM and subqueries in WHERE are refused with 0A000, not run wider.
try:
    cur.execute("DELETE FROM emp WHERE id IN (SELECT id FROM emp WHERE pay > 110)")
    raise AssertionError("a subquery in DELETE's WHERE ran")
except errors.FeatureNotSupported:
    pass
assert table() == expected

# --- UPDATE / DELETE on a matrix ------------------------------------------------------
rng = np.random.default_rng(16)
m = np.where(rng.random((24, 9)) < 0.7, rng.standard_normal((24, 9)), 0.0)
cur.execute("CREATE MATRIX m (24, 9) BLOCK (5, 4)")
with cur.copy("COPY m FROM STDIN") as copy:
    for (i, j), v in np.ndenumerate(m):
        if v != 0.0:
            copy.write_row((i, j, float(v)))


def matrix():
    cur.execute("SELECT i, j, v FROM m")
    out = np.zeros((24, 9))
    for i, j, v in cur.fetchall():
        out[i, j] = v
    return out


assert np.array_equal(matrix(), m)

cur.execute("UPDATE m SET v = v * 2 WHERE i < 10")
assert cur.statusmessage == f"UPDATE {np.count_nonzero(m[:10])}", cur.statusmessage
m[:10] *= 2
assert np.array_equal(matrix(), m)

cur.execute("DELETE FROM m WHERE j = %s", (3,))
assert cur.statusmessage == f"DELETE {np.count_nonzero(m[:, 3])}", cur.statusmessage
m[:, 3] = 0.0
assert np.array_equal(matrix(), m)

cur.execute("UPDATE m SET v = v + %s WHERE i BETWEEN 20 AND 22 AND v > 0", (0.5,))
touched = (m > 0) & (np.arange(24)[:, None] >= 20) & (np.arange(24)[:, None] <= 22)
assert cur.statusmessage == f"UPDATE {np.count_nonzero(touched)}", cur.statusmessage
m[touched] += 0.5
assert np.array_equal(matrix(), m)

# A prepared UPDATE run several times (psycopg's executemany) sees each previous one.
changes = [(1.0, 0, 0), (1.0, 0, 0), (2.0, 1, 1), (4.0, 1, 3)]
cur.executemany("UPDATE m SET v = v + %s WHERE i = %s AND j = %s", changes)
for d, i, j in changes:
    if m[i, j] != 0.0:
        m[i, j] += d
assert np.array_equal(matrix(), m)

# The matmul of the changed matrix is NumPy's.
cur.execute("SELECT i, j, v FROM matmul(t(m), m)")
product = np.zeros((9, 9))
for i, j, v in cur.fetchall():
    product[i, j] = v
assert np.allclose(product, m.T @ m), "matmul after UPDATE"

for bad, error in (
    ("UPDATE m SET i = i + 1", errors.FeatureNotSupported),
    ("UPDATE m SET v = NULL WHERE i = 23", errors.Error),
):
    try:
        cur.execute(bad)
        raise AssertionError(f"{bad} succeeded")
    except error:
        pass
    assert np.array_equal(matrix(), m), bad

# --- Arrays in SQL ----------------------------------------------------------------------
# `= ANY(%s)` with a list, in text and in binary; ints, strings, floats.
for c in (cur, bcur):
    c.execute("SELECT id FROM emp WHERE id = ANY(%s) ORDER BY id", ([0, 3, 4, 99],))
    assert [r[0] for r in c.fetchall()] == [k for k in (0, 3, 4) if k in expected]
    c.execute("SELECT count(*) FROM emp WHERE dep = ANY(%s)", (["r", "x"],))
    assert c.fetchone()[0] == sum(1 for d, _ in expected.values() if d in ("r", "x"))
    c.execute("SELECT %s::float8[], %s::text[], %s::bigint[]", ([1.5, None], ["a b", 'q"'], [2**40]))
    assert c.fetchone() == ([1.5, None], ["a b", 'q"'], [2**40])
    c.execute("SELECT i FROM m WHERE j = 0 AND i = ANY(%s) ORDER BY i", ([1, 2, 5],))
    assert [r[0] for r in c.fetchall()] == [i for i in (1, 2, 5) if m[i, 0] != 0.0]

# Array literals and casts, as PostgreSQL users write them; results are Python lists.
for c in (cur, bcur):
    c.execute("SELECT ARRAY[1, 2], '{1,2}'::int[], '{r,p}'::text[], '{}'::int8[], "
              "'{1.5,NULL}'::float8[], ARRAY['a', 'b c']")
    assert c.fetchone() == ([1, 2], [1, 2], ["r", "p"], [], [1.5, None], ["a", "b c"])
    c.execute("SELECT 'r' = ANY('{r,p}'), 'q' = ANY('{r,p}'), 2 = ANY('{1,2}'::int[])")
    assert c.fetchone() == (True, False, True)

# pgcli's relkind filter, as it writes it.
cur.execute("SELECT count(*) > 0 FROM pg_catalog.pg_class c WHERE c.relkind = ANY(%s)",
            (["r", "p", "v", "m", "f"],))
assert cur.fetchone() == (True,)

# pgcli's \dt (pgspecial's list_objects), its relkinds bound as a list.
cur.execute("""SELECT n.nspname AS schema, c.relname AS name,
  CASE c.relkind WHEN 'r' THEN 'table' WHEN 'v' THEN 'view' WHEN 'p' THEN 'partitioned table'
    WHEN 'm' THEN 'materialized view' WHEN 'i' THEN 'index' WHEN 'S' THEN 'sequence'
    WHEN 's' THEN 'special' WHEN 'f' THEN 'foreign table' END AS type,
  pg_catalog.pg_get_userbyid(c.relowner) AS owner
FROM pg_catalog.pg_class c LEFT JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind = ANY(%s) AND n.nspname <> 'pg_catalog' AND n.nspname <> 'information_schema'
  AND n.nspname !~ '^pg_toast' AND pg_catalog.pg_table_is_visible(c.oid)
ORDER BY 1, 2""", (["r", "p", ""],))
listed = {name: kind for _, name, kind, _ in cur.fetchall()}
assert listed.get("emp") == "table", listed

print("ok")
