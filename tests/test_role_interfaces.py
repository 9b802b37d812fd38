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
    specs = load(role, "meta/argument_specs.yml")["argument_specs"]
    options = specs["main"]["options"]
    # Inputs of other entry points (e.g. nssm_service's fetch_artifact) are specified there.
    every_option = {name for spec in specs.values() for name in spec["options"]}
    assert set(defaults) - every_option == set(), "defaults without an argument spec"
    assert set(options) - set(defaults) == commented_required(role), "specs without a default or documented gap"
    for spec_entry in specs.values():
        for name, spec in spec_entry["options"].items():
            assert spec.get("description"), f"{name} has no description"
            if "default" in spec and name in defaults:
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


@pytest.mark.parametrize("role", ROLES)
def test_required_settings_are_marked_required_in_the_readme(role):
    readme = (ROOT / "roles" / role / "README.md").read_text()
    for entry, spec in load(role, "meta/argument_specs.yml")["argument_specs"].items():
        for name, opt in spec["options"].items():
            if opt.get("required"):
                assert re.search(rf"^\| `{name}` \| [^|]+ \| \*\*required\*\* \|", readme, re.M), (entry, name)


def test_every_role_has_meta_with_one_licence():
    metas = {role: load(role, "meta/main.yml")["galaxy_info"] for role in ROLES}
    assert {m["license"] for m in metas.values()} == {"MIT"}
    assert all(m["role_name"] == role for role, m in metas.items())
