"""Tessera's errors as Python exceptions, each carrying the server's SQLSTATE.

The class follows the SQLSTATE's class (its first two characters), with PEP 249's
names, so ``except tessera.ProgrammingError`` catches an unknown table (42P01) or a
syntax error (42601) whichever protocol the connection speaks.
"""

from __future__ import annotations

from typing import Optional


class Error(Exception):
    """Any error Tessera reported; ``sqlstate`` is its five-character SQLSTATE
    (``None`` when the server sent none, e.g. the connection itself failed)."""

    def __init__(self, message: str, sqlstate: Optional[str] = None):
        super().__init__(message)
        self.sqlstate = sqlstate

    def __str__(self) -> str:
        message = super().__str__()
        return f"{message} (SQLSTATE {self.sqlstate})" if self.sqlstate else message


class ProgrammingError(Error):
    """The statement is wrong: syntax, an unknown table or function (class 42)."""


class DataError(Error):
    """A value is wrong: bad input, shapes that do not conform, a cell outside an array
    (class 22)."""


class IntegrityError(Error):
    """A constraint was violated (class 23)."""


class OperationalError(Error):
    """The run failed, not the statement: connection, authentication, resources,
    cancel, shutdown, I/O (classes 08, 28, 53, 54, 57, 58, 40)."""


class NotSupportedError(Error):
    """A feature Tessera does not have (class 0A)."""


class InternalError(Error):
    """A bug or damaged data in the server (class XX)."""


_BY_CLASS = {
    "42": ProgrammingError,
    "22": DataError,
    "23": IntegrityError,
    "0A": NotSupportedError,
    "XX": InternalError,
    "08": OperationalError,
    "28": OperationalError,
    "40": OperationalError,
    "53": OperationalError,
    "54": OperationalError,
    "55": OperationalError,
    "57": OperationalError,
    "58": OperationalError,
}


def error_for(message: str, sqlstate: Optional[str]) -> Error:
    """The exception for a SQLSTATE: the class's subclass, else ``Error``."""
    cls = _BY_CLASS.get(sqlstate[:2], Error) if sqlstate else Error
    return cls(message, sqlstate)
