"""Sample Flask app: the seed's /test and /sleep routes plus /healthz for deploy health gates."""

from __future__ import annotations

import os
import time
from importlib.metadata import PackageNotFoundError, version

from flask import Flask, abort, jsonify, request

try:
    __version__ = version("sampleapp")
except PackageNotFoundError:  # running from a source tree without install
    __version__ = "0.0.0+src"

# Upper bound for /sleep so one request cannot hold a worker thread indefinitely.
DEFAULT_MAX_SLEEP = 30.0


def create_app(config: dict | None = None) -> Flask:
    """Application factory. `config` overrides defaults; SAMPLEAPP_* env vars are read by `serve`."""
    app = Flask(__name__)
    # The port this process listens on: set by sampleapp.serve, or APP_PORT from the service that runs
    # it. Not SERVER_PORT: behind a trusted proxy waitress rewrites that to the client-facing port.
    env_port = os.environ.get("APP_PORT")
    app.config.update(
        SERVE_PORT=int(env_port) if env_port else None,
        MAX_SLEEP=DEFAULT_MAX_SLEEP,
        RELEASE=__version__,
    )
    if config:
        app.config.update(config)

    @app.get("/")
    def index():
        return jsonify(app="sampleapp", version=app.config["RELEASE"], routes=["/test", "/sleep", "/healthz", "/echo"])

    @app.get("/test")
    def test():
        return "hello world"

    @app.get("/sleep")
    def sleep():
        try:
            seconds = float(request.args.get("seconds", "1"))
        except ValueError:
            abort(400, "seconds must be a number")
        if not 0 <= seconds <= app.config["MAX_SLEEP"]:
            abort(400, f"seconds must be between 0 and {app.config['MAX_SLEEP']}")
        time.sleep(seconds)  # deliberately blocking: occupies one waitress thread
        return jsonify(slept=seconds)

    @app.post("/echo")
    def echo():
        body = request.get_data()
        return jsonify(received=len(body))

    @app.get("/healthz")
    def healthz():
        port = app.config["SERVE_PORT"] or request.environ.get("SERVER_PORT")
        return jsonify(
            status="ok",
            version=app.config["RELEASE"],
            port=int(port) if port else None,
            pid=os.getpid(),
            client=request.remote_addr,
        )

    return app
