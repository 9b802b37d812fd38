"""The project consumed as Ansible content: the collection (galaxy.yml at the root) builds, installs offline
into an empty collections path and converges a host from its own playbook, which names roles by FQCN only;
licence, version and changelog are stated once; the execution environment's build context; the deploy run
the way AWX runs a job (ansible-runner, a private data dir), then again with changed=0, with the load
balancer hooks set from the inventory."""

import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, VENV_BIN, venv_env

FLEET, NET, HOSTS = "coll", "10.231.12", ["coll1", "coll2"]
GALAXY = yaml.safe_load((ROOT / "galaxy.yml").read_text())
FQCN = f"{GALAXY['namespace']}.{GALAXY['name']}"
ROLES = sorted(p.name for p in (ROOT / "roles").iterdir() if (p / "tasks/main.yml").exists())


def clean_env(**extra):
    """The venv's tools without the repository's ansible.cfg: what a user of the installed content has."""
    env = {k: v for k, v in venv_env().items() if not k.startswith("ANSIBLE_")}
    return {**env, "ANSIBLE_NOCOLOR": "1", "ANSIBLE_HOST_KEY_CHECKING": "True", **extra}


def run(*cmd, cwd=ROOT, env=None, timeout=900):
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, cwd=cwd, env=env or venv_env(),
                          timeout=timeout, check=False)


def recap(out, host):
    m = re.search(rf"^{host}\s+: ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", out, re.M)
    assert m, out[-3000:]
    return dict(zip(("ok", "changed", "unreachable", "failed"), map(int, m.groups())))


@pytest.fixture(scope="module")
def tarball(tmp_path_factory):
    out = tmp_path_factory.mktemp("build")
    res = run(VENV_BIN / "ansible-galaxy", "collection", "build", "--output-path", out, ".")
    assert res.returncode == 0, res.stdout + res.stderr
    (path,) = out.glob("*.tar.gz")
    return path


def test_licence_version_and_changelog_are_stated_once():
    assert (ROOT / "LICENSE").read_text().startswith("MIT License")
    assert GALAXY["license"] == ["MIT"]
    for role in ROLES:
        meta = yaml.safe_load((ROOT / f"roles/{role}/meta/main.yml").read_text())["galaxy_info"]
        assert meta["license"] == "MIT" and meta["namespace"] == GALAXY["namespace"], role
        assert "version" not in meta, role  # the version lives in galaxy.yml only
    # CHANGELOG.md is generated from changelogs/ for galaxy.yml's version, and the fragments are valid.
    changes = yaml.safe_load((ROOT / "changelogs/changelog.yaml").read_text())
    assert GALAXY["version"] in changes["releases"]
    assert re.search(rf"^## v{re.escape(GALAXY['version']).replace('.', r'\\.')}$",
                     (ROOT / "CHANGELOG.md").read_text(), re.M)
    lint = run(VENV_BIN / "antsibull-changelog", "lint")
    assert lint.returncode == 0, lint.stdout + lint.stderr


def test_collection_tarball_holds_the_content_and_nothing_of_the_workbench(tarball):
    assert tarball.name == f"{GALAXY['namespace']}-{GALAXY['name']}-{GALAXY['version']}.tar.gz"
    with tarfile.open(tarball) as tar:
        names = set(tar.getnames())
        manifest = json.load(tar.extractfile("MANIFEST.json"))
    for role in ROLES:
        assert f"roles/{role}/tasks/main.yml" in names and f"roles/{role}/meta/argument_specs.yml" in names
    assert {"LICENSE", "meta/runtime.yml", "playbooks/deploy.yml", "plugins/filter/quoting.py"} <= names
    assert not [n for n in names if n.split("/")[0] in {".venv", "build", "tools", "collections", "tests", ".git"}]
    assert manifest["collection_info"]["version"] == GALAXY["version"]
    assert manifest["collection_info"]["dependencies"] == GALAXY["dependencies"]


def role_references(node):
    """Every role a playbook or task file names (include_role, import_role, a play's roles)."""
    if isinstance(node, list):
        for item in node:
            yield from role_references(item)
    elif isinstance(node, dict):
        for key, value in node.items():
            if key.split(".")[-1] in ("include_role", "import_role") and isinstance(value, dict):
                yield value["name"]
            elif key == "roles" and isinstance(value, list):
                yield from (r if isinstance(r, str) else r.get("role", r.get("name")) for r in value)
            else:
                yield from role_references(value)


def test_playbooks_and_roles_name_roles_by_fqcn_only():
    """A team's own `nginx` or `flask_app` role on its roles path can never be picked up instead of ours."""
    files = [*ROOT.glob("playbooks/*.yml"), ROOT / "deploy.yml", *ROOT.glob("roles/*/tasks/**/*.yml"),
             *ROOT.glob("molecule/*/*.yml"), *ROOT.glob("molecule/*/tasks/*.yml")]
    names = {(f.relative_to(ROOT), name) for f in files for name in role_references(yaml.safe_load(f.read_text()))}
    assert {n for _, n in names} >= {f"{FQCN}.{role}" for role in ROLES}
    assert not [(f, n) for f, n in names if not n.startswith(f"{FQCN}.")]


def test_execution_environment_build_context(tmp_path):
    """ansible-builder writes the build context offline (building the image needs a container registry)."""
    res = run(VENV_BIN / "ansible-builder", "create", "-f", "execution-environment.yml", "-c", tmp_path / "ee")
    assert res.returncode == 0, res.stdout + res.stderr
    build = tmp_path / "ee/_build"
    containerfile = next(p for p in (tmp_path / "ee/Containerfile", tmp_path / "ee/Dockerfile") if p.exists())
    text = containerfile.read_text()
    pins = dict(re.findall(r"^([A-Za-z0-9_.-]+)==(\S+)", (ROOT / "requirements.txt").read_text(), re.M))
    assert f"ansible-core=={pins['ansible-core']}" in text and f"ansible-runner=={pins['ansible-runner']}" in text
    python = (build / "requirements.txt").read_text()
    assert f"pypsrp[kerberos]=={pins['pypsrp']}" in python and f"pywinrm[kerberos]=={pins['pywinrm']}" in python
    collections = {c["name"] for c in yaml.safe_load((build / "requirements.yml").read_text())["collections"]}
    assert set(GALAXY["dependencies"]) <= collections
    assert "krb5-workstation" in (build / "bindep.txt").read_text()


# -- on local hosts ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def fleet():
    if os.geteuid() != 0:
        pytest.skip("test hosts need root")
    tool = [sys.executable, ROOT / "tools/testhosts.py"]
    run(*tool, "down", f"--fleet={FLEET}")
    up = run(*tool, "up", f"--fleet={FLEET}", f"--count={len(HOSTS)}", f"--net={NET}", timeout=600)
    assert up.returncode == 0, up.stderr
    yield yaml.safe_load((ROOT / f"build/hosts/{FLEET}/hosts.yml").read_text())
    run(*tool, "down", f"--fleet={FLEET}")


@pytest.fixture(scope="module")
def wheelhouse():
    """The wheelhouse the other host tests use (built once per app version and lock, then reused)."""
    return ROOT / "build/wheelhouse"


def healthy_backends(host):
    ports = []
    for port in (8001, 8002):
        out = subprocess.run(["ip", "netns", "exec", f"ffh-{host}", "curl", "-s", "--max-time", "5",
                              f"http://127.0.0.1:{port}/healthz"], capture_output=True, text=True, check=False).stdout
        ports += [port] if out.startswith("{") and json.loads(out).get("port") == port else []
    return ports


def project_copy(dest: Path):
    """The repository as AWX checks it out into a job's project directory (tracked files, links kept)."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True,
                           text=True, check=True).stdout.split("\n")
    for name in filter(None, files):
        src, dst = ROOT / name, dest / name
        if not src.exists() and not src.is_symlink():
            continue
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dst, follow_symlinks=False)


def installed_collection_job(tarball, wheelhouse, work):
    """coll1 from the collection built and installed offline into an empty collections path, in a user's
    directory: no ansible.cfg, the installed collection only (its dependencies are the ones the pinned ansible
    package bundles), the test fleet's inventory and its offline apt settings."""
    collections = work / "collections"
    install = run(VENV_BIN / "ansible-galaxy", "collection", "install", "--offline", "-p", collections, tarball,
                  cwd=work, env=clean_env())
    assert install.returncode == 0, install.stdout + install.stderr
    installed = collections / "ansible_collections" / GALAXY["namespace"] / GALAXY["name"]
    shutil.copy(ROOT / f"build/hosts/{FLEET}/hosts.yml", work / "hosts.yml")
    shutil.copytree(ROOT / "inventory/local/group_vars", work / "group_vars")
    env = clean_env(ANSIBLE_COLLECTIONS_PATH=str(collections))
    cmd = [VENV_BIN / "ansible-playbook", f"{FQCN}.deploy", "-i", work / "hosts.yml", "-l", HOSTS[0],
           "-e", f"flask_app_wheelhouse_dir={wheelhouse}"]
    return {"installed": installed, "env": env, "cwd": work, "cmd": cmd}


def awx_job(fleet, wheelhouse, work):
    """coll2 the way an AWX job runs: ansible-runner on a private data dir - project/ (the checkout), inventory/
    (the key not in it), env/ssh_key (the machine credential's key, loaded into ssh-agent), env/extravars -
    with load balancer hooks shipped in the project next to the playbooks and set from the inventory (as an
    AWX inventory source would; docs/awx.md): they record each call on the controller."""
    host, pdd, events = HOSTS[1], work / "pdd", work / "lb-events.log"
    project_copy(pdd / "project")
    (pdd / "project/playbooks/lb").mkdir()
    for step in ("drain", "undrain"):
        (pdd / f"project/playbooks/lb/{step}.yml").write_text(yaml.safe_dump([{
            "name": f"Record the {step} call",
            "ansible.builtin.shell": f'echo "{step} {{{{ inventory_hostname }}}}" >> {events}',
            "delegate_to": "localhost", "changed_when": False}]))
    inventory = json.loads(json.dumps(fleet))
    group = inventory["all"]["children"]["app_servers"]
    group["hosts"] = {host: group["hosts"][host]}
    del group["vars"]["ansible_ssh_private_key_file"]
    group["vars"].update({"nginx_linux_apt_update_cache": False, "flask_app_linux_apt_update_cache": False,
                          "deploy_lb_drain_tasks": "{{ playbook_dir }}/lb/drain.yml",
                          "deploy_lb_undrain_tasks": "{{ playbook_dir }}/lb/undrain.yml"})
    (pdd / "inventory").mkdir()
    (pdd / "inventory/hosts.yml").write_text(yaml.safe_dump(inventory))
    (pdd / "env").mkdir()
    (pdd / "env/ssh_key").write_text((ROOT / "build/ssh/id_ed25519").read_text())
    (pdd / "env/extravars").write_text(yaml.safe_dump({"flask_app_wheelhouse_dir": str(wheelhouse)}))
    return {"pdd": pdd, "events": events, "env": clean_env(), "cwd": ROOT,
            "cmd": [VENV_BIN / "ansible-runner", "run", pdd, "-p", "deploy.yml"]}


@pytest.fixture(scope="module")
def jobs(fleet, tarball, wheelhouse, tmp_path_factory):
    """Both ways of running the content, on their own hosts at the same time: a first run, the health of the
    host after it, and a second run."""
    jobs = {"collection": installed_collection_job(tarball, wheelhouse, tmp_path_factory.mktemp("user")),
            "awx": awx_job(fleet, wheelhouse, tmp_path_factory.mktemp("awx"))}
    hosts = {"collection": HOSTS[0], "awx": HOSTS[1]}

    def first_then_again(name):
        job = jobs[name]
        job["first"] = run(*job["cmd"], cwd=job["cwd"], env=job["env"])
        job["healthy"] = healthy_backends(hosts[name])
        job["again"] = run(*job["cmd"], cwd=job["cwd"], env=job["env"])
        return job

    with ThreadPoolExecutor(max_workers=2) as pool:
        list(pool.map(first_then_again, jobs))
    return jobs


@pytest.mark.hosts
@pytest.mark.extended
def test_installed_collection_converges_a_host_from_its_fqcn_playbook(jobs):
    job = jobs["collection"]
    first, again = job["first"], job["again"]
    assert first.returncode == 0, first.stdout[-4000:] + first.stderr[-2000:]
    # The roles ran from the installed collection, not from this checkout.
    assert str(ROOT / "roles") not in first.stdout and str(job["installed"]) in run(
        VENV_BIN / "ansible-doc", "-t", "filter", f"{FQCN}.win_argv", cwd=job["cwd"], env=job["env"]).stdout
    assert recap(first.stdout, HOSTS[0])["changed"] > 0
    assert job["healthy"] == [8001, 8002]
    assert again.returncode == 0 and recap(again.stdout, HOSTS[0])["changed"] == 0, again.stdout[-4000:]


@pytest.mark.hosts
@pytest.mark.extended
def test_deploy_runs_as_an_awx_job_under_ansible_runner_then_changes_nothing(jobs):
    job, host = jobs["awx"], HOSTS[1]
    for res in (job["first"], job["again"]):
        assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-2000:]
    assert recap(job["first"].stdout, host)["changed"] > 0 and recap(job["again"].stdout, host)["changed"] == 0
    assert job["healthy"] == [8001, 8002]
    assert job["events"].read_text().split("\n")[:2] == [f"drain {host}", f"undrain {host}"]
    # Each job leaves its artifacts as AWX keeps them: the job's events, its status and return code.
    runs = sorted((job["pdd"] / "artifacts").iterdir(), key=lambda p: p.stat().st_mtime)
    assert len(runs) == 2 and (runs[-1] / "rc").read_text().strip() == "0"
    assert (runs[-1] / "status").read_text().strip() == "successful"
