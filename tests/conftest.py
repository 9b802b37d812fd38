import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
# Test fleets boot with the deploy's packages preinstalled (tools/testhosts.py --image deploy): each module's
# first deploy skips the package installs. Molecule (make molecule) keeps the bare host the roles install on.
os.environ.setdefault("TESTHOSTS_IMAGE", "deploy")
sys.path.insert(0, str(ROOT / "lint" / "rules"))


def load_file_module(rel: str):
    """Import a Python file of the project (e.g. a role's filter plugin) by its path."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(Path(rel).stem, ROOT / rel)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def venv_env() -> dict:
    """Environment for tools from the venv (molecule and ansible-lint call other venv binaries)."""
    env = dict(os.environ)
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env.setdefault("ANSIBLE_NOCOLOR", "1")
    env["NO_COLOR"] = "1"
    return env


sys.path.insert(0, str(ROOT / "tools"))
from fleetlib import wrk_summary as parse_wrk  # noqa: E402,F401 - the one wrk parser (tests and bench)


@pytest.fixture(scope="module", autouse=True)
def fleet_fact_cache(request, tmp_path_factory):
    """A module on test hosts keeps its hosts' facts between its playbook runs (gathering = smart): each play
    after the first skips the gathering (~2 s a run on a busy 2-core machine, dozens of runs a module). The
    facts the roles read (os_family, python, processor_vcpus) do not change while a fleet is up; the cache
    lives and dies with the module."""
    if request.node.get_closest_marker("hosts") is None:
        yield
        return
    os.environ["ANSIBLE_CACHE_PLUGIN"] = "ansible.builtin.jsonfile"
    os.environ["ANSIBLE_CACHE_PLUGIN_CONNECTION"] = str(tmp_path_factory.mktemp("facts"))
    yield
    for key in ("ANSIBLE_CACHE_PLUGIN", "ANSIBLE_CACHE_PLUGIN_CONNECTION"):
        os.environ.pop(key, None)


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items):
    """A module's SLOW_FORMS ({fleet parameter: test names}) marks those forms slow (make test-slow only);
    tryfirst: before -m deselects by marker."""
    for item in items:
        forms = getattr(item.module, "SLOW_FORMS", None)
        callspec = getattr(item, "callspec", None)
        if forms and callspec and item.originalname in forms.get(callspec.params.get("fleet"), ()):
            item.add_marker(pytest.mark.slow)
