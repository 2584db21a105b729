"""pyarrow.flight, with no Flight SQL library, against `tessera serve`; run by
tests/clients.rs as `python3 pyarrow_flight_client.py URI USER PASSWORD`. A Flight SQL
command is a protobuf `Any` in the FlightDescriptor, encoded here by hand: a query's
FlightInfo, its stream fetched with DoGet, a matmul checked against NumPy, and a
bad-credentials handshake. Prints "ok" when every check holds."""
import sys

import numpy as np
import pyarrow.flight as fl

uri, user, password = sys.argv[1], sys.argv[2], sys.argv[3]


def varint(n):
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def field(number, payload):
    """A length-delimited protobuf field."""
    return varint(number << 3 | 2) + varint(len(payload)) + payload


def command(name, *fields):
    body = b"".join(field(k, v) for k, v in fields)
    url = f"type.googleapis.com/arrow.flight.protocol.sql.{name}".encode()
    return fl.FlightDescriptor.for_command(field(1, url) + field(2, body))


client = fl.FlightClient(uri)
options = fl.FlightCallOptions()
if password:
    header = client.authenticate_basic_token(user, password)
    options = fl.FlightCallOptions(headers=[header])


def query(sql):
    info = client.get_flight_info(command("CommandStatementQuery", (1, sql.encode())), options)
    tables = [client.do_get(e.ticket, options).read_all() for e in info.endpoints]
    return info.schema, tables


def update(sql):
    # DDL and DML go through the statement path too: a FlightInfo with an empty result.
    query(sql)


schema, [t] = query("SELECT 6 * 7 AS answer")
assert schema.names == ["answer"] and t.to_pylist() == [{"answer": 42}], t

update("CREATE MATRIX a (40, 30) BLOCK (16, 16)")
update("INSERT INTO a SELECT i, j, v FROM rand(40, 30, seed => 5)")
_, tables = query("SELECT i, row FROM rows(a) ORDER BY i")
a = np.array([r for t in tables for r in t.column("row").to_pylist()])
assert a.shape == (40, 30), a.shape
_, tables = query("SELECT i, j, v FROM matmul(a, t(a))")
c = np.zeros((40, 40))
for t in tables:
    c[t.column("i").to_numpy(), t.column("j").to_numpy()] = t.column("v").to_numpy()
assert np.allclose(c, a @ a.T, rtol=1e-12, atol=1e-12)

# An unknown table is gRPC NOT_FOUND, which pyarrow raises as a KeyError, naming it.
try:
    query("SELECT * FROM nosuch")
    raise AssertionError("no error for an unknown table")
except KeyError as e:
    assert "not found" in str(e) and "nosuch" in str(e), e

if password:
    try:
        fl.FlightClient(uri).authenticate_basic_token(user, password + "x")
        raise AssertionError("wrong password accepted")
    except fl.FlightUnauthenticatedError:
        pass
print("ok")
