"""Tessera from Python with the `tessera` package: a NumPy array and a SciPy sparse
matrix in, their product computed in SQL, back into SciPy and pandas, checked against
NumPy.

    pip install './clients/python[all]'
    python3 matmul.py [grpc://127.0.0.1:50051 | postgresql://tessera@127.0.0.1:5433/tessera]
"""
import sys

import numpy as np
import scipy.sparse as sp

import tessera

url = sys.argv[1] if len(sys.argv) > 1 else "grpc://127.0.0.1:50051"
rng = np.random.default_rng(0)
a = rng.standard_normal((500, 300))
b = sp.random(300, 400, density=0.02, random_state=1, format="csr")

with tessera.connect(url) as conn:
    conn.put("a", a, replace=True)  # all of a's non-zeros in one Arrow stream
    conn.put("b", b, replace=True)  # created SPARSE; its COO non-zeros
    conn.sql("DROP MATRIX IF EXISTS c; CREATE MATRIX c AS SELECT * FROM matmul(a, b)")
    c = conn.get("c", sparse=True)  # scipy.sparse.csr_matrix
    top = conn.df("SELECT i, sum(v) AS total FROM c GROUP BY i ORDER BY total DESC LIMIT 3")
    try:
        conn.sql("SELECT * FROM matmul(b, b)")  # 300x400 times 300x400: shapes do not conform
    except tessera.DataError as e:
        print("as expected:", e.sqlstate, e)

print(top)
print("nnz:", c.nnz, " max |error|:", abs(c.toarray() - a @ b.toarray()).max())
