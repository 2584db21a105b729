"""polars `read_database_uri` (connectorx inside, which reads PostgreSQL with `COPY
(query) TO STDOUT WITH BINARY` in the extended protocol) and connectorx itself against
`tessera serve` (run by tests/copy_binary.rs with the server's port): a table with
NULLs, an empty result and a matmul, compared with the values written through psycopg
and with NumPy. Prints "ok" when every check holds."""
import sys

import connectorx as cx
import numpy as np
import polars as pl
import psycopg

port = int(sys.argv[1])
uri = f"postgresql://tessera@127.0.0.1:{port}/tessera"
conn = psycopg.connect(f"host=127.0.0.1 port={port} user=tessera dbname=tessera", autocommit=True)
cur = conn.cursor()

cur.execute("CREATE TABLE t (id BIGINT, x DOUBLE, name TEXT, ok BOOLEAN)")
rows = [(i, i / 4 if i % 5 else None, f"n{i}" if i % 7 else None, i % 2 == 0) for i in range(1000)]
with cur.copy("COPY t FROM STDIN (FORMAT binary)") as copy:
    copy.set_types(["int8", "float8", "text", "bool"])
    for row in rows:
        copy.write_row(row)

df = pl.read_database_uri("SELECT id, x, name, ok FROM t ORDER BY id", uri)
assert df.shape == (1000, 4), df.shape
assert df.rows() == rows, df.head()
assert df.schema["id"] == pl.Int64 and df.schema["x"] == pl.Float64, df.schema

empty = pl.read_database_uri("SELECT id, x FROM t WHERE id < 0", uri)
assert empty.shape == (0, 2), empty

rng = np.random.default_rng(5)
a = rng.standard_normal((6, 4))
b = rng.standard_normal((4, 5))
for name, m in (("a", a), ("b", b)):
    cur.execute(f"CREATE MATRIX {name} ({m.shape[0]}, {m.shape[1]}) BLOCK (4, 4)")
    with cur.copy(f"COPY {name} FROM STDIN (FORMAT binary)") as copy:
        copy.set_types(["int8", "int8", "float8"])
        for (i, j), v in np.ndenumerate(m):
            copy.write_row((i, j, float(v)))

product = cx.read_sql(uri, "SELECT i, j, v FROM matmul(a, b)", protocol="binary", return_type="arrow")
out = np.zeros((6, 5))
out[product.column("i").to_numpy(), product.column("j").to_numpy()] = product.column("v").to_numpy()
assert np.allclose(out, a @ b, rtol=1e-12, atol=1e-12), np.abs(out - a @ b).max()

print("ok")
