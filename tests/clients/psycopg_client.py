"""psycopg 3 against `tessera serve` (run by tests/psycopg.rs with the server's port):
parameters, binary results, COPY FROM STDIN, rows() into NumPy, a matmul into a SciPy
sparse matrix checked against NumPy, cancel and statement_timeout, error classes.
Prints "ok" when every check holds; an assertion names the one that did not."""
import datetime
import decimal
import sys
import threading
import time

import numpy as np
import scipy.sparse as sp
import psycopg
from psycopg import errors

port = int(sys.argv[1])
conn = psycopg.connect(host="127.0.0.1", port=port, user="tessera", dbname="tessera", autocommit=True)
cur = conn.cursor()

# Parameters of several types, through the extended protocol.
cur.execute("SELECT %s::BIGINT + 1, %s || '!', %s * 2.0, %s", (41, "hi", 1.25, True))
assert cur.fetchone() == (42, "hi!", 2.5, True), cur
cur.execute("CREATE TABLE people (id INT, name TEXT, score DOUBLE)")
cur.executemany("INSERT INTO people VALUES (%s, %s, %s)", [(1, "ada", 9.5), (2, "bob", None), (3, "cy", -1.0)])
cur.execute("SELECT name FROM people WHERE score > %s ORDER BY id", (0.0,))
assert cur.fetchall() == [("ada",)]
cur.execute("SELECT count(*) FROM people WHERE score IS NULL")
assert cur.fetchone() == (1,)

# Binary results, typed: ints, floats, text, bool, date, timestamp.
bcur = conn.cursor(binary=True)
bcur.execute("SELECT CAST(7 AS SMALLINT), CAST(8 AS INT), CAST(9 AS BIGINT), CAST(0.5 AS REAL), "
             "CAST(0.25 AS DOUBLE), 'txt', true, DATE '2024-02-29', "
             "TIMESTAMP '2024-02-29 12:34:56.5'")
row = bcur.fetchone()
assert row == (7, 8, 9, 0.5, 0.25, "txt", True, datetime.date(2024, 2, 29),
               datetime.datetime(2024, 2, 29, 12, 34, 56, 500000)), row
assert [d.type_code for d in bcur.description] == [21, 23, 20, 700, 701, 25, 16, 1082, 1114], bcur.description

# numeric and bytea, both ways, in text and binary.
for c in (cur, bcur):
    c.execute("SELECT CAST(1.25 AS DECIMAL(10, 2)), CAST('ab' AS BYTEA), %s, %s",
              (b"\x00\xff", decimal.Decimal("3.5")))
    assert c.fetchone() == (decimal.Decimal("1.25"), b"ab", b"\x00\xff", decimal.Decimal("3.5"))
    assert [d.type_code for d in c.description] == [1700, 17, 17, 1700], c.description

# A matrix from NumPy, loaded with COPY FROM STDIN, read back with rows() into NumPy.
rng = np.random.default_rng(7)
a = rng.standard_normal((6, 5))
b = np.where(rng.random((5, 4)) < 0.4, rng.standard_normal((5, 4)), 0.0)
cur.execute("CREATE MATRIX a (6, 5) BLOCK (4, 2)")
cur.execute("CREATE MATRIX b (5, 4) BLOCK (2, 3) SPARSE")
for name, m in (("a", a), ("b", b)):
    with cur.copy(f"COPY {name} FROM STDIN") as copy:
        for (i, j), v in np.ndenumerate(m):
            if v != 0.0:
                copy.write_row((i, j, float(v)))
for c in (cur, bcur):
    c.execute("SELECT i, row FROM rows(a) ORDER BY i")
    back = np.array([r for _, r in c.fetchall()])
    assert back.shape == a.shape and np.array_equal(back, a), back

# A matmul result, in coordinate form, into a SciPy sparse matrix.
bcur.execute("SELECT i, j, v FROM matmul(a, b)")
i, j, v = (np.array(col) for col in zip(*bcur.fetchall()))
c = sp.coo_matrix((v, (i, j)), shape=(6, 4)).tocsr()
assert np.allclose(c.toarray(), a @ b, rtol=1e-12, atol=0), c.toarray() - a @ b
assert c.nnz == np.count_nonzero(a @ b)

LONG = "SELECT sum(v) FROM matmul(rand(3000, 3000, seed => 1), rand(3000, 3000, seed => 2))"

# statement_timeout stops the query with 57014; the connection goes on.
cur.execute("SET statement_timeout = '200ms'")
t0 = time.monotonic()
try:
    cur.execute(LONG)
    raise AssertionError("the long query was not stopped")
except errors.QueryCanceled as e:
    assert e.sqlstate == "57014" and "statement timeout" in str(e), e
assert time.monotonic() - t0 < 2.0
cur.execute("SET statement_timeout = 0")
cur.execute("SELECT 1")
assert cur.fetchone() == (1,)

# A cancel from another thread stops it within a second; the connection goes on.
timer = threading.Timer(0.3, lambda: (cancelled.append(time.monotonic()), conn.cancel()))
cancelled = []
timer.start()
try:
    cur.execute(LONG)
    raise AssertionError("the long query was not cancelled")
except errors.QueryCanceled as e:
    assert e.sqlstate == "57014", e
    lag = time.monotonic() - cancelled[0]
    assert lag < 1.0, lag
cur.execute("SELECT 2")
assert cur.fetchone() == (2,)

# Errors carry their SQLSTATE class in psycopg's exception types.
for sql, exc in (("SELECT * FROM nosuch", errors.UndefinedTable),
                 ("SELEC 1", errors.SyntaxError),
                 ("SELECT * FROM matmul(a, a)", errors.DataException)):
    try:
        cur.execute(sql)
        raise AssertionError(sql)
    except exc:
        pass
print("ok")
