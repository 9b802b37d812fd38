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

pytestmark = [pytest.mark.hosts, pytest.mark.extended]
FLEET, NET = "unin", "10.231.11"
HOST = f"{FLEET}1"
INVENTORY = ROOT / f"build/hosts/{FLEET}/hosts.yml"
BUILD = ROOT / "build" / "uninstall"
PORTS = (8001, 8002)
# The hosts have no mirror; two backends whatever the host's vCPUs.
BASE = {"nginx_linux_apt_update_cache": False, "flask_app_linux_apt_update_cache": False,
        "flask_app_backend_count": len(PORTS)}
RESULTS = {}


def playbook(name, *args, **extra):
    extra_file = BUILD / f"extra-{secrets.token_hex(4)}.json"
    extra_file.write_text(json.dumps({**BASE, **extra}))
    t0 = time.monotonic()
    run = subprocess.run([str(VENV_BIN / "ansible-playbook"), name, "-i", str(INVENTORY), "-e", f"@{extra_file}",
                          *args],
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


def snapshot(logs=True):
    """What an uninstall (or a deploy) could change: processes, units, and every file it touches. logs=False
    leaves out the backends' logs (a run that asks the backends writes to them)."""
    # (nginx's access log grows with every request the checks make.)
    dirs = "/opt /etc/nginx /etc/systemd/system" + (" /var/log/sampleapp" if logs else "")
    files = on("sh", "-c", f"find {dirs} -printf '%p %s %T@ %m %u\\n' | sort").stdout
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


def test_check_diff_previews_a_new_release_and_a_new_backend_and_changes_nothing(tmp_path):
    """`--check --diff` before a change (docs/operations.md): a new version and one more backend are reported,
    nothing on the host changes (processes, units, releases, nginx)."""
    src = tmp_path / "app"
    subprocess.run(["cp", "-r", str(ROOT / "sample_app"), str(src)], check=True)
    for junk in src.glob("**/*.egg-info"):
        subprocess.run(["rm", "-rf", str(junk)], check=True)
    project = src / "pyproject.toml"
    project.write_text(project.read_text().replace('version = "1.0.0"', 'version = "1.1.0"'))

    before = snapshot(logs=False)
    rc, out, seconds = playbook("deploy.yml", "--check", "--diff", flask_app_version="1.1.0",
                                flask_app_source_dir=str(src), flask_app_backend_count=len(PORTS) + 1)
    record("deploy --check --diff (1.1.0, one more backend)", seconds, out)
    assert rc == 0 and recap(out)["changed"] > 0, out[-3000:]
    assert "releases/1.1.0" in out and f"127.0.0.1:{PORTS[-1] + 1}" in out, out[-3000:]  # the diff shows both
    assert snapshot(logs=False) == before
    assert_deployed()


LOCK = "/run/sampleapp-deploy.lock"


def write_lock(holder, age_s=0):
    on("sh", "-c", f'printf "%s\\n" "$1" > {LOCK} && touch -d "@$(( $(date +%s) - {age_s} ))" {LOCK}', "sh", holder)


def test_another_runs_lock_stops_a_deploy_before_any_change_and_names_the_holder():
    holder = "ops@elsewhere pid 4242 since 2026-11-26T08:00:00+00:00"
    write_lock(holder)
    before = snapshot()
    rc, out, seconds = playbook("deploy.yml", flask_app_lock_wait=5, flask_app_threads=5)
    record("deploy while another run holds the lock", seconds, out)
    assert rc != 0 and f"deploy lock is held by {holder}" in out, out[-3000:]
    assert recap(out)["changed"] == 0 and snapshot() == before
    assert on("cat", LOCK).stdout.strip() == holder  # another run's lock is never removed
    on("rm", "-f", LOCK)


@pytest.mark.parametrize("why", ["stale", "gone"])
def test_a_lock_left_by_a_dead_run_is_taken_over_with_a_warning(why):
    """Older than flask_app_lock_stale_after (a run on another controller), or held by a process that no longer
    runs on this controller (a run killed mid-way): taken over at once, the deploy goes on, the lock is released."""
    if why == "stale":
        write_lock("ops@elsewhere pid 4242 since 2026-11-26T05:00:00+00:00", age_s=3 * 3600)
    else:
        dead = subprocess.run(["sh", "-c", "echo $$"], capture_output=True, text=True, check=True).stdout.strip()
        write_lock(f"root@{os.uname().nodename} pid {dead} since 2026-11-26T08:00:00+00:00")
    rc, out, seconds = playbook("deploy.yml")
    record(f"deploy taking over a {why} lock", seconds, out)
    assert rc == 0 and "taking over the deploy lock" in out, out[-3000:]
    assert "RETRYING" not in out  # no wait
    assert not exists(LOCK)
    assert recap(out)["changed"] == 0  # the lock is the run's bookkeeping, not a change


def test_two_deploys_at_once_never_roll_one_host_together(tmp_path):
    """The second run waits for the first's lock (its take task retries), then applies its own change."""
    first = subprocess.Popen([str(VENV_BIN / "ansible-playbook"), "deploy.yml", "-i", str(INVENTORY),
                              "-e", json.dumps({**BASE, "flask_app_threads": 5})],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=venv_env(), cwd=ROOT)
    deadline = time.monotonic() + 120
    while not exists(LOCK) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert exists(LOCK), "the first run never took the lock"
    rc, out, seconds = playbook("deploy.yml", flask_app_threads=6)
    first_out = first.communicate(timeout=600)[0]
    record("second of two deploys at once", seconds, out)
    assert first.returncode == 0, first_out[-3000:]
    assert rc == 0 and "RETRYING: [" in out and "Take, wait for or release the deploy lock" in out, out[-3000:]
    assert "RETRYING" not in first_out
    unit = on("cat", f"/etc/systemd/system/sampleapp-{PORTS[0]}.service").stdout
    assert "--threads=6" in unit and not exists(LOCK)


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
    assert rc == 0 and "taking over" not in out, out[-3000:]  # the uninstall released its lock
    assert installed("nginx")
    assert_deployed()
