"""win-ps and win-tasks through real ansible-lint runs: each defect injected into a copy is reported with
its file and line, and the un-mutated copy passes.

The defects are injected into tests/fixtures/winps (a clean Windows role written for this) and, by
appending tasks and statements, into a copy of the project's own roles; the real roles themselves are
checked by test_real_roles_have_no_findings (and by `make lint`, which enables both rules).
"""

import re
import shutil
import subprocess
from pathlib import Path

import pytest

import win_common
import win_powershell
import win_tasks
from conftest import ROOT, VENV_BIN, venv_env

FIXTURE = ROOT / "tests" / "fixtures" / "winps"
MAIN = "roles/demo/tasks/main.yml"
OUR_IDS = ("win-ps", "win-tasks")

# (file, text to replace, replacement, rule id, file of the finding, text marking the finding's line)
# A marker of None means the last line of the file (a missing '}' is reported where the file ends).
MUTATIONS = [
    ("roles/demo/files/set_params.ps1", "$Ansible.Changed = $false\n", "",
     "win-ps[changed]", MAIN, "- name: Set the registry parameters"),
    ("roles/demo/files/helpers.ps1", "    [bool]$conn\n", "    [bool]$conn\n    if ($conn) {\n",
     "win-ps[syntax]", "roles/demo/files/helpers.ps1", None),
    (MAIN, "      [CmdletBinding(SupportsShouldProcess)]\n      param([string]$Link",
     "      [CmdletBinding()]\n      param([string]$Link",
     "win-ps[check-mode]", MAIN, "- name: Point the current junction at the app"),
    (MAIN, '    path: "{{ role_path }}/files/set_params.ps1"\n    error_action: stop\n',
     '    path: "{{ role_path }}/files/set_params.ps1"\n',
     "win-ps[error-action]", MAIN, "- name: Set the registry parameters"),
    (MAIN, "      param([string]$Link, [string]$Target)\n",
     "      param([string]$Link, [string]$Target)\n      Write-Verbose \"junction under {{ demo_root }}\"\n",
     "win-ps[jinja]", MAIN, 'Write-Verbose "junction under {{ demo_root }}"'),
    (MAIN, ".VersionInfo.FileVersion\n  changed_when", ".VersionInfo.FileVersion)\n  changed_when",
     "win-ps[syntax]", MAIN, ".VersionInfo.FileVersion)"),
    (MAIN, "    force: false\n", "",
     "win-tasks[get-url-force]", MAIN, "- name: Download the app archive"),
    (MAIN, "    creates: '{{ __demo_app }}\\demo.exe'\n", "",
     "win-tasks[unzip-creates]", MAIN, "- name: Unpack the app"),
    (MAIN, "  when:\n    - demo_restart | bool\n", "",
     "win-tasks[restart-when]", MAIN, "- name: Restart the app on request"),
    (MAIN, "    - '{{ demo_root }}\\conf\\tls'\n", "",
     "win-tasks[dest-dir]", MAIN, "- name: Install the TLS certificate"),
    (MAIN, "    dest: '{{ __demo_conf }}\\demo.conf'\n", '    dest: "{{ demo_config_file }}"\n',
     "win-tasks[dest-unresolved]", MAIN, "- name: Render the app config"),
]


def _lint(workdir, *extra):
    return subprocess.run(
        [str(VENV_BIN / "ansible-lint"), "--offline", "--format=pep8", "--profile", "production",
         "-r", str(ROOT / "lint" / "rules"), "--enable-list", "win-ps", "--enable-list", "win-tasks", *extra, "."],
        cwd=workdir, capture_output=True, text=True, env=venv_env(), timeout=600, check=False,
    )


def _findings(output):
    """{(rule id with tag, file, line)} of our rules in ansible-lint's pep8 output."""
    found = set()
    for m in re.finditer(r"^(\S+?):(\d+): ((?:win-ps|win-tasks)\[[\w-]+\])", output, re.M):
        found.add((m.group(3), m.group(1), int(m.group(2))))
    return found


def _line_of(path, marker):
    lines = path.read_text().split("\n")
    if marker is None:
        return len(lines) - 1 if lines[-1] == "" else len(lines)
    hits = [i + 1 for i, line in enumerate(lines) if marker in line]
    assert len(hits) == 1, (path, marker, hits)
    return hits[0]


def _copy_fixture(tmp_path):
    work = tmp_path / "proj"
    shutil.copytree(FIXTURE, work)
    subprocess.run(["git", "init", "-q", str(work)], check=True)
    return work


@pytest.fixture(scope="module")
def clean_run(tmp_path_factory):
    work = _copy_fixture(tmp_path_factory.mktemp("clean"))
    return _lint(work)


def test_clean_fixture_passes_production_profile_and_our_rules(clean_run):
    out = clean_run.stdout + clean_run.stderr
    assert clean_run.returncode == 0, out
    assert "Ignored exception" not in out, out


def test_clean_fixture_passes_the_checker_functions():
    role = FIXTURE / "roles" / "demo"
    found = win_powershell.role_script_problems(role)
    for path in win_common.role_task_files(role):
        for task in win_common.tasks_of_file(path):
            found += win_powershell.check_powershell_task(task) + win_tasks.check_task_in_role(task)
    assert found == []


def test_each_injected_defect_reported_with_file_and_line(tmp_path):
    work = _copy_fixture(tmp_path)
    for rel, old, new, *_ in MUTATIONS:
        path = work / rel
        text = path.read_text()
        assert text.count(old) == 1, (rel, old)
        path.write_text(text.replace(old, new))
    expected = {(rule, rel, _line_of(work / rel, marker)) for *_, rule, rel, marker in MUTATIONS}

    result = _lint(work)
    out = result.stdout + result.stderr
    assert result.returncode != 0, out
    assert "Ignored exception" not in out, out
    assert _findings(out) == expected, out
    assert "missing '}' to close the function statement opened on line 10" in out
    assert "win_get_url has a checksum but not force: false" in out
    assert "dest directory 'c:\\demo\\conf\\tls'" in out


# --- the project's own roles -------------------------------------------------------------------------

APPENDED_TASKS = {
    "roles/nssm_service/tasks/windows/present.yml": """
- name: windows | present | Mutation run without error_action and without Changed
  ansible.windows.win_powershell:
    script: |
      New-Item -ItemType Directory -Path C:\\mutation | Out-Null
""",
    "roles/nginx/tasks/windows/install.yml": """
- name: windows | install | Mutation download without force false
  ansible.windows.win_get_url:
    url: https://example.invalid/x.zip
    dest: '{{ nginx_windows_root }}\\conf\\x.zip'
    checksum: "0000000000000000000000000000000000000000000000000000000000000000"
    checksum_algorithm: sha256

- name: windows | install | Mutation write into a directory nobody creates
  ansible.windows.win_copy:
    content: x
    dest: '{{ nginx_windows_root }}\\mutation-only\\x.txt'
""",
}
UNCLOSED_IF = "\nif ($Ansible.CheckMode) {\n    Write-Verbose 'check mode'\n"


def test_defects_appended_to_the_real_roles_reported(tmp_path):
    work = tmp_path / "proj"
    work.mkdir()
    for name in ("roles", "lint"):
        shutil.copytree(ROOT / name, work / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in (".ansible-lint", "ansible.cfg"):
        shutil.copy(ROOT / name, work / name)
    for rel, text in APPENDED_TASKS.items():
        path = work / rel
        path.write_text(path.read_text().rstrip("\n") + "\n" + text)
    ps1 = work / "roles/nssm_service/files/nssm_parameters.ps1"
    if_line = len(ps1.read_text().rstrip("\n").split("\n")) + 2
    ps1.write_text(ps1.read_text().rstrip("\n") + "\n" + UNCLOSED_IF)

    # The copied .ansible-lint enables both rules; `-t windows` runs only the project's Windows rules.
    result = subprocess.run([str(VENV_BIN / "ansible-lint"), "--offline", "--format=pep8", "-t", "windows"],
                            cwd=work, capture_output=True, text=True, env=venv_env(), timeout=600, check=False)
    out = result.stdout + result.stderr
    found = _findings(out)
    present, install = (work / r for r in APPENDED_TASKS)
    p_line = _line_of(present, "Mutation run without error_action")
    i_get = _line_of(install, "Mutation download without force false")
    i_copy = _line_of(install, "Mutation write into a directory nobody creates")
    assert {(r, f, ln) for r, f, ln in found if f != "roles/nssm_service/files/nssm_parameters.ps1"} >= {
        ("win-ps[error-action]", "roles/nssm_service/tasks/windows/present.yml", p_line),
        ("win-ps[changed]", "roles/nssm_service/tasks/windows/present.yml", p_line),
        ("win-tasks[get-url-force]", "roles/nginx/tasks/windows/install.yml", i_get),
        ("win-tasks[dest-dir]", "roles/nginx/tasks/windows/install.yml", i_copy),
    }, out
    syntax = [ln for r, f, ln in found if f == "roles/nssm_service/files/nssm_parameters.ps1" and r == "win-ps[syntax]"]
    assert syntax and if_line <= syntax[0] <= if_line + 2, out
    assert f"opened on line {if_line}" in out, out
    assert result.returncode != 0


def noqa_tags(path, line):
    """The rules a task skips, as ansible-lint reads them: `# noqa: rule[tag] ...` on the task's first line."""
    text = path.read_text(encoding="utf-8").splitlines()[line - 1]
    return set(text.split("# noqa:", 1)[1].split()) if "# noqa:" in text else set()


def real_role_findings():
    found = []
    for role in sorted(p for p in (ROOT / "roles").iterdir() if p.is_dir()):
        found += [f"{p.path.relative_to(ROOT)}:{p.line}: win-ps[{p.kind}] {p.message}"
                  for p in win_powershell.role_script_problems(role)]
        for path in win_common.role_task_files(role):
            for task in win_common.tasks_of_file(path):
                where = f"{path.relative_to(ROOT)}:{task.line}"
                skipped = noqa_tags(path, task.line)
                for p in win_powershell.check_powershell_task(task):
                    at = f"{Path(p.path).resolve().relative_to(ROOT)}:{p.line}" if p.path else where
                    found.append(f"{at}: win-ps[{p.kind}] {p.message}")
                found += [f"{where}: win-tasks[{p.kind}] {p.message}" for p in win_tasks.check_task_in_role(task)
                          if not {"win-tasks", f"win-tasks[{p.kind}]"} & skipped]
    return found


def test_real_roles_have_no_findings():
    """The roles as they are: every finding listed (`make lint` reports the same through ansible-lint)."""
    found = real_role_findings()
    assert found == [], "\n".join(found)

