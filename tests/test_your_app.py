"""Deploying an app nobody here wrote: httpbin (PyPI; WSGI entry httpbin:app, not a factory, no /healthz,
no waitress dependency) on one local host, from a package index (flask_app_source: index) served on the
controller with a lock file of hashes, its health check on /get through nginx; a re-run changes nothing;
a roll from 0.10.1 to 0.10.2 under wrk load loses no request; the same release from a prebuilt wheelhouse
archive (flask_app_source: wheelhouse) has the same digest (byte-identical packages), so the host is not
touched; a wheel that does not match the lock is refused on the controller. Route `tree` (a source tree)
is what every other host test deploys (the sample app); the wheelhouse route's builder without a host:
tests/test_wheelhouse.py. The roll under load and the wheelhouse deploy are `slow` (make test-slow): each
is a full deploy, and so is the refused lock (its builder-only form is in tests/test_wheelhouse.py). Figures:
build/your-app-results.json.
"""

import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import time

import pytest

from conftest import ROOT, VENV_BIN, parse_wrk, venv_env

sys.path.insert(0, str(ROOT / "tools"))
import testhosts  # noqa: E402

pytestmark = pytest.mark.hosts
# Overridable (APP_FLEET, APP_NET) to run beside a CI that uses these.
FLEET, NET = os.environ.get("APP_FLEET", "app"), os.environ.get("APP_NET", "10.231.15")
HOST = f"{FLEET}1"
ADDRESS = f"{NET}.11"
CTL_NS = f"ffc-{FLEET}"
INVENTORY = ROOT / f"build/hosts/{FLEET}/hosts.yml"
BUILD = ROOT / "build" / "your_app"
# Downloaded once from PyPI, reused by later runs (the hosts have no internet: the controller downloads).
PYPI_CACHE = ROOT / "build" / "your_app_pypi"
OLD, NEW = "0.10.1", "0.10.2"
WAITRESS = "3.0.2"
RESULTS = {}


def hosts_tool(*args):
    return subprocess.run([sys.executable, str(ROOT / "tools/testhosts.py"), *args, f"--fleet={FLEET}"],
                          capture_output=True, text=True, timeout=600, check=False)


def on(*cmd):
    init = testhosts.container_init(testhosts.Fleet(FLEET).state()["hosts"][HOST]["nspawn_pid"])
    return subprocess.run(["nsenter", "-t", str(init), "-a", *cmd], capture_output=True, text=True, timeout=60,
                          check=False)


def closure(version):
    """httpbin==version, the role's waitress and their dependencies as wheels for the host (CPython 3.11),
    resolved for the host's markers by the role's own builder from PyPI (as a team would make its lock).
    Resolved freely, httpbin does not start: its dependency flasgger has a wheel only of 0.9.5, which imports
    what Flask 2.3 / Werkzeug 3 removed - the pins below are what the team's lock holds."""
    dest = PYPI_CACHE / version
    if not (dest / ".complete").exists():
        shutil.rmtree(dest, ignore_errors=True)
        res = subprocess.run([sys.executable, str(ROOT / "roles/flask_app/files/build_wheelhouse.py"), "--from=index",
                              "--package=httpbin", f"--version={version}", f"--server=waitress=={WAITRESS}",
                              "--server=flask<2.3", "--server=werkzeug<2.3",
                              "--target=linux", "--python=3.11", "--name=httpbin", f"--out={PYPI_CACHE / 'build'}"],
                             capture_output=True, text=True, timeout=600, check=True)
        with tarfile.open(json.loads(res.stdout)["archive"]) as tf:
            tf.extractall(dest, filter="data")
        (dest / "requirements.lock").unlink()
        (dest / ".complete").touch()
    return sorted(dest.glob("*.whl"))


def sha256(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def lock_for(version, wheels, tamper=None):
    """A lock file as pip-compile --generate-hashes writes it (the app's closure; waitress is the role's)."""
    lines = ["# lock for httpbin " + version]
    for w in wheels:
        name, ver = w.name.split("-")[:2]
        if name.lower() == "waitress":
            continue
        digest = "0" * 64 if name.lower() == tamper else sha256(w)
        lines.append(f"{name}=={ver} \\\n    --hash=sha256:{digest}")
    path = BUILD / f"lock-{version}{'-' + tamper if tamper else ''}.txt"
    path.write_text("\n".join(lines) + "\n")
    return path


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def settings(version, **extra):
    return {"nginx_linux_apt_update_cache": False, "flask_app_linux_apt_update_cache": False,
            "flask_app_name": "httpbin", "flask_app_package": "httpbin", "flask_app_version": version,
            "flask_app_source": "index", "flask_app_index_url": INDEX["url"],
            "flask_app_lock_file": str(lock_for(version, closure(version))),
            "flask_app_wsgi": "httpbin:app", "flask_app_wsgi_factory": False, "flask_app_health_path": "/get",
            "flask_app_backend_count": 2, "flask_app_wheelhouse_dir": str(BUILD / "wheelhouse"), **extra}


def deploy(case, version, load=False, **extra):
    """deploy.yml with these settings (and a wrk load at the site around it); figures into RESULTS."""
    extra_file = BUILD / "extra.json"
    extra_file.write_text(json.dumps(settings(version, **extra)))
    wrk = None
    if load:
        # Paced (each connection waits 20 ms between requests): a load, not a CPU hog the deploy competes with.
        pace = BUILD / "paced.lua"
        pace.write_text("function delay()\n  return 20\nend\n")
        wrk = subprocess.Popen(["ip", "netns", "exec", CTL_NS, "wrk", "-t1", "-c8", "-d900s", "--timeout", "10s",
                                "-s", str(pace), f"http://{ADDRESS}/get"], stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
        time.sleep(2)
    t0 = time.monotonic()
    run = subprocess.run([str(VENV_BIN / "ansible-playbook"), "deploy.yml", "-i", str(INVENTORY), "-e",
                          f"@{extra_file}"], capture_output=True, text=True, env=venv_env(), cwd=ROOT, timeout=1200,
                         check=False)
    seconds = round(time.monotonic() - t0, 1)
    stats = None
    if wrk:
        time.sleep(2)
        wrk.send_signal(signal.SIGINT)
        stats = parse_wrk(wrk.communicate(timeout=30)[0])
    out = run.stdout + run.stderr
    changed = sum(int(n) for n in re.findall(r"^\S+\s+: ok=\d+\s+changed=(\d+)", out, re.M))
    RESULTS[case] = {"rc": run.returncode, "seconds": seconds, "changed": changed}
    if stats:
        RESULTS[case].update({k: stats[k] for k in ("requests", "failed", "non_2xx", "socket_errors")})
    (ROOT / "build/your-app-results.json").write_text(json.dumps(RESULTS, indent=2) + "\n")
    return run.returncode, out, changed, stats


def site(path):
    """GET through nginx from outside the host; (status, body)."""
    res = subprocess.run(["ip", "netns", "exec", CTL_NS, "curl", "-s", "--max-time", "10", "-w", "\n%{http_code}",
                          f"http://{ADDRESS}{path}"], capture_output=True, text=True, check=False)
    body, _, code = res.stdout.rpartition("\n")
    return int(code or 0), body


def marker():
    return on("cat", "/opt/httpbin/current/.installed").stdout.split()


INDEX = {}


@pytest.fixture(scope="module", autouse=True)
def fleet(request):
    if os.geteuid() != 0:
        pytest.skip("test hosts need root")
    shutil.rmtree(BUILD, ignore_errors=True)
    (BUILD / "index/simple").mkdir(parents=True)
    # A PEP 503 index of the two releases' wheels, served on the controller (where the wheelhouse is built).
    for version in (OLD, NEW):
        for w in closure(version):
            project = BUILD / "index/simple" / re.sub(r"[-_.]+", "-", w.name.split("-")[0]).lower()
            project.mkdir(exist_ok=True)
            shutil.copy(w, project / w.name)
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "http.server", "--bind", "127.0.0.1", str(port), "--directory",
                               str(BUILD / "index")], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    request.addfinalizer(server.terminate)
    INDEX["url"] = f"http://127.0.0.1:{port}/simple/"
    hosts_tool("down")
    request.addfinalizer(lambda: hosts_tool("down"))
    up = hosts_tool("up", "--count=1", f"--net={NET}")
    assert up.returncode == 0, up.stderr
    rc, out, changed, _ = deploy("deploy_index_old", OLD)
    assert rc == 0, out[-4000:]
    INDEX["first_out"] = out


def test_index_route_serves_get_through_nginx_with_the_server_the_role_brought():
    code, body = site("/get?from=test")
    assert code == 200 and json.loads(body)["args"] == {"from": "test"}, body
    version, digest = marker()
    assert version == OLD and re.fullmatch(r"[0-9a-f]{16}", digest)
    # httpbin does not depend on waitress; the role installed its pinned one into the release's venv.
    pip = on("/opt/httpbin/current/venv/bin/python", "-m", "pip", "list", "--format=json").stdout
    installed = {p["name"].lower(): p["version"] for p in json.loads(pip)}
    assert installed["httpbin"] == OLD and installed["waitress"] == WAITRESS
    requires = on("/opt/httpbin/current/venv/bin/python", "-c",
                  "import importlib.metadata as m; print(m.requires('httpbin'))").stdout
    assert "waitress" not in requires.lower()
    # Every backend was started from the release (its launcher's release file), not from what httpbin says.
    for port in (8001, 8002):
        assert on("cat", f"/var/log/httpbin/httpbin-{port}.release").stdout.split()[:2] == [OLD, digest]
    # The wheelhouse's lock (installed with --require-hashes) carries the hash of every wheel shipped.
    lock = on("cat", f"/opt/httpbin/releases/{OLD}/wheels/requirements.lock").stdout
    assert f"httpbin=={OLD} --hash=sha256:" in lock and f"waitress=={WAITRESS} --hash=sha256:" in lock
    assert hashlib.sha256(lock.encode()).hexdigest()[:16] == digest


def test_rerun_changes_nothing_and_reuses_the_wheelhouse():
    rc, out, changed, _ = deploy("rerun", OLD)
    assert rc == 0, out[-4000:]
    assert changed == 0, out[-4000:]
    assert len(list((BUILD / "wheelhouse").glob(f"httpbin-{OLD}-*.tar.gz"))) == 1


def test_status_reports_the_health_path_version_and_digest():
    run = subprocess.run([str(VENV_BIN / "ansible-playbook"), "playbooks/status.yml", "-i", str(INVENTORY), "-e",
                          f"@{BUILD / 'extra.json'}"], capture_output=True, text=True, env=venv_env(), cwd=ROOT,
                         timeout=600, check=False)
    assert run.returncode == 0, run.stdout[-3000:]
    version, digest = marker()
    assert f"release {version} wheelhouse digest {digest}, health path /get" in run.stdout
    assert "site http://127.0.0.1:80/get -> up (HTTP 200)" in run.stdout
    assert "backends 2/2 up: 8001 v0.10.1, 8002 v0.10.1" in run.stdout


@pytest.mark.slow
def test_roll_to_the_next_published_version_under_load_loses_no_request():
    old_digest = marker()[1]
    rc, out, changed, stats = deploy("roll_under_load", NEW, load=True)
    assert rc == 0, out[-4000:]
    assert stats["requests"] > 100, stats["raw"]
    assert stats["failed"] == 0, stats["raw"]
    version, digest = marker()
    assert version == NEW and digest != old_digest
    for port in (8001, 8002):
        assert on("cat", f"/var/log/httpbin/httpbin-{port}.release").stdout.split()[0] == NEW
    assert site("/get")[0] == 200


@pytest.mark.slow
def test_prebuilt_wheelhouse_of_the_same_release_is_byte_identical():
    # A CI artifact: the same wheels in a directory of an archive, without the server (the role adds it).
    archive = BUILD / f"ci-httpbin-{NEW}.tar.gz"
    with tarfile.open(archive, "w:gz") as tf:
        for w in closure(NEW):
            if not w.name.startswith("waitress-"):
                tf.add(w, f"dist/{w.name}")
    rc, out, changed, _ = deploy("wheelhouse_same_release", NEW, flask_app_source="wheelhouse",
                                 flask_app_wheelhouse_archive=str(archive), flask_app_index_url="")
    assert rc == 0, out[-4000:]
    # Each build's record beside its archive: this one's digest is the live release's.
    builds = [json.loads(p.read_text()) for p in (BUILD / "wheelhouse").glob(f"httpbin-{NEW}-*.tar.gz.json")]
    assert marker()[0] == NEW and marker()[1] in {b["digest"] for b in builds}
    if "roll_under_load" in RESULTS:
        # The index route built the same release before: the same digest (byte-identical packages), so the
        # host's release is not touched - the controller's new build is the one change.
        assert len(builds) == 2 and len({b["digest"] for b in builds}) == 1, builds
        assert changed == 1, out[-4000:]
        assert re.search(rf"changed: \[{HOST} -> localhost\]", out)


@pytest.mark.slow
def test_a_wheel_that_does_not_match_the_lock_is_refused_before_the_host_changes():
    before = marker()
    extra_file = BUILD / "extra.json"
    rc, out, changed, _ = deploy("tampered_lock", NEW,
                                 flask_app_lock_file=str(lock_for(NEW, closure(NEW), tamper="werkzeug")),
                                 flask_app_wheelhouse_dir=str(BUILD / "wheelhouse-tampered"))
    assert rc != 0
    assert "THESE PACKAGES DO NOT MATCH THE HASHES" in out, out[-3000:]
    assert "(on the controller)" in out and "still serves the release it served before" in out
    assert marker() == before and extra_file.exists()
