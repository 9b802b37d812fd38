"""Bad input, without test hosts: every setting of every role is in a validation class (type, bounds or pattern),
and a bad value of each class is refused by the deploy's validation before anything changes, naming the variable.

The deploy runs against hosts on the local connection, one bad setting per host. A host whose settings pass
validation is stopped by a guard in the external load balancer's drain hook - the first task after validation,
before anything that can change a host or build on the controller - so nothing can ever change here."""

import json
import re
import subprocess

import pytest
import yaml

from conftest import ROOT, VENV_BIN, venv_env
from test_windows_leaves import validate_windows

ROLES = ["flask_app", "nginx", "nssm_service"]


def load(role, rel):
    return yaml.safe_load((ROOT / "roles" / role / rel).read_text())


@pytest.mark.parametrize("role", ROLES)
def test_every_setting_has_a_class(role):
    """Each option of each entry point is in the role's validation table with a known class, and each pattern
    it names exists."""
    specs = load(role, "meta/argument_specs.yml")["argument_specs"]
    rolevars = load(role, "vars/main.yml")
    table, patterns = rolevars[f"__{role}_settings"], rolevars[f"__{role}_patterns"]
    options = {name for spec in specs.values() for name in spec["options"]}
    assert options - set(table) == set(), "settings without a validation class"
    for name, rule in table.items():
        kinds = set(rule) & {"int", "float", "re", "bool", "choice", "list", "map"}
        assert len(kinds) == 1, (name, rule)
        inner = rule.get("list", rule)
        if "re" in inner:
            assert inner["re"] == "host_path" or inner["re"] in patterns, (name, inner)
        for bound in ("int", "float"):
            if bound in inner:
                low, high = inner[bound]
                assert high is None or low <= high, name
        spec = next((s["options"][name] for s in specs.values() if name in s["options"]), None)
        if spec and "choices" in spec:
            assert rule.get("choice") == spec["choices"], name
        if spec and spec.get("type") in ("list", "dict"):
            assert ("list" if spec["type"] == "list" else "map") in rule, name
    for cls in ("linux_path", "windows_path", "integer", "number", "identifier", "line"):
        assert cls in patterns, cls


def test_the_class_check_is_the_same_in_every_role():
    """The loop that applies a role's table is one text, copied into each role (a role stands alone)."""
    def check(role):
        text = (ROOT / "roles" / role / "tasks/validate.yml").read_text()
        task = text.split("- name: validate | Check each setting's type, bounds or pattern\n")[1].split("\n- name:")[0]
        task = re.sub(r'^    fail_msg: .*$', "", task, flags=re.M)
        return task.replace(f"__{role}_", "__ROLE_")
    assert check("flask_app") == check("nginx") == check("nssm_service")


@pytest.mark.parametrize(("role", "pattern", "good", "bad"), [
    ("flask_app", "linux_path", ["/opt/app", "/var/log/app x"], ["opt/app", "/opt/../etc", "/opt/app\n", "C:\\app", ""]),
    ("flask_app", "windows_path", ["C:\\Program Files\\app", "D:/data"],
     ["app", "\\app", "C:\\a\\..\\b", "C:\\a|b", "/opt/app"]),
    ("flask_app", "url", ["https://artifacts.example.com/python.3.12.10.nupkg", "http://u:p@mirror/x"],
     ["artifacts.example.com/x", "https://", "https://a b/x", "file:///c/x"]),
    ("flask_app", "url_path", ["/healthz", "/health?deep=1"], ["healthz", "", "/a b", "http://x/healthz"]),
    ("nginx", "time", ["10s", "500ms", "1m30s", "60"], ["-5s", "10 s", "10sec", ""]),
    ("nginx", "size", ["10m", "1048576"], ["10 MB", "-1", "10mb"]),
    ("nginx", "next_upstream", ["error timeout http_502 http_503", "off"], ["error sometimes", "error  timeout"]),
    ("nginx", "worker_processes", ["auto", "4"], ["0", "-1", "many"]),
])
def test_patterns(role, pattern, good, bad):
    """The patterns as Jinja's `match` test applies them (re.match)."""
    regex = re.compile(load(role, "vars/main.yml")[f"__{role}_patterns"][pattern]["re"])
    assert [v for v in good if not regex.match(v)] == []
    assert [v for v in bad if regex.match(v)] == []


# (case, setting, value, what the message must name). One host each, on the local connection, Linux facts.
# (Settings the deploy wires from another role's output - flask_app_site_port, nginx_health_path, ... - are
# checked the same way when a role is used on its own.)
BAD = [
    ("health path without its slash", "flask_app_health_path", "healthz", ["flask_app_health_path", "starting with /"]),
    ("relative install root", "flask_app_root", "opt/sampleapp", ["flask_app_root", "absolute path"]),
    ("install root climbing out", "flask_app_root", "/opt/../etc", ["flask_app_root", "without .."]),
    ("a Windows root on Linux", "flask_app_root", "C:\\sampleapp", ["flask_app_root", "absolute path"]),
    ("relative log directory", "flask_app_log_dir", "logs", ["flask_app_log_dir", "absolute path"]),
    ("relative source tree", "flask_app_source_dir", "sample_app", ["flask_app_source_dir", "controller"]),
    ("relative wheelhouse", "flask_app_wheelhouse_dir", "build/wheelhouse", ["flask_app_wheelhouse_dir", "controller"]),
    ("URL without a scheme", "flask_app_python_url", "artifacts.example.com/python.nupkg",
     ["flask_app_python_url", "scheme"]),
    ("checksum not a SHA-256", "flask_app_python_checksum", "abc123", ["flask_app_python_checksum", "SHA-256"]),
    ("environment as text", "flask_app_environment", "FOO=bar", ["flask_app_environment", "mapping"]),
    ("environment value a mapping", "flask_app_environment", {"A": {"b": 1}}, ["flask_app_environment", "single"]),
    ("ports as text", "flask_app_backend_ports", "8001,8002", ["flask_app_backend_ports", "a list"]),
    ("packages as text", "flask_app_linux_packages", "python3", ["flask_app_linux_packages", "a list"]),
    ("package with shell text", "flask_app_linux_packages", ["python3; rm -rf /"], ["flask_app_linux_packages"]),
    ("Python version as a number", "flask_app_python_version", 3.12, ["flask_app_python_version", "3.X.Y"]),
    ("name as a number", "flask_app_name", 5, ["flask_app_name", "must match"]),
    ("negative health delay", "flask_app_health_delay", -1, ["flask_app_health_delay", ">= 0"]),
    ("port start below 1024", "flask_app_backend_port_start", 80, ["flask_app_backend_port_start", "1024..65535"]),
    ("package name with a space", "flask_app_package", "sample app", ["flask_app_package", "distribution name"]),
    ("negative NSSM restart delay", "nssm_service_restart_delay_ms", -1, ["nssm_service_restart_delay_ms"]),
    ("no log retention", "nssm_service_log_retention_days", 0, ["nssm_service_log_retention_days", ">= 1"]),
    ("NSSM URL without a scheme", "nssm_service_nssm_url", "nssm.cc/nssm.exe", ["nssm_service_nssm_url", "scheme"]),
    ("negative worker_connections", "nginx_worker_connections", "-5", ["nginx_worker_connections", ">= 16"]),
    ("worker_processes not a number", "nginx_worker_processes", "many", ["nginx_worker_processes"]),
    ("negative upstream keepalive", "nginx_upstream_keepalive", "-1", ["nginx_upstream_keepalive", ">= 0"]),
    ("negative max_fails", "nginx_upstream_max_fails", -1, ["nginx_upstream_max_fails", ">= 0"]),
    ("no listen backlog", "nginx_listen_backlog", 0, ["nginx_listen_backlog", ">= 1"]),
    ("TLS port 70000", "nginx_tls_port", 70000, ["nginx_tls_port", "1..65535"]),
    ("body size with a space", "nginx_client_max_body_size", "10 MB", ["nginx_client_max_body_size", "nginx size"]),
    ("unknown retry condition", "nginx_proxy_next_upstream", "error sometimes", ["nginx_proxy_next_upstream"]),
    ("timeout in words", "nginx_send_timeout", "30 seconds", ["nginx_send_timeout", "nginx times"]),
    ("relative nginx prefix", "nginx_windows_root", "nginx", ["nginx_windows_root", "Windows path"]),
    ("drained ports as text", "nginx_upstream_down_ports", "8001", ["nginx_upstream_down_ports", "a list"]),
    ("settings file named with a path", "flask_app_settings_files", [{"name": "../x.pem", "content": "k"}],
     ["flask_app_settings_files", "../x.pem", "a file name"]),
    ("settings file with content and src", "flask_app_settings_files",
     [{"name": "app.ini", "content": "k", "src": "/etc/hostname"}], ["flask_app_settings_files", "app.ini"]),
    ("static directory climbing out", "flask_app_static", [{"url": "/static/", "dir": "../etc"}],
     ["flask_app_static", "relative"]),
    ("pre-switch command as text", "flask_app_pre_switch_command", "django-admin migrate",
     ["flask_app_pre_switch_command", "a list"]),
    ("pre-switch program outside the venv", "flask_app_pre_switch_command", ["/usr/bin/python3", "-V"],
     ["flask_app_pre_switch_command", "virtualenv"]),
    ("wheelhouse source without an archive", "flask_app_source", "wheelhouse", ["flask_app_wheelhouse_archive"]),
    ("index URL with a password in it", "flask_app_index_url", "https://deploy:s3cret@artifacts.example.com/simple",
     ["flask_app_index_url", "flask_app_index_password"]),
    ("missing lock file", "flask_app_lock_file", "/nonexistent/lock.txt", ["flask_app_lock_file", "a file"]),
    ("health status out of range", "flask_app_health_status", 999, ["flask_app_health_status", "100..599"]),
    ("static files' header breaking out of its quotes", "nginx_static_cache_control", 'public"; add_header X "1',
     ["nginx_static_cache_control", "without quotes"]),
]
GOOD = "control"  # no bad setting: passes validation and stops at the guard


def test_bad_settings_are_refused_before_any_change(tmp_path):
    hosts = {GOOD: {"ansible_connection": "local"}}
    (tmp_path / "host_vars").mkdir()
    for i, (_, setting, value, _) in enumerate(BAD):
        hosts[f"bad{i}"] = {"ansible_connection": "local"}
        (tmp_path / "host_vars" / f"bad{i}.yml").write_text(yaml.safe_dump({setting: value}))
    (tmp_path / "hosts.yml").write_text(yaml.safe_dump({"all": {"children": {"app_servers": {"hosts": hosts}}}}))
    (tmp_path / "guard.yml").write_text("- name: Guard - the settings passed validation\n  ansible.builtin.fail:\n"
                                        "    msg: GUARD passed validation\n")
    res = subprocess.run([str(VENV_BIN / "ansible-playbook"), "deploy.yml", "-i", str(tmp_path / "hosts.yml"),
                          "-e", "deploy_max_fail_percentage=100", "-e", f"deploy_lb_drain_tasks={tmp_path / 'guard.yml'}"],
                         capture_output=True, text=True, env=venv_env(), cwd=ROOT, timeout=900, check=False)
    out = res.stdout + res.stderr
    fatal = {m[0]: m[1] for m in re.findall(r"^fatal: \[(\w+)\]: FAILED! => (.*)$", out, re.M)}
    recap = {m[0]: (int(m[1]), int(m[2])) for m in
             re.findall(r"^(\w+)\s+: ok=\d+\s+changed=(\d+)\s+unreachable=\d+\s+failed=(\d+)", out, re.M)}
    assert "GUARD" in fatal.get(GOOD, ""), out[-3000:]  # the defaults pass, and the guard holds
    report = []
    for i, (case, _, _, names) in enumerate(BAD):
        msg = json.loads(fatal[f"bad{i}"])["msg"] if f"bad{i}" in fatal else ""
        ok = (recap.get(f"bad{i}") == (0, 1) and "GUARD" not in msg and msg.split(":")[0] in ("flask_app", "nginx")
              and all(n in msg for n in names))
        report.append(f"{'ok ' if ok else 'BAD'} {case}: {recap.get(f'bad{i}')} {msg[:300]}")
    assert all(r.startswith("ok") for r in report), "\n".join(report)
    assert "Traceback" not in out and "templating" not in out.lower()


@pytest.mark.parametrize(("extra", "named"), [
    ({"flask_app_root": "/opt/sampleapp"}, "flask_app_root"),
    ({"flask_app_log_dir": "logs"}, "flask_app_log_dir"),
    ({"flask_app_python_dir": "Python312"}, "flask_app_python_dir"),
    ({"nginx_windows_root": "C:\\nginx\\..\\Windows"}, "nginx_windows_root"),
    ({"nssm_service_nssm_dir": "nssm"}, "nssm_service_nssm_dir"),
    ({"nssm_service_executable": "python.exe"}, "nssm_service_executable"),
    ({"nssm_service_arguments": "--port 8001"}, "nssm_service_arguments"),
])
def test_windows_paths_are_refused_on_windows(tmp_path, extra, named):
    """The same classes with Windows facts (validate steps on the controller): host paths must be C:\\..."""
    rc, out = validate_windows(tmp_path, **extra)
    assert rc != 0 and named in out and ("Windows path" in out or "a list" in out), out[-2000:]
    assert "templating" not in out.lower()
