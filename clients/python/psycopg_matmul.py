"""A matrix from NumPy into Tessera over the PostgreSQL protocol, multiplied in SQL,
and the product back into NumPy and a SciPy sparse matrix.

    python3 psycopg_matmul.py [postgresql://tessera@127.0.0.1:5433/tessera]
"""
import sys

import numpy as np
import psycopg
import scipy.sparse as sp

url = sys.argv[1] if len(sys.argv) > 1 else "postgresql://tessera@127.0.0.1:5433/tessera"
rng = np.random.default_rng(0)
a = rng.standard_normal((200, 100))
b = sp.random(100, 50, density=0.05, random_state=1, format="coo")

with psycopg.connect(url, autocommit=True) as conn, conn.cursor(binary=True) as cur:
    cur.execute("DROP MATRIX IF EXISTS a")
    cur.execute("DROP MATRIX IF EXISTS b")
    cur.execute("CREATE MATRIX a (200, 100)")
    cur.execute("CREATE MATRIX b (100, 50) SPARSE")
    # COPY FROM STDIN streams (i, j, v) rows; only non-zeros need to be sent.
    with cur.copy("COPY a FROM STDIN") as copy:
        for (i, j), v in np.ndenumerate(a):
            copy.write_row((i, j, v))
    with cur.copy("COPY b FROM STDIN") as copy:
        for i, j, v in zip(b.row, b.col, b.data):
            copy.write_row((int(i), int(j), float(v)))

    # The product in coordinate form, into SciPy.
    cur.execute("SELECT i, j, v FROM matmul(a, b)")
    i, j, v = map(np.array, zip(*cur.fetchall()))
    c = sp.csr_matrix((v, (i, j)), shape=(200, 50))

    # Row by row (`rows()` returns float8[]), into a dense NumPy array.
    cur.execute("SELECT row FROM rows(matmul(a, b)) ORDER BY i")
    dense = np.array([r for (r,) in cur.fetchall()])

expected = a @ b.toarray()
print("max |error| (sparse):", abs(c.toarray() - expected).max())
print("max |error| (rows):  ", abs(dense - expected).max())
