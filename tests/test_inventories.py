"""The shipped inventories and collection requirements are consistent with what is installed."""

import json
import re
import shutil
import subprocess
import sys

import pytest
import yaml
from packaging.specifiers import SpecifierSet

from conftest import ROOT, VENV_BIN, venv_env


def test_installed_collections_satisfy_requirements_yml():
    wanted = yaml.safe_load((ROOT / "requirements.yml").read_text())["collections"]
    listing = subprocess.run([str(VENV_BIN / "ansible-galaxy"), "collection", "list", "--format=json"],
                             capture_output=True, text=True, env=venv_env(), check=True).stdout
    installed = {}
    for per_path in json.loads(listing).values():
        for name, info in per_path.items():
            installed.setdefault(name, info["version"])
    for c in wanted:
        assert c["name"] in installed, c["name"]
        assert installed[c["name"]] in SpecifierSet(c["version"]), (c["name"], installed[c["name"]])


def test_prod_inventory_is_windows_over_psrp_https_with_validation():
    inv = subprocess.run([str(VENV_BIN / "ansible-inventory"), "-i", str(ROOT / "inventory/prod"), "--list"],
                         capture_output=True, text=True, env=venv_env(), cwd=ROOT, check=True)
    data = json.loads(inv.stdout)
    hosts = data["windows"]["hosts"]
    assert len(hosts) >= 2 and set(hosts) <= set(data["app_servers"].get("hosts", []) + hosts)
    hv = data["_meta"]["hostvars"][hosts[0]]
    assert hv["ansible_connection"] == "ansible.builtin.psrp"
    assert hv["ansible_psrp_protocol"] == "https" and hv["ansible_psrp_cert_validation"] == "validate"
    # The secret only by reference, and stepping aside when the vault is absent (an AWX credential supplies it).
    assert hv["ansible_password"] == "{{ vault_windows_password | default(omit) }}"
    assert "WARNING" not in inv.stderr


@pytest.mark.parametrize("extra, user", [([], "awx-credential-user"),
                                         (["-e", "vault_windows_user=vault-user"], "vault-user")])
def test_prod_credentials_come_from_the_vault_or_else_from_the_job_credential(tmp_path, extra, user):
    """An AWX machine credential arrives as -u (and the password prompt); the inventory must not override it
    unless the vault is there. Seen in what the PSRP connection plugin says it connects as (to a closed port)."""
    shutil.copytree(ROOT / "inventory/prod/group_vars", tmp_path / "group_vars")
    (tmp_path / "hosts.yml").write_text("all:\n  children:\n    app_servers:\n      children:\n        windows:\n"
                                        "          hosts:\n            web01:\n              ansible_host: 127.0.0.9\n")
    res = subprocess.run([str(VENV_BIN / "ansible"), "web01", "-i", str(tmp_path / "hosts.yml"), "-m",
                          "ansible.windows.win_ping", "-u", "awx-credential-user", "-vvv", *extra],
                         capture_output=True, text=True, env=venv_env(), cwd=ROOT, timeout=120, check=False)
    assert f"ESTABLISH PSRP CONNECTION FOR USER: {user} " in res.stdout, res.stdout[-2000:] + res.stderr[-2000:]


def test_deploy_syntax_and_task_list_against_prod_inventory():
    res = subprocess.run([str(VENV_BIN / "ansible-playbook"), "deploy.yml", "-i", "inventory/prod", "--list-tasks"],
                         capture_output=True, text=True, env=venv_env(), cwd=ROOT, check=False)
    assert res.returncode == 0, res.stderr
    for step in ("Install the release and run its backends", "Put nginx in front of the backends",
                 "Pass the health gate through nginx"):
        assert step in res.stdout


# ------------------------------------------------------------------ transport policy (tools/inventory_policy.py)

SECURE = {"ansible_connection": "psrp", "ansible_psrp_protocol": "https", "ansible_psrp_cert_validation": "validate",
          "ansible_psrp_auth": "negotiate"}


@pytest.mark.parametrize("name,extra,rule", [
    ("cert validation off", {"ansible_psrp_cert_validation": "ignore"}, "cert-validation"),
    ("winrm cert validation off", {"ansible_connection": "winrm", "ansible_winrm_server_cert_validation": "ignore"},
     "cert-validation"),
    ("basic over http", {"ansible_psrp_auth": "basic", "ansible_psrp_protocol": "http"}, "basic-over-http"),
    ("basic on 5985", {"ansible_winrm_transport": "basic", "ansible_port": 5985}, "basic-over-http"),
    ("no message encryption", {"ansible_psrp_message_encryption": "never"}, "unencrypted"),
    ("AllowUnencrypted", {"winrm_setup": "winrm set winrm/config/service @{AllowUnencrypted=\"true\"}"},
     "unencrypted"),
    ("old CredSSP", {"ansible_psrp_auth": "credssp"}, "credssp-version"),
    ("read timeout not above the operation timeout", {"ansible_psrp_operation_timeout": 30}, "psrp-timeouts"),
    ("operation timeout above the connection timeout",
     {"ansible_psrp_operation_timeout": 40, "ansible_psrp_read_timeout": 50}, "psrp-timeouts"),
])
def test_inventory_policy_refuses_insecure_transport(tmp_path, name, extra, rule):
    inv = tmp_path / "prod"
    (inv / "group_vars/windows").mkdir(parents=True)
    (inv / "group_vars/windows/connection.yml").write_text(yaml.safe_dump({**SECURE, **extra}))
    policy = [sys.executable, str(ROOT / "tools/inventory_policy.py"), str(tmp_path)]
    res = subprocess.run(policy, capture_output=True, text=True, check=False)
    assert res.returncode == 1 and f"[{rule}]" in res.stderr, (name, res.stderr)
    # The same settings in an inventory marked as a lab are reported, not failed.
    (inv / "group_vars/all").mkdir()
    (inv / "group_vars/all/lab.yml").write_text("inventory_lab: true\n")
    res = subprocess.run(policy, capture_output=True, text=True, check=False)
    assert res.returncode == 0 and f"[{rule}]" in res.stdout


def test_inventory_policy_accepts_the_shipped_inventories_and_credssp_5(tmp_path):
    inv = tmp_path / "ok/group_vars/windows"
    inv.mkdir(parents=True)
    (inv / "c.yml").write_text(yaml.safe_dump({**SECURE, "ansible_psrp_auth": "credssp",
                                               "ansible_psrp_credssp_minimum_version": 5}))
    for target in (tmp_path, ROOT / "inventory"):
        res = subprocess.run([sys.executable, str(ROOT / "tools/inventory_policy.py"), str(target)],
                             capture_output=True, text=True, check=False)
        assert res.returncode == 0, res.stderr


def test_ansible_cfg_has_only_keys_ansible_knows():
    """An unknown key is ignored silently by ansible-playbook (a `result_format` once left the output
    format to chance); ansible-config validate names it."""
    res = subprocess.run([str(VENV_BIN / "ansible-config"), "validate", "-t", "all"], capture_output=True, text=True,
                         env={**venv_env(), "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg")}, cwd=ROOT, check=False)
    assert res.returncode == 0 and "unknown" not in (res.stdout + res.stderr).lower(), res.stdout + res.stderr


@pytest.mark.parametrize("extra, refused", [([], "deploy_serial"), (["-e", "deploy_serial=1"], "flask_app_backend_count")])
def test_rollout_settings_the_play_cannot_see_are_refused(tmp_path, extra, refused):
    """serial / max_fail_percentage are play keywords: Ansible templates them without host variables, so a
    deploy_serial in the inventory would be ignored. The deploy refuses it before anything changes (hosts on
    the local connection; an invalid backend count stops the second case at validation, also before any
    change)."""
    (tmp_path / "group_vars/app_servers").mkdir(parents=True)
    (tmp_path / "group_vars/app_servers/main.yml").write_text("deploy_serial: 1\nflask_app_backend_count: 0\n")
    (tmp_path / "hosts.yml").write_text("all:\n  children:\n    app_servers:\n      hosts:\n"
                                        "        a: {ansible_connection: local}\n        b: {ansible_connection: local}\n")
    res = subprocess.run([str(VENV_BIN / "ansible-playbook"), "deploy.yml", "-i", str(tmp_path / "hosts.yml"), *extra],
                         capture_output=True, text=True, env=venv_env(), cwd=ROOT, timeout=300, check=False)
    out = res.stdout + res.stderr
    assert res.returncode != 0 and refused in out.split("TASK [Refuse rollout settings")[-1], out[-3000:]
    assert re.search(r"^a\s+: ok=\d+\s+changed=0 ", out, re.M), out[-3000:]
