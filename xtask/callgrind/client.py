"""The callgrind client: one keep-alive connection, W warm-up then N sequences of MODE against PATH.

MODE `get`: one GET of PATH. MODE `v2`: PUT an IMDSv2 token, then GET PATH with it.
"""
import socket
import sys

mode, host, port, path = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
warm, n = int(sys.argv[5]), int(sys.argv[6])
s = socket.create_connection((host, port))
COMMON = b"Host: 169.254.169.254\r\nUser-Agent: cg/1.0\r\nAccept: */*\r\n"
PUT = b"PUT /latest/api/token HTTP/1.1\r\n" + COMMON + b"X-aws-ec2-metadata-token-ttl-seconds: 21600\r\n\r\n"
buf = b""


def exchange(req):
    """Sends one request and returns its body; exits on anything but 200."""
    global buf
    s.sendall(req)
    while b"\r\n\r\n" not in buf:
        buf += s.recv(65536)
    head, rest = buf.split(b"\r\n\r\n", 1)
    status = head.split(b" ")[1]
    length = 0
    for line in head.split(b"\r\n")[1:]:
        k, v = line.split(b":", 1)
        if k.strip().lower() == b"content-length":
            length = int(v)
    while len(rest) < length:
        rest += s.recv(65536)
    body, buf = rest[:length], rest[length:]
    if status != b"200":
        print("status", status, head, body, file=sys.stderr)
        sys.exit(1)
    return body


def get(extra=b""):
    return exchange(f"GET {path} HTTP/1.1\r\n".encode() + COMMON + extra + b"\r\n")


def one():
    if mode == "v2":
        token = exchange(PUT)
        get(b"X-aws-ec2-metadata-token: " + token + b"\r\n")
    else:
        get()


for _ in range(warm + n):
    one()
