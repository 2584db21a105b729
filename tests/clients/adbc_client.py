"""ADBC's Flight SQL driver (adbc_driver_flightsql, through its DB-API) against
`tessera serve`; run by tests/clients.rs as `python3 adbc_client.py URI USER PASSWORD`.
Checks queries, prepared statements with parameters, executemany, adbc_ingest into a
table and into a matrix, a matmul checked against NumPy into SciPy, metadata and wrong
credentials. Prints "ok" when every check holds."""
import sys

import adbc_driver_flightsql.dbapi as flight_sql
import adbc_driver_manager
import numpy as np
import pyarrow as pa
import scipy.sparse as sp

uri, user, password = sys.argv[1], sys.argv[2], sys.argv[3]


def connect(user, password):
    return flight_sql.connect(uri, db_kwargs={"username": user, "password": password})


conn = connect(user, password)
cur = conn.cursor()

# Plain queries, and DDL / DML through the statement path.
cur.execute("SELECT 40 + 2 AS answer, 'x' AS s")
assert cur.fetchall() == [(42, "x")], cur
cur.execute("CREATE TABLE people (id INT, name TEXT, score DOUBLE)")
cur.execute("INSERT INTO people VALUES (1, 'ada', 9.5)")

# executemany: one prepared statement, a batch of parameter rows.
cur.executemany("INSERT INTO people VALUES (?, ?, ?)", [(2, "bob", None), (3, "cy", -1.0), (4, "di", 2.0)])
cur.execute("SELECT count(*), sum(score) FROM people")
assert cur.fetchone() == (4, 10.5), "executemany"

# A prepared query with parameters, run twice with different values.
for lo, want in ((0.0, ["ada", "di"]), (5.0, ["ada"])):
    cur.execute("SELECT name FROM people WHERE score > ? ORDER BY id", (lo,))
    assert [r[0] for r in cur.fetchall()] == want, lo

# A query the server has cached (it ran before) sees rows ingested since.
for _ in range(2):
    cur.execute("SELECT count(*) FROM people")
    assert cur.fetchone() == (4,)
extra = pa.table({"id": pa.array([5], pa.int32()), "name": ["ed"], "score": [0.5]})
cur.adbc_ingest("people", extra, mode="append")
cur.execute("SELECT count(*) FROM people")
assert cur.fetchone() == (5,), "a cached plan missed the ingested row"

# adbc_ingest into a new table, and as (i, j, v) into a matrix.
rng = np.random.default_rng(11)
a = rng.standard_normal((30, 20))
b = np.where(rng.random((20, 25)) < 0.2, rng.standard_normal((20, 25)), 0.0)
cells = lambda m: pa.table({
    "i": pa.array(np.nonzero(m)[0], pa.int64()),
    "j": pa.array(np.nonzero(m)[1], pa.int64()),
    "v": pa.array(m[np.nonzero(m)], pa.float64()),
})
n = cur.adbc_ingest("a_cells", cells(a), mode="create")
assert n in (-1, a.size), n
cur.execute("CREATE MATRIX a (30, 20) BLOCK (8, 8)")
cur.execute("INSERT INTO a SELECT i, j, v FROM a_cells")
cur.execute("CREATE MATRIX b (20, 25) BLOCK (8, 8) SPARSE")
cur.adbc_ingest("b", cells(b), mode="append")
cur.execute("SELECT count(*) FROM b")
assert cur.fetchone() == (np.count_nonzero(b),)

# A matmul into Arrow, then SciPy, against NumPy.
cur.execute("SELECT i, j, v FROM matmul(a, b)")
t = cur.fetch_arrow_table()
c = sp.coo_matrix((t["v"].to_numpy(), (t["i"].to_numpy(), t["j"].to_numpy())), shape=(30, 25))
assert np.allclose(c.toarray(), a @ b, rtol=1e-12, atol=1e-12)

# Metadata: the tables and arrays, and a table's schema.
objects = conn.adbc_get_objects(depth="tables").read_all().to_pylist()
names = {t["table_name"] for c in objects for s in c["catalog_db_schemas"] or [] for t in s["db_schema_tables"] or []}
assert {"people", "a_cells", "a", "b"} <= names, names
schema = conn.adbc_get_table_schema("people")
assert schema.names == ["id", "name", "score"], schema

# Errors: a bad statement does not end the connection.
try:
    cur.execute("SELECT * FROM nosuch")
    raise AssertionError("no error for an unknown table")
except adbc_driver_manager.ProgrammingError as e:
    assert "nosuch" in str(e), e
cur.execute("SELECT 1")
assert cur.fetchone() == (1,)
cur.close()
conn.close()

# Wrong credentials are refused.
if password:
    try:
        bad = connect(user, password + "x")
        bad.cursor().execute("SELECT 1")
        raise AssertionError("wrong password accepted")
    except adbc_driver_manager.Error as e:
        assert "UNAUTHENTICATED" in str(e) or "Unauthenticated" in str(e), e
print("ok")
