"""Tessera from Python: NumPy arrays and SciPy sparse matrices in, Arrow out.

>>> import numpy as np, tessera
>>> with tessera.connect("grpc://127.0.0.1:50051") as conn:  # doctest: +SKIP
...     conn.put("a", np.random.default_rng(0).random((300, 200)))
...     conn.put("b", scipy.sparse.random(200, 100, density=0.01))
...     c = conn.sql("SELECT * FROM matmul(a, b)")   # a pyarrow.Table of (i, j, v)
...     df = c.to_pandas()
...     a = conn.get("a")                              # back into NumPy

``connect`` speaks Arrow Flight SQL (``grpc://``) or the PostgreSQL protocol
(``postgresql://``); errors are ``tessera.Error`` subclasses carrying the server's
SQLSTATE in ``.sqlstate``.
"""

from .connection import SQLSTATE_METADATA_KEY, Connection, connect
from .errors import (
    DataError,
    Error,
    IntegrityError,
    InternalError,
    NotSupportedError,
    OperationalError,
    ProgrammingError,
)

__version__ = "0.1.0"

__all__ = [
    "connect",
    "Connection",
    "Error",
    "ProgrammingError",
    "DataError",
    "IntegrityError",
    "OperationalError",
    "NotSupportedError",
    "InternalError",
    "SQLSTATE_METADATA_KEY",
]
