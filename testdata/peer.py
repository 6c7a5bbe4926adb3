# A peer written from the README's wire format alone, in Python, to prove
# that the format is what the README says. It talks to a Conn on fd 3; see
# interop_test.go for the conversation.
import hashlib
import json
import os
import socket
import struct
import sys

HEADER = struct.Struct("<Q")  # 8-byte little-endian length of the JSON
MAX_DATAGRAM = 1 << 20

sock = socket.socket(fileno=3)
sock.setblocking(True)  # the inherited file may be non-blocking
assert sock.family == socket.AF_UNIX and sock.type == socket.SOCK_SEQPACKET


def recv():
    """Return (value, fds) of the next message, or raise EOFError."""
    data, fds, flags, _ = socket.recv_fds(sock, MAX_DATAGRAM, 253)
    if not data and not fds:
        raise EOFError
    assert not flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC), flags
    (length,) = HEADER.unpack_from(data)
    body = bytearray(data[HEADER.size:])
    while len(body) < length:
        more, extra, flags, _ = socket.recv_fds(sock, MAX_DATAGRAM, 1)
        assert more and not extra and not flags & socket.MSG_TRUNC
        body += more
    assert len(body) == length, (len(body), length)
    return json.loads(body), fds


def send(value, fds=(), first=None, piece=None):
    """Send value; split it after `first` bytes, then `piece` at a time."""
    body = json.dumps(value).encode()
    data = HEADER.pack(len(body)) + body
    first = len(data) if first is None else first
    socket.send_fds(sock, [data[:first]], list(fds))
    for off in range(first, len(data), piece or 1):
        sock.sendmsg([data[off:off + piece]])


# 1. A value with a pipe: write into it what the value says.
value, fds = recv()
assert len(fds) == 1, fds
os.write(fds[0], value["text"].encode())
os.close(fds[0])
send({"echo": value})

# 2. A value with a memfd holding a text of ours.
fd = os.memfd_create("peer")
os.write(fd, b"from python")
os.lseek(fd, 0, os.SEEK_SET)
send({"memfd": True}, [fd])
os.close(fd)

# 3. A value of several datagrams from Go: answer with its length and hash.
value, fds = recv()
assert not fds
send({"len": len(value), "sha256": hashlib.sha256(value.encode()).hexdigest()})

# 4. A value of several datagrams to Go, split in our own way.
send("y" * 700000, first=100, piece=50000)

# 5. Go closes its end: the end of input is an empty read.
try:
    recv()
except EOFError:
    sys.exit(0)
sys.exit("expected the end of input")
