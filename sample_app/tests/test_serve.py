import json
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from sampleapp import serve


def test_defaults_bind_loopback_with_production_settings():
    args = serve.parse_args(["--port", "8001"], environ={})
    kw = serve.waitress_kwargs(args)
    assert kw["host"] == "127.0.0.1"
    assert kw["port"] == 8001
    assert kw["trusted_proxy"] == "127.0.0.1"
    assert kw["clear_untrusted_proxy_headers"] is True
    assert kw["expose_tracebacks"] is False
    assert kw["connection_limit"] < 500  # Windows select() ceiling


def test_env_is_fallback_and_flag_wins():
    env = {"SAMPLEAPP_PORT": "8002", "SAMPLEAPP_THREADS": "6", "SAMPLEAPP_CHANNEL_TIMEOUT": "90"}
    args = serve.parse_args([], environ=env)
    assert (args.port, args.threads, args.channel_timeout) == (8002, 6, 90)
    assert serve.parse_args(["--threads", "3"], environ=env).threads == 3


@pytest.mark.parametrize(
    "argv",
    [[], ["--port", "0"], ["--port", "70000"], ["--port", "8001", "--threads", "0"], ["--port", "x"]],
)
def test_bad_arguments_exit(argv):
    with pytest.raises(SystemExit) as e:
        serve.parse_args(argv, environ={})
    assert e.value.code == 2


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url, timeout=5.0):
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                return r.status, r.read(), dict(r.headers)
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def test_serve_runs_real_waitress_on_loopback():
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "sampleapp", "--port", str(port), "--threads", "2"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        status, body, headers = _get(f"http://127.0.0.1:{port}/test")
        assert (status, body) == (200, b"hello world")
        assert "Server" not in headers  # ident="" hides the waitress version
        health = json.loads(_get(f"http://127.0.0.1:{port}/healthz")[1])
        assert health["port"] == port and health["pid"] == proc.pid and health["status"] == "ok"
        # Bound to loopback only: the listening socket's address is 127.0.0.1, not 0.0.0.0.
        listening = subprocess.run(["ss", "-Hltn", f"sport = :{port}"], capture_output=True, text=True).stdout
        assert f"127.0.0.1:{port}" in listening and f"0.0.0.0:{port}" not in listening
    finally:
        proc.terminate()
        proc.wait(10)


def test_forwarded_for_from_trusted_proxy_only():
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "sampleapp", "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _get(f"http://127.0.0.1:{port}/test")
        req = urllib.request.Request(f"http://127.0.0.1:{port}/healthz", headers={"X-Forwarded-For": "203.0.113.9"})
        with urllib.request.urlopen(req, timeout=5) as r:
            # The request comes from 127.0.0.1 = trusted_proxy, so waitress applies the header.
            assert json.loads(r.read())["client"] == "203.0.113.9"
    finally:
        proc.terminate()
        proc.wait(10)
