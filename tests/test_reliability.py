"""Reliability and security on 2 local hosts: bad input refused before any change, faults under load,
hostile clients, secrets, least privilege. Figures go to build/reliability-results.json.

Load: wrk from the fleet's controller namespace against rel1's nginx (port 80), bounded in time;
failed = socket errors + non-2xx responses, as wrk counts them.
"""

import hashlib
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from conftest import ROOT, VENV_BIN, parse_wrk, venv_env

sys.path.insert(0, str(ROOT / "tools"))
import testhosts  # noqa: E402

pytestmark = pytest.mark.hosts
# The module runs against each app server (flask_app_server) on its own fleet: waitress, every test, in
# `make test`; granian (marked extended) the hostile-client, secret and privilege tests (what depends on the
# server). Set by use_server() before the fleet starts.
SERVERS = {"waitress": ("rel", "10.231.6"), "granian": ("grel", "10.231.18")}
GRANIAN_TESTS = {
    "test_kill_9_of_a_backend_is_invisible_and_repaired", "test_body_over_the_limit_gets_413_from_nginx",
    "test_slow_loris_connections_are_cut_and_normal_clients_served",
    "test_spoofed_x_forwarded_for_does_not_reach_the_app", "test_request_smuggling_probes_are_rejected",
    "test_pipelined_requests_are_all_answered", "test_canary_secret_reaches_the_app_and_nowhere_else",
    "test_processes_run_unprivileged_with_read_only_code", "test_backends_are_reachable_only_on_loopback"}
SERVER = FLEET = NET = HOST = OTHER = ADDR = CTL_NS = BUILD = INVENTORY = RESULTS_FILE = None


def use_server(server):
    global SERVER, FLEET, NET, HOST, OTHER, ADDR, CTL_NS, BUILD, INVENTORY, RESULTS_FILE
    SERVER, (FLEET, NET) = server, SERVERS[server]
    HOST, OTHER = f"{FLEET}1", f"{FLEET}2"
    ADDR, CTL_NS = f"{NET}.11", f"ffc-{FLEET}"
    suffix = "" if server == "waitress" else f"-{server}"
    BUILD, RESULTS_FILE = ROOT / "build" / f"reliability{suffix}", ROOT / f"build/reliability-results{suffix}.json"
    INVENTORY = ROOT / f"build/hosts/{FLEET}/hosts.yml"
    RESULTS.clear()


PROBE = ROOT / "tests/reliability/probe.py"
RESULTS = {}
# A secret with characters that need quoting; only its marker is searched for.
CANARY_MARK = f"cnry{secrets.token_hex(8)}"
CANARY = f'{CANARY_MARK} "$HOME`\\x\''
BASE = {"nginx_linux_apt_update_cache": False, "flask_app_linux_apt_update_cache": False}


# ----------------------------------------------------------------------------------------- helpers

def playbook(name, *args, limit="", env=None, **extra):
    limit = HOST if limit == "" else limit
    extra_file = BUILD / f"extra-{secrets.token_hex(4)}.json"
    extra_file.write_text(json.dumps({**BASE, "flask_app_server": SERVER, **extra}))
    run = subprocess.run([str(VENV_BIN / "ansible-playbook"), name, "-i", str(INVENTORY), *(["-l", limit] * bool(limit)),
                          "-e", f"@{BUILD / 'secrets.yml'}", "-e", f"@{extra_file}",
                          "--vault-password-file", str(BUILD / "vault-pass"), *args],
                         capture_output=True, text=True, env={**venv_env(), **(env or {})}, cwd=ROOT,
                         timeout=900, check=False)
    extra_file.unlink()
    return run.returncode, run.stdout + run.stderr


def recap(out, host=None):
    host = host or HOST
    m = re.search(rf"^{host}\s+: ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", out, re.M)
    assert m, out[-2000:]
    return dict(zip(("ok", "changed", "unreachable", "failed"), map(int, m.groups())))


def init_pid(host):
    return testhosts.container_init(testhosts.Fleet(FLEET).state()["hosts"][host]["nspawn_pid"])


def on(host, *cmd, check=True):
    """Run a command inside the host (all its namespaces)."""
    res = subprocess.run(["nsenter", "-t", str(init_pid(host)), "-a", *cmd], capture_output=True, text=True,
                         timeout=120, check=False)
    assert not check or res.returncode == 0, res.stderr
    return res


def from_ns(ns, *cmd):
    return subprocess.run(["ip", "netns", "exec", ns, *cmd], capture_output=True, text=True, timeout=180,
                          check=False)


def health(port, host=None):
    host = host or HOST
    out = from_ns(f"ffh-{host}", "curl", "-s", "--max-time", "2", f"http://127.0.0.1:{port}/healthz").stdout
    return json.loads(out) if out.startswith("{") else None


def main_pid(service, host=None):
    host = host or HOST
    return int(on(host, "systemctl", "show", "-P", "MainPID", service).stdout.strip())


def nginx_state(host=None):
    host = host or HOST
    pid = int(on(host, "cat", "/run/nginx.pid").stdout.strip())
    rev = from_ns(f"ffh-{host}", "curl", "-s", "http://127.0.0.1:8079/config-rev").stdout.strip()
    conf = hashlib.sha256(on(host, "cat", "/etc/nginx/nginx.conf").stdout.encode()).hexdigest()
    return {"master": pid, "rev": rev, "conf": conf}


def host_snapshot(host=None):
    host = host or HOST
    """What a deploy could change: backend processes, nginx, and every file it writes."""
    files = on(host, "sh", "-c", "find /opt/sampleapp /etc/nginx /etc/systemd/system /var/log/sampleapp "
                                 "-printf '%p %s %T@ %m %u\\n' | sort").stdout
    return {"backends": {p: main_pid(f"sampleapp-{p}", host) for p in (8001, 8002)}, "nginx": nginx_state(host),
            "files": hashlib.sha256(files.encode()).hexdigest()}


def wrk(seconds, conns=50, script=None, url=None):
    url = url or f"http://{ADDR}/test"
    cmd = ["wrk", "-t2", f"-c{conns}", f"-d{seconds}s", "--timeout", "10s"]
    cmd += ["-s", str(ROOT / script)] if script else []
    return subprocess.Popen(["ip", "netns", "exec", CTL_NS, *cmd, url], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def wrk_result(proc):
    return parse_wrk(proc.communicate(timeout=400)[0])


def record(name, **figures):
    RESULTS[name] = {k: v for k, v in figures.items() if k != "raw"}
    RESULTS_FILE.write_text(json.dumps(RESULTS, indent=2) + "\n")
    print(f"{name}: {RESULTS[name]}")


def wait(pred, timeout, interval=0.2):
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if pred():
            return time.monotonic() - t0
        time.sleep(interval)
    return None


@pytest.fixture(scope="module", autouse=True, params=["waitress", pytest.param("granian", marks=pytest.mark.extended)])
def fleet(request):
    if os.geteuid() != 0:
        pytest.skip("test hosts need root")
    use_server(request.param)
    tool = [sys.executable, str(ROOT / "tools/testhosts.py")]
    subprocess.run([*tool, "down", f"--fleet={FLEET}"], capture_output=True, check=False)
    shutil.rmtree(BUILD, ignore_errors=True)
    BUILD.mkdir(parents=True)
    up = subprocess.run([*tool, "up", f"--fleet={FLEET}", "--count=2", f"--net={NET}"], capture_output=True,
                        text=True, check=False)
    assert up.returncode == 0, up.stderr
    subprocess.run(["ip", "netns", "exec", CTL_NS, "sysctl", "-qw", "net.ipv4.tcp_tw_reuse=1"], check=True)
    # The canary secret, from an encrypted vars file, as an app setting.
    (BUILD / "vault-pass").write_text(secrets.token_hex(16) + "\n")
    (BUILD / "secrets.yml").write_text(json.dumps({"flask_app_environment": {"APP_SECRET_KEY": CANARY}}))
    enc = subprocess.run([str(VENV_BIN / "ansible-vault"), "encrypt", str(BUILD / "secrets.yml"),
                          "--vault-password-file", str(BUILD / "vault-pass")], capture_output=True, text=True,
                         env=venv_env(), check=False)
    assert enc.returncode == 0, enc.stderr
    assert CANARY_MARK not in (BUILD / "secrets.yml").read_text()
    rc, out = playbook("deploy.yml", "-vvv", limit="all")
    (BUILD / "deploy-vvv.log").write_text(out)
    assert rc == 0, out[-3000:]
    yield
    subprocess.run([*tool, "down", f"--fleet={FLEET}"], capture_output=True, check=False)


@pytest.fixture(autouse=True)
def scenario(request):
    if SERVER != "waitress" and request.node.originalname not in GRANIAN_TESTS:
        pytest.skip(f"run with waitress only (does not depend on the app server; the {SERVER} form keeps what does)")


# ------------------------------------------------------------------------------------ 1. bad input

BAD_INPUTS = [
    # (case, extra vars, what the message must name)
    ("port not a number", {"flask_app_backend_ports": ["abc"]}, ["flask_app_backend_ports"]),
    ("port 0", {"flask_app_backend_ports": [0, 8002]}, ["flask_app_backend_ports", "1024..65535"]),
    ("port 70000", {"flask_app_backend_ports": [8001, 70000]}, ["flask_app_backend_ports", "1024..65535"]),
    ("duplicate ports", {"flask_app_backend_ports": [8001, 8001]}, ["flask_app_backend_ports", "unique"]),
    ("backend port = nginx listen port", {"nginx_listen_port": 8002}, ["nginx_listen_port", "backend ports"]),
    ("backend port = nginx status port", {"nginx_status_port": 8001}, ["nginx_status_port", "backend ports"]),
    ("no backends", {"flask_app_backend_count": 0}, ["flask_app_backend_count", ">= 1"]),
    ("negative waitress timeout", {"flask_app_channel_timeout": -5}, ["flask_app_channel_timeout", ">= 1"]),
    ("negative nginx timeout", {"nginx_proxy_read_timeout": "-5s"}, ["nginx_proxy_read_timeout", "nginx times"]),
    ("channel_timeout <= upstream keepalive", {"flask_app_channel_timeout": 60},
     ["nginx_upstream_keepalive_timeout", "below the backends' idle timeout"]),
    ("body limit above the backends'", {"nginx_client_max_body_size": "100m"},
     ["nginx_client_max_body_size", "must not exceed"]),
    ("connect timeout >= fail_timeout", {"nginx_proxy_connect_timeout": "10s"},
     ["nginx_proxy_connect_timeout", "below"]),
    ("more retries than backends", {"nginx_proxy_next_upstream_tries": 5}, ["nginx_proxy_next_upstream_tries"]),
    ("retrying non-idempotent requests", {"nginx_proxy_next_upstream": "error timeout non_idempotent"},
     ["nginx_proxy_next_upstream", "non_idempotent"]),
    ("unknown choice", {"flask_app_python_strategy": "msi"}, ["flask_app_python_strategy", "one of"]),
    ("name with shell characters", {"flask_app_name": "app; rm -rf /"}, ["flask_app_name", "must match"]),
    ("name escaping its directory", {"flask_app_name": "../etc"}, ["flask_app_name", "must match"]),
    ("version not pinned", {"flask_app_version": "latest"}, ["flask_app_version", "pinned"]),
    ("no worker threads", {"flask_app_threads": 0}, ["flask_app_threads", ">= 1"]),
    ("connection limit below threads", {"flask_app_connection_limit": 4},
     ["flask_app_connection_limit", ">= flask_app_threads"]),
    ("upstream idle pool the backends cannot hold", {"nginx_upstream_keepalive": 64, "nginx_worker_processes": 2},
     ["nginx_upstream_keepalive (64) x worker processes (2)", "nginx_upstream_connection_limit (64)"]),
    ("stop budget below waitress shutdown", {"flask_app_stop_timeout_ms": 2000}, ["flask_app_stop_timeout_ms"]),
    ("environment key not an identifier", {"flask_app_environment": {"BAD KEY": "x"}},
     ["flask_app_environment keys", "identifiers"]),
    ("wsgi entry point without attribute", {"flask_app_wsgi": "sampleapp"}, ["flask_app_wsgi", "module:attribute"]),
    ("keep no releases", {"flask_app_keep_releases": 0}, ["flask_app_keep_releases"]),
    ("backends on a public address", {"nginx_upstream_host": "0.0.0.0"}, ["nginx_upstream_host", "loopback"]),
    ("TLS on without a certificate", {"nginx_tls_enabled": True}, ["nginx_tls_enabled", "nginx_tls_certificate"]),
    ("server_name injecting directives", {"nginx_server_name": "x; include /etc/passwd"}, ["nginx_server_name"]),
    ("port as a mistyped string", {"nginx_listen_port": "eighty"}, ["nginx_listen_port"]),
    # Second pass (classes: paths, URLs, numeric bounds, types before rules; more in tests/test_bad_input.py).
    ("health path without its slash", {"flask_app_health_path": "healthz"}, ["flask_app_health_path", "/"]),
    ("relative install root", {"flask_app_root": "opt/sampleapp"}, ["flask_app_root", "absolute path"]),
    ("relative log directory", {"flask_app_log_dir": "log"}, ["flask_app_log_dir", "absolute path"]),
    ("negative worker_connections", {"nginx_worker_connections": "-5"}, ["nginx_worker_connections", ">= 16"]),
    ("negative upstream max_fails", {"nginx_upstream_max_fails": -1}, ["nginx_upstream_max_fails", ">= 0"]),
    ("environment as text", {"flask_app_environment": "FOO=bar"}, ["flask_app_environment", "mapping"]),
    ("backend ports as text", {"flask_app_backend_ports": "8001,8002"}, ["flask_app_backend_ports", "a list"]),
    ("URL without a scheme", {"flask_app_python_url": "mirror/python.nupkg"}, ["flask_app_python_url", "scheme"]),
]


def test_bad_inputs_are_refused_before_any_change():
    before = host_snapshot()
    refused, report = 0, []
    # Four at a time: each stops at validation, before the deploy lock and any change.
    with ThreadPoolExecutor(max_workers=4) as pool:
        runs = list(pool.map(lambda case: playbook("deploy.yml", **case[1]), BAD_INPUTS))
    for (case, extra, names), (rc, out) in zip(BAD_INPUTS, runs):
        stats = recap(out)
        fatal = "\n".join(line for line in out.splitlines() if line.startswith("fatal:"))
        ok = rc != 0 and stats["changed"] == 0 and stats["failed"] == 1 and all(n in fatal for n in names)
        refused += ok
        report.append(f"{'ok ' if ok else 'BAD'} {case}: rc={rc} changed={stats['changed']} {fatal[:300]}")
    after = host_snapshot()
    record("bad inputs", tried=len(BAD_INPUTS), refused=refused, host_unchanged=before == after)
    assert refused == len(BAD_INPUTS), "\n".join(report)
    assert after == before


def test_a_failure_on_the_controller_says_the_host_was_not_changed():
    """A version the source does not build to passes validation and fails in the wheelhouse build on the
    controller: the message carries the build's own error and says the host still serves its release."""
    before = host_snapshot()
    rc, out = playbook("deploy.yml", flask_app_version="9.9.9")
    stats = recap(out)
    final = [line for line in out.splitlines() if line.startswith("fatal:")][-1]
    assert rc != 0 and stats["changed"] == 0, out[-3000:]
    assert "builds sampleapp 1.0.0" in final and "9.9.9" in final and "non-zero return code" not in final, final
    assert "was not changed" in final and "still serves the release it served before" in final, final
    assert host_snapshot() == before


@pytest.mark.parametrize("missing", ["flask_app_python_checksum", "nginx_windows_checksum",
                                     "nssm_service_nssm_checksum"])
def test_windows_downloads_need_a_checksum(missing):
    """The Windows validate steps, with Windows facts, on the controller: a download without its SHA-256
    is refused (it never reaches a host)."""
    rc, out = playbook(str(ROOT / "tests/reliability/validate_windows.yml"), limit=None,
                       validate_missing=missing)
    assert rc != 0 and missing in out, out[-2000:]
    rc, out = playbook(str(ROOT / "tests/reliability/validate_windows.yml"), limit=None,
                       validate_missing="")
    assert rc == 0, out[-2000:]


# --------------------------------------------------------------------------------- 2. faults under load

def client_failures():
    """Client-visible failures in nginx's access log, with the backend that last handled each: errors, or
    a 200 cut short (its backend died after sending the response header; no proxy can retry that).
    499 = wrk hanging up at the end of its run."""
    log = on(HOST, "cat", "/var/log/nginx/access.log").stdout.splitlines()
    failed = [line for line in log if not re.search(r'" (200 11|499 \d+) ', line)]
    return log, [re.search(r"upstream=(\S+)", line).group(1).split(", ")[-1] for line in failed]


def test_kill_9_of_a_backend_is_invisible_and_repaired():
    victim = main_pid("sampleapp-8001")
    on(HOST, "truncate", "-s0", "/var/log/nginx/access.log")
    load = wrk(20)
    time.sleep(4)
    on(HOST, "kill", "-9", str(victim))
    back = wait(lambda: (health(8001) or {}).get("pid") not in (None, victim), 30)
    stats = wrk_result(load)
    _, served_by = client_failures()
    record("kill -9 backend", requests=stats["requests"], failed=stats["failed"],
           failed_on_healthy=served_by.count("127.0.0.1:8002"), recovered_s=None if back is None else round(back, 2))
    assert back is not None and back <= 15, f"backend not back within 15 s ({back})"
    # Requests the killed backend had not answered yet were retried on the other one. A response whose
    # header it had already sent cannot be retried: those (at most its 8 threads' worth) are the only
    # failures allowed, and every failure the client saw must be one of them.
    assert stats["failed"] == len(served_by), stats["raw"]
    assert set(served_by) <= {"127.0.0.1:8001"} and len(served_by) <= 8, served_by


def test_crash_looping_backend_is_throttled_and_routed_around():
    dropin = "/etc/systemd/system/sampleapp-8002.service.d"
    crash = ("import os, threading; threading.Timer(2, os._exit, [1]).start(); "
             "from waitress import serve; from sampleapp import create_app; "
             "serve(create_app(), listen='127.0.0.1:8002', threads=4)")
    on(HOST, "mkdir", "-p", dropin)
    conf = f"[Service]\nExecStart=\nExecStart=/opt/sampleapp/current/venv/bin/python -c \"{crash}\"\n"
    subprocess.run(["nsenter", "-t", str(init_pid(HOST)), "-a", "sh", "-c", f"cat > {dropin}/crash.conf"],
                   input=conf, text=True, check=True)
    try:
        on(HOST, "systemctl", "daemon-reload")
        on(HOST, "systemctl", "restart", "sampleapp-8002")
        restarts0 = int(on(HOST, "systemctl", "show", "-P", "NRestarts", "sampleapp-8002").stdout)
        on(HOST, "truncate", "-s0", "/var/log/nginx/access.log")
        stats = wrk_result(wrk(30))
        restarts = int(on(HOST, "systemctl", "show", "-P", "NRestarts", "sampleapp-8002").stdout) - restarts0
        log, served_by = client_failures()
        marked = sum("upstream=127.0.0.1:8002, 127.0.0.1:8001" in line for line in log)
        record("crash-looping backend", requests=stats["requests"], failed=stats["failed"],
               failed_on_healthy=served_by.count("127.0.0.1:8001"), restarts_in_30s=restarts,
               retried_to_healthy=marked)
        # Crashes every ~2 s plus the restart delay: restarted, but throttled (not a tight loop).
        assert 3 <= restarts <= 12, restarts
        assert marked > 0  # nginx retried the crashing backend's requests on the healthy one
        # Every failure the client saw is in nginx's log, and each was in flight on the crashing backend.
        assert stats["failed"] == len(served_by), stats["raw"]
        assert set(served_by) <= {"127.0.0.1:8002"}, served_by
        assert len(served_by) <= restarts * 4  # at most its in-flight requests (4 threads) per crash
    finally:
        on(HOST, "rm", "-rf", dropin)
        on(HOST, "systemctl", "daemon-reload")
        on(HOST, "systemctl", "restart", "sampleapp-8002")
    assert wait(lambda: health(8002) is not None, 15) is not None


def test_100_reloads_under_load():
    workers = lambda: int(on(HOST, "sh", "-c", "pgrep -c -f 'nginx: worker process' || true").stdout)  # noqa: E731
    normal = workers()
    # One connection per request (what the rollout's load balancer does), plus keepalive clients that
    # never retry: a reload closes idle keepalive connections, and a request the client had just sent on
    # one is reset (HTTP lets clients retry that; wrk does not). Their count is measured, not asserted.
    load = wrk(60, conns=40, script="tests/reliability/close.lua")
    keepalive = wrk(60, conns=10)
    time.sleep(2)
    t0 = time.monotonic()
    for _ in range(100):
        on(HOST, "nginx", "-s", "reload")
        time.sleep(0.25)
    reload_s = time.monotonic() - t0
    load.send_signal(2)
    keepalive.send_signal(2)
    stats, ka = wrk_result(load), wrk_result(keepalive)
    settled = wait(lambda: workers() == normal, 60)
    record("100 reloads", requests=stats["requests"], failed=stats["failed"], keepalive_requests=ka["requests"],
           keepalive_reset=ka["failed"], reload_seconds=round(reload_s, 1),
           workers_settled_s=None if settled is None else round(settled, 1))
    assert settled is not None, "old nginx workers did not exit"
    assert stats["failed"] == 0, stats["raw"]


def test_broken_nginx_template_never_goes_live():
    # A copy of the collection with the broken template, run as the collection's own deploy playbook.
    copy = BUILD / "collections/ansible_collections/flaskfleet/webapp"
    shutil.rmtree(copy, ignore_errors=True)
    copy.mkdir(parents=True)
    for part in ("meta", "plugins", "roles", "playbooks"):
        shutil.copytree(ROOT / part, copy / part, symlinks=True)
    shutil.copy(ROOT / "galaxy.yml", copy)
    tpl = copy / "roles/nginx/templates/nginx.conf.j2"
    tpl.write_text(tpl.read_text().replace("    server_tokens off;", "    server_tokens off;\n    no_such_directive on;"))
    before = nginx_state()
    load = wrk(40, script="tests/rollout/mixed.lua")
    time.sleep(2)
    rc, out = playbook("flaskfleet.webapp.deploy", env={"ANSIBLE_COLLECTIONS_PATH": str(BUILD / "collections")},
                       flask_app_source_dir=str(ROOT / "sample_app"),
                       flask_app_wheelhouse_dir=str(ROOT / "build/wheelhouse"))
    stats = wrk_result(load)
    after = nginx_state()
    record("broken nginx template", requests=stats["requests"], failed=stats["failed"], deploy_rc=rc)
    assert rc != 0 and "no_such_directive" in out, out[-3000:]
    assert after == before  # same master, same served revision, same file
    assert stats["failed"] == 0, stats["raw"]


def test_host_reboot_comes_back_by_itself_and_reconverges_unchanged():
    t0 = time.monotonic()
    subprocess.run([sys.executable, str(ROOT / "tools/testhosts.py"), "reboot", f"--fleet={FLEET}",
                    f"--host={HOST}"], check=True, capture_output=True)
    serving = wait(lambda: from_ns(CTL_NS, "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "2",
                                   f"http://{ADDR}/test").stdout == "200"
                   and all(health(p) for p in (8001, 8002)), 60)
    recovered = None if serving is None else round(time.monotonic() - t0, 1)
    rc, out = playbook("deploy.yml")
    record("host reboot", recovered_s=recovered, reconverge_changed=recap(out)["changed"])
    assert serving is not None, "the site did not come back after the reboot"
    assert rc == 0 and recap(out)["changed"] == 0, out[-3000:]


# ------------------------------------------------------------------------------------ 3. hostile clients

def test_body_over_the_limit_gets_413_from_nginx():
    res = from_ns(CTL_NS, "sh", "-c", f"head -c 11000000 /dev/zero | curl -s -i --max-time 20 -X POST "
                                      f"--data-binary @- http://{ADDR}/echo")
    assert res.stdout.startswith("HTTP/1.1 413"), res.stdout[:300]
    assert "<center>nginx</center>" in res.stdout  # nginx answered, the backend never saw it
    ok = from_ns(CTL_NS, "sh", "-c", f"head -c 1000000 /dev/zero | curl -s --max-time 20 --data-binary @- "
                                     f"http://{ADDR}/echo")
    assert json.loads(ok.stdout) == {"received": 1000000}
    # The backend's own limit (flask_app_max_request_body_size, 10 MiB), for what reaches it without nginx.
    direct = from_ns(f"ffh-{HOST}", "sh", "-c", "head -c 11000000 /dev/zero | curl -s -o /dev/null -w '%{http_code}' "
                                                "--max-time 20 --data-binary @- http://127.0.0.1:8001/echo")
    assert direct.stdout == "413", direct.stdout


def test_slow_loris_connections_are_cut_and_normal_clients_served():
    on(HOST, "truncate", "-s0", "/var/log/nginx/access.log")
    load = wrk(15)
    slow = from_ns(CTL_NS, sys.executable, str(PROBE), "slowloris", ADDR, "80", "200", "2")
    stats = wrk_result(load)
    open_s = json.loads(slow.stdout)["open_seconds"]
    record("slow-loris x200", requests=stats["requests"], failed=stats["failed"], max_open_s=max(open_s))
    assert all(0 <= s <= 10 + 5 for s in open_s), open_s  # client_header_timeout 10s + 5 s
    # wrk's failures as nginx logged them (not the slow connections' 408s, nor wrk hanging up at its end).
    log = on(HOST, "cat", "/var/log/nginx/access.log").stdout.splitlines()
    failures = [line for line in log if not re.search(r'" (200|408|499) ', line)]
    assert stats["failed"] == 0, stats["raw"] + "\n".join(failures[-20:])


def test_spoofed_x_forwarded_for_does_not_reach_the_app():
    out = from_ns(CTL_NS, "curl", "-s", "-H", "X-Forwarded-For: 6.6.6.6", f"http://{ADDR}/healthz").stdout
    assert json.loads(out)["client"] == f"{NET}.1"


@pytest.mark.parametrize("name,request_text", [
    ("CL+TE", "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n"
              "0\r\n\r\nGET /test HTTP/1.1\r\nHost: x\r\n\r\n"),
    ("double CL", "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nContent-Length: 40\r\n\r\n"
                  "abcdGET /test HTTP/1.1\r\nHost: x\r\n\r\n"),
    ("double TE", "POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n"
                  "0\r\n\r\nGET /test HTTP/1.1\r\nHost: x\r\n\r\n"),
    ("obfuscated TE", "POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: xchunked\r\n\r\n"
                      "0\r\n\r\nGET /test HTTP/1.1\r\nHost: x\r\n\r\n"),
])
def test_request_smuggling_probes_are_rejected(name, request_text):
    res = subprocess.run(["ip", "netns", "exec", CTL_NS, sys.executable, str(PROBE), "raw", ADDR, "80"],
                         input=request_text, capture_output=True, text=True, timeout=30, check=True)
    statuses = json.loads(res.stdout)["statuses"]
    # One error answer and the connection closed: the smuggled GET is never served.
    assert statuses in ([], [400], [501]), statuses


def test_pipelined_requests_are_all_answered():
    """The probe itself can see a second response (so the smuggling checks above can fail)."""
    res = subprocess.run(["ip", "netns", "exec", CTL_NS, sys.executable, str(PROBE), "raw", ADDR, "80"],
                         input="GET /test HTTP/1.1\r\nHost: x\r\n\r\nGET /test HTTP/1.1\r\nHost: x\r\n"
                               "Connection: close\r\n\r\n", capture_output=True, text=True, timeout=30, check=True)
    assert json.loads(res.stdout)["statuses"] == [200, 200]


# ------------------------------------------------------------------------------------ 4. secrets

def test_canary_secret_reaches_the_app_and_nowhere_else():
    log = (BUILD / "deploy-vvv.log").read_text()
    assert "<ESTABLISH SSH CONNECTION" in log or "SSH: EXEC" in log  # really -vvv
    assert CANARY_MARK not in log
    for host in (HOST, OTHER):
        # Exactly the value the service was given (quoting survived), in the backend's environment.
        env = on(host, "cat", f"/proc/{main_pid('sampleapp-8001', host)}/environ").stdout.split("\0")
        assert f"APP_SECRET_KEY={CANARY}" in env
        found = on(host, "grep", "-rlF", "--exclude-dir=proc", "--exclude-dir=sys", "--exclude-dir=dev",
                   CANARY_MARK, "/etc", "/opt", "/var", "/run", "/tmp", "/root", check=False).stdout.split()
        assert sorted(found) == [f"/etc/systemd/system/sampleapp-{p}.env" for p in (8001, 8002)], found
        modes = on(host, "stat", "-c", "%a %U", *found).stdout.split("\n")[:-1]
        assert modes == ["600 root", "600 root"], modes


# ------------------------------------------------------------------------------------ 5. least privilege

def test_processes_run_unprivileged_with_read_only_code():
    for port in (8001, 8002):
        uid = on(HOST, "stat", "-c", "%U", f"/proc/{main_pid(f'sampleapp-{port}')}").stdout.strip()
        assert uid == "sampleapp"
    workers = on(HOST, "ps", "-o", "user=", "-C", "nginx").stdout.split()
    assert workers.count("root") == 1 and set(workers) == {"root", "www-data"}  # master root, workers not
    as_app = ["runuser", "-u", "sampleapp", "--"]
    for path in ("/opt/sampleapp/current/x", "/opt/sampleapp/current/venv/bin/x", "/opt/sampleapp/x"):
        assert on(HOST, *as_app, "touch", path, check=False).returncode != 0, f"{path} is writable by the app"
    assert on(HOST, *as_app, "touch", "/var/log/sampleapp/write-test", check=False).returncode == 0
    on(HOST, "rm", "-f", "/var/log/sampleapp/write-test")


def test_backends_are_reachable_only_on_loopback():
    for port in (8001, 8002):
        assert from_ns(f"ffh-{OTHER}", "nc", "-z", "-w2", ADDR, str(port)).returncode != 0
        assert from_ns(CTL_NS, "nc", "-z", "-w2", ADDR, str(port)).returncode != 0
        assert from_ns(f"ffh-{HOST}", "nc", "-z", "-w2", "127.0.0.1", str(port)).returncode == 0
    assert from_ns(f"ffh-{OTHER}", "nc", "-z", "-w2", ADDR, "80").returncode == 0  # the public port is open
    assert from_ns(f"ffh-{OTHER}", "nc", "-z", "-w2", ADDR, "8079").returncode != 0  # status: loopback only
