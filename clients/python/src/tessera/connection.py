"""A connection to a Tessera server, over Arrow Flight SQL (``grpc://``, through ADBC)
or the PostgreSQL protocol (``postgresql://``, through psycopg 3).

Both move whole columns: Flight SQL ingests Arrow record batches into an array
(``CommandStatementIngest``, ADBC's ``adbc_ingest``) and returns results as Arrow;
over PostgreSQL, cells go in with one ``COPY ... FROM STDIN`` and out with one
``COPY ... TO STDOUT``, as CSV written and parsed by Arrow; other results arrive as
rows (in text) and are converted to Arrow.
"""

from __future__ import annotations

import io
from typing import Any, Optional, Tuple
from urllib.parse import unquote, urlsplit, urlunsplit

import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv

from . import cells
from .errors import Error, error_for

SQLSTATE_METADATA_KEY = "tessera-sqlstate"
"""The gRPC metadata entry in which Tessera's Flight SQL server sends the SQLSTATE."""

FLIGHT_SCHEMES = ("grpc", "grpc+tcp", "grpc+tls")
POSTGRES_SCHEMES = ("postgresql", "postgres")


def quote_identifier(name: str) -> str:
    """``name`` as a quoted SQL identifier, exactly as spelled (``"x@3"`` is version 3
    of ``x``, read-only)."""
    return '"' + name.replace('"', '""') + '"'


def connect(
    url: str = "grpc://127.0.0.1:50051",
    user: Optional[str] = None,
    password: Optional[str] = None,
) -> "Connection":
    """Connects to a Tessera server.

    ``grpc://host:port`` (``grpc+tls://`` with TLS) speaks Arrow Flight SQL, the fast
    path for bulk data; ``postgresql://user@host:port/db`` speaks the PostgreSQL
    protocol (psycopg 3 must be installed). A user and password may be given in the URL
    or as arguments. ``tessera serve`` listens on ``grpc://127.0.0.1:50051`` and
    ``postgresql://tessera@127.0.0.1:5433/tessera`` by default and trusts loopback
    clients.

    >>> import tessera
    >>> with tessera.connect("grpc://127.0.0.1:50051") as conn:  # doctest: +SKIP
    ...     conn.put("a", numpy_array)
    ...     product = conn.sql("SELECT * FROM matmul(a, t(a))")
    """
    scheme = urlsplit(url).scheme.lower()
    if scheme in FLIGHT_SCHEMES:
        return Connection(_FlightSql(url, user, password))
    if scheme in POSTGRES_SCHEMES:
        return Connection(_Postgres(url, user, password))
    raise ValueError(
        f"unsupported URL {url!r}: use grpc://host:port (Flight SQL) "
        "or postgresql://user@host:port/db"
    )


class Connection:
    """One session on a Tessera server (its ``SET`` state is its own). Use it as a
    context manager, or call ``close()``."""

    def __init__(self, wire: "_Wire"):
        self._wire = wire

    def sql(self, query: str) -> pa.Table:
        """Runs ``query`` (one statement or a script; the last statement's result is
        returned) and returns the result as a ``pyarrow.Table``: ``.to_pandas()`` for a
        DataFrame, ``.column("v").to_numpy()`` for NumPy. Statements without a result
        (DDL) return an empty table."""
        return self._wire.query(query)

    def df(self, query: str):
        """``sql(query).to_pandas()``: the result as a pandas DataFrame (pandas must be
        installed)."""
        return self.sql(query).to_pandas()

    def put(self, name: str, array: Any, *, replace: bool = False) -> None:
        """Stores a 2-D NumPy array or a SciPy sparse matrix as a new matrix ``name``.

        A NumPy array becomes ``CREATE MATRIX name (rows, cols)`` (Tessera picks dense
        or sparse storage per block by density), a sparse matrix ``... SPARSE``. Only
        the non-zero cells are sent, as one Arrow stream (Flight SQL) or one COPY
        (PostgreSQL): Tessera stores only non-zero cells, so the zeros (``-0.0``
        too) read back as ``0.0``. Values are stored as float64. With
        ``replace=True`` an existing array of that name is dropped first; otherwise a
        taken name is a ``ProgrammingError`` (42P07)."""
        (rows, cols), table = cells.to_cells(array)
        ident = quote_identifier(name)
        storage = " SPARSE" if cells.is_sparse(array) else ""
        if replace:
            self._wire.execute(f"DROP MATRIX IF EXISTS {ident}")
        self._wire.execute(f"CREATE MATRIX {ident} ({rows}, {cols}){storage}")
        if table.num_rows == 0:
            return  # all zeros: the new matrix already is
        try:
            self._wire.ingest(name, table)
        except BaseException:
            # A matrix left empty by a failed load would make a retry fail with 42P07.
            try:
                self._wire.execute(f"DROP MATRIX IF EXISTS {ident}")
            except Error:
                pass
            raise

    def get(self, name: str, *, sparse: Optional[bool] = None):
        """Reads matrix ``name`` (``"x@3"``: its version 3) into a float64 NumPy array,
        or a ``scipy.sparse.csr_matrix`` when the matrix was created ``SPARSE``;
        ``sparse=True`` / ``False`` chooses."""
        shape, storage = self.shape(name)
        if sparse is None:
            sparse = storage == "sparse"
        table = self._wire.cells(name)
        return cells.to_csr(table, shape) if sparse else cells.to_dense(table, shape)

    def shape(self, name: str) -> Tuple[Tuple[int, int], str]:
        """The shape of matrix ``name`` and its storage format (``auto``, ``dense`` or
        ``sparse``), from ``SHOW ARRAYS``."""
        base = name.split("@", 1)[0]  # "x@3" is a version of x: same shape
        arrays = self._wire.query("SHOW ARRAYS").to_pylist()
        row = next((a for a in arrays if a["name"] == base), None)
        if row is None:
            raise error_for(f"matrix '{base}' does not exist", "42P01")
        dims = [int(d) for d in row["shape"].split("x")]
        if len(dims) != 2:
            raise ValueError(f"'{base}' has {len(dims)} dimensions; get() reads matrices")
        return (dims[0], dims[1]), row["format"]

    def close(self) -> None:
        """Closes the connection; the server ends its session."""
        self._wire.close()

    def __enter__(self) -> "Connection":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _Wire:
    """What a protocol must do for a Connection."""

    def query(self, sql: str) -> pa.Table:
        raise NotImplementedError

    def execute(self, sql: str) -> None:
        self.query(sql)

    def ingest(self, name: str, table: pa.Table) -> None:
        raise NotImplementedError

    def cells(self, name: str) -> pa.Table:
        return self.query(f"SELECT * FROM {quote_identifier(name)}")

    def close(self) -> None:
        raise NotImplementedError


def _split_credentials(url, user, password):
    """The URL without its user:password part, and the credentials (arguments win)."""
    parts = urlsplit(url)
    user = user if user is not None else (unquote(parts.username) if parts.username else None)
    if password is None and parts.password is not None:
        password = unquote(parts.password)
    netloc = parts.hostname or ""
    if parts.port is not None:
        netloc += f":{parts.port}"
    return urlunsplit(parts._replace(netloc=netloc)), user, password


class _FlightSql(_Wire):
    """Arrow Flight SQL through ADBC's driver: Arrow both ways."""

    def __init__(self, url, user, password):
        import adbc_driver_flightsql.dbapi as flight_sql
        import adbc_driver_manager

        self._adbc = adbc_driver_manager
        uri, user, password = _split_credentials(url, user, password)
        kwargs = {}
        if user is not None:
            kwargs["username"] = user
        if password is not None:
            kwargs["password"] = password
        with self._errors():
            self._conn = flight_sql.connect(uri, db_kwargs=kwargs, autocommit=True)

    def _errors(self):
        return _Translate(self._adbc.Error, _adbc_sqlstate)

    def query(self, sql):
        # A statement of its own, executed without a prepare (the DB-API cursor
        # prepares, and a prepared statement holds one statement, not a script).
        with self._errors():
            statement = self._adbc.AdbcStatement(self._conn.adbc_connection)
            try:
                statement.set_sql_query(sql)
                stream, _ = statement.execute_query()
                return self._reader(stream).read_all()
            finally:
                statement.close()

    @staticmethod
    def _reader(stream):
        """A reader of a result stream. ADBC's own reader (what its DB-API uses) raises
        ADBC errors with the server's metadata when the stream fails (a division by zero
        found while the result is read); pyarrow's would keep only the message."""
        try:
            from adbc_driver_manager._reader import AdbcRecordBatchReader
        except ImportError:
            return pa.RecordBatchReader.from_stream(stream)
        return AdbcRecordBatchReader._import_from_c(stream.address)

    def ingest(self, name, table):
        with self._errors(), self._conn.cursor() as cursor:
            cursor.adbc_ingest(name, table, mode="append")

    def close(self):
        with self._errors():
            self._conn.close()


def _adbc_sqlstate(e) -> Optional[str]:
    """The SQLSTATE of an ADBC error: the server's ``tessera-sqlstate`` metadata, which
    ADBC's Flight SQL driver passes on as an error detail."""
    for key, value in getattr(e, "details", None) or []:
        if _text(key).lower() == SQLSTATE_METADATA_KEY:
            return _text(value).strip() or None
    state = getattr(e, "sqlstate", None)
    return state if state and state != "00000" else None


def _text(value) -> str:
    """A metadata key or value as text (ADBC gives bytes)."""
    return value.decode(errors="replace") if isinstance(value, (bytes, bytearray)) else str(value)


class _Postgres(_Wire):
    """The PostgreSQL protocol through psycopg 3; cells move by COPY, as CSV."""

    def __init__(self, url, user, password):
        try:
            import psycopg
        except ImportError as e:
            raise ImportError(
                "postgresql:// URLs need psycopg 3: pip install 'psycopg[binary]'"
            ) from e
        self._psycopg_error = psycopg.Error
        kwargs = {"autocommit": True}
        if user is not None:
            kwargs["user"] = user
        if password is not None:
            kwargs["password"] = password
        with self._errors():
            self._conn = psycopg.connect(url, **kwargs)

    def _errors(self):
        return _Translate(self._psycopg_error, lambda e: getattr(e, "sqlstate", None))

    def query(self, sql):
        # Without parameters psycopg sends the simple query protocol, so a script runs
        # whole; its results arrive one after the other and the last one is kept.
        with self._errors(), self._conn.cursor() as cur:
            cur.execute(sql)
            last = (cur.description, cur.fetchall() if cur.description else [])
            while cur.nextset():
                last = (cur.description, cur.fetchall() if cur.description else [])
        description, rows = last
        if description is None:
            return pa.table({})
        names = [d.name for d in description]
        types = [_PG_TO_ARROW.get(d.type_code) for d in description]
        columns = list(zip(*rows)) or [() for _ in names]
        arrays = [
            pa.array(list(col), type=t) if t is not None or col else pa.array([], pa.null())
            for col, t in zip(columns, types)
        ]
        return pa.Table.from_arrays(arrays, names=_unique(names))

    def ingest(self, name, table):
        buffer = io.BytesIO()
        pa_csv.write_csv(table, buffer, pa_csv.WriteOptions(include_header=False))
        data = buffer.getbuffer()
        with self._errors(), self._conn.cursor() as cur:
            with cur.copy(f"COPY {quote_identifier(name)} FROM STDIN WITH (FORMAT csv)") as copy:
                for start in range(0, len(data), 1 << 20):
                    copy.write(data[start : start + (1 << 20)])

    def cells(self, name):
        buffer = io.BytesIO()
        sql = f"COPY (SELECT * FROM {quote_identifier(name)}) TO STDOUT WITH (FORMAT csv)"
        with self._errors(), self._conn.cursor() as cur:
            with cur.copy(sql) as copy:
                for chunk in copy:
                    buffer.write(chunk)
        if buffer.tell() == 0:
            return cells.CELL_SCHEMA.empty_table()
        buffer.seek(0)
        return pa_csv.read_csv(
            buffer,
            read_options=pa_csv.ReadOptions(column_names=cells.CELL_SCHEMA.names),
            convert_options=pa_csv.ConvertOptions(
                column_types={f.name: f.type for f in cells.CELL_SCHEMA}
            ),
        )

    def close(self):
        with self._errors():
            self._conn.close()


# PostgreSQL type OIDs of the columns Tessera sends, as Arrow types; others are inferred.
_PG_TO_ARROW = {
    16: pa.bool_(),
    17: pa.binary(),
    20: pa.int64(),
    21: pa.int16(),
    23: pa.int32(),
    25: pa.string(),
    700: pa.float32(),
    701: pa.float64(),
    1021: pa.list_(pa.float32()),  # float4[]
    1022: pa.list_(pa.float64()),  # float8[], what rows(m) returns
    1082: pa.date32(),
}


def _unique(names):
    """Column names made unique, as a pyarrow.Table needs for lookups by name."""
    seen = {}
    out = []
    for n in names:
        k = seen.get(n, 0)
        seen[n] = k + 1
        out.append(n if k == 0 else f"{n}_{k + 1}")
    return out


class _Translate:
    """Turns a driver's exception into a ``tessera.Error`` with its SQLSTATE."""

    def __init__(self, driver_error, sqlstate_of):
        self._driver_error = driver_error
        self._sqlstate_of = sqlstate_of

    def __enter__(self):
        return self

    def __exit__(self, kind, value, traceback):
        if value is not None and isinstance(value, self._driver_error):
            raise error_for(str(value).strip(), self._sqlstate_of(value)) from value
        return False
