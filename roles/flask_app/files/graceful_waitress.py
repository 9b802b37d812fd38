"""Run a WSGI app under waitress, and stop it without losing a request.

Each backend service runs this file from its release:
    python graceful_waitress.py [--graceful-timeout=SECONDS] [--release-file=PATH] <waitress-serve arguments> module:app

--release-file: once listening, write "<version> <wheelhouse digest> <pid>" there - the release marker
(.installed) beside this file, i.e. the installed release this process runs, not what the app says about
itself. The deploy reads it to know which release each backend serves.

waitress-serve's own stop (SIGINT / Ctrl-C) leaves the I/O loop at once: responses still being written are
lost and the listening socket stays open until the process exits, so connections queued meanwhile are reset
after the proxy sent its request. Here the first SIGINT or SIGTERM (Ctrl-C or Ctrl-Break from NSSM on
Windows) instead:
  1. accepts the connections already queued in the kernel, then closes the listening socket - new connections
     are refused, and the proxy (nginx `proxy_next_upstream error`) retries them on another backend: nothing
     was sent, so even a POST is safe;
  2. keeps the I/O loop running: requests already received finish and their responses are written;
  3. answers every request still arriving on an open connection with `Connection: close`, so a proxy's
     kept-alive upstream connection carries one last request and is closed cleanly after its response;
  4. after IDLE_GRACE seconds closes the connections that are idle after a response (a proxy's kept-alive
     ones); a connection that has not sent its first request yet is waited for (a proxy sends it right after
     connecting, but on a loaded host that can take a while), and exits when none is left - or after the
     graceful timeout, whatever is still running.
Only a request a proxy sends on an idle connection at the very moment it is closed after the grace is lost
to the race every HTTP server has (nginx retries it if its method is idempotent); by then nginx has seen
the refused connects and stopped choosing this backend.
"""

from __future__ import annotations

import logging
import os
import sys
import time

from launcher_common import launcher_options, on_stop, refuse_asgi, write_release_file
from waitress import runner, wasyncore
from waitress.server import BaseWSGIServer, create_server

log = logging.getLogger("graceful_waitress")
# How long idle connections stay open after a stop began (each may still carry one request).
IDLE_GRACE = 1.0


def listeners(server, socket_map):
    return [d for d in list(socket_map.values()) if isinstance(d, BaseWSGIServer)] or [server]


def _marking(queue_task):
    """Wrap a server's add_task: remember that the channel carried a request (so, once idle again, it is a
    kept-alive connection that may be closed; one that never carried one is still to send it)."""

    def add_task(channel):
        channel.graceful_served = True
        queue_task(channel)

    return add_task


def _closing(queue_task):
    """Wrap a server's add_task: every request queued from now on is answered with Connection: close."""

    def add_task(channel):
        for request in list(channel.requests):
            request.headers["CONNECTION"] = "close"
        queue_task(channel)

    return add_task


# select() on Windows handles at most 512 sockets per process (CPython's FD_SETSIZE there): stay below it,
# counting the sockets already open.
_SELECT_MAX = 480 if os.name == "nt" else None


def _accept_queued(srv) -> None:
    """Accept what is queued, past the connection limit too (those are served during the drain)."""
    room = 100000 if _SELECT_MAX is None else max(0, _SELECT_MAX - len(srv._map))
    for _ in range(room):
        before = len(srv.active_channels)
        srv.handle_accept()
        if len(srv.active_channels) == before:
            return


def drain(server, socket_map, timeout: float) -> int:
    """Stop accepting, finish the requests in flight, close every connection. Returns those left."""
    servers = listeners(server, socket_map)
    for srv in servers:
        # Take every connection the kernel already completed (they sit in the accept queue, maybe with a
        # request sent): closing the socket would reset them. Then close it - the window between the last
        # accept and the close is microseconds, not a queue.
        _accept_queued(srv)
        # The dispatcher's own close (not the server's, which also closes the loop's wake-up trigger).
        wasyncore.dispatcher.close(srv)
        srv.add_task = _closing(srv.add_task)
        for ch in list(srv.active_channels.values()):
            for request in list(ch.requests):
                request.headers["CONNECTION"] = "close"
    started = time.monotonic()
    deadline = started + timeout
    while True:
        now = time.monotonic()
        channels = [ch for srv in servers for ch in list(srv.active_channels.values())]
        if not channels or now >= deadline:
            return len(channels)
        if now >= started + min(IDLE_GRACE, timeout):
            for ch in channels:
                if (getattr(ch, "graceful_served", False) and not ch.requests and ch.request is None
                        and not ch.total_outbufs_len):
                    ch.will_close = True
        wasyncore.loop(timeout=0.05, map=socket_map, use_poll=server.adj.asyncore_use_poll, count=1)


def serve(app, graceful_timeout: float, release_file: str | None = None, **kw) -> None:
    refuse_asgi(app)
    socket_map: dict = {}
    server = create_server(app, map=socket_map, **kw)
    if release_file:
        write_release_file(release_file)
    for srv in listeners(server, socket_map):
        srv.add_task = _marking(srv.add_task)
    server.print_listen("Serving on http://{}:{}")
    stop: list[int] = []

    def request_stop(signum, frame):  # noqa: ARG001 - signal handler signature
        # A flag and a wake-up only. An exception raised here would surface wherever the loop happens to be -
        # between a recv() and the parsing of what it read, say - and a request already taken off its socket
        # would never be answered (a proxy cannot retry a POST it sent).
        stop.append(signum)
        listeners(server, socket_map)[0].pull_trigger()

    on_stop(request_stop)
    try:
        while not stop:
            wasyncore.loop(timeout=server.adj.asyncore_loop_timeout, map=socket_map,
                           use_poll=server.adj.asyncore_use_poll, count=1)
        started = time.monotonic()
        left = drain(server, socket_map, graceful_timeout)
        log.warning("stopped accepting; drained in %.1f s%s", time.monotonic() - started,
                    f", {left} connection(s) still open at the timeout" if left else "")
    finally:
        server.task_dispatcher.shutdown()


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv if argv is None else argv)
    graceful_timeout, release_file, rest = launcher_options(argv[1:])
    logging.basicConfig(level=logging.INFO)
    return runner.run([argv[0], *rest], _serve=lambda app, **kw: serve(app, graceful_timeout, release_file, **kw))


if __name__ == "__main__":
    sys.exit(main())
