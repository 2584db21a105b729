"""A Flight SQL query with nothing but pyarrow.flight: the command is a protobuf `Any`
(CommandStatementQuery) in a FlightDescriptor, built by hand here; the result streams
back as Arrow record batches. Prints the Gram matrix of a random matrix as NumPy.

    python3 pyarrow_flight_query.py [grpc://127.0.0.1:50051] [user password]
"""
import sys

import numpy as np
import pyarrow.flight as fl

uri = sys.argv[1] if len(sys.argv) > 1 else "grpc://127.0.0.1:50051"


def field(number, payload):
    """One length-delimited protobuf field (strings, bytes, messages)."""
    def varint(n):
        out = bytearray()
        while True:
            byte, n = n & 0x7F, n >> 7
            out.append(byte | (0x80 if n else 0))
            if not n:
                return bytes(out)
    return varint(number << 3 | 2) + varint(len(payload)) + payload


def statement(sql):
    url = b"type.googleapis.com/arrow.flight.protocol.sql.CommandStatementQuery"
    return fl.FlightDescriptor.for_command(field(1, url) + field(2, field(1, sql.encode())))


client = fl.FlightClient(uri)
options = fl.FlightCallOptions()
if len(sys.argv) > 3:
    options = fl.FlightCallOptions(headers=[client.authenticate_basic_token(sys.argv[2], sys.argv[3])])

sql = "SELECT i, j, v FROM matmul(t(rand(1000, 4, seed => 7)), rand(1000, 4, seed => 7))"
info = client.get_flight_info(statement(sql), options)
g = np.zeros((4, 4))
for endpoint in info.endpoints:
    for batch in client.do_get(endpoint.ticket, options):
        rb = batch.data
        g[rb["i"].to_numpy(), rb["j"].to_numpy()] = rb["v"].to_numpy()
print(g)
