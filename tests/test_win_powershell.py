"""The win-ps lint rule's checks (PowerShell syntax, $Ansible.Changed, check mode, error_action), no Windows."""

import textwrap
from pathlib import Path

import pytest

import win_common
import win_powershell as wp

CLEAN_SCRIPT = """\
[CmdletBinding(SupportsShouldProcess)]
param([string]$Path)
$ErrorActionPreference = 'Stop'
$Ansible.Changed = $false
if (-not (Test-Path -LiteralPath $Path)) {
    if ($PSCmdlet.ShouldProcess($Path, 'Create')) {
        New-Item -ItemType Directory -Path $Path | Out-Null
    }
    $Ansible.Changed = $true
}
"""


def tasks(text, path="roles/demo/tasks/main.yml"):
    return list(win_common.iter_tasks(win_common.load_yaml(textwrap.dedent(text)), Path(path)))


def kinds(problems):
    return sorted(p.kind for p in problems)


def ps_task(script, extra="    error_action: stop\n", keywords=""):
    body = textwrap.indent(textwrap.dedent(script), " " * 6)
    return tasks(f"---\n- name: T\n  ansible.windows.win_powershell:\n    script: |\n{body}{extra}{keywords}")[0]


# --- syntax ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("script", [
    CLEAN_SCRIPT,
    "Get-Service -Name 'a', 'b' | Where-Object Status -eq Running\n",
    "$h = @{ a = 1; b = @(1, 2) }\nforeach ($k in $h.Keys) { \"$k=$($h[$k])\" }\n",
    "try { throw 'x' } catch [System.Exception] { $_.Exception.Message } finally { $null }\n",
    "$data = switch ($kind) {\n    'DWord' { [int]$v }\n    default { [string]$v }\n}\n",
    "& \"$env:ProgramFiles\\app\\app.exe\" --flag 2>&1 | Out-Null\n",
])
def test_valid_powershell_parses(script):
    assert wp.syntax_errors(script) == []


@pytest.mark.parametrize(("script", "row", "fragment"), [
    ("if ($a) {\n    Write-Output 1\n\nWrite-Output 2\n", 3, "missing '}' to close the statement block opened on line 1"),
    ("$x = @(1, 2\n$y = 3\n", 0, "cannot parse '$x = @(1, 2'"),
    ("$a = \n", 0, "cannot parse"),
    ("function f {\n    param([int]$a\n    $a\n}\n", 1, ""),
    ("$x = $y ?? 1\n", 0, "cannot parse"),  # PowerShell 7 only: win_powershell runs Windows PowerShell 5.1
])
def test_syntax_errors_have_line_and_reason(script, row, fragment):
    found = wp.syntax_errors(script)
    assert found, script
    assert found[0][0] == row, found
    assert fragment in found[0][1]


def test_missing_separator_reported_as_the_line_that_does_not_parse():
    found = wp.syntax_errors("Get-Service -Name foo,bar\n")
    assert found == [(0, "cannot parse 'Get-Service -Name foo,bar'")]


def test_script_that_does_not_parse_gets_only_the_syntax_finding():
    task = ps_task("New-Item x\nif ($a) {\n")
    assert kinds(wp.check_powershell_task(task)) == ["syntax"]


def test_noqa_comment_accepts_a_grammar_gap():
    gap = "Export-ModuleMember -Function Get-A, Get-B"  # valid PowerShell the grammar rejects
    assert wp.syntax_errors(gap + "\n")
    assert wp.syntax_errors(gap + "  # noqa: win-ps[syntax]\n") == []


def test_jinja_neutralised_keeps_lines_and_is_reported_in_win_powershell():
    task = ps_task("""\
        [CmdletBinding(SupportsShouldProcess)]
        param()
        $Ansible.Changed = $false
        $root = '{{ app_root }}'
        {% if x %}
        Write-Output {{ value }}
        {% endif %}
        """)
    assert wp.neutralise_jinja("a\n{{ b\n }}\nc").split("\n") == ["a", "$jinja_value", "", "c"]
    found = wp.check_powershell_task(task)
    assert kinds(found) == ["jinja", "jinja", "jinja", "jinja"]
    # the script starts on line 5 of the tasks file (after `script: |` on line 4)
    assert [p.line for p in found] == [8, 9, 10, 11]


def test_inline_syntax_error_line_is_in_the_tasks_file():
    task = ps_task("$Ansible.Changed = $false\nif ($x) {\n  Write-Output 1\n")
    found = [p for p in wp.check_powershell_task(task) if p.kind == "syntax"]
    assert len(found) == 1
    assert found[0].path == Path("roles/demo/tasks/main.yml")
    assert "opened on line 2" in found[0].message  # line of the script
    assert found[0].line >= 6  # script line 2 is file line 6


def test_win_shell_body_parsed():
    shell = tasks("""\
        - name: S
          ansible.windows.win_shell: |
            $v = (Get-Item -LiteralPath '{{ exe }}').VersionInfo.FileVersion)
            Write-Output $v
          changed_when: false
        """)[0]
    found = wp.check_powershell_task(shell)
    assert [(p.kind, p.line) for p in found] == [("syntax", 3)]
    cmd = tasks("- name: C\n  ansible.windows.win_shell: dir /b )\n  args:\n    executable: cmd\n  changed_when: false\n")[0]
    assert wp.check_powershell_task(cmd) == []


# --- $Ansible.Changed -----------------------------------------------------------------------------------

@pytest.mark.parametrize("script", [
    CLEAN_SCRIPT,
    "param([int]$Port)\n$Ansible.Changed = $false\nwhile ($true) { Start-Sleep -Seconds 1 }\n",
    "# comment\n$ErrorActionPreference = 'Stop'\n$items = @(Get-ChildItem C:\\x)\n$Ansible.Changed = $false\n",
    "Set-StrictMode -Version 2\nAdd-Type -AssemblyName System.Web\n$l = New-Object System.Collections.ArrayList\n"
    "$p = Join-Path -Path $env:TEMP -ChildPath x\n$Ansible.Changed = $false\n",
])
def test_scripts_starting_from_unchanged(script):
    assert wp.script_facts(script).changed_problem is None


@pytest.mark.parametrize(("script", "fragment"), [
    ("New-Item -Path C:\\x\n", "never sets $Ansible.Changed"),
    ("$Ansible.Changed = $true\n", "first sets $Ansible.Changed = $true"),
    ("if ($same) { $Ansible.Changed = $false; return }\nNew-Item x\n$Ansible.Changed = $true\n",
     "inside the statement on line 1"),
    ("Remove-Item -LiteralPath C:\\x\n$Ansible.Changed = $false\n", "runs 'Remove-Item' (line 1)"),
    ("[System.IO.Directory]::Delete($p, $false)\n$Ansible.Changed = $false\n", "[System.IO.Directory]::Delete"),
    ("& $exe install\n$Ansible.Changed = $false\n", "runs '& $exe install'"),
    ("netsh advfirewall reset\n$Ansible.Changed = $false\n", "runs 'netsh' (line 1)"),
    ("$null = New-Item -Path C:\\x\n$Ansible.Changed = $false\n", "runs 'New-Item' (line 1)"),
])
def test_scripts_not_starting_from_unchanged(script, fragment):
    problem = wp.script_facts(script).changed_problem
    assert problem and fragment in problem


def test_changed_when_replaces_the_script_convention():
    script = "[CmdletBinding(SupportsShouldProcess)]\nparam()\nNew-Item x\n"
    assert "changed" in kinds(wp.check_powershell_task(ps_task(script)))
    assert "changed" not in kinds(wp.check_powershell_task(ps_task(script, keywords="  changed_when: false\n")))


# --- check mode -----------------------------------------------------------------------------------------

@pytest.mark.parametrize(("binding", "supports"), [
    ("[CmdletBinding(SupportsShouldProcess)]", True),
    ("[CmdletBinding(SupportsShouldProcess=$true)]", True),
    ("[CmdletBinding(SupportsShouldProcess = $True, ConfirmImpact = 'Low')]", True),
    ("[CmdletBinding(SupportsShouldProcess=$false)]", False),
    ("[CmdletBinding()]", False),
    ("", False),
])
def test_should_process_detected_like_win_powershell(binding, supports):
    script = f"{binding}\nparam([string]$a)\n$Ansible.Changed = $false\n"
    assert wp.script_facts(script).supports_should_process is supports


def test_should_process_needs_the_param_block():
    # win_powershell.ps1 reads the attribute from $scriptAst.ParamBlock: without param() it is not seen.
    assert wp.script_facts("$Ansible.Changed = $false\n").supports_should_process is False


@pytest.mark.parametrize(("keywords", "flagged"), [
    ("", True),
    ("  check_mode: false\n", True),  # runs for real in check mode, but reports what the script says
    ("  check_mode: false\n  changed_when: false\n", False),
    ("  when: not ansible_check_mode\n", False),
    ("  when:\n    - x | bool\n    - not ansible_check_mode\n", False),
])
def test_check_mode_needs_should_process_or_an_exemption(keywords, flagged):
    script = "param([string]$a)\n$Ansible.Changed = $false\nNew-Item $a\n$Ansible.Changed = $true\n"
    assert ("check-mode" in kinds(wp.check_powershell_task(ps_task(script, keywords=keywords)))) is flagged


def test_script_that_never_reports_a_change_needs_no_should_process():
    script = "param([int]$Port)\n$Ansible.Changed = $false\nStart-Sleep -Seconds 1\n"
    assert wp.check_powershell_task(ps_task(script)) == []


# --- error_action ---------------------------------------------------------------------------------------

@pytest.mark.parametrize(("extra", "flagged"), [
    ("    error_action: stop\n", False),
    ("", True),
    ("    error_action: continue\n", True),
    ("    error_action: silently_continue\n", True),
])
def test_error_action_stop_required(extra, flagged):
    task = ps_task(CLEAN_SCRIPT, extra=extra)
    assert ("error-action" in kinds(wp.check_powershell_task(task))) is flagged


# --- path: scripts --------------------------------------------------------------------------------------

def _role(tmp_path, script_text):
    role = tmp_path / "roles" / "demo"
    (role / "tasks").mkdir(parents=True)
    (role / "files").mkdir()
    (role / "files" / "do.ps1").write_text(script_text)
    return role


@pytest.mark.parametrize("path_value", ["do.ps1", "{{ role_path }}/files/do.ps1"])
def test_path_script_found_and_checked(tmp_path, path_value):
    role = _role(tmp_path, "param()\nNew-Item x\n$Ansible.Changed = $true\n")
    task = tasks(f"- name: P\n  ansible.windows.win_powershell:\n    path: \"{path_value}\"\n    error_action: stop\n",
                 role / "tasks" / "main.yml")[0]
    assert kinds(wp.check_powershell_task(task)) == ["changed", "check-mode"]


def test_path_script_syntax_error_names_the_ps1(tmp_path):
    role = _role(tmp_path, CLEAN_SCRIPT + "foreach ($x in $y) {\n")
    task = tasks("- name: P\n  ansible.windows.win_powershell:\n    path: do.ps1\n    error_action: stop\n",
                 role / "tasks" / "main.yml")[0]
    found = [p for p in wp.check_powershell_task(task) if p.kind == "syntax"]
    assert [(p.path, p.line) for p in found] == [(role / "files" / "do.ps1", 11)]
    assert [(p.path, p.line) for p in wp.role_script_problems(role)] == [(role / "files" / "do.ps1", 11)]


def test_missing_or_opaque_path_reported_remote_src_skipped(tmp_path):
    role = _role(tmp_path, CLEAN_SCRIPT)
    main = role / "tasks" / "main.yml"
    missing = tasks("- name: P\n  ansible.windows.win_powershell:\n    path: nope.ps1\n    error_action: stop\n", main)
    opaque = tasks("- name: P\n  ansible.windows.win_powershell:\n    path: \"{{ x }}\"\n    error_action: stop\n", main)
    remote = tasks("- name: P\n  ansible.windows.win_powershell:\n    path: C:\\x.ps1\n    remote_src: true\n"
                   "    error_action: stop\n", main)
    assert kinds(wp.check_powershell_task(missing[0])) == ["path"]
    assert kinds(wp.check_powershell_task(opaque[0])) == ["path"]
    assert wp.check_powershell_task(remote[0]) == []


def test_block_when_inherited():
    inner = tasks("""\
        - name: B
          when: not ansible_check_mode
          block:
            - name: P
              ansible.windows.win_powershell:
                script: |
                  param()
                  $Ansible.Changed = $false
                  $Ansible.Changed = $true
                error_action: stop
        """)
    assert wp.check_powershell_task(inner[0]) == []


def test_powershell_templates_are_parsed_with_jinja_neutralised(tmp_path):
    role = _role(tmp_path, CLEAN_SCRIPT)
    (role / "templates").mkdir()
    good = "{{ ansible_managed | comment }}\n$logs = '{{ root }}\\logs'\n& '{{ exe }}' rotate nginx\n"
    (role / "templates" / "rotate.ps1.j2").write_text(good)
    assert wp.role_script_problems(role) == []
    (role / "templates" / "rotate.ps1.j2").write_text(good + "if ($x) {\n")
    assert [(p.path.name, p.line) for p in wp.role_script_problems(role)] == [("rotate.ps1.j2", 4)]
