"""SQLAlchemy 2 (psycopg 3 dialect) and pandas against `tessera serve` (run by
tests/sqlalchemy.rs with the server's port): connecting, inspecting tables and columns,
pandas.read_sql of a table and of a matmul (checked against NumPy), DataFrame.to_sql
(CREATE TABLE, then executemany INSERT) and reading it back, psycopg's executemany row
counts, the catalog functions that report the connection (checked against what the
driver knows: its backend pid, role and settings) and SHOW TABLES. Prints "ok" when
every check holds; an assertion names the one that did not."""
import sys

import numpy as np
import pandas as pd
import psycopg
import sqlalchemy as sa

port = int(sys.argv[1])
url = f"postgresql+psycopg://tessera@127.0.0.1:{port}/tessera"
engine = sa.create_engine(url)

# The dialect's first-connect queries (server version, current_schema(), settings).
with engine.connect() as conn:
    assert conn.execute(sa.text("SELECT current_database()")).scalar() == "tessera"
    assert conn.execute(sa.text("SELECT current_schema()")).scalar() == "public"
    assert conn.dialect.default_schema_name == "public", conn.dialect.default_schema_name

# Two matrices from NumPy (a dense, b with zeros), and a table, made through plain SQL.
rng = np.random.default_rng(11)
a = rng.standard_normal((4, 3))
b = np.where(rng.random((3, 5)) < 0.5, rng.standard_normal((3, 5)), 0.0)
with engine.begin() as conn:
    conn.exec_driver_sql("CREATE MATRIX a (4, 3) BLOCK (2, 2)")
    conn.exec_driver_sql("CREATE MATRIX b (3, 5) BLOCK (2, 2) SPARSE")
    for name, m in (("a", a), ("b", b)):
        cells = [{"i": i, "j": j, "v": float(v)} for (i, j), v in np.ndenumerate(m) if v != 0.0]
        conn.execute(sa.text(f"INSERT INTO {name} VALUES (:i, :j, :v)"), cells)
    conn.exec_driver_sql("CREATE TABLE people (id INT, name TEXT, score DOUBLE)")
    conn.exec_driver_sql("INSERT INTO people VALUES (1, 'ada', 9.5), (2, 'bob', NULL), (3, 'cy', -1.0)")

# The inspector: table names and columns, from the dialect's pg_catalog queries.
inspector = sa.inspect(engine)
names = inspector.get_table_names()
assert {"a", "b", "people"} <= set(names), names
assert inspector.has_table("people") and not inspector.has_table("nosuch")
columns = {c["name"]: c for c in inspector.get_columns("people")}
assert list(columns) == ["id", "name", "score"], columns
assert isinstance(columns["id"]["type"], sa.Integer), columns["id"]
assert isinstance(columns["name"]["type"], sa.Text), columns["name"]
assert isinstance(columns["score"]["type"], sa.Float), columns["score"]
assert [c["nullable"] for c in columns.values()] == [True, True, True], columns
# A matrix's columns: its coordinates and value, none of them NULL.
cells = [(c["name"], type(c["type"]).__name__, c["nullable"]) for c in inspector.get_columns("a")]
assert cells == [("i", "BIGINT", False), ("j", "BIGINT", False),
                 ("v", "DOUBLE_PRECISION", False)], cells
# Reflecting a whole table (what Table(..., autoload_with=engine) does).
people = sa.Table("people", sa.MetaData(), autoload_with=engine)
assert [c.name for c in people.columns] == ["id", "name", "score"]
with engine.connect() as conn:
    rows = conn.execute(sa.select(people.c.name).where(people.c.score > 0)).all()
    assert rows == [("ada",)], rows

# pandas.read_sql of a table and of a matmul, the product checked against NumPy.
df = pd.read_sql("SELECT * FROM people ORDER BY id", engine)
assert list(df.columns) == ["id", "name", "score"], df.columns
assert df["id"].tolist() == [1, 2, 3] and df["name"].tolist() == ["ada", "bob", "cy"]
assert df["score"].iloc[0] == 9.5 and np.isnan(df["score"].iloc[1]), df
df = pd.read_sql_table("people", engine)
assert sorted(df["id"].tolist()) == [1, 2, 3], df
product = pd.read_sql("SELECT * FROM matmul(a, b)", engine)
assert list(product.columns) == ["i", "j", "v"], product.columns
got = np.zeros((4, 5))
got[product["i"].to_numpy(), product["j"].to_numpy()] = product["v"].to_numpy()
assert np.allclose(got, a @ b, rtol=1e-12, atol=0), got - a @ b

# DataFrame.to_sql: the table is created, the rows inserted with executemany, and
# they read back equal; a second call appends.
# x needs all of float64 (SQLAlchemy's Float is FLOAT(53), PostgreSQL's double precision).
xs = rng.standard_normal(6) / 3
frame = pd.DataFrame({
    "k": np.arange(6, dtype=np.int64),
    "x": xs,
    "label": [f"r{n}" for n in range(6)],
    "flag": [n % 2 == 0 for n in range(6)],
})
# (The count to_sql returns is -1 with psycopg, from PostgreSQL too: rows are checked.)
frame.to_sql("frame", engine, index=False)
assert sa.inspect(engine).has_table("frame")
types = {c["name"]: type(c["type"]).__name__ for c in sa.inspect(engine).get_columns("frame")}
assert types == {"k": "BIGINT", "x": "DOUBLE_PRECISION", "label": "TEXT", "flag": "BOOLEAN"}, types
back = pd.read_sql("SELECT * FROM frame ORDER BY k", engine)
assert list(back.columns) == ["k", "x", "label", "flag"], back.columns
assert back["k"].tolist() == list(range(6)), back
assert np.array_equal(back["x"].to_numpy(), xs), back["x"].to_numpy() - xs
assert back["label"].tolist() == [f"r{n}" for n in range(6)], back
assert back["flag"].tolist() == [n % 2 == 0 for n in range(6)], back
frame.to_sql("frame", engine, index=False, if_exists="append")
with engine.connect() as conn:
    count, total = conn.execute(sa.text("SELECT count(*), sum(k) FROM frame")).one()
    assert (count, total) == (12, 2 * sum(range(6))), (count, total)

# psycopg's executemany counts every row it inserted (Describe of an INSERT is NoData).
with psycopg.connect(host="127.0.0.1", port=port, user="tessera", dbname="tessera",
                     autocommit=True) as conn:
    cur = conn.cursor()
    cur.execute("CREATE TABLE counted (id INT, x DOUBLE)")
    cur.executemany("INSERT INTO counted VALUES (%s, %s)", [(n, n / 4) for n in range(5)])
    assert cur.rowcount == 5, cur.rowcount
    cur.execute("SELECT sum(x) FROM counted")
    assert cur.fetchone() == (2.5,)

    # The catalog functions that report the connection: its backend pid (the one
    # BackendKeyData gave the driver), role and settings, in both protocols.
    cur.execute("SET application_name = 'notebook'")
    for prepare in (False, True):
        cur.execute("SELECT pg_backend_pid(), current_user, session_user, "
                    "current_setting('application_name'), current_setting('nosuch', true), "
                    "current_database(), current_schema(), current_schemas(true)", prepare=prepare)
        row = cur.fetchone()
        assert row == (conn.info.backend_pid, "tessera", "tessera", "notebook", None,
                       "tessera", "public", ["pg_catalog", "public"]), row
    try:
        cur.execute("SELECT current_setting('nosuch')")
        raise AssertionError("no error for an unknown setting")
    except psycopg.errors.UndefinedObject as e:
        assert e.sqlstate == "42704", e

    # SHOW TABLES lists the tables and arrays of public.
    cur.execute("SHOW TABLES")
    names = [d.name for d in cur.description]
    listed = {(r[names.index("table_schema")], r[names.index("table_name")]) for r in cur.fetchall()}
    assert {("public", "a"), ("public", "people"), ("public", "frame"), ("public", "counted")} <= listed, listed

print("ok")
