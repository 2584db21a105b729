"""pgcli against `tessera serve` (run by tests/clients.rs with the server's port),
through pgcli's own executor and pgspecial, as the shell runs them: `\\dt`, `\\d`,
`\\d t`, `\\d+ t`, `\\dn`, `\\df` and the queries its completion refresher sends at
connect (schemata, tables, views, columns, foreign keys, functions, data types,
databases). Checks the names and types against the tables the script created. Prints
"ok" when every check holds."""
import sys

from pgcli.pgexecute import PGExecute
from pgspecial.main import PGSpecial

port = int(sys.argv[1])
ex = PGExecute("tessera", "tessera", None, "127.0.0.1", port, None)
special = PGSpecial()


def run(statement):
    """Every result of `statement` as (title, rows, headers, status); errors raise."""
    out = []
    for title, cur, headers, status, _sql, success, _special in ex.run(statement, pgspecial=special):
        assert success, statement
        rows = list(cur) if cur is not None else []
        out.append((title, rows, list(headers or []), status))
    return out


run("CREATE TABLE people (id INT, name TEXT, score DOUBLE)")
run("CREATE MATRIX m (3, 4) BLOCK (2, 2)")
run("INSERT INTO people VALUES (1, 'ada', 2.5)")

# \dt: tables of public, with the matrix (its cells are a relation).
[(_, rows, headers, _)] = run("\\dt")
names = {r[headers.index("Name")] for r in rows}
assert {"people", "m"} <= names, rows
# \d: every relation.
[(_, rows, headers, _)] = run("\\d")
assert {"people", "m"} <= {r[headers.index("Name")] for r in rows}, rows
# \d people and \d+ people: columns in order with PostgreSQL's type names.
for command in ("\\d people", "\\d+ people"):
    results = run(command)
    _, rows, headers, _ = results[0]
    cols = [(r[headers.index("Column")], r[headers.index("Type")]) for r in rows]
    assert cols == [("id", "integer"), ("name", "text"), ("score", "double precision")], (command, cols)
_, rows, headers, _ = run("\\d m")[0]
assert [r[headers.index("Column")] for r in rows] == ["i", "j", "v"], rows
# \dn lists public; \df runs.
[(_, rows, headers, _)] = run("\\dn")
assert "public" in {r[0] for r in rows}, rows
run("\\df")

# The completion refresher's queries.
assert "public" in ex.schemata()
assert "public" in ex.search_path()
tables = set(ex.tables())
assert ("public", "people") in tables and ("public", "m") in tables, tables
list(ex.views())
columns = {(c[1], c[2]): c[3] for c in ex.table_columns()}
assert columns[("people", "id")] == "integer", columns
assert columns[("people", "score")] == "double precision", columns
assert columns[("m", "v")] == "double precision", columns
list(ex.foreignkeys())
functions = list(ex.functions())
datatypes = list(ex.datatypes())
assert "tessera" in ex.databases(), ex.databases()

# An ordinary query through the same executor.
[(_, rows, _, status)] = run("SELECT name FROM people WHERE id = 1")
assert rows == [("ada",)], rows
print("ok")
