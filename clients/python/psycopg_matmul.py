"""Tessera with psycopg 3 alone, as any PostgreSQL application talks to it: matrices
from NumPy and SciPy streamed in with one COPY each, multiplied in SQL, the product back
into a SciPy sparse matrix and, row by row as float8[], into NumPy. (The `tessera`
package does the same with `conn.put` / `conn.get`; see matmul.py.)

    python3 psycopg_matmul.py [postgresql://tessera@127.0.0.1:5433/tessera]
"""
import io
import sys

import numpy as np
import psycopg
import scipy.sparse as sp

url = sys.argv[1] if len(sys.argv) > 1 else "postgresql://tessera@127.0.0.1:5433/tessera"
rng = np.random.default_rng(0)
a = rng.standard_normal((200, 100))
b = sp.random(100, 50, density=0.05, random_state=1, format="coo")


def copy_text(i, j, v):
    """(i, j, v) columns as COPY's text format, written by NumPy in one call; %.17g
    keeps every bit of a float64."""
    out = io.BytesIO()
    np.savetxt(out, np.column_stack([i, j, v]), fmt=["%d", "%d", "%.17g"], delimiter="\t")
    return out.getvalue()


with psycopg.connect(url, autocommit=True) as conn, conn.cursor(binary=True) as cur:
    cur.execute("DROP MATRIX IF EXISTS a, b")
    cur.execute("CREATE MATRIX a (200, 100)")
    cur.execute("CREATE MATRIX b (100, 50) SPARSE")
    # COPY FROM STDIN takes (i, j, v) rows; only non-zeros need to be sent.
    i, j = np.nonzero(a)
    with cur.copy("COPY a FROM STDIN") as copy:
        copy.write(copy_text(i, j, a[i, j]))
    with cur.copy("COPY b FROM STDIN") as copy:
        copy.write(copy_text(b.row, b.col, b.data))

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
