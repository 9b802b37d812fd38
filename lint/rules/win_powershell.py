"""win-ps: PowerShell run by the roles, checked without Windows.

Every script a role runs is parsed with a real PowerShell grammar (tree-sitter-powershell): the files that
`ansible.windows.win_powershell` runs by `path:` (role files/, `{{ role_path }}/files/...`), the inline
`script:` of win_powershell, the command text of `ansible.windows.win_shell`, and every `*.ps1` under a
role's files/. Then the win_powershell tasks are checked against how the module runs a script
(ansible.windows win_powershell.ps1): it starts the script with `$Ansible.Changed = $true`, its
`error_action` defaults to `continue`, and in check mode it skips (and reports changed) any script whose
param block does not declare `[CmdletBinding(SupportsShouldProcess)]`.

- win-ps[syntax]:       a parse error (an ERROR or MISSING node), with the file and line: the .ps1 file's
                        line, or for an inline script the line inside the tasks file. Jinja in an inline
                        script is replaced by a placeholder variable before parsing.
- win-ps[jinja]:        Jinja inside a win_powershell `script:` (templated into code: quoting breaks and
                        values leak into the module args); pass values through `parameters:`.
- win-ps[changed]:      a win_powershell task without `changed_when:` whose script does not begin its
                        top-level flow with `$Ansible.Changed = $false`: the first top-level assignment of
                        `$Ansible.Changed` must set `$false`, no nested assignment may come before it, and
                        no statement before it may run a state-changing command (a cmdlet with a verb like
                        New/Set/Remove/Start..., a native program, a static .NET mutator such as
                        `[IO.File]::Delete`). Otherwise a run that changes nothing still reports changed.
- win-ps[check-mode]:   a script that can report a change (assigns `$Ansible.Changed` anything but `$false`)
                        whose param block lacks `[CmdletBinding(SupportsShouldProcess)]` (or `=$true`):
                        check mode skips it and reports changed. Exempt: the task sets `check_mode: false`
                        together with `changed_when:`, or has `when: not ansible_check_mode`.
- win-ps[error-action]: a win_powershell task without `error_action: stop` (a non-terminating error lets
                        the script go on, and the task reports ok).
- win-ps[path]:         a `path:` script that cannot be found on the controller (or is a Jinja expression
                        other than `{{ role_path }}`); scripts with `remote_src: true` are not checked.

A script that does not parse gets only its win-ps[syntax] finding (the other checks read the parse tree).
win_shell tasks with a non-PowerShell `executable` (cmd) are not parsed.

Known gaps of the grammar (valid PowerShell it rejects): bare-word lists as command arguments
(`-Name a, b`: quote them), generic type names with a backtick arity (List`1[...]), nested generic
arguments ([Func[[Object], [Int32]]]), nested types ([Environment+SpecialFolder]), loop labels, -cin/-cnotin,
`5 * 1MB`, a one-line `function f { param($a) ... }`. A PowerShell comment `# noqa: win-ps[syntax]` on the
reported line accepts it; a task's `# noqa: win-ps[...]` skips the task's findings as usual.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tree_sitter
import tree_sitter_powershell
from win_common import (
    Task,
    find_task,
    has_jinja,
    is_false,
    jinja_spans,
    role_dir,
    task_from_mapping,
)

try:  # the rule class is only needed when ansible-lint loads this file
    from ansiblelint.file_utils import Lintable
    from ansiblelint.rules import AnsibleLintRule
except ImportError:  # pragma: no cover - plain import for the checker functions
    AnsibleLintRule = object  # type: ignore[assignment,misc]
    Lintable = None  # type: ignore[assignment,misc]

# Cmdlet verbs (approved verbs that change something) whose commands count as changing state.
CHANGING_VERBS = {
    "add", "clear", "copy", "move", "new", "remove", "rename", "reset", "set", "install", "uninstall",
    "register", "unregister", "start", "stop", "restart", "suspend", "resume", "enable", "disable",
    "invoke", "update", "publish", "unpublish", "mount", "dismount", "grant", "revoke", "block", "unblock",
    "protect", "unprotect", "initialize", "import", "export", "out", "save", "write", "edit", "expand",
    "compress", "lock", "unlock", "sync", "deploy", "push", "submit",
}
# ...except these, which only read, report, wait or set up the script's own session.
_HARMLESS_COMMANDS = {
    "write-output", "write-verbose", "write-debug", "write-information", "write-host", "write-warning",
    "write-progress", "write-error", "out-null", "out-string", "out-default", "out-host", "start-sleep",
    "import-module", "import-csv", "import-clixml", "import-powershelldatafile", "import-localizeddata",
    "export-modulemember", "set-strictmode", "set-location", "push-location", "pop-location", "add-type",
    "new-object", "new-variable", "set-variable", "new-timespan", "new-guid", "update-typedata",
    "update-formatdata", "add-member",
}
# Bare command names that are PowerShell aliases of reading cmdlets (any other bare name is a program).
_HARMLESS_ALIASES = {
    "%", "?", "foreach", "where", "select", "sort", "measure", "group", "gci", "dir", "ls", "gi", "gp", "gc",
    "cat", "type", "echo", "write", "cd", "pwd", "gl", "sl", "pushd", "popd", "hostname", "whoami", "compare",
    "fl", "ft", "fw", "gm", "gv", "gcm", "sleep", "test-path", "throw", "return", "exit", "break", "continue",
}
# Static .NET calls ([Type]::Method()) with these method-name prefixes count as changing state.
_MUTATOR_METHOD = re.compile(
    r"^(delete|create|set|write|move|copy|remove|add|clear|save|start|stop|kill|install|uninstall|replace|"
    r"append|rename|register|unregister|enable|disable|import|export|update|commit|change)", re.I)
_NOQA_SYNTAX = re.compile(r"#\s*noqa\b(?::\s*(?P<ids>[\w\-\[\], ]+))?", re.I)
JINJA_PLACEHOLDER = "$jinja_value"


@dataclass(frozen=True)
class Problem:
    kind: str  # syntax | jinja | changed | check-mode | error-action | path
    message: str
    line: int | None = None  # 1-based line in `path`; None: the task's own line
    path: Path | None = None  # the file `line` is in; None: the task's file


@functools.lru_cache(maxsize=1)
def _parser() -> tree_sitter.Parser:
    return tree_sitter.Parser(tree_sitter.Language(tree_sitter_powershell.language()))


@functools.lru_cache(maxsize=512)
def parse(text: str) -> tree_sitter.Tree:
    return _parser().parse(text.encode("utf-8"))


def neutralise_jinja(text: str) -> str:
    """Replace `{{ expr }}` by a PowerShell variable and drop `{% %}`/`{# #}`, keeping every line break."""
    def repl(match: re.Match) -> str:
        body = match.group(0)
        newlines = "\n" * body.count("\n")
        return (JINJA_PLACEHOLDER if body.startswith("{{") else "") + newlines

    return re.sub(r"\{\{.*?\}\}|\{%.*?%\}|\{#.*?#\}", repl, text, flags=re.S)


def jinja_rows(text: str) -> list[int]:
    """0-based rows on which a Jinja expression or statement starts."""
    return sorted({text.count("\n", 0, start) for start, _ in jinja_spans(text)})


def _line_has_noqa(line: str, tag: str) -> bool:
    m = _NOQA_SYNTAX.search(line)
    if not m:
        return False
    ids = m.group("ids")
    if not ids:
        return True
    wanted = {tag, tag.split("[")[0]}
    return any(i.strip() in wanted for i in ids.split(","))


def _error_nodes(node: tree_sitter.Node):
    if node.is_missing or node.type == "ERROR":
        yield node
        if node.type == "ERROR":  # report the outermost error, not each token inside it
            return
    for child in node.children:
        if child.has_error or child.is_missing:
            yield from _error_nodes(child)


def syntax_errors(text: str) -> list[tuple[int, str]]:
    """(0-based row, message) of each distinct parse error; rows carrying `# noqa: win-ps[syntax]` skipped."""
    tree = parse(text)
    if not tree.root_node.has_error:
        return []
    lines = text.split("\n")
    found: list[tuple[int, str]] = []
    seen: set[int] = set()
    for node in _error_nodes(tree.root_node):
        row = node.start_point.row
        if node.is_missing and not node.type.strip():  # a missing separator: the grammar gave up here
            snippet = lines[min(row, len(lines) - 1)].strip()[:60]
            message = f"cannot parse '{snippet}'"
        elif node.is_missing:
            message = f"missing '{node.type}'"
            parent = node.parent
            if node.type in ("}", ")", "]") and parent is not None and parent.start_point.row != row:
                message += f" to close the {parent.type.replace('_', ' ')} opened on line {parent.start_point.row + 1}"
        else:
            snippet = node.text.decode("utf-8", "replace").strip().split("\n")[0][:60]
            message = f"cannot parse '{snippet}'" if snippet else "unexpected end of script"
        if row >= len(lines):
            row = len(lines) - 1
        if row in seen or _line_has_noqa(lines[row], "win-ps[syntax]"):
            continue
        seen.add(row)
        found.append((row, message))
    return found


# --- script facts -------------------------------------------------------------------------------------

def _unwrap(node: tree_sitter.Node) -> tree_sitter.Node:
    """Descend through single-child wrapper nodes (pipeline -> ... -> assignment)."""
    while node.named_child_count == 1 and node.type not in ("assignment_expression", "command"):
        node = node.named_children[0]
    return node


def _walk(node: tree_sitter.Node):
    yield node
    for child in node.children:
        yield from _walk(child)


def _text(node: tree_sitter.Node) -> str:
    return node.text.decode("utf-8", "replace")


def _is_changed_target(node: tree_sitter.Node) -> bool:
    return re.sub(r"\s+", "", _text(node)).lower() in ("$ansible.changed", "${ansible}.changed")


def changed_assignment(node: tree_sitter.Node) -> str | None:
    """For `$Ansible.Changed = X` return X's text (lowercased, stripped), else None."""
    if node.type != "assignment_expression" or not node.named_children:
        return None
    left = node.named_children[0]
    if left.type != "left_assignment_expression" or not _is_changed_target(left):
        return None
    return _text(node.named_children[-1]).strip().lower()


def _changing_command(node: tree_sitter.Node) -> str | None:
    """The name of a command or static call below `node` that can change state, if any."""
    for sub in _walk(node):
        if sub.type == "command":
            if any(c.type == "command_invokation_operator" for c in sub.children):
                return _text(sub).split("\n")[0][:40]
            name_node = next((c for c in sub.children if c.type in ("command_name", "command_name_expr")), None)
            if name_node is None:
                continue
            name = _text(name_node).lower()
            if name in _HARMLESS_COMMANDS:
                continue
            verb = name.split("-", 1)[0] if "-" in name else ""
            if verb in CHANGING_VERBS or ("-" not in name and name not in _HARMLESS_ALIASES):
                return _text(name_node)
        elif sub.type == "invokation_expression" and any(c.type == "::" for c in sub.children):
            member = next((c for c in sub.children if c.type == "member_name"), None)
            if member is not None and _MUTATOR_METHOD.match(_text(member)):
                return _text(sub).split("(")[0]
    return None


@dataclass(frozen=True)
class ScriptFacts:
    parses: bool
    supports_should_process: bool
    reports_change: bool  # assigns $Ansible.Changed something other than $false
    changed_problem: str | None  # why the script does not start with $Ansible.Changed = $false


def _supports_should_process(root: tree_sitter.Node) -> bool:
    """As win_powershell.ps1 decides: [CmdletBinding(SupportsShouldProcess[=$true])] on the param block."""
    block = next((c for c in root.children if c.type == "param_block"), None)
    if block is None:
        return False
    for attr_list in (c for c in block.children if c.type == "attribute_list"):
        for attr in (c for c in attr_list.children if c.type == "attribute"):
            name = next((c for c in attr.children if c.type == "attribute_name"), None)
            if name is None or _text(name).strip().lower() not in ("cmdletbinding", "cmdletbindingattribute"):
                continue
            for arg in (n for n in _walk(attr) if n.type == "attribute_argument"):
                named = [c for c in arg.named_children]
                if not named or _text(named[0]).lower() != "supportsshouldprocess":
                    continue
                if len(named) == 1 or _text(named[-1]).strip().lower() == "$true":
                    return True
    return False


def _top_statements(root: tree_sitter.Node):
    for child in root.children:
        if child.type == "statement_list":
            for st in child.named_children:
                if st.type != "comment":
                    yield st
        elif child.type not in ("param_block", "comment") and child.is_named:
            yield child


def script_facts(text: str) -> ScriptFacts:
    root = parse(text).root_node
    assignments = [a for a in (changed_assignment(n) for n in _walk(root)) if a is not None]
    reports_change = any(a != "$false" for a in assignments)
    problem: str | None = None
    if not assignments:
        problem = ("never sets $Ansible.Changed (win_powershell starts every script with $Ansible.Changed = "
                   "$true: every run reports changed)")
    else:
        problem = "does not set $Ansible.Changed = $false at its top level"
        for st in _top_statements(root):
            row = st.start_point.row + 1
            value = changed_assignment(_unwrap(st))
            if value is not None:
                if value == "$false":
                    problem = None
                else:
                    problem = (f"first sets $Ansible.Changed = {value} (line {row}) instead of starting with "
                               f"$Ansible.Changed = $false")
                break
            if any(changed_assignment(n) is not None for n in _walk(st)):
                problem = (f"sets $Ansible.Changed inside the statement on line {row} before any top-level "
                           f"$Ansible.Changed = $false (win_powershell starts with $true)")
                break
            changing = _changing_command(st)
            if changing:
                problem = (f"runs '{changing}' (line {row}) before $Ansible.Changed = $false (a change "
                           f"made before it goes unreported)")
                break
    return ScriptFacts(parses=not root.has_error, supports_should_process=_supports_should_process(root),
                       reports_change=reports_change, changed_problem=problem)


# --- tasks -----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Script:
    text: str  # as PowerShell will see it (Jinja neutralised)
    path: Path  # the file holding it (a .ps1, or the tasks file for inline scripts)
    first_line: int  # 1-based line in `path` of the script's first line
    inline: bool


def _inline_first_line(task: Task, key: str) -> int:
    line, style = task.arg_lines.get(key, (task.line, None))
    return line + 1 if style in ("|", ">") else line


def resolve_script_path(task: Task) -> Path | None:
    """The controller file a win_powershell `path:` names (as the action plugin's files/ search does)."""
    raw = task.args.get("path")
    if not isinstance(raw, str) or not raw.strip():
        return None
    role = role_dir(task.file)
    value = raw.strip()
    role_path = re.match(r"\{\{\s*role_path\s*\}\}/*", value)
    if role_path and role is not None:
        path = role / value[role_path.end():]
        return path if path.is_file() else None
    if has_jinja(value):
        return None
    path = Path(value)
    if path.is_absolute():
        return path if path.is_file() else None
    bases = []
    if role is not None:
        bases += [role / "files", role, role / "tasks"]
    bases += [task.file.parent / "files", task.file.parent]
    for base in bases:
        if (base / path).is_file():
            return base / path
    return None


def task_script(task: Task) -> tuple[Script | None, list[Problem]]:
    """The PowerShell a win_powershell/win_shell task runs, plus problems found on the way there."""
    problems: list[Problem] = []
    short = task.short
    if short == "win_shell":
        executable = str(task.args.get("executable") or "").lower()
        if executable and "powershell" not in executable and "pwsh" not in executable:
            return None, []
        body = task.args.get("_raw_params", task.args.get("cmd"))
        if not isinstance(body, str):
            return None, []
        key = "_raw_params" if "_raw_params" in task.arg_lines else ("cmd" if "cmd" in task.arg_lines else "")
        return Script(neutralise_jinja(body), task.file, _inline_first_line(task, key), True), []
    if short != "win_powershell":
        return None, []
    if isinstance(task.args.get("script"), str):
        body = task.args["script"]
        first = _inline_first_line(task, "script")
        for row in jinja_rows(body):
            problems.append(Problem("jinja", "Jinja in the PowerShell script: templated into code, values "
                                    "break quoting and show in the module args; pass them by 'parameters:'",
                                    line=first + row, path=task.file))
        return Script(neutralise_jinja(body), task.file, first, True), problems
    if "path" in task.args:
        if str(task.args.get("remote_src", "")).lower() in ("true", "yes", "1"):
            return None, []
        found = resolve_script_path(task)
        if found is None:
            problems.append(Problem("path", f"cannot find the script '{task.args['path']}' on the controller "
                                            "(role files/ or {{ role_path }}/files/...)"))
            return None, problems
        try:
            text = found.read_text(encoding="utf-8-sig")
        except (OSError, UnicodeDecodeError) as exc:
            problems.append(Problem("path", f"cannot read '{found}': {exc}"))
            return None, problems
        return Script(text, found, 1, False), problems
    return None, problems


def check_syntax(script: Script) -> list[Problem]:
    """The first parse error of a script (later ones are mostly the parser recovering from it)."""
    errors = syntax_errors(script.text)
    if not errors:
        return []
    row, msg = errors[0]
    more = f" ({len(errors) - 1} more after it)" if len(errors) > 1 else ""
    return [Problem("syntax", f"PowerShell syntax: {msg}{more}", line=script.first_line + row, path=script.path)]


def _when_not_check_mode(task: Task) -> bool:
    return any(re.fullmatch(r"\s*not\s+ansible_check_mode\s*", w) for w in task.when())


def check_powershell_task(task: Task) -> list[Problem]:
    """All win-ps findings of one task (win_powershell or win_shell)."""
    script, problems = task_script(task)
    if script is not None:
        problems += check_syntax(script)
    if task.short != "win_powershell":
        return problems
    action = task.args.get("error_action")
    if not (isinstance(action, str) and (action == "stop" or has_jinja(action))):
        problems.append(Problem("error-action", f"error_action is {action or 'not set (default: continue)'}; "
                                "set error_action: stop, or a failing command lets the script go on and the "
                                "task reports ok"))
    if script is None or any(p.kind == "syntax" for p in problems):
        return problems  # what a script does is read from its parse tree: only from one that parses
    facts = script_facts(script.text)
    where = "the script" if script.inline else f"the script {script.path.name}"
    if "changed_when" not in task.keywords and facts.changed_problem:
        problems.append(Problem("changed", f"no changed_when, and {where} {facts.changed_problem}"))
    exempt = (_when_not_check_mode(task)
              or (is_false(task.keywords.get("check_mode")) and "changed_when" in task.keywords))
    if facts.reports_change and not facts.supports_should_process and not exempt:
        problems.append(Problem("check-mode", f"{where} sets $Ansible.Changed but its param block has no "
                                "[CmdletBinding(SupportsShouldProcess)]: check mode skips it and reports "
                                "changed (or: check_mode: false with changed_when, or when: not "
                                "ansible_check_mode)"))
    return problems


def role_script_problems(role: Path) -> list[Problem]:
    """win-ps[syntax] for every *.ps1/*.psm1 under a role's files/, and every *.ps1.j2 template under its
    templates/ (Jinja neutralised, lines kept)."""
    candidates = []
    if (role / "files").is_dir():
        candidates += [p for p in (role / "files").rglob("*") if p.suffix.lower() in (".ps1", ".psm1")]
    if (role / "templates").is_dir():
        candidates += [p for p in (role / "templates").rglob("*.ps1.j2")]
    problems: list[Problem] = []
    for path in sorted(p for p in candidates if p.is_file()):
        try:
            text = path.read_text(encoding="utf-8-sig")
        except (OSError, UnicodeDecodeError) as exc:
            problems.append(Problem("syntax", f"cannot read: {exc}", line=1, path=path))
            continue
        if path.name.endswith(".j2"):
            text = neutralise_jinja(text)
        problems += check_syntax(Script(text, path, 1, False))
    return problems


def _task_from_lint(task: Any, file: Any) -> Task | None:
    """Our Task for an ansible-lint task: found by line in the file (keeps value lines), else rebuilt."""
    path = Path(str(file.path)) if file is not None else Path(".")
    found = find_task(path, task.line)
    if found is not None:
        return found
    action = task["action"]
    module = action.get("__ansible_module_original__") or action.get("__ansible_module__")
    if not module:
        return None
    mapping = {k: v for k, v in task.normalized_task.items() if not str(k).startswith("__") and k != "action"}
    mapping[module] = {k: v for k, v in action.items() if not str(k).startswith("__")}
    return task_from_mapping(mapping, path)  # type: ignore[arg-type]


class WinPowerShellRule(AnsibleLintRule):  # type: ignore[misc,valid-type]
    """PowerShell run by Windows tasks must parse and report changes and check mode correctly."""

    id = "win-ps"
    severity = "HIGH"
    description = ("PowerShell scripts (win_powershell path/script, win_shell, role files/*.ps1) are parsed "
                   "with a PowerShell grammar; win_powershell tasks must set error_action: stop, start "
                   "from $Ansible.Changed = $false (or use changed_when) and support check mode.")
    tags = ["syntax", "windows", "idempotency"]
    version_changed = "1.0.0"
    _ids = {
        "win-ps[syntax]": "PowerShell syntax error",
        "win-ps[jinja]": "Jinja inside a win_powershell script",
        "win-ps[changed]": "script does not start from $Ansible.Changed = $false",
        "win-ps[check-mode]": "script reports changes but has no SupportsShouldProcess",
        "win-ps[error-action]": "win_powershell without error_action: stop",
        "win-ps[path]": "win_powershell script file not found",
    }

    def _error(self, problem: Problem, default_line: int, file: Any, name: str):  # noqa: ANN202
        elsewhere = problem.path is not None and file is not None and Path(str(file.path)) != problem.path
        match = self.create_matcherror(
            message=f"task '{name}': {problem.message}" if not elsewhere else problem.message,
            lineno=problem.line or default_line,
            filename=Lintable(str(problem.path)) if elsewhere else file,
            details=f"{problem.path or ''}:{problem.line or ''}",
            tag=f"{self.id}[{problem.kind}]",
        )
        match.win_keep_line = elsewhere  # type: ignore[attr-defined]
        return match

    @staticmethod
    def _enrich_matcherror_with_task_details(match, task) -> None:  # noqa: ANN001 - ansible-lint API
        # A finding in another file (the .ps1 a task runs) keeps that file's line.
        line = match.lineno
        AnsibleLintRule._enrich_matcherror_with_task_details(match, task)  # pylint: disable=protected-access
        if getattr(match, "win_keep_line", False):
            match.lineno = line

    def matchtask(self, task, file=None):  # noqa: ANN001, ANN201 - ansible-lint API
        ours = _task_from_lint(task, file)
        if ours is None or ours.short not in ("win_powershell", "win_shell"):
            return []
        name = task.get("name") or ours.module
        return [self._error(p, task.line, file, name) for p in check_powershell_task(ours)]

    def matchdir(self, lintable):  # noqa: ANN001, ANN201 - ansible-lint API
        if lintable.kind != "role":
            return []
        return [self.create_matcherror(message=p.message, lineno=p.line or 1, filename=Lintable(str(p.path)),
                                       details=f"{p.path}:{p.line}", tag=f"{self.id}[{p.kind}]")
                for p in role_script_problems(Path(str(lintable.path)))]
