"""Run a WSGI app under granian (Rust HTTP server) in this one process, and stop it without losing a request.

Each backend service runs this file from its release:
    python graceful_granian.py [--graceful-timeout=SECONDS] [--release-file=PATH] --listen=127.0.0.1:PORT
        [--threads=N] [--connection-limit=N] [--backlog=N] [--channel-timeout=S] [--max-request-body-size=B]
        [--call] module:app

The same options as graceful_waitress.py, mapped onto granian 2.8 (flask_app_granian_version pins it):
  --threads                 the WSGI thread pool (granian --blocking-threads);
  --connection-limit        connections served at once (granian --backpressure); the rest wait in the kernel's
                            accept queue (--backlog), as under waitress;
  --channel-timeout         how long a connection may wait for its next request's headers, i.e. the idle
                            timeout of a kept-alive one (granian's HTTP/1 header read timeout; its CLI caps
                            it at 60 s, the worker does not);
  --max-request-body-size   a request whose Content-Length is above it gets 413 before the app reads it (granian
                            has no limit of its own; nginx answers 413 first anyway, and sends Content-Length).
Proxy headers: granian trusts none. The app gets the client's address from X-Forwarded-For / X-Forwarded-Proto
only when the request came from 127.0.0.1 (nginx, which overwrites them); other forwarding headers
(Forwarded, X-Forwarded-Host/-Port/-By) are removed, and all of them on a request from anywhere else - what
waitress's --trusted-proxy=127.0.0.1 --clear-untrusted-proxy-headers do.

One process per port, no granian process manager: its parent/worker pair would TerminateProcess the worker on
Windows at Ctrl-C (multiprocessing's terminate), cutting the requests in flight, and on Linux bind with
SO_REUSEPORT. Here the launcher makes the listening socket itself (127.0.0.1 only, no SO_REUSEPORT), hands it to
granian's WSGI worker (the one granian runs in each worker process), writes --release-file once it listens,
and on the first SIGINT / SIGTERM / Ctrl-C / Ctrl-Break signals the worker, which
  1. accepts what is already queued (its accept loop prefers a ready connection over the stop signal), then
     leaves it and closes the listening socket - new connections are refused and nginx retries them elsewhere;
  2. shuts every connection down gracefully (hyper): a request in flight is finished and answered with
     `Connection: close`, an idle kept-alive connection is closed;
  3. returns once every connection is done - or the launcher exits after --graceful-timeout, cutting the rest.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import socket
import sys
import threading
import time

from granian._granian import SocketHolder, WorkerSignal, WSGIWorker
from granian._loops import loops
from granian._futures import _new_cbscheduler
from granian.http import HTTP1Settings
from granian.wsgi import _callback_wrapper
from launcher_common import launcher_options, on_stop, refuse_asgi, write_release_file

log = logging.getLogger("graceful_granian")
# Forwarding headers the app gets only from nginx (which sets them), and those it never gets.
TRUSTED_PROXY = "127.0.0.1"
FORWARDED = ("HTTP_X_FORWARDED_FOR", "HTTP_X_FORWARDED_PROTO")
UNTRUSTED = ("HTTP_FORWARDED", "HTTP_X_FORWARDED_HOST", "HTTP_X_FORWARDED_PORT", "HTTP_X_FORWARDED_BY")


def guarded(app, max_body: int):
    """The app behind the proxy-header and body-size rules above."""

    def wrapped(environ, start_response):
        for key in UNTRUSTED:
            environ.pop(key, None)
        if environ.get("REMOTE_ADDR") == TRUSTED_PROXY:
            client = environ.get("HTTP_X_FORWARDED_FOR", "").split(",")[-1].strip()
            if client:
                environ["REMOTE_ADDR"] = client
            proto = environ.get("HTTP_X_FORWARDED_PROTO", "").strip().lower()
            if proto in ("http", "https"):
                environ["wsgi.url_scheme"] = proto
        else:
            for key in FORWARDED:
                environ.pop(key, None)
        try:
            length = int(environ.get("CONTENT_LENGTH") or 0)
        except ValueError:
            length = 0
        if length > max_body:
            start_response("413 Request Entity Too Large", [("Content-Type", "text/plain"), ("Connection", "close")])
            return [b"Request Entity Too Large"]
        return app(environ, start_response)

    return wrapped


def load_app(target: str, call: bool):
    module, _, attr = target.partition(":")
    obj = importlib.import_module(module)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj() if call else obj


def listen(address: str, backlog: int) -> socket.socket:
    host, _, port = address.rpartition(":")
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    # A restart must bind while the old process's connections are in TIME_WAIT: Linux needs SO_REUSEADDR for that;
    # Windows allows it by default but not under SO_EXCLUSIVEADDRUSE until they are gone (minutes), while
    # its SO_REUSEADDR would let another socket bind the port in use (what Rust's std, tokio and mio do there too).
    if os.name != "nt":
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, int(port)))
    sock.listen(backlog)
    return sock


def options(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="graceful_granian.py")
    p.add_argument("--listen", required=True, help="HOST:PORT")
    p.add_argument("--threads", type=int, default=4)
    p.add_argument("--connection-limit", type=int, default=100)
    p.add_argument("--backlog", type=int, default=1024)
    p.add_argument("--channel-timeout", type=int, default=120)
    p.add_argument("--max-request-body-size", type=int, default=1073741824)
    p.add_argument("--call", action="store_true")
    p.add_argument("app")
    return p.parse_args(argv)


def serve(a: argparse.Namespace, graceful_timeout: float, release_file: str | None) -> int:
    app = load_app(a.app, a.call)
    refuse_asgi(app)
    sock = listen(a.listen, a.backlog)
    # Before the first answer: a backend that answers its health check has written it (the deploy reads it then).
    if release_file:
        write_release_file(release_file)
    signal_ = WorkerSignal()
    drained = threading.Event()
    stopping: list[float] = []

    def request_stop(signum, frame):  # noqa: ARG001 - signal handler signature
        if not stopping:
            stopping.append(time.monotonic())
            signal_.set()

    # Before the worker accepts, so that every stop drains (one before serve_mtr waits in signal_ for the worker).
    on_stop(request_stop)
    # Called by the worker once its accept loop ended and every connection is done.
    signal_.add_cb(drained.set)
    # granian takes the socket over: on Linux its listener owns the descriptor, on Windows it listens on a
    # duplicate of the holder's handle. Either way it is closed once the worker's accept loop ends (the holder
    # goes with the worker object, below), not when the process exits.
    fd = sock.detach()
    worker = WSGIWorker(
        worker_id=1,
        sock=(None, SocketHolder(fd) if os.name == "nt" else SocketHolder(fd, False, a.backlog)),
        ipc=None,
        threads=1,
        blocking_threads=512,
        py_threads=a.threads,
        py_threads_idle_timeout=30,
        backpressure=a.connection_limit,
        http_mode="1",
        http1_opts=HTTP1Settings(header_read_timeout=a.channel_timeout * 1000),
    )
    loop = loops.get("auto")
    callback = _callback_wrapper(guarded(app, a.max_request_body_size), {}, None)
    worker.serve_mtr(_new_cbscheduler(loop, callback, impl_asyncio=True), loop, signal_)
    del worker
    log.info("Serving on http://%s (granian, pid %d)", a.listen, os.getpid())
    while not drained.wait(0.2):
        if stopping and time.monotonic() - stopping[0] >= graceful_timeout:
            log.warning("stopped accepting; connection(s) still open at the graceful timeout (%.0f s)",
                        graceful_timeout)
            logging.shutdown()
            # The worker's threads still run requests: the interpreter's normal exit would wait on them.
            os._exit(0)
    log.warning("stopped accepting; drained in %.1f s", time.monotonic() - stopping[0])
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    graceful_timeout, release_file, rest = launcher_options(argv)
    logging.basicConfig(level=logging.INFO)
    return serve(options(rest), graceful_timeout, release_file)


if __name__ == "__main__":
    sys.exit(main())
