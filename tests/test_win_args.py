"""The win-args lint rule: unit checks against installed module docs, and real ansible-lint runs."""

import re
import shutil
import subprocess

import pytest

import win_args
from conftest import ROOT, VENV_BIN, venv_env


def kinds(module, args):
    return sorted((p.kind, p.option) for p in win_args.check_task(module, args))


@pytest.mark.parametrize(
    ("module", "args", "expected"),
    [
        ("ansible.windows.win_service", {"name": "a", "bogus": 1}, [("unknown", "bogus")]),
        ("community.windows.win_nssm", {"name": "a", "start_mode": "automatic"}, [("choices", "start_mode")]),
        ("ansible.windows.win_template", {"src": "a.j2"}, [("required", "dest")]),
        ("community.windows.win_nssm", {"application": "x.exe"}, [("required", "name")]),
        ("win_service", {"name": "a", "state": "running"}, [("choices", "state")]),  # short name resolves
        ("community.windows.win_nssm", {"name": "a", "app_stop_method_skip": 16}, [("choices", "app_stop_method_skip")]),
        ("ansible.windows.win_service",
         {"name": "a", "failure_actions": [{"type": "restart", "delay_ms": 1000}, {"type": "explode"}]},
         [("choices", "type")]),  # sub-options of a list of dicts
        ("ansible.windows.win_service",
         {"name": "a", "failure_actions": [{"type": "restart", "dealy_ms": 1}]}, [("unknown", "dealy_ms")]),
        ("ansible.windows.win_acl", {"path": "C:\\x", "user": "u", "rights": "Modify", "type": "allow",
                                     "inherit": "ContainerInherit, ObjectInheritance"}, [("choices", "inherit")]),
        # documented in a YAML sidecar (slurp.yml beside slurp.ps1), not a .py stub
        ("ansible.windows.slurp", {"source": "C:\\x"}, [("required", "src"), ("unknown", "source")]),
    ],
)
def test_bad_tasks_flagged(module, args, expected):
    assert kinds(module, args) == expected


@pytest.mark.parametrize(
    ("module", "args"),
    [
        ("ansible.windows.win_service", {"name": "a", "state": "started", "start_mode": "auto"}),
        ("community.windows.win_nssm",
         {"name": "a", "application": "C:\\x.exe", "start_mode": "delayed", "app_rotate_online": 1}),
        ("community.windows.win_nssm", {"name": "a", "chdir": "C:\\app", "user": "NT SERVICE\\a"}),  # aliases
        ("ansible.windows.win_template", {"src": "a.j2", "dest": "C:\\a", "newline_sequence": "\\r\\n"}),
        ("ansible.windows.win_command", {"_raw_params": "whoami", "chdir": "C:\\"}),  # free form
        ("chocolatey.chocolatey.win_chocolatey", {"name": ["nginx"], "state": "present", "version": "1.26.2"}),
        # documented as "a comma separated list"
        ("ansible.windows.win_acl", {"path": "C:\\x", "user": "u", "rights": "Modify", "type": "allow",
                                     "inherit": "ContainerInherit, ObjectInherit"}),
    ],
)
def test_correct_tasks_clean(module, args):
    assert kinds(module, args) == []


def test_each_list_item_checked_against_choices():
    spec = {"name": {"required": True}, "profiles": {"type": "list", "choices": ["domain", "private", "public"]}}
    found = win_args.check_options(spec, {"name": "x", "profiles": ["domain", "pubic", "{{ p }}"]}, "m")
    assert [(p.kind, p.option) for p in found] == [("choices", "profiles")]
    assert "'pubic'" in found[0].message


def test_jinja_values_skipped():
    args = {"name": "a", "start_mode": "{{ svc_mode }}", "state": "{{ 'started' if x else 'stopped' }}"}
    assert kinds("community.windows.win_nssm", args) == []
    assert kinds("ansible.windows.win_service", "{{ all_args }}") == []


@pytest.mark.parametrize("module", ["ansible.builtin.copy", "ansible.builtin.template", "no.such.module"])
def test_non_windows_modules_ignored(module):
    assert win_args.check_task(module, {"definitely_bogus": 1}) == []


def _lint(workdir, *extra):
    return subprocess.run(
        [str(VENV_BIN / "ansible-lint"), "--offline", "--format=pep8", "--profile", "production", *extra, "."],
        cwd=workdir, capture_output=True, text=True, env=venv_env(), timeout=300, check=False,
    )


def test_ansible_lint_flags_file_task_and_option_where_plain_lint_passes(tmp_path):
    """The three acceptance cases: stock ansible-lint passes them, ours names file, task and option."""
    work = tmp_path / "proj"
    shutil.copytree(ROOT / "tests" / "fixtures" / "winargs", work)
    subprocess.run(["git", "init", "-q", str(work)], check=True)

    plain = _lint(work)
    assert plain.returncode == 0, plain.stdout + plain.stderr

    # Profiles list only ansible-lint's own rules: a project rule is switched on by enable_list.
    ours = _lint(work, "-r", str(ROOT / "lint" / "rules"), "--enable-list", "win-args")
    out = ours.stdout + ours.stderr
    assert ours.returncode != 0
    for pattern in (
        r"roles/demo/tasks/main\.yml:2: win-args\[unknown\]\S*: task 'Bogus option on win_service'",
        r"roles/demo/tasks/main\.yml:8: win-args\[choices\]\S*: task 'Wrong start_mode on win_nssm'",
        r"roles/demo/tasks/main\.yml:14: win-args\[required\]\S*: task 'Missing dest on win_template'",
    ):
        assert re.search(pattern, out), out
    assert "unknown option 'bogus_option'" in out
    assert "'start_mode' has value 'automatic'" in out
    assert "missing required option 'dest'" in out
