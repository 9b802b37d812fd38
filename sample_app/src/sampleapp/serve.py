"""Run the app under waitress on 127.0.0.1:<port> with production settings.

Every setting comes from a command-line flag or, when the flag is absent, from a SAMPLEAPP_* variable
(so a service manager can pass either). The bind address defaults to loopback: backends sit behind nginx.
"""

from __future__ import annotations

import argparse
import os
import sys

from waitress import serve

from . import create_app

# name: (type, default, help). Defaults are the production values the roles also default to.
SETTINGS = {
    "host": (str, "127.0.0.1", "bind address (loopback: nginx is the only client)"),
    "port": (int, None, "TCP port (required)"),
    "threads": (int, 48, "worker threads per process (above the slow requests it may hold at once)"),
    "connection_limit": (int, 64, "max open connections (>= threads; the rest queue in the backlog); < ~500 on Windows"),
    "channel_timeout": (int, 120, "idle seconds before a connection is closed; > nginx upstream keepalive_timeout"),
    "max_request_body_size": (int, 10 * 1024 * 1024, "bytes; >= nginx client_max_body_size"),
    "trusted_proxy": (str, "127.0.0.1", "address whose X-Forwarded-* headers are trusted"),
    "backlog": (int, 4096, "listen() backlog"),
    "max_sleep": (float, 30.0, "upper bound for /sleep?seconds="),
}


def parse_args(argv: list[str] | None = None, environ: dict | None = None) -> argparse.Namespace:
    environ = os.environ if environ is None else environ
    parser = argparse.ArgumentParser(prog="sampleapp-serve", description=__doc__)
    for name, (typ, default, help_) in SETTINGS.items():
        env = "SAMPLEAPP_" + name.upper()
        value = environ.get(env, default)
        parser.add_argument("--" + name.replace("_", "-"), type=typ, default=value, help=f"{help_} [env {env}]")
    args = parser.parse_args(argv)
    if args.port is None:
        parser.error("--port (or SAMPLEAPP_PORT) is required")
    for name in ("port", "threads", "connection_limit", "channel_timeout", "max_request_body_size", "backlog"):
        setattr(args, name, int(getattr(args, name)))
    if not 1 <= args.port <= 65535:
        parser.error(f"--port must be 1..65535, got {args.port}")
    if args.threads < 1 or args.connection_limit < 1:
        parser.error("--threads and --connection-limit must be >= 1")
    return args


def waitress_kwargs(args: argparse.Namespace) -> dict:
    return {
        "host": args.host,
        "port": args.port,
        "threads": args.threads,
        "connection_limit": args.connection_limit,
        "channel_timeout": args.channel_timeout,
        "max_request_body_size": args.max_request_body_size,
        "backlog": args.backlog,
        "trusted_proxy": args.trusted_proxy or None,
        "trusted_proxy_headers": "x-forwarded-for x-forwarded-proto" if args.trusted_proxy else None,
        "clear_untrusted_proxy_headers": True,
        "ident": "",  # no Server header with the waitress version
        "expose_tracebacks": False,
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    app = create_app({"SERVE_PORT": args.port, "MAX_SLEEP": float(args.max_sleep)})
    kwargs = {k: v for k, v in waitress_kwargs(args).items() if v is not None}
    print(f"sampleapp {app.config['RELEASE']} serving on {args.host}:{args.port} pid {os.getpid()}", flush=True)
    serve(app, **kwargs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
