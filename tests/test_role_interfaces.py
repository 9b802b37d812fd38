"""Each role's documented API: defaults/main.yml, meta/argument_specs.yml and README agree."""

import re
import subprocess
import sys

import pytest
import yaml

from conftest import ROOT

ROLES = ["flask_app", "nginx", "nssm_service"]


def load(role, rel):
    return yaml.safe_load((ROOT / "roles" / role / rel).read_text())


def commented_required(role):
    """Variables with no meaningful default stay commented out in defaults (e.g. checksums)."""
    text = (ROOT / "roles" / role / "defaults/main.yml").read_text()
    return set(re.findall(rf"^# ({role}_[a-z0-9_]+):", text, re.M))


@pytest.mark.parametrize("role", ROLES)
def test_argument_specs_match_defaults(role):
    defaults = load(role, "defaults/main.yml")
    options = load(role, "meta/argument_specs.yml")["argument_specs"]["main"]["options"]
    assert set(defaults) - set(options) == set(), "defaults without an argument spec"
    assert set(options) - set(defaults) == commented_required(role), "specs without a default or documented gap"
    for name, spec in options.items():
        assert spec.get("description"), f"{name} has no description"
        if "default" in spec:
            assert spec["default"] == defaults[name], name


@pytest.mark.parametrize("role", ROLES)
def test_every_variable_prefixed_and_in_readme(role):
    readme = (ROOT / "roles" / role / "README.md").read_text()
    options = load(role, "meta/argument_specs.yml")["argument_specs"]["main"]["options"]
    for name in options:
        assert name.startswith(role + "_")
        assert f"`{name}`" in readme, f"{name} missing from roles/{role}/README.md"


@pytest.mark.parametrize("role", ROLES)
def test_templates_carry_ansible_managed(role):
    for tpl in (ROOT / "roles" / role / "templates").glob("*.j2"):
        assert tpl.read_text().startswith("{{ ansible_managed | comment }}"), tpl


def test_readme_variable_tables_are_current():
    res = subprocess.run([sys.executable, str(ROOT / "tools/role_docs.py"), "--check"], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
