"""Zero-downtime releases on 3 local hosts behind a controller-side load balancer, under load.

A wrk load (60 connections, 70% GET / 30% POST, bounded) runs through the whole of each rollout;
failed = socket errors + non-2xx responses, as wrk counts them. Results go to build/rollout-results.json.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from conftest import ROOT, VENV_BIN, parse_wrk, venv_env

pytestmark = pytest.mark.hosts
FLEET, NET, HOSTS = "roll", "10.231.5", ["roll1", "roll2", "roll3"]
CTL_NS = f"ffc-{FLEET}"
LB = f"{NET}.1:8080"
BUILD = ROOT / "build" / "rollout"
RESULTS = {}


def hosts_tool(*args):
    return subprocess.run([sys.executable, str(ROOT / "tools/testhosts.py"), *args, f"--fleet={FLEET}"],
                          capture_output=True, text=True, timeout=600, check=False)


def release(version, broken=False):
    """A copy of sample_app that builds to `version` (crashing at start if broken)."""
    src = BUILD / f"app-{version}"
    if not src.exists():
        shutil.copytree(ROOT / "sample_app", src, ignore=shutil.ignore_patterns("*.egg-info", "__pycache__", "build"))
        if broken:
            subprocess.run([sys.executable, str(ROOT / "tests/rollout/broken_app.py"), str(src), version], check=True)
        else:
            py = src / "pyproject.toml"
            py.write_text(py.read_text().replace('version = "1.0.0"', f'version = "{version}"'))
    return src


def playbook(name, load=True, **extra):
    """Run a playbook against the fleet, with the wrk load around it. Returns (rc, output, seconds, load)."""
    extra = {
        "nginx_linux_apt_update_cache": False, "flask_app_linux_apt_update_cache": False,
        "deploy_serial": 1, "lb_dir": str(BUILD / "lb"), "lb_listen": LB,
        "lb_hosts": "{{ groups['app_servers'] }}",
        "deploy_lb_drain_tasks": str(ROOT / "tests/rollout/lb_drain.yml"),
        "deploy_lb_undrain_tasks": str(ROOT / "tests/rollout/lb_undrain.yml"),
        **extra,
    }
    extra_file = BUILD / "extra.json"
    extra_file.write_text(json.dumps(extra))
    wrk = None
    if load:
        wrk = subprocess.Popen(
            ["ip", "netns", "exec", CTL_NS, "wrk", "-t2", "-c60", "-d300s", "--timeout", "10s",
             "-s", str(ROOT / "tests/rollout/mixed.lua"), f"http://{LB}/"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        time.sleep(2)  # the load is running before the rollout starts
    t0 = time.monotonic()
    run = subprocess.run([str(VENV_BIN / "ansible-playbook"), name, "-i", str(ROOT / f"build/hosts/{FLEET}/hosts.yml"),
                          "-e", f"@{extra_file}"], capture_output=True, text=True, env=venv_env(), cwd=ROOT,
                         timeout=1200, check=False)
    seconds = time.monotonic() - t0
    stats = None
    if wrk:
        time.sleep(2)  # and keeps running after it
        wrk.send_signal(signal.SIGINT)
        stats = parse_wrk(wrk.communicate(timeout=30)[0])
    return run.returncode, run.stdout + run.stderr, seconds, stats


def backend(host, port):
    """What a backend reports, asked inside its host's network namespace."""
    out = subprocess.run(["ip", "netns", "exec", f"ffh-{host}", "curl", "-s", "--max-time", "5",
                          f"http://127.0.0.1:{port}/healthz"], capture_output=True, text=True, check=False).stdout
    return json.loads(out) if out.startswith("{") else None


def fleet_state():
    return {h: {p: backend(h, p) for p in (8001, 8002)} for h in HOSTS}


def versions(state):
    return {h: sorted({(b or {}).get("version") for b in ports.values()}, key=str) for h, ports in state.items()}


def nginx_master(host):
    """(pid, served config revision) of the host's nginx master, found by its network namespace."""
    host_ns = os.stat(f"/run/netns/ffh-{host}").st_ino
    masters = []
    for pid in os.listdir("/proc"):
        try:
            if (pid.isdigit() and open(f"/proc/{pid}/comm").read().strip() == "nginx"
                    and os.stat(f"/proc/{pid}/ns/net").st_ino == host_ns
                    and "master process" in open(f"/proc/{pid}/cmdline").read()):
                masters.append(int(pid))
        except OSError:
            continue
    rev = subprocess.run(["ip", "netns", "exec", f"ffh-{host}", "curl", "-s", "http://127.0.0.1:8079/config-rev"],
                         capture_output=True, text=True, check=False).stdout.strip()
    assert len(masters) == 1, masters
    return masters[0], rev


def record(name, seconds, stats, rc):
    RESULTS[name] = {"rc": rc, "seconds": round(seconds, 1),
                     **({k: v for k, v in stats.items() if k != "raw"} if stats else {})}
    (ROOT / "build").mkdir(exist_ok=True)
    (ROOT / "build/rollout-results.json").write_text(json.dumps(RESULTS, indent=2) + "\n")
    if stats:
        print(f"{name}: {stats['failed']} failed / {stats['requests']} requests, rollout {seconds:.1f} s")


def assert_no_failures(name, stats):
    assert stats["failed"] == 0, f"{name}: {stats['failed']} failed requests\n{stats['raw']}"


@pytest.fixture(scope="module", autouse=True)
def fleet():
    if os.geteuid() != 0:
        pytest.skip("test hosts need root")
    hosts_tool("down")
    shutil.rmtree(BUILD, ignore_errors=True)
    (BUILD / "lb").mkdir(parents=True)
    up = hosts_tool("up", "--count=3", f"--net={NET}")
    assert up.returncode == 0, up.stderr
    # One connection per request from the load generator: reuse TIME_WAIT ports in its namespace.
    subprocess.run(["ip", "netns", "exec", CTL_NS, "sysctl", "-qw", "net.ipv4.tcp_tw_reuse=1"], check=True)
    # The first deploy, before the load balancer exists (so without its hooks).
    rc, out, _, _ = playbook("deploy.yml", load=False, flask_app_source_dir=str(release("1.0.0")),
                             flask_app_version="1.0.0", deploy_serial="100%", deploy_lb_drain_tasks="",
                             deploy_lb_undrain_tasks="")
    assert rc == 0, out[-3000:]
    rc, out, _, _ = playbook("tests/rollout/lb_start.yml", load=False)
    assert rc == 0, out[-3000:]
    yield
    if (BUILD / "lb/lb.pid").exists():
        subprocess.run(["nginx", "-s", "quit", "-c", str(BUILD / "lb/lb.conf")], check=False)
    hosts_tool("down")


def test_rollout_of_a_new_version_drops_nothing():
    before = fleet_state()
    assert set(sum(versions(before).values(), [])) == {"1.0.0"}
    # A ramp: one host first, then the other two (one host always stays in the load balancer).
    rc, out, seconds, stats = playbook("deploy.yml", flask_app_source_dir=str(release("1.1.0")),
                                       flask_app_version="1.1.0", deploy_serial=[1, 2])
    record("deploy 1.1.0", seconds, stats, rc)
    assert rc == 0, out[-3000:]
    after = fleet_state()
    assert versions(after) == {h: ["1.1.0"] for h in HOSTS}
    assert_no_failures("deploy 1.1.0", stats)
    # Every backend was restarted (new PIDs): the new release is really running.
    assert all(after[h][p]["pid"] != before[h][p]["pid"] for h in HOSTS for p in (8001, 8002))


def test_broken_release_halts_after_first_batch_and_rolls_back():
    before = fleet_state()
    rc, out, seconds, stats = playbook("deploy.yml", flask_app_source_dir=str(release("1.2.0", broken=True)),
                                       flask_app_version="1.2.0")
    record("deploy broken 1.2.0", seconds, stats, rc)
    assert rc != 0, "the rollout must fail"
    assert "Rolled back to 1.1.0" in out
    after = fleet_state()
    assert versions(after) == {h: ["1.1.0"] for h in HOSTS}
    # Later batches were never touched: same backend processes, and no 1.2.0 release on them.
    for h in HOSTS[1:]:
        assert {p: after[h][p]["pid"] for p in (8001, 8002)} == {p: before[h][p]["pid"] for p in (8001, 8002)}
        assert not (ROOT / f"build/hosts/{FLEET}/{h}/upper/opt/sampleapp/releases/1.2.0").exists()
    assert (ROOT / f"build/hosts/{FLEET}/{HOSTS[0]}/upper/opt/sampleapp/releases/1.2.0").exists()
    assert_no_failures("deploy broken 1.2.0", stats)


def test_rollback_playbook_returns_everywhere_to_the_previous_release():
    rc, out, seconds, stats = playbook("playbooks/rollback.yml", deploy_serial=[1, 2])
    record("rollback.yml", seconds, stats, rc)
    assert rc == 0, out[-3000:]
    assert versions(fleet_state()) == {h: ["1.0.0"] for h in HOSTS}
    assert_no_failures("rollback.yml", stats)


def test_a_changed_setting_restarts_only_what_it_touches():
    app = {"flask_app_source_dir": str(release("1.0.0")), "flask_app_version": "1.0.0", "deploy_serial": [1, 2]}
    before = fleet_state()
    nginx_before = {h: nginx_master(h) for h in HOSTS}
    # An nginx-only setting: reloads nginx, restarts no backend.
    rc, out, seconds, stats = playbook("deploy.yml", **app, nginx_client_max_body_size="5m")
    record("nginx setting", seconds, stats, rc)
    assert rc == 0, out[-3000:]
    mid = fleet_state()
    assert mid == before
    nginx_mid = {h: nginx_master(h) for h in HOSTS}
    # Reloaded with the new config (new revision served), never restarted (same master process).
    assert all(nginx_mid[h][0] == nginx_before[h][0] and nginx_mid[h][1] != nginx_before[h][1] for h in HOSTS)
    assert_no_failures("nginx setting", stats)
    # A backend setting: every backend restarted, one at a time, under load.
    rc, out, seconds, stats = playbook("deploy.yml", **app, nginx_client_max_body_size="5m", flask_app_threads=6)
    record("backend setting", seconds, stats, rc)
    assert rc == 0, out[-3000:]
    after = fleet_state()
    assert all(after[h][p]["pid"] != mid[h][p]["pid"] for h in HOSTS for p in (8001, 8002))
    assert all(nginx_master(h) == nginx_mid[h] for h in HOSTS)  # same process, same config after the drains
    assert_no_failures("backend setting", stats)
    # One more backend: only the new one starts; the existing ones keep their processes.
    rc, out, seconds, _ = playbook("deploy.yml", load=False, **{**app, "deploy_serial": "100%"},
                                   nginx_client_max_body_size="5m", flask_app_threads=6, flask_app_backend_count=3)
    assert rc == 0, out[-3000:]
    grown = {h: {p: backend(h, p) for p in (8001, 8002, 8003)} for h in HOSTS}
    assert all(grown[h][p]["pid"] == after[h][p]["pid"] for h in HOSTS for p in (8001, 8002))
    assert all(grown[h][8003]["version"] == "1.0.0" for h in HOSTS)
