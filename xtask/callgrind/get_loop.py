"""One keep-alive connection: W warm-up GETs, then N GETs of PATH (the callgrind client)."""
import socket, sys
host, port, path, warm, n = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
s = socket.create_connection((host, port))
req = (f"GET {path} HTTP/1.1\r\nHost: 169.254.169.254\r\nUser-Agent: cg/1.0\r\nAccept: */*\r\n\r\n").encode()
buf = b""
def one():
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
    buf = rest[length:]
    if status != b"200":
        print("status", status, head, file=sys.stderr); sys.exit(1)
for _ in range(warm): one()
for _ in range(n): one()
