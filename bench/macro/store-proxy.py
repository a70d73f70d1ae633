#!/usr/bin/env python3
"""The bench's counting proxy in front of the S3 store (bench/macro/s3.ts startCountingProxy).

    python3 store-proxy.py http://127.0.0.1:7480

Listens on a free loopback port and prints {"port": N}; then, for each line on stdin, prints
one line of JSON with the counters so far:

    {"sentBytes": ..., "receivedBytes": ..., "requests": {"UploadPart": 16, ...},
     "bodyBytes": {"UploadPart": 268435456, ...}}

It exits when stdin closes. Bytes are relayed with splice(2) through a pipe, so they never
enter user space: this proxy costs the machine a small fraction of what a node:net relay does
(measured: 0.06 against 0.45 CPU-seconds per 256 MiB), which matters when the registry, the
store and the load generator share 2 cores. Python because node has no splice.

Requests are followed without changing a byte: the head of each request is peeked at
(MSG_PEEK) to learn its S3 operation and Content-Length, then head and body are spliced on.
A request in chunked transfer encoding (none of the bench's S3 clients sends one) ends the
request count on its connection; its bytes are still counted. Path-style addressing
(/bucket/key) is assumed, as every S3 target here uses it.
"""
import fcntl
import json
import os
import select
import socket
import sys
import threading
from urllib.parse import parse_qs, urlsplit

F_SETPIPE_SZ = 1031  # fcntl.h; Python 3.11 does not export it
PIPE_BYTES = 1 << 20
MAX_HEAD_BYTES = 64 * 1024

lock = threading.Lock()
counters = {"sentBytes": 0, "receivedBytes": 0, "requests": {}, "bodyBytes": {}}


def count(field, n, key=None):
    with lock:
        if key is None:
            counters[field] += n
        else:
            counters[field][key] = counters[field].get(key, 0) + n


def operation(method, target, copy):
    """The S3 operation of a path-style request (the same names as the AWS API)."""
    parts = urlsplit(target)
    path, q = parts.path, parse_qs(parts.query, keep_blank_values=True)
    i = path.find("/", 1)
    obj = 0 < i < len(path) - 1
    if method == "GET":
        if not obj:
            return "ListMultipartUploads" if "uploads" in q else "ListObjects"
        return "ListParts" if "uploadId" in q else "GetObject"
    if method == "HEAD":
        return "HeadObject" if obj else "HeadBucket"
    if method == "PUT":
        if "partNumber" in q:
            return "UploadPartCopy" if copy else "UploadPart"
        if not obj:
            return "CreateBucket"
        return "CopyObject" if copy else "PutObject"
    if method == "POST":
        if "uploads" in q:
            return "CreateMultipartUpload"
        if "uploadId" in q:
            return "CompleteMultipartUpload"
        if "delete" in q:
            return "DeleteObjects"
        return "POST"
    if method == "DELETE":
        if "uploadId" in q:
            return "AbortMultipartUpload"
        return "DeleteObject" if obj else "DeleteBucket"
    return method


def new_pipe():
    r, w = os.pipe()
    try:
        fcntl.fcntl(w, F_SETPIPE_SZ, PIPE_BYTES)
    except OSError:
        pass  # the default 64 KiB pipe works too, with more system calls
    return r, w


def relay(src, dst, pipe, field, n=None):
    """Moves n bytes (None: everything until EOF) from src to dst; False on EOF before n."""
    r, w = pipe
    moved = 0
    while n is None or moved < n:
        k = os.splice(src.fileno(), w, PIPE_BYTES if n is None else min(PIPE_BYTES, n - moved))
        if k == 0:
            return False
        count(field, k)
        moved += k
        while k > 0:
            k -= os.splice(r, dst.fileno(), k)
    return True


def close_all(sockets, pipe):
    for s in sockets:
        try:
            s.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
    for fd in pipe:
        os.close(fd)


def peek_head(client):
    """The next request's head (bytes, ending in CRLF CRLF) without consuming it, or None at EOF."""
    while True:
        data = client.recv(MAX_HEAD_BYTES, socket.MSG_PEEK)
        if not data:
            return None
        end = data.find(b"\r\n\r\n")
        if end >= 0:
            return data[: end + 4]
        if len(data) >= MAX_HEAD_BYTES:
            return b""
        # Part of a head has arrived: wait for more (rare; heads come in one segment).
        select.select([], [], [], 0.001)


def requests_to_store(client, upstream):
    pipe = new_pipe()
    try:
        while True:
            head = peek_head(client)
            if head is None:
                return
            if head == b"":
                relay(client, upstream, pipe, "sentBytes")
                return
            lines = head.decode("latin1").split("\r\n")
            method, target = (lines[0].split(" ") + ["", ""])[:2]
            length, copy, chunked = 0, False, False
            for line in lines[1:]:
                name, _, value = line.partition(":")
                name, value = name.strip().lower(), value.strip()
                if name == "content-length":
                    length = int(value)
                elif name == "transfer-encoding" and "chunked" in value.lower():
                    chunked = True
                elif name == "x-amz-copy-source":
                    copy = True
            op = operation(method, target, copy)
            count("requests", 1, op)
            if length:
                count("bodyBytes", length, op)
            if chunked:
                relay(client, upstream, pipe, "sentBytes")
                return
            if not relay(client, upstream, pipe, "sentBytes", len(head) + length):
                return
    except OSError:
        pass
    finally:
        close_all((client, upstream), pipe)


def responses_from_store(upstream, client):
    pipe = new_pipe()
    try:
        relay(upstream, client, pipe, "receivedBytes")
    except OSError:
        pass
    finally:
        close_all((client, upstream), pipe)


def serve(listener, host, port):
    while True:
        client, _ = listener.accept()
        try:
            upstream = socket.create_connection((host, port))
        except OSError:
            client.close()
            continue
        for s in (client, upstream):
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        threading.Thread(target=requests_to_store, args=(client, upstream), daemon=True).start()
        threading.Thread(target=responses_from_store, args=(upstream, client), daemon=True).start()


def main():
    store = urlsplit(sys.argv[1])
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(512)
    threading.Thread(target=serve, args=(listener, store.hostname, store.port or 80), daemon=True).start()
    print(json.dumps({"port": listener.getsockname()[1]}), flush=True)
    for _ in sys.stdin:
        with lock:
            print(json.dumps(counters), flush=True)


if __name__ == "__main__":
    main()
