"""Windows leaves checked without Windows (L0/L1): values the Windows tasks compute on the controller and
the validation that runs there with Windows facts. What only a Windows host can show is listed in
docs/windows-audit.md."""

import json
import os
import re
import subprocess

import pytest
import yaml

from conftest import ROOT, VENV_BIN, load_file_module, venv_env
from test_templates import cmdline_to_argv, nginx_t, render


@pytest.fixture(scope="module")
def accounts():
    return load_file_module("plugins/filter/win_service_sid.py")


def test_service_sid_matches_windows(accounts):
    # A SID Windows itself documents: NT SERVICE\TrustedInstaller.
    assert accounts.win_service_sid("TrustedInstaller") == \
        "S-1-5-80-956008885-3418522649-1831038044-1853292631-2271478464"
    # Case-insensitive, as service names are.
    assert accounts.win_service_sid("trustedinstaller") == accounts.win_service_sid("TRUSTEDINSTALLER")


def test_nginx_sid_constant_is_its_service_sid(accounts):
    sid = yaml.safe_load((ROOT / "roles/nginx/vars/main.yml").read_text())["__nginx_windows_sid"]
    assert sid == accounts.win_service_sid("nginx")


def test_nginx_runs_from_its_build_directory_and_reloads_through_nssm(tmp_path):
    s = json.loads((render(tmp_path, "windows") / "settings.json").read_text())
    version = yaml.safe_load((ROOT / "roles/nginx/defaults/main.yml").read_text())["nginx_windows_version"]
    root = str(tmp_path / "nginx")
    assert s["nginx_exe"] == f"{root}\\dist\\nginx-{version}\\nginx.exe"
    assert s["nginx_args"] == ["-p", f"{s['nginx_root_fwd']}/"]
    # The Rotate/Pre hook command NSSM runs as the nginx service: the same binary and prefix, -s reload.
    assert cmdline_to_argv(s["nginx_reload_hook"]) == [s["nginx_exe"], "-p", f"{s['nginx_root_fwd']}/", "-s", "reload"]


def validate_windows(tmp_path, **extra):
    extra_file = tmp_path / "extra.json"
    extra_file.write_text(json.dumps({"validate_missing": "", **extra}))
    run = subprocess.run([str(VENV_BIN / "ansible-playbook"), "tests/reliability/validate_windows.yml",
                          "-e", f"@{extra_file}"],
                         capture_output=True, text=True, env=venv_env(), cwd=ROOT, timeout=300, check=False)
    return run.returncode, run.stdout + run.stderr


@pytest.mark.parametrize(("extra", "named"), [
    ({"flask_app_environment": {"API_TOKEN": "s3%PATH%cret"}}, "API_TOKEN"),
    ({"nssm_service_environment": {"DB_PASSWORD": "a%USERNAME%b"}}, "environment DB_PASSWORD"),
    ({"nssm_service_arguments": ["--name=%COMPUTERNAME%"]}, "an argument"),
])
def test_text_nssm_would_expand_is_refused(tmp_path, extra, named):
    rc, out = validate_windows(tmp_path, **extra)
    assert rc != 0 and named in out and "%NAME%" in out, out[-2000:]
    assert "s3%PATH%cret" not in out and "a%USERNAME%b" not in out  # never echo the value


def test_a_lone_percent_is_fine(tmp_path):
    rc, out = validate_windows(tmp_path, flask_app_environment={"RATE": "100%"},
                               nssm_service_environment={"RATE": "100%"})
    assert rc == 0, out[-2000:]


def test_the_copy_nginx_tests_on_windows_listens_away_from_the_live_ports(tmp_path):
    """`nginx -t` binds what it tests, and Windows lets it co-bind the live sockets: the tested copy must
    listen on 127.0.0.2 only, and otherwise be the file that goes live."""
    import os
    import re

    from test_templates import nginx_t

    live = (render(tmp_path / "live", "windows") / "nginx.conf").read_text()
    test_out = render(tmp_path / "test", "windows", __nginx_test_host="127.0.0.2")
    tested = (test_out / "nginx.conf").read_text()
    listen = re.compile(r"^(\s*listen\s+)([^\s;]+)", re.M)
    listens = [m[1] for m in listen.findall(tested)]
    assert listens and all(a.startswith("127.0.0.2:") for a in listens), listens
    assert [m[1] for m in listen.findall(live)] == ["80", "127.0.0.1:8079"]

    def same_but_listen(text, root):
        return listen.sub(r"\1ADDR", text.replace(str(root), "ROOT"))

    assert same_but_listen(tested, tmp_path / "test") == same_but_listen(live, tmp_path / "live")
    if os.geteuid() == 0:
        res = nginx_t(test_out / "nginx.conf", "windows")
        assert res.returncode == 0, res.stderr


@pytest.mark.parametrize(("platform", "alias"), [
    ("linux", "/opt/sampleapp/current/static/"),
    ("windows", "C:/Program Files/sampleapp/current/static/"),
])
def test_static_files_location_through_current_passes_nginx_t(tmp_path, platform, alias):
    """flask_app_static as the deploy wires it (flask_app_upstream.static -> nginx_static_locations): a location
    aliasing the directory through `current` - on Windows under Program Files, a path with a space, quoted - with
    no listing and the Cache-Control header; a real nginx -t accepts it."""
    if os.geteuid() != 0:
        pytest.skip("nginx -t with the real log and pid paths needs root")
    out = render(tmp_path, platform, flask_app_static=[{"url": "/static/", "dir": "static"}],
                 nginx_static_locations="{{ __flask_app_static_locations }}")
    conf = (out / "nginx.conf").read_text()
    location = re.search(r"location \^~ /static/ \{(.*?)\}", conf, re.S)
    assert location, conf
    assert [line.strip() for line in location.group(1).strip().splitlines()] == [
        f'alias "{alias}";', "autoindex off;", 'add_header Cache-Control "public, max-age=3600" always;']
    res = nginx_t(out / "nginx.conf", platform)
    assert res.returncode == 0, res.stderr


def test_granian_backend_runs_its_launcher_under_nssm_with_the_same_settings(tmp_path):
    """flask_app_server granian on Windows: NSSM starts the release's python with graceful_granian.py and the
    same launcher options as waitress's (the proxy-header rules are built into the launcher, so waitress's
    --trusted-proxy flags are gone) but granian's own connection limit (256: room for nginx's kept-alive pool);
    the stop budget and Ctrl-C stop method are the same."""
    s = json.loads((render(tmp_path, "windows", flask_app_server="granian") / "settings.json").read_text())
    reg = {(r.get("key", "") + "\\" + r["name"]).lstrip("\\"): r for r in s["nssm_registry"]}
    release = r"C:\Program Files\sampleapp\releases\1.0.0"
    assert cmdline_to_argv(reg["AppParameters"]["data"]) == [
        release + r"\graceful_granian.py", "--graceful-timeout=35",
        r"--release-file=C:\ProgramData\sampleapp\logs\sampleapp-8001.release", "--listen=127.0.0.1:8001",
        "--threads=48", "--connection-limit=256", "--channel-timeout=120", "--max-request-body-size=10485760",
        "--backlog=4096", "--call", "sampleapp:create_app"]
    assert int(reg["AppStopMethodConsole"]["data"]) == 42000


@pytest.mark.parametrize(("target", "python", "wheel"), [
    ("windows", "3.12", "granian-2.8.7-cp312-cp312-win_amd64.whl"),
    ("linux", "3.11", "granian-2.8.7-cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64.whl")])
def test_the_wheelhouse_carries_granians_wheel_for_the_target(tmp_path, target, python, wheel):
    """flask_app_server granian: the controller-built wheelhouse holds granian's binary wheel for the target
    (win_amd64 for Windows, manylinux for Linux) and its requirement (click), one version of each."""
    version = yaml.safe_load((ROOT / "roles/flask_app/defaults/main.yml").read_text())["flask_app_granian_version"]
    run = subprocess.run([str(VENV_BIN / "python"), str(ROOT / "roles/flask_app/files/build_wheelhouse.py"),
                          f"--source={ROOT / 'sample_app'}", "--version=1.0.0", f"--server=granian=={version}",
                          f"--target={target}", f"--python={python}", "--name=sampleapp", f"--out={tmp_path}"],
                         capture_output=True, text=True, timeout=600, check=False)
    assert run.returncode == 0, run.stderr
    out = json.loads(run.stdout)
    assert wheel in out["wheels"] and any(w.startswith("click-") for w in out["wheels"]), out["wheels"]
    assert not [w for w in out["wheels"] if w.startswith("granian-") and w != wheel]
