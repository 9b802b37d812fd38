"""What every backend launcher does the same way, whatever the app server (graceful_waitress.py,
graceful_granian.py): the launcher's own options, the stop signals, the release file, the refusal of an ASGI app.
Copied into each release beside the launcher (the launcher's directory is first on sys.path)."""

from __future__ import annotations

import inspect
import os
import signal
import time

# SIGINT: Ctrl-C (NSSM on Windows), SIGTERM: systemd, SIGBREAK: Ctrl-Break (Windows only).
STOP_SIGNALS = [s for s in (signal.SIGINT, signal.SIGTERM, getattr(signal, "SIGBREAK", None)) if s is not None]


def launcher_options(argv: list[str]) -> tuple[float, str | None, list[str]]:
    """--graceful-timeout=SECONDS and --release-file=PATH; the rest of argv for the server."""
    graceful_timeout, release_file, rest = 30.0, None, []
    for arg in argv:
        if arg.startswith("--graceful-timeout="):
            graceful_timeout = float(arg.split("=", 1)[1])
        elif arg.startswith("--release-file="):
            release_file = arg.split("=", 1)[1]
        else:
            rest.append(arg)
    return graceful_timeout, release_file, rest


def on_stop(handler) -> None:
    for sig in STOP_SIGNALS:
        signal.signal(sig, handler)


def write_release_file(path: str) -> None:
    """Which release this process runs (its directory's marker) and its pid, replaced atomically."""
    marker = os.path.join(os.path.dirname(os.path.abspath(__file__)), ".installed")
    with open(marker, encoding="utf-8") as f:
        release = " ".join(f.read().split()[:2])
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(f"{release} {os.getpid()}\n")
    # Windows: a reader holding the file open without FILE_SHARE_DELETE (the deploy's slurp:
    # File.ReadAllBytes) makes the replace fail with access denied until it closes it - moments later.
    for attempt in range(50):
        try:
            os.replace(tmp, path)
            return
        except PermissionError:
            if attempt == 49:
                os.unlink(tmp)
                raise
            time.sleep(0.1)


def refuse_asgi(app) -> None:
    """An ASGI app (an async callable: FastAPI, Starlette, Django's ASGIHandler) cannot run under a WSGI server:
    say so instead of failing on the first request."""
    if inspect.iscoroutinefunction(app) or inspect.iscoroutinefunction(getattr(app, "__call__", None)):
        raise SystemExit(f"error: {app!r} is an ASGI application (async); the backends serve WSGI only "
                         "(docs/your-app.md, ASGI): point flask_app_wsgi at a WSGI entry point")
