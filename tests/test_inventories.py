"""The shipped inventories and collection requirements are consistent with what is installed."""

import json
import subprocess

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
    assert hv["ansible_password"] == "{{ vault_windows_password }}"  # the secret only by reference
    assert "WARNING" not in inv.stderr


def test_deploy_syntax_and_task_list_against_prod_inventory():
    res = subprocess.run([str(VENV_BIN / "ansible-playbook"), "deploy.yml", "-i", "inventory/prod", "--list-tasks"],
                         capture_output=True, text=True, env=venv_env(), cwd=ROOT, check=False)
    assert res.returncode == 0, res.stderr
    for step in ("Install the release and run its backends", "Put nginx in front of the backends",
                 "Pass the health gate through nginx"):
        assert step in res.stdout
