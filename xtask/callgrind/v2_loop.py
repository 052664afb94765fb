"""One keep-alive connection: W warm-up then N IMDSv2 sequences (PUT a token, GET PATH with it)."""
import socket, sys
host, port, path, warm, n = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
s = socket.create_connection((host, port))
put = b"PUT /latest/api/token HTTP/1.1\r\nHost: 169.254.169.254\r\nUser-Agent: cg/1.0\r\nAccept: */*\r\nX-aws-ec2-metadata-token-ttl-seconds: 21600\r\n\r\n"
buf = b""
def exchange(req):
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
        print("status", status, head, body, file=sys.stderr); sys.exit(1)
    return body
def one():
    token = exchange(put)
    exchange(f"GET {path} HTTP/1.1\r\nHost: 169.254.169.254\r\nUser-Agent: cg/1.0\r\nAccept: */*\r\nX-aws-ec2-metadata-token: {token.decode()}\r\n\r\n".encode())
for _ in range(warm): one()
for _ in range(n): one()
