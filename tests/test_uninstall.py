"""Uninstall and one app per host, on one local test host (fleet `unin`).

The deploy puts sampleapp on the host; then:
- a second app on the same host is refused by the validation, before any change, and uninstalling that other
  app leaves nginx (which serves sampleapp) alone;
- playbooks/uninstall.yml without the confirmation is refused and changes nothing (services still up);
- with it, every backend service, nginx's service and configuration, the releases and the account are gone,
  every port closed, the logs, the nginx package and the Python runtime kept;
- a second run reports changed=0;
- with uninstall_logs and nginx_uninstall_package the logs and the package go too (again: changed=0);
- the deploy then installs everything again from scratch.
Figures (seconds, changed counts) go to build/uninstall-results.json.
"""

import hashlib
import json
import os
import re
import secrets
import subprocess
import sys
import time

import pytest

from conftest import ROOT, VENV_BIN, venv_env

sys.path.insert(0, str(ROOT / "tools"))
import testhosts  # noqa: E402

pytestmark = pytest.mark.hosts
FLEET, NET = "unin", "10.231.11"
HOST = f"{FLEET}1"
INVENTORY = ROOT / f"build/hosts/{FLEET}/hosts.yml"
BUILD = ROOT / "build" / "uninstall"
PORTS = (8001, 8002)
# The hosts have no mirror; two backends whatever the host's vCPUs.
BASE = {"nginx_linux_apt_update_cache": False, "flask_app_linux_apt_update_cache": False,
        "flask_app_backend_count": len(PORTS)}
RESULTS = {}


def playbook(name, **extra):
    extra_file = BUILD / f"extra-{secrets.token_hex(4)}.json"
    extra_file.write_text(json.dumps({**BASE, **extra}))
    t0 = time.monotonic()
    run = subprocess.run([str(VENV_BIN / "ansible-playbook"), name, "-i", str(INVENTORY), "-e", f"@{extra_file}"],
                         capture_output=True, text=True, env=venv_env(), cwd=ROOT, timeout=600, check=False)
    extra_file.unlink()
    out = run.stdout + run.stderr
    return run.returncode, out, round(time.monotonic() - t0, 1)


def recap(out):
    m = re.search(rf"^{HOST}\s+: ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", out, re.M)
    assert m, out[-3000:]
    return dict(zip(("ok", "changed", "unreachable", "failed"), map(int, m.groups())))


def record(step, seconds, out):
    RESULTS[step] = {"seconds": seconds, **recap(out)}
    (ROOT / "build/uninstall-results.json").write_text(json.dumps(RESULTS, indent=2) + "\n")
    print(f"{step}: {RESULTS[step]}")


def on(*cmd, check=True):
    """Run a command inside the host (all its namespaces)."""
    pid = testhosts.container_init(testhosts.Fleet(FLEET).state()["hosts"][HOST]["nspawn_pid"])
    res = subprocess.run(["nsenter", "-t", str(pid), "-a", *cmd], capture_output=True, text=True, timeout=120,
                         check=False)
    assert not check or res.returncode == 0, res.stderr
    return res


def exists(path):
    return on("test", "-e", path, check=False).returncode == 0


def listening():
    """TCP ports something listens on inside the host."""
    return {int(line.split()[3].rsplit(":", 1)[1]) for line in on("ss", "-Hltn").stdout.splitlines()}


def units(app="sampleapp"):
    return on("sh", "-c", f"ls /etc/systemd/system | grep '^{app}-' || true").stdout.split()


def health(port):
    res = subprocess.run(["ip", "netns", "exec", f"ffh-{HOST}", "curl", "-s", "--max-time", "2",
                          f"http://127.0.0.1:{port}/healthz"], capture_output=True, text=True, check=False)
    return json.loads(res.stdout) if res.stdout.startswith("{") else None


def installed(package):
    res = on("dpkg-query", "-W", "-f=${Status}", package, check=False)
    return res.stdout.strip() == "install ok installed"


def snapshot():
    """What an uninstall (or a deploy) could change: processes, units, and every file it touches."""
    # (nginx's access log grows with every request the checks make.)
    files = on("sh", "-c", "find /opt /etc/nginx /etc/systemd/system /var/log/sampleapp "
                           "-printf '%p %s %T@ %m %u\\n' | sort").stdout
    return {"backends": {p: on("systemctl", "show", "-P", "MainPID", f"sampleapp-{p}").stdout.strip() for p in PORTS},
            "nginx": on("cat", "/run/nginx.pid").stdout.strip(),
            "files": hashlib.sha256(files.encode()).hexdigest()}


def assert_deployed():
    for port in PORTS:
        answer = health(port)
        assert answer and answer["port"] == port, (port, answer)
    seen = {health(80)["port"] for _ in range(8)}
    assert seen == set(PORTS), seen


@pytest.fixture(scope="module", autouse=True)
def fleet():
    if os.geteuid() != 0:
        pytest.skip("test hosts need root")
    tool = [sys.executable, str(ROOT / "tools/testhosts.py")]

    def down():
        subprocess.run([*tool, "down", f"--fleet={FLEET}"], capture_output=True, check=False)

    down()
    BUILD.mkdir(parents=True, exist_ok=True)
    up = subprocess.run([*tool, "up", f"--fleet={FLEET}", "--count=1", f"--net={NET}"], capture_output=True,
                        text=True, check=False)
    try:
        assert up.returncode == 0, up.stderr
        rc, out, seconds = playbook("deploy.yml")
        assert rc == 0, out[-3000:]
        record("deploy", seconds, out)
        assert_deployed()
        yield
    finally:
        down()


def test_a_second_app_on_the_host_is_refused_before_any_change():
    before = snapshot()
    # Its own ports: without the check it would deploy and take nginx's site from sampleapp (measured: the
    # deploy passed, nginx.conf routed to otherapp, sampleapp's backends ran on unreachable).
    rc, out, seconds = playbook("deploy.yml", flask_app_name="otherapp", flask_app_backend_port_start=8101)
    record("deploy a second app", seconds, out)
    assert rc != 0 and recap(out)["changed"] == 0
    assert "one app per host" in out and "upstream 'sampleapp'" in out, out[-3000:]
    assert snapshot() == before
    assert units("otherapp") == [] and not exists("/opt/otherapp")
    assert_deployed()

    # Uninstalling the other app removes nothing of sampleapp's: nginx serves sampleapp, so it stays.
    rc, out, seconds = playbook("playbooks/uninstall.yml", flask_app_name="otherapp", uninstall_confirm="otherapp")
    record("uninstall another app", seconds, out)
    assert rc == 0 and recap(out)["changed"] == 0, out[-3000:]
    assert "routes to the upstream sampleapp, not to otherapp" in out
    assert snapshot() == before
    assert_deployed()


def test_uninstall_removes_what_the_deploy_installed_then_nothing_and_a_deploy_starts_over():
    before = snapshot()
    for step, extra in (("uninstall without confirmation", {}),
                        ("uninstall with a wrong confirmation", {"uninstall_confirm": "yes"})):
        rc, out, seconds = playbook("playbooks/uninstall.yml", **extra)
        record(step, seconds, out)
        assert rc != 0 and recap(out)["changed"] == 0
        assert "uninstall refused" in out and "-e uninstall_confirm=sampleapp" in out, out[-3000:]
        assert snapshot() == before
        assert_deployed()

    rc, out, seconds = playbook("playbooks/uninstall.yml", uninstall_confirm="sampleapp")
    record("uninstall", seconds, out)
    assert rc == 0 and recap(out)["changed"] > 0, out[-3000:]
    # Services, nginx, ports.
    assert units() == []
    assert on("systemctl", "is-active", "nginx", check=False).stdout.strip() == "inactive"
    assert on("systemctl", "is-enabled", "nginx", check=False).stdout.strip() == "disabled"
    assert listening() & {80, 8079, *PORTS} == set(), listening()
    # Releases, virtualenvs, current, the configuration the role wrote, the account.
    for path in ("/opt/sampleapp", "/etc/nginx/nginx.conf"):
        assert not exists(path), path
    assert on("id", "sampleapp", check=False).returncode != 0
    # Kept: the logs (handed to root, their account is gone), the nginx package, the Python runtime.
    logs = on("stat", "-c", "%U:%G", "/var/log/sampleapp").stdout.strip()
    assert logs == "root:root"
    for port in PORTS:
        assert exists(f"/var/log/sampleapp/sampleapp-{port}.err.log")
    assert exists("/var/log/nginx/access.log")
    assert installed("nginx") and installed("python3-venv")

    rc, out, seconds = playbook("playbooks/uninstall.yml", uninstall_confirm="sampleapp")
    record("uninstall again", seconds, out)
    assert rc == 0 and recap(out)["changed"] == 0, out[-3000:]

    # On request the logs and the nginx package go too; the Python runtime stays.
    rc, out, seconds = playbook("playbooks/uninstall.yml", uninstall_confirm="sampleapp", uninstall_logs=True,
                                nginx_uninstall_package=True)
    record("uninstall logs and package", seconds, out)
    assert rc == 0 and recap(out)["changed"] > 0, out[-3000:]
    assert not exists("/var/log/sampleapp") and not exists("/var/log/nginx/access.log")
    assert not installed("nginx") and installed("python3-venv")
    rc, out, seconds = playbook("playbooks/uninstall.yml", uninstall_confirm="sampleapp", uninstall_logs=True,
                                nginx_uninstall_package=True)
    record("uninstall logs and package again", seconds, out)
    assert rc == 0 and recap(out)["changed"] == 0, out[-3000:]

    # From scratch (the package comes back from the host's apt cache).
    rc, out, seconds = playbook("deploy.yml")
    record("deploy again", seconds, out)
    assert rc == 0, out[-3000:]
    assert installed("nginx")
    assert_deployed()
