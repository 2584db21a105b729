"""A matrix from NumPy into Tessera over Arrow Flight SQL with ADBC (bulk ingest, no
row-by-row inserts), multiplied in SQL, and the product fetched as Arrow into NumPy and
a SciPy sparse matrix: what the `tessera` package (matmul.py) does inside, with the
driver alone.

    python3 adbc_matmul.py [grpc://127.0.0.1:50051] [user password]
"""
import sys

import adbc_driver_flightsql.dbapi as flight_sql
import numpy as np
import pyarrow as pa
import scipy.sparse as sp

uri = sys.argv[1] if len(sys.argv) > 1 else "grpc://127.0.0.1:50051"
auth = {"username": sys.argv[2], "password": sys.argv[3]} if len(sys.argv) > 3 else {}


def cells(m):
    """A matrix's non-zeros as an Arrow table (i, j, v): Tessera's coordinate form."""
    i, j = np.nonzero(m)
    return pa.table({"i": i.astype(np.int64), "j": j.astype(np.int64), "v": m[i, j]})


rng = np.random.default_rng(0)
a = rng.standard_normal((500, 300))
b = np.where(rng.random((300, 400)) < 0.02, rng.standard_normal((300, 400)), 0.0)

with flight_sql.connect(uri, db_kwargs=auth) as conn, conn.cursor() as cur:
    cur.execute("DROP MATRIX IF EXISTS a")
    cur.execute("DROP MATRIX IF EXISTS b")
    cur.execute("CREATE MATRIX a (500, 300)")
    cur.execute("CREATE MATRIX b (300, 400) SPARSE")
    cur.adbc_ingest("a", cells(a), mode="append")  # into the array, as (i, j, v)
    cur.adbc_ingest("b", cells(b), mode="append")

    cur.execute("SELECT i, j, v FROM matmul(a, b)")
    t = cur.fetch_arrow_table()  # Arrow end to end: no per-row Python objects
    c = sp.csr_matrix(
        (t["v"].to_numpy(), (t["i"].to_numpy(), t["j"].to_numpy())), shape=(500, 400)
    )

print("nnz:", c.nnz, " max |error|:", abs(c.toarray() - a @ b).max())
