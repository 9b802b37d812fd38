"""L1: the roles' templates and service definitions rendered with Linux and with Windows values,
checked by a real `nginx -t` and by parsing what the service manager will run."""

import json
import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, VENV_BIN, load_file_module, venv_env

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
PORTS = [8001, 8002, 8003, 8004]
WAITRESS_ARGS = [
    "--listen=127.0.0.1:8001", "--threads=48", "--connection-limit=64", "--channel-timeout=120",
    "--max-request-body-size=10485760", "--backlog=4096", "--trusted-proxy=127.0.0.1",
    "--trusted-proxy-headers=x-forwarded-for x-forwarded-proto", "--clear-untrusted-proxy-headers",
    "--call", "sampleapp:create_app",
]


def render(out: Path, platform: str, **extra) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    extra_file = out / "extra.yml"
    # The backend's service definition exactly as the role passes it to nssm_service.
    service = yaml.safe_load((ROOT / "roles/flask_app/tasks/backend_service.yml").read_text())[0]["vars"]
    extra_file.write_text(yaml.safe_dump({**service, "nginx_windows_root": str(out / "nginx"), **extra}))
    env = venv_env()
    run = subprocess.run(
        [str(VENV_BIN / "ansible-playbook"), str(ROOT / "tests/render/render.yml"), "-e", f"out_dir={out}",
         "-e", f"platform={platform}", "-e", "__nginx_config_rev=rev-under-test", "-e", f"@{extra_file}"],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=300, check=False,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    return out


def nginx_t(conf: Path, platform: str) -> subprocess.CompletedProcess:
    """Run nginx -t on a rendered file. Windows renders get a prefix tree like the role lays down."""
    if platform == "windows":
        prefix = conf.parent / "nginx"
        for d in ("conf", "logs", "temp"):
            (prefix / d).mkdir(parents=True, exist_ok=True)
        # mime.types is read from the pinned build's own directory.
        version = yaml.safe_load((ROOT / "roles/nginx/defaults/main.yml").read_text())["nginx_windows_version"]
        build_conf = prefix / f"dist/nginx-{version}/conf"
        build_conf.mkdir(parents=True, exist_ok=True)
        shutil.copy("/etc/nginx/mime.types", build_conf / "mime.types")
        # win_template writes CRLF line endings.
        (prefix / "conf/nginx.conf").write_bytes(conf.read_text().replace("\n", "\r\n").encode())
        cmd = [NGINX, "-t", "-p", f"{prefix}/", "-c", "conf/nginx.conf"]
    else:
        cmd = [NGINX, "-t", "-c", str(conf)]
    return subprocess.run(cmd, capture_output=True, text=True, check=False)


@pytest.fixture(scope="module", params=["linux", "windows"])
def rendered(request, tmp_path_factory):
    if os.geteuid() != 0:
        pytest.skip("nginx -t with the real log and pid paths needs root")
    platform = request.param
    return platform, render(tmp_path_factory.mktemp(platform), platform)


def test_nginx_accepts_the_config(rendered):
    platform, out = rendered
    res = nginx_t(out / "nginx.conf", platform)
    assert res.returncode == 0, res.stderr
    assert "test is successful" in res.stderr


def test_upstream_is_exactly_the_backend_list(rendered):
    platform, out = rendered
    conf = (out / "nginx.conf").read_text()
    upstream = re.search(r"upstream sampleapp \{(.*?)\}", conf, re.S).group(1)
    assert [int(p) for p in re.findall(r"server 127\.0\.0\.1:(\d+) ", upstream)] == PORTS
    assert "localhost" not in conf
    assert "least_conn;" in upstream
    # Upstream keepalive per platform: Windows keeps connections (TIME_WAIT), Linux opens one per request.
    assert bool(re.search(r"keepalive \d+;", upstream)) == (platform == "windows")
    for directive in ('proxy_http_version 1.1;', 'proxy_set_header Connection "";', "proxy_next_upstream_tries 4;",
                      "server_tokens off;", "listen 127.0.0.1:8079;", 'return 200 "rev-under-test\\n";',
                      "proxy_set_header X-Forwarded-For $remote_addr;"):
        assert directive in conf


@pytest.mark.parametrize("platform, extra, limit, pool", [
    # (waitress: the rendered fixture above - none on Linux, 64 on Windows, connection limit 64)
    ("linux", {"flask_app_server": "granian"}, 256, 64),  # kept-alive, room for 2 workers x 64
    ("linux", {"flask_app_server": "granian", "vcpus": 8}, 256, 31),  # 8 workers: capped below the limit
    ("windows", {"flask_app_server": "granian", "vcpus": 8}, 256, 64),  # one worker cannot starve itself
])
def test_upstream_idle_pool_follows_the_app_server(tmp_path, platform, extra, limit, pool):
    """nginx's idle pool to the backends, as the deploy wires it from flask_app_upstream: the platform's or the
    app server's preferred pool, capped so that worker processes x pool stays below the backends' connection
    limit (an idle connection of one worker holds a slot another worker's new connection waits for)."""
    out = render(tmp_path, platform, **extra)
    service = json.loads((out / "settings.json").read_text())["arguments"]
    assert f"--connection-limit={limit}" in service
    upstream = re.search(r"upstream sampleapp \{(.*?)\}", (out / "nginx.conf").read_text(), re.S).group(1)
    found = re.search(r"keepalive (\d+);", upstream)
    assert (int(found[1]) if found else None) == pool, upstream


def test_platform_specific_worker_settings(rendered):
    platform, out = rendered
    conf = (out / "nginx.conf").read_text()
    if platform == "windows":
        assert "worker_processes 1;" in conf and "worker_connections 1000;" in conf
        assert not re.search(r"^user ", conf, re.M)
        assert f"{out}/nginx/logs/nginx.pid" in conf  # forward slashes under the prefix
    else:
        assert "worker_processes auto;" in conf and "user www-data;" in conf
        assert "worker_rlimit_nofile 16384;" in conf and "worker_connections 8192;" in conf


def test_a_buffered_access_log_is_valid_nginx(tmp_path):
    """nginx_access_log_buffer: the access log is written in blocks (flushed every second), and nginx -t takes it."""
    if os.geteuid() != 0:
        pytest.skip("needs root")
    out = render(tmp_path, "linux", nginx_access_log_buffer="64k")
    conf = (out / "nginx.conf").read_text()
    assert re.search(r"^\s*access_log \S+/access\.log upstream buffer=64k flush=1s;$", conf, re.M)
    res = nginx_t(out / "nginx.conf", "linux")
    assert res.returncode == 0, res.stderr


def test_nginx_rejects_a_broken_value(tmp_path):
    """The check can fail: a bad timeout makes nginx -t refuse the candidate."""
    if os.geteuid() != 0:
        pytest.skip("needs root")
    out = render(tmp_path, "linux", nginx_proxy_read_timeout="soon")
    res = nginx_t(out / "nginx.conf", "linux")
    assert res.returncode != 0
    assert "proxy_read_timeout" in res.stderr


def test_drained_backend_and_tls_render_valid(tmp_path):
    if os.geteuid() != 0 or not shutil.which("openssl"):
        pytest.skip("needs root and openssl")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=test",
                    "-keyout", str(tmp_path / "k.pem"), "-out", str(tmp_path / "c.pem")],
                   check=True, capture_output=True)
    out = render(tmp_path / "r", "linux", nginx_upstream_down_ports=[8002], nginx_tls_enabled=True)
    conf = (out / "nginx.conf").read_text()
    assert "server 127.0.0.1:8002 max_fails=1 fail_timeout=5s down;" in conf
    assert "server 127.0.0.1:8001 max_fails=1 fail_timeout=5s;" in conf
    # Point the certificate paths at the test pair and check the whole config.
    conf = conf.replace("/etc/nginx/tls/site.crt", str(tmp_path / "c.pem"))
    conf = conf.replace("/etc/nginx/tls/site.key", str(tmp_path / "k.pem"))
    (out / "tls.conf").write_text(conf)
    res = nginx_t(out / "tls.conf", "linux")
    assert res.returncode == 0, res.stderr
    assert "listen 443 ssl default_server backlog=4096;" in conf


def cmdline_to_argv(s: str) -> list[str]:
    """CommandLineToArgvW / MS C runtime parsing (how python.exe splits NSSM's AppParameters)."""
    args, i, n = [], 0, len(s)
    while i < n:
        while i < n and s[i] in " \t":
            i += 1
        if i >= n:
            break
        arg, quoted = "", False
        while i < n and (quoted or s[i] not in " \t"):
            if s[i] == "\\":
                j = i
                while j < n and s[j] == "\\":
                    j += 1
                if j < n and s[j] == '"':
                    arg += "\\" * ((j - i) // 2)
                    if (j - i) % 2:
                        arg += '"'
                        j += 1
                    i = j
                else:
                    arg += "\\" * (j - i)
                    i = j
            elif s[i] == '"':
                if quoted and i + 1 < n and s[i + 1] == '"':
                    arg += '"'
                    i += 2
                else:
                    quoted = not quoted
                    i += 1
            else:
                arg += s[i]
                i += 1
        args.append(arg)
    return args


def test_windows_service_definition(tmp_path):
    out = render(tmp_path, "windows")
    s = json.loads((out / "settings.json").read_text())
    reg = {(r.get("key", "") + "\\" + r["name"]).lstrip("\\"): r for r in s["nssm_registry"]}
    # Each backend runs its own release (never through `current`), under the graceful launcher.
    release = r"C:\Program Files\sampleapp\releases\1.0.0"
    assert s["executable"] == release + r"\venv\Scripts\python.exe"
    assert s["nssm_user"] == r"NT SERVICE\sampleapp-8001"
    # nuget strategy: one runtime directory per exact version.
    assert s["base_python"] == r"C:\Program Files\Python-3.12.10\tools\python.exe"
    assert reg["Application"]["data"] == s["executable"]
    assert cmdline_to_argv(reg["AppParameters"]["data"]) == [
        release + r"\graceful_waitress.py", "--graceful-timeout=35",
        r"--release-file=C:\ProgramData\sampleapp\logs\sampleapp-8001.release", *WAITRESS_ARGS]
    assert reg["AppDirectory"]["data"] == release
    # The environment goes to AppEnvironmentExtra through the script's SecureString parameter, not the plain list.
    assert "AppEnvironmentExtra" not in reg
    assert s["nssm_environment"] == ["APP_PORT=8001", "PYTHONDONTWRITEBYTECODE=1", "PYTHONUNBUFFERED=1"]
    # Logs appended across restarts (OPEN_ALWAYS), rotated online by size, never by age.
    assert reg["AppStdout"]["data"] == r"C:\ProgramData\sampleapp\logs\sampleapp-8001.out.log"
    expected_dwords = {"AppStdoutCreationDisposition": 4, "AppStderrCreationDisposition": 4, "AppRotateFiles": 1,
                       "AppRotateOnline": 1, "AppRotateSeconds": 0, "AppNoConsole": 1, "AppKillProcessTree": 1,
                       "AppStopMethodConsole": 42000, "AppThrottle": 1500, "AppRestartDelay": 1000,
                       "AppRedirectHook": 1}  # not "AppRedirectHooks" (README typo): registry.h
    assert {k: int(reg[k]["data"]) for k in expected_dwords} == expected_dwords
    assert all(reg[k]["type"] == "dword" for k in expected_dwords)
    # AppExit's default value as `nssm set` writes it (REG_SZ), so the two never flip-flop.
    assert reg["AppExit\\"] == {"key": "AppExit", "name": "", "type": "string", "data": "Restart"}
    # A backend has no reload command: its Rotate/Pre hook is removed if present.
    assert reg["AppEvents\\Rotate\\Pre"]["state"] == "absent"


def test_linux_unit_runs_the_same_backend(tmp_path):
    out = render(tmp_path, "linux")
    unit = (out / "sampleapp-8001.service").read_text()
    fields = {}
    for line in unit.splitlines():
        if "=" in line and not line.startswith("#"):
            k, v = line.split("=", 1)
            fields.setdefault(k, []).append(v)
    assert unit.startswith("#\n# Ansible managed")
    release = "/opt/sampleapp/releases/1.0.0"
    assert shlex.split(fields["ExecStart"][0]) == [f"{release}/venv/bin/python", f"{release}/graceful_waitress.py",
                                                   "--graceful-timeout=35",
                                                   "--release-file=/var/log/sampleapp/sampleapp-8001.release",
                                                   *WAITRESS_ARGS]
    assert fields["WorkingDirectory"] == [release]
    assert "Environment" not in fields  # secrets stay out of the world-readable unit
    assert fields["EnvironmentFile"] == ["/etc/systemd/system/sampleapp-8001.env"]
    env = [line for line in (out / "sampleapp-8001.env").read_text().splitlines() if not line.startswith("#")]
    assert sorted(env) == ['APP_PORT="8001"', 'PYTHONDONTWRITEBYTECODE="1"', 'PYTHONUNBUFFERED="1"']
    assert fields["User"] == ["sampleapp"] and fields["Restart"] == ["always"]
    assert fields["KillSignal"] == ["SIGINT"] and fields["TimeoutStopSec"] == ["42000ms"]
    assert fields["ReadWritePaths"] == ["/var/log/sampleapp"] and fields["ProtectSystem"] == ["strict"]
    assert "RestartSteps" not in fields  # systemd 252 (bookworm) has no stepped backoff


@pytest.fixture(scope="module")
def quoting():
    return load_file_module("plugins/filter/quoting.py")


@pytest.mark.parametrize("args", [
    ["plain", "--flag=1"],
    [r"C:\Program Files\app\python.exe", "-m", "waitress"],
    ['say "hi"', r"trailing\\", r"C:\dir with space\\", "", r'a\"b', "tab\there"],
])
def test_win_argv_round_trips_through_commandlinetoargvw(quoting, args):
    assert cmdline_to_argv(quoting.win_argv(args)) == args


@pytest.mark.parametrize("value", ["plain", "with space", 'quote"d', "100%", "$HOME", r"back\slash", ""])
def test_systemd_quote_round_trips(quoting, value):
    # systemd unquotes like a shell word, then expands $$ -> $ and %% -> % (exec lines).
    parsed = shlex.split(quoting.systemd_quote(value))
    assert [p.replace("$$", "$").replace("%%", "%") for p in parsed] == [value]
