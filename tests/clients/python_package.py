"""The `tessera` Python package (clients/python) against a server; run by
tests/python_package.rs as `python3 python_package.py URL...` with a Flight SQL and a
PostgreSQL URL. For each URL: a dense NumPy array and a SciPy sparse matrix go in and
come back bit for bit, a matmul in SQL matches NumPy's, an unknown table raises
ProgrammingError with SQLSTATE 42P01, and results convert to pandas. Prints "ok"."""
import sys

import numpy as np
import pandas as pd
import scipy.sparse as sp

import tessera

rng = np.random.default_rng(16)
a = rng.random((37, 23))
b = sp.random(23, 150, density=0.03, random_state=rng, format="coo")
s = sp.random(200, 150, density=0.03, random_state=rng, format="csr")


def same_csr(x, y):
    x, y = x.tocsr(), y.tocsr()
    x.sort_indices()
    y.sort_indices()
    return (
        x.shape == y.shape
        and np.array_equal(x.indptr, y.indptr)
        and np.array_equal(x.indices, y.indices)
        and np.array_equal(x.data, y.data)
    )


for url in sys.argv[1:]:
    with tessera.connect(url) as conn:
        conn.put("a", a)
        conn.put("b", b)
        conn.put("s", s)

        # Bit for bit back: NumPy stays NumPy, sparse stays sparse (created SPARSE).
        got = conn.get("a")
        assert isinstance(got, np.ndarray) and got.dtype == np.float64, type(got)
        assert got.shape == a.shape and np.array_equal(got, a), url
        got_s = conn.get("s")
        assert isinstance(got_s, sp.csr_matrix), type(got_s)
        assert same_csr(got_s, s), url
        assert np.array_equal(conn.get("s", sparse=False), s.toarray())
        assert same_csr(conn.get("a", sparse=True), sp.csr_matrix(a))
        assert conn.shape("s") == ((200, 150), "sparse")

        # A product in SQL, against NumPy's.
        t = conn.sql("SELECT * FROM matmul(a, b)")
        assert t.column_names == ["i", "j", "v"], t.schema
        c = np.zeros((37, 150))
        c[t["i"].to_numpy(), t["j"].to_numpy()] = t["v"].to_numpy()
        assert np.allclose(c, a @ b.toarray(), rtol=1e-12, atol=0), url

        # pandas, both ways.
        df = conn.sql("SELECT i, sum(v) AS total FROM s GROUP BY i ORDER BY i").to_pandas()
        assert isinstance(df, pd.DataFrame) and list(df.columns) == ["i", "total"]
        sums = np.asarray(s.sum(axis=1)).ravel()
        assert np.allclose(df["total"].to_numpy(), sums[df["i"].to_numpy()], rtol=1e-12)
        assert conn.df("SELECT count(*) AS n FROM s")["n"][0] == s.nnz

        # Errors carry the SQLSTATE; the connection goes on after one.
        try:
            conn.sql("SELECT * FROM nosuch")
            raise AssertionError("no error for an unknown table")
        except tessera.ProgrammingError as e:
            assert e.sqlstate == "42P01", (url, e.sqlstate, e)
            assert "nosuch" in str(e), e
        try:
            conn.put("a", a)
            raise AssertionError("put over an existing matrix")
        except tessera.ProgrammingError as e:
            assert e.sqlstate == "42P07", (url, e.sqlstate, e)
        try:
            conn.sql("SELECT 1 / 0")
            raise AssertionError("no error for a division by zero")
        except tessera.DataError as e:
            assert e.sqlstate == "22012", (url, e.sqlstate, e)
        conn.put("a", 2 * a, replace=True)
        assert np.array_equal(conn.get("a"), 2 * a)
        assert conn.sql("SELECT 41 + 1 AS x").to_pylist() == [{"x": 42}]

        # A script runs whole; the last statement's result comes back.
        t = conn.sql("CREATE MATRIX p AS SELECT * FROM matmul(s, t(s)); SELECT count(*) AS n FROM p")
        assert t.to_pylist() == [{"n": int((s @ s.T).count_nonzero())}], t
        assert np.allclose(conn.get("p").ravel(), (s @ s.T).toarray().ravel(), rtol=1e-12)

        conn.sql("DROP MATRIX a, b, s, p")
print("ok")
