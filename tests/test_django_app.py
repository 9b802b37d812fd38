"""A Django project deployed like any app (issue 12 items 5-7), on one local test host (fleet `django`).

tests/fixtures/django_app is a small Django project built as a wheel (one model, one migration that writes a
row, a CSS file collected by collectstatic, ALLOWED_HOSTS with 127.0.0.1 and localhost). The deploy:
- runs `django-admin collectstatic` on the host while the release is installed (flask_app_install_command)
  and `django-admin migrate` once before the switch (flask_app_pre_switch_command); the app then reads the
  row the migration wrote;
- serves /static/ from the live release through nginx (flask_app_static -> nginx_static_locations): the file
  comes from nginx (no upstream in its access log line, the backends themselves answer 404), with
  Cache-Control, no listings, no way out of the directory;
- delivers a multi-line settings file (a PEM) readable only by the service account, its path in the app's
  environment;
- a re-run changes nothing (the pre-switch command is not run again);
- a failing pre-switch command switches nothing, the live release keeps serving, and the message carries the
  command's own error;
- (slow) a new settings file restarts the backends one at a time and leaves nginx alone, a new release
  switches the static files without an nginx reload, and the uninstall removes the settings files.
make test runs three deploys here (the first, a re-run, a failing one); make test-slow adds two and an uninstall.
Figures (seconds, changed counts) go to build/django-results.json.
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

import pytest

from conftest import ROOT, VENV_BIN, venv_env

sys.path.insert(0, str(ROOT / "tools"))
import testhosts  # noqa: E402

pytestmark = [pytest.mark.hosts, pytest.mark.extended]
FLEET, NET = "django", "10.231.16"
HOST = f"{FLEET}1"
INVENTORY = ROOT / f"build/hosts/{FLEET}/hosts.yml"
BUILD = ROOT / "build" / "django"
FIXTURE = ROOT / "tests/fixtures/django_app"
PORTS = (8001, 8002)
CSS = "/static/notes/site.css"
DB_DIR = "/var/lib/djangoapp"
RESULTS = {}
# The pre-switch command's task header in the deploy's output (its result follows on the next line).
PRE_SWITCH = r"TASK \[flaskfleet.webapp.flask_app : linux \| pre_switch \| Run the pre-switch command[^\n]*\n"


def pem(label):
    """A multi-line settings file (PEM-shaped; random, so each one differs)."""
    body = secrets.token_bytes(96).hex()
    return f"-----BEGIN {label}-----\n" + "\n".join(body[i:i + 64] for i in range(0, len(body), 64)) + \
        f"\n-----END {label}-----\n"


# The settings file's content the host should have now.
STATE = {"key": pem("PRIVATE KEY")}


def source(version):
    """The fixture at a version: its pyproject and its CSS name the version (what nginx serves tells which)."""
    tree = BUILD / f"src-{version}"
    shutil.rmtree(tree, ignore_errors=True)
    shutil.copytree(FIXTURE, tree, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    pyproject = tree / "pyproject.toml"
    pyproject.write_text(pyproject.read_text().replace('version = "1.0.0"', f'version = "{version}"'))
    (tree / "src/djangoapp/notes/static/notes/site.css").write_text(f"/* djangoapp {version} */\n")
    return tree


def settings(version, key=None, **extra):
    return {
        # The hosts have no mirror; two backends whatever the host's vCPUs.
        "nginx_linux_apt_update_cache": False, "flask_app_linux_apt_update_cache": False,
        "flask_app_backend_count": len(PORTS),
        "flask_app_name": "djangoapp", "flask_app_package": "djangoapp", "flask_app_version": version,
        "flask_app_source_dir": str(source(version)),
        "flask_app_wsgi": "djangoapp.wsgi:application", "flask_app_wsgi_factory": False,
        "flask_app_environment": {"DJANGO_SETTINGS_MODULE": "djangoapp.settings",
                                  "DJANGOAPP_DB": f"{DB_DIR}/db.sqlite3"},
        "flask_app_static": [{"url": "/static/", "dir": "static"}],
        "flask_app_install_command": ["django-admin", "collectstatic", "--noinput"],
        "flask_app_pre_switch_command": ["django-admin", "migrate", "--noinput"],
        "flask_app_settings_files": [{"name": "signing.pem", "content": key or STATE["key"],
                                      "env": "DJANGOAPP_SIGNING_KEY"}],
        **extra,
    }


def deploy(step, version, playbook="deploy.yml", **extra):
    extra_file = BUILD / f"extra-{secrets.token_hex(4)}.json"
    extra_file.write_text(json.dumps(settings(version, **extra)))
    t0 = time.monotonic()
    run = subprocess.run([str(VENV_BIN / "ansible-playbook"), playbook, "-i", str(INVENTORY),
                          "-e", f"@{extra_file}"],
                         capture_output=True, text=True, env=venv_env(), cwd=ROOT, timeout=900, check=False)
    extra_file.unlink()
    out = run.stdout + run.stderr
    seconds = round(time.monotonic() - t0, 1)
    (BUILD / (re.sub(r"[^a-z0-9.]+", "-", step) + ".log")).write_text(out)
    m = re.search(rf"^{HOST}\s+: ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", out, re.M)
    assert m, out[-3000:]
    RESULTS[step] = {"rc": run.returncode, "seconds": seconds,
                     **dict(zip(("ok", "changed", "unreachable", "failed"), map(int, m.groups())))}
    (ROOT / "build/django-results.json").write_text(json.dumps(RESULTS, indent=2) + "\n")
    print(f"{step}: {RESULTS[step]}")
    return run.returncode, out, RESULTS[step]


def on(*cmd, check=True):
    """Run a command inside the host (all its namespaces)."""
    pid = testhosts.container_init(testhosts.Fleet(FLEET).state()["hosts"][HOST]["nspawn_pid"])
    res = subprocess.run(["nsenter", "-t", str(pid), "-a", *cmd], capture_output=True, text=True, timeout=120,
                         check=False)
    assert not check or res.returncode == 0, res.stderr
    return res


def get(port, path, *curl):
    """(status, headers, body) of a GET inside the host's network namespace."""
    res = subprocess.run(["ip", "netns", "exec", f"ffh-{HOST}", "curl", "-s", "-i", "--max-time", "5", *curl,
                          f"http://127.0.0.1:{port}{path}"], capture_output=True, text=True, check=False)
    head, _, body = res.stdout.replace("\r\n", "\n").partition("\n\n")
    lines = head.split("\n")
    status = int(lines[0].split()[1]) if lines[0].startswith("HTTP/") else 0
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return status, headers, body


def app(path, port=80):
    status, _, body = get(port, path)
    assert status == 200, (path, status, body[:500])
    return json.loads(body)


def nginx_processes():
    """nginx's master and worker pids: a reload replaces the workers."""
    master = on("cat", "/run/nginx.pid").stdout.strip()
    return master, sorted(on("pgrep", "-P", master).stdout.split())


def backend_pids():
    return {p: on("systemctl", "show", "-P", "MainPID", f"djangoapp-{p}").stdout.strip() for p in PORTS}


def live_release():
    return on("readlink", "/opt/djangoapp/current").stdout.strip().rsplit("/", 1)[-1]


def ensure_deployed():
    """The slow tests also run without the others (make test-slow): deploy first when nothing is live."""
    if on("test", "-L", "/opt/djangoapp/current", check=False).returncode != 0:
        rc, out, _ = deploy("deploy 1.0.0", "1.0.0")
        assert rc == 0, out[-3000:]


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
        # The database stands in for one outside the deploy: its directory exists before.
        on("install", "-d", "-m", "0755", DB_DIR)
        yield
    finally:
        down()


def test_deploy_migrates_once_collects_static_and_nginx_serves_it():
    rc, out, figures = deploy("deploy 1.0.0", "1.0.0")
    assert rc == 0, out[-3000:]
    assert live_release() == "1.0.0"
    # migrate ran before the switch (the row its migration wrote is there), recorded in the release.
    assert app("/notes") == {"notes": ["written by migration 0001"]}
    assert on("test", "-s", "/opt/djangoapp/releases/1.0.0/.pre_switch", check=False).returncode == 0
    assert re.search(PRE_SWITCH + r"changed: \[django1\]", out), out[-3000:]
    # The CSS collectstatic put into the release, served by nginx itself: no upstream in its log line, and the
    # backends (Django with DEBUG off) do not serve it at all.
    status, headers, body = get(80, CSS)
    assert (status, body) == (200, "/* djangoapp 1.0.0 */\n"), (status, headers, body)
    assert headers.get("cache-control") == "public, max-age=3600", headers
    assert on("test", "-f", "/opt/djangoapp/releases/1.0.0/static/notes/site.css", check=False).returncode == 0
    last = on("sh", "-c", f"grep ' {CSS} ' /var/log/nginx/access.log | tail -1").stdout
    assert " 200 " in last and "upstream=- " in last, last
    for port in PORTS:
        assert get(port, CSS)[0] == 404
    # No listings, and nothing outside the directory (the release's marker, the host's files).
    assert get(80, "/static/")[0] in (403, 404)
    assert get(80, "/static/notes/")[0] in (403, 404)
    for path in ("/static/../.installed", "/static/%2e%2e/.installed", "/static/../../../../etc/passwd"):
        status, _, body = get(80, path, "--path-as-is")
        assert status != 200 or ("root:" not in body and "1.0.0 " not in body), (path, status, body[:200])


def test_settings_file_readable_only_by_the_service_account_and_seen_by_the_app():
    path = "/etc/djangoapp/signing.pem"
    assert on("stat", "-c", "%U %a", path).stdout.split() == ["djangoapp", "400"]
    assert on("stat", "-c", "%U %a", "/etc/djangoapp").stdout.split() == ["root", "711"]
    assert on("runuser", "-u", "nobody", "--", "cat", path, check=False).returncode != 0
    key = STATE["key"]
    assert on("runuser", "-u", "djangoapp", "--", "cat", path).stdout == key
    seen = app("/settings-file")
    assert seen == {"path": path, "sha256": hashlib.sha256(key.encode()).hexdigest(), "lines": key.count("\n")}
    # Each backend got it in its environment (nothing of the content in the unit's environment file).
    env = on("cat", "/etc/systemd/system/djangoapp-8001.env").stdout
    assert f"DJANGOAPP_SIGNING_KEY={path}" in env.replace('"', "") and "BEGIN" not in env


def test_rerun_changes_nothing():
    rc, out, figures = deploy("re-run 1.0.0", "1.0.0")
    assert rc == 0, out[-3000:]
    assert figures["changed"] == 0, out[-3000:]
    assert re.search(PRE_SWITCH + r"skipping: \[django1\]", out), out[-3000:]  # recorded: not run again


def test_failing_pre_switch_command_switches_nothing_and_says_why():
    live = live_release()
    css = get(80, CSS)[2]
    failing = ["python", "-c", "import sys; sys.exit('migration 0002 failed: table notes_note is locked')"]
    rc, out, figures = deploy("failing pre-switch 1.0.2", "1.0.2", flask_app_pre_switch_command=failing)
    assert rc != 0
    assert "migration 0002 failed: table notes_note is locked" in out, out[-3000:]
    assert re.search(r"No host switched to 1\.0\.2", out), out[-3000:]
    assert "was not switched to the new release" in out, out[-3000:]
    # The live release still serves, all of it; the new one is installed beside it, unrecorded.
    assert live_release() == live
    assert {app("/healthz", port)["version"] for port in PORTS} == {live}
    assert app("/healthz")["version"] == live
    assert get(80, CSS)[2] == css == f"/* djangoapp {live} */\n"
    assert on("test", "-f", "/opt/djangoapp/releases/1.0.2/.installed", check=False).returncode == 0
    assert on("test", "-e", "/opt/djangoapp/releases/1.0.2/.pre_switch", check=False).returncode != 0


@pytest.mark.slow
def test_new_settings_file_restarts_only_the_backends():
    ensure_deployed()
    before_nginx, before_backends = nginx_processes(), backend_pids()
    key = pem("PRIVATE KEY")
    rc, out, figures = deploy("settings file changed", "1.0.0", key=key)
    assert rc == 0, out[-3000:]
    after = backend_pids()
    assert all(after[p] != before_backends[p] for p in PORTS), (before_backends, after)
    assert nginx_processes() == before_nginx
    assert app("/settings-file")["sha256"] == hashlib.sha256(key.encode()).hexdigest()
    # Nothing else: the file, then one restart per backend.
    assert figures["changed"] <= 1 + len(PORTS), out[-3000:]
    STATE["key"] = key


@pytest.mark.slow
def test_new_release_switches_static_files_without_an_nginx_reload():
    ensure_deployed()
    before = nginx_processes()
    rev = get(8079, "/config-rev")[2]
    rc, out, figures = deploy("deploy 1.0.1", "1.0.1")
    assert rc == 0, out[-3000:]
    assert live_release() == "1.0.1"
    assert get(80, CSS)[2] == "/* djangoapp 1.0.1 */\n"
    assert nginx_processes() == before and get(8079, "/config-rev")[2] == rev
    assert {app("/healthz", port)["version"] for port in PORTS} == {"1.0.1"}
    # migrate ran again for the new release (nothing to do: the row is still the one).
    assert re.search(PRE_SWITCH + r"changed: \[django1\]", out), out[-3000:]
    assert app("/notes") == {"notes": ["written by migration 0001"]}


@pytest.mark.slow
def test_uninstall_removes_the_settings_files():
    ensure_deployed()
    assert on("test", "-f", "/etc/djangoapp/signing.pem", check=False).returncode == 0
    rc, out, figures = deploy("uninstall", live_release(), playbook="playbooks/uninstall.yml",
                              uninstall_confirm="djangoapp")
    assert rc == 0, out[-3000:]
    assert on("test", "-e", "/etc/djangoapp", check=False).returncode != 0
    assert on("test", "-e", "/opt/djangoapp", check=False).returncode != 0
