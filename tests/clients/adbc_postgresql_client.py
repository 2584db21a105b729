"""The ADBC PostgreSQL driver (`adbc_driver_postgresql`, libpq inside) against `tessera
serve` (run by tests/copy_binary.rs with the server's port). It loads and unloads with
binary COPY: `adbc_ingest` creates a table and fills it (`COPY ... FROM STDIN (FORMAT
binary)`), loads a matrix's cells the same way, and `fetch_arrow_table` reads a table
and a matmul (`COPY (query) TO STDOUT (FORMAT binary)`); everything is compared with
the Arrow table sent and with NumPy. Prints "ok" when every check holds."""
import sys

import adbc_driver_postgresql.dbapi as pg
import numpy as np
import pyarrow as pa

port = int(sys.argv[1])
conn = pg.connect(f"postgresql://tessera@127.0.0.1:{port}/tessera")
cur = conn.cursor()

n = 10_000
rng = np.random.default_rng(3)
ids = np.arange(n, dtype=np.int64)
x = rng.standard_normal(n)
x[::97] = np.nan
sent = pa.table(
    {
        "id": pa.array(ids),
        "x": pa.array(x),
        "small": pa.array((ids % 1000).astype(np.int32)),
        "tiny": pa.array((ids % 100).astype(np.int16)),
        "f": pa.array(x.astype(np.float32)),
        "flag": pa.array(ids % 3 == 0),
        "name": pa.array([None if i % 11 == 0 else f"row {i} ✓" for i in ids], pa.string()),
    }
)
assert cur.adbc_ingest("ingested", sent, mode="create") == n
conn.commit()

cur.execute("SELECT * FROM ingested ORDER BY id")
got = cur.fetch_arrow_table()
assert got.num_rows == n, got.num_rows
assert got.column_names == sent.column_names, got.column_names
for name in sent.column_names:
    a, b = got.column(name).combine_chunks(), sent.column(name).combine_chunks()
    if pa.types.is_floating(b.type):
        assert np.array_equal(a.to_numpy(zero_copy_only=False), b.to_numpy(zero_copy_only=False), equal_nan=True), name
    else:
        assert a.cast(b.type).equals(b), (name, a.type, b.type)

# Appending to the table: the driver asks pg_attribute for the target's columns
# (`$1::regclass::oid`), then copies; the rows add to those already there.
more = sent.slice(0, 100).set_column(0, "id", pa.array(ids[:100] + n))
assert cur.adbc_ingest("ingested", more, mode="append") == 100
conn.commit()
cur.execute("SELECT count(*), max(id) FROM ingested")
assert cur.fetchone() == (n + 100, n + 99)

# Matrices: cells ingested into new tables with binary COPY, then inserted into the
# matrices; the product read back as Arrow.
a = rng.standard_normal((30, 20))
b = rng.standard_normal((20, 10))
for name, m in (("a", a), ("b", b)):
    cur.execute(f"CREATE MATRIX {name} ({m.shape[0]}, {m.shape[1]}) BLOCK (8, 8)")
    i, j = np.indices(m.shape)
    cells = pa.table({"i": i.ravel().astype(np.int64), "j": j.ravel().astype(np.int64), "v": m.ravel()})
    assert cur.adbc_ingest(f"{name}_cells", cells, mode="create") == m.size
    cur.execute(f"INSERT INTO {name} SELECT i, j, v FROM {name}_cells")
conn.commit()
cur.execute("SELECT i, j, v FROM matmul(a, b)")
product = cur.fetch_arrow_table()
out = np.zeros((30, 10))
out[product.column("i").to_numpy(), product.column("j").to_numpy()] = product.column("v").to_numpy()
assert np.allclose(out, a @ b, rtol=1e-12, atol=1e-12), np.abs(out - a @ b).max()

cur.execute("SELECT i, j, v FROM a")
cells = cur.fetch_arrow_table()
got_a = np.zeros(a.shape)
got_a[cells.column("i").to_numpy(), cells.column("j").to_numpy()] = cells.column("v").to_numpy()
assert np.array_equal(got_a, a)

cur.close()
conn.close()
print("ok")
