"""The backends' launchers (roles/flask_app/files/graceful_waitress.py, graceful_granian.py) with the real
servers and the sample app: a stop refuses new connections at once, finishes the requests in flight, then
exits. waitress-serve's own stop, the control, keeps accepting connections it never answers. The tests that
hold for both launchers run with each (the `launcher` parameter); the rest are waitress's own mechanics."""

import http.client
import importlib
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

from conftest import ROOT

FILES = ROOT / "roles/flask_app/files"
LAUNCHER = FILES / "graceful_waitress.py"
LAUNCHERS = {"waitress": LAUNCHER, "granian": FILES / "graceful_granian.py"}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def default_sigint():
    """A job started in the background (CI runners, `cmd &`) inherits SIGINT ignored, and Python then keeps
    ignoring it: waitress-serve (the control) would not stop at all. The processes under test get the default."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start(cmd, port):
    proc = subprocess.Popen([sys.executable, *cmd, f"--listen=127.0.0.1:{port}", "--threads=4", "--call",
                             "sampleapp:create_app"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            preexec_fn=default_sigint)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc
        except OSError:
            time.sleep(0.05)
    proc.kill()
    pytest.fail(proc.communicate()[0])


def slow_request(port, seconds, out):
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        conn.request("GET", f"/sleep?seconds={seconds}")
        resp = conn.getresponse()
        out["status"], out["body"] = resp.status, resp.read()
    except OSError as exc:
        out["error"] = repr(exc)


def refused(port):
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        return False
    except ConnectionRefusedError:
        return True


@pytest.fixture
def port():
    return free_port()


@pytest.fixture(params=sorted(LAUNCHERS))
def launcher(request):
    return LAUNCHERS[request.param]


def test_stop_refuses_new_connections_and_finishes_requests_in_flight(port, launcher):
    proc = start([str(launcher), "--graceful-timeout=20"], port)
    idle = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    idle.request("GET", "/test")
    assert idle.getresponse().read() == b"hello world"  # an idle keep-alive connection stays open
    result = {}
    t = threading.Thread(target=slow_request, args=(port, 2, result))
    t.start()
    time.sleep(0.5)  # the request is running
    stopped_at = time.monotonic()
    proc.send_signal(signal.SIGINT)
    time.sleep(0.3)
    assert refused(port), "new connections must be refused while draining"
    if launcher == LAUNCHER:
        # A kept-alive connection still carries one request, answered with Connection: close, then closes.
        idle.request("GET", "/test")
        last = idle.getresponse()
        assert (last.status, last.getheader("Connection"), last.read()) == (200, "close", b"hello world")
    # granian (hyper's graceful shutdown) closes an idle kept-alive connection at once, cleanly.
    assert idle.sock is None or idle.sock.recv(1) == b""
    t.join(timeout=15)
    assert result.get("status") == 200, result
    assert b'"slept":2' in result["body"].replace(b" ", b"")
    proc.wait(timeout=10)
    assert proc.returncode == 0, proc.stdout.read()
    assert time.monotonic() - stopped_at < 5


def test_idle_connections_are_closed_after_the_grace(port):
    proc = start([str(LAUNCHER), "--graceful-timeout=20"], port)
    idle = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    idle.request("GET", "/test")
    assert idle.getresponse().read() == b"hello world"
    stopped_at = time.monotonic()
    proc.send_signal(signal.SIGINT)
    assert idle.sock.recv(1) == b""  # closed cleanly (FIN), not reset
    assert 0.8 < time.monotonic() - stopped_at < 3
    proc.wait(timeout=10)
    assert proc.returncode == 0


def test_connections_queued_in_the_kernel_are_served_not_reset(port):
    """Connections the kernel completed but waitress had not accepted yet (here: past its connection limit)
    may already carry a request; the stop accepts and serves them instead of resetting them."""
    cmd = [str(LAUNCHER), "--graceful-timeout=10"]
    proc = subprocess.Popen([sys.executable, *cmd, f"--listen=127.0.0.1:{port}", "--threads=2",
                             "--connection-limit=3", "--call", "sampleapp:create_app"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, preexec_fn=default_sigint)
    # Listening (without a probe connection, which would count against the limit); seconds on a loaded host.
    while "Serving on" not in proc.stdout.readline():
        assert proc.poll() is None, proc.stdout.read()
    holder = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    holder.request("GET", "/test")
    # The one connection waitress accepts (its limit counts the listening socket and its wake-up pipe too).
    assert holder.getresponse().read() == b"hello world"
    queued = []
    for _ in range(3):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=15)
        conn.request("POST", "/echo", body=b"x" * 100)  # sent into the accept queue
        queued.append(conn)
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    for conn in queued:
        resp = conn.getresponse()
        assert (resp.status, resp.read()) == (200, b'{"received":100}\n')
    proc.wait(timeout=15)


def test_a_connection_whose_request_comes_late_is_served_not_closed(port):
    """A proxy connects, then (on a loaded host) sends its request only after the idle grace: the stop
    waits for it and answers it, instead of closing the connection under the request."""
    proc = start([str(LAUNCHER), "--graceful-timeout=20"], port)
    late = socket.create_connection(("127.0.0.1", port), timeout=10)
    time.sleep(0.3)
    proc.send_signal(signal.SIGINT)
    time.sleep(1.8)  # past the 1 s grace
    late.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc")
    reply = b""
    while chunk := late.recv(4096):
        reply += chunk
    assert reply.startswith(b"HTTP/1.1 200") and b'{"received":3}' in reply, reply
    proc.wait(timeout=15)


# The launcher with the stop signal delivered at the worst moment: inside the I/O loop, right after a request's
# bytes were read off the socket and before waitress parsed them.
SIGNAL_IN_READ = """
import os, signal, sys
from waitress.channel import HTTPChannel
received = HTTPChannel.received
def received_with_stop(self, data):
    if data and not getattr(received_with_stop, "fired", False):
        received_with_stop.fired = True
        os.kill(os.getpid(), signal.SIGTERM)
    return received(self, data)
HTTPChannel.received = received_with_stop
sys.path.insert(0, sys.argv[1])
import graceful_waitress
sys.exit(graceful_waitress.main(sys.argv[1:]))
"""


def test_a_stop_signal_between_reading_a_request_and_parsing_it_loses_nothing(port):
    """The signal handler only sets a flag: an exception raised from it would surface wherever the loop is -
    here between recv() and parsing - and the request already taken off the socket would never be answered
    (a proxy cannot retry a POST it sent: seen as a 502 after the graceful timeout in a rollout)."""
    proc = start(["-c", SIGNAL_IN_READ, str(LAUNCHER.parent), "--graceful-timeout=10"], port)
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    conn.request("POST", "/echo", body=b"x" * 512)
    resp = conn.getresponse()
    # Answered (with Connection: close if the stop reached it before a worker thread did).
    assert (resp.status, resp.read()) == (200, b'{"received":512}\n')
    assert proc.wait(timeout=10) == 0, proc.communicate()[0]


def test_graceful_timeout_bounds_the_stop(port, launcher):
    proc = start([str(launcher), "--graceful-timeout=1"], port)
    result = {}
    t = threading.Thread(target=slow_request, args=(port, 8, result))
    t.start()
    time.sleep(0.5)
    stopped_at = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=20)
    # Gone after the timeout (plus waitress's own 5 s for running threads), not after the 8 s request.
    assert time.monotonic() - stopped_at < 7.5
    t.join(timeout=15)


def test_control_waitress_serve_accepts_then_resets_during_its_stop(port):
    """Without the launcher: while waitress-serve stops, its listening socket stays open - a new connection
    is accepted by the kernel, the request is sent, and no response ever comes (the proxy cannot retry a
    POST that was sent). So the refusal asserted above is the launcher's doing."""
    proc = start(["-m", "waitress"], port)
    result = {}
    # waitress-serve stops its loop at once, then waits for this request's thread: the window under test lasts
    # until the request ends (4 s), and the late request comes 1.5 s into it (a loaded machine handles the
    # signal late; the request must not reach a loop that is still running).
    t = threading.Thread(target=slow_request, args=(port, 4, result))
    t.start()
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    time.sleep(1.5)
    assert not refused(port)
    late = {}
    slow_request(port, 0, late)
    assert late.get("status") != 200, late
    t.join(timeout=15)
    proc.wait(timeout=15)


@pytest.mark.parametrize("entry", ["asgiapp:app", "asgiapp:instance"])
def test_an_asgi_app_is_refused_at_start_with_a_message(tmp_path, port, entry, launcher):
    """An async callable (a function or an object with an async __call__, as Starlette/FastAPI are) is
    refused before the port opens, naming the setting - not failed on the first request."""
    (tmp_path / "asgiapp.py").write_text(
        "async def app(scope, receive, send):\n    pass\n\n\n"
        "class App:\n    async def __call__(self, scope, receive, send):\n        pass\n\n\ninstance = App()\n")
    proc = subprocess.run([sys.executable, str(launcher), f"--listen=127.0.0.1:{port}", entry],
                          cwd=tmp_path, env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"},
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    assert "is an ASGI application" in proc.stderr and "flask_app_wsgi" in proc.stderr, proc.stderr
    assert refused(port)


def test_the_release_file_names_the_release_and_the_pid_once_listening(tmp_path, port, launcher):
    """--release-file: "<version> <wheelhouse digest> <pid>" from the marker beside the launcher (the release
    it was started from), written once the port listens."""
    release = tmp_path / "release"
    release.mkdir()
    for f in (launcher, FILES / "launcher_common.py"):
        shutil.copy(f, release / f.name)
    (release / ".installed").write_text("1.2.3 0123456789abcdef\n")
    marker = tmp_path / "sampleapp-8001.release"
    proc = start([str(release / launcher.name), f"--release-file={marker}"], port)
    try:
        assert marker.read_text() == f"1.2.3 0123456789abcdef {proc.pid}\n"
    finally:
        proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=15) == 0


def test_granian_trusts_forwarding_headers_from_loopback_only():
    """graceful_granian.py's guard (granian has no proxy-header handling of its own): X-Forwarded-For/-Proto
    from 127.0.0.1 (nginx, which overwrites them) give the client's address and scheme; other forwarding
    headers never reach the app, nor any of them from elsewhere; a body above the limit gets 413 unread."""
    sys.path.insert(0, str(FILES))
    guarded = importlib.import_module("graceful_granian").guarded
    seen = []

    def app(environ, start_response):
        seen.append(environ)
        start_response("200 OK", [])
        return [b"ok"]

    def call(**environ):
        status = []
        body = guarded(app, 100)({"wsgi.url_scheme": "http", **environ}, lambda s, h: status.append(s))
        return status[0][:3], b"".join(body)

    forged = {"HTTP_X_FORWARDED_FOR": "6.6.6.6", "HTTP_X_FORWARDED_PROTO": "https", "HTTP_FORWARDED": "for=6.6.6.6",
              "HTTP_X_FORWARDED_HOST": "evil.example", "HTTP_X_FORWARDED_PORT": "1", "HTTP_X_FORWARDED_BY": "x"}
    assert call(REMOTE_ADDR="127.0.0.1", **{**forged, "HTTP_X_FORWARDED_FOR": "10.0.0.7"}) == ("200", b"ok")
    env = seen.pop()
    assert (env["REMOTE_ADDR"], env["wsgi.url_scheme"]) == ("10.0.0.7", "https")
    assert not {"HTTP_FORWARDED", "HTTP_X_FORWARDED_HOST", "HTTP_X_FORWARDED_PORT", "HTTP_X_FORWARDED_BY"} & set(env)
    assert call(REMOTE_ADDR="10.1.1.1", **forged) == ("200", b"ok")
    env = seen.pop()
    assert (env["REMOTE_ADDR"], env["wsgi.url_scheme"]) == ("10.1.1.1", "http")
    assert not set(forged) & set(env)
    assert call(REMOTE_ADDR="127.0.0.1", CONTENT_LENGTH="101") == ("413", b"Request Entity Too Large")
    assert not seen
    assert call(REMOTE_ADDR="127.0.0.1", CONTENT_LENGTH="100")[0] == "200"
