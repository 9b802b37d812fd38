"""win-tasks: Windows tasks that repeat work on every run, or write into a directory nobody created.

- win-tasks[get-url-force]:   `ansible.windows.win_get_url` with `checksum`/`checksum_url` but not
                              `force: false` (the default force=true downloads again on every run).
- win-tasks[unzip-creates]:   `community.windows.win_unzip` without `creates:` (extracts again on every run).
- win-tasks[restart-when]:    `ansible.windows.win_service` with `state: restarted` and no `when:` (of its
                              own or of an enclosing block) outside handlers: every run restarts the service.
- win-tasks[dest-dir]:        a file written by `ansible.windows.win_copy`, `win_template` or `win_get_url`
                              into a directory that nothing in the role created before.
- win-tasks[dest-unresolved]: such a dest whose directory cannot be worked out from the text (write paths the
                              rule can follow, or `# noqa: win-tasks[dest-unresolved]` on the task).

How dest directories are resolved (textually; nothing is templated):
1. Variables are expanded in `{{ ... }}` expressions of these forms only: `name`, `name.key`, `name['key']`,
   `name[other_var]`, from the task's (and enclosing blocks') `vars:`, then the role's vars/main.yml, then
   defaults/main.yml, recursively (at most 10 levels). A definition that is not a string is used only for
   subscripts; a per-platform map indexed by a variable (`paths[__platform]`) resolves to its `windows`
   entry. With a literal `loop:` list, `item` (or loop_control.loop_var) is expanded once per item. Any
   other expression (filters, `or`, conditionals) stays as it is: text compared with text.
2. Strings are normalised: lower case, `/` read as `\\`, whitespace inside `{{ }}` collapsed.
3. The parent of dest is everything before its last `\\` outside `{{ }}`. A dest ending in `\\`, or a src
   ending in a separator (a directory copy), is a directory win_copy creates itself: not checked.
4. The parent passes when it (or a directory below it) is created in the same role: the `path` of an
   `ansible.windows.win_file` task with `state: directory` (each `loop:` item), the `dest` of
   `community.windows.win_unzip`, or a win_copy dest ending in `\\`. In the same file the creating task must
   come first; in another file of the role it may be anywhere (include order is not followed). A literal
   drive root or system directory (C:\\, C:\\Windows\\..., C:\\ProgramData, C:\\Program Files,
   C:\\Program Files (x86), C:\\Users) passes too.
5. A dest with no separator outside `{{ }}` after expansion (an opaque expression) is dest-unresolved.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from win_common import (
    Task,
    find_task,
    has_jinja,
    is_false,
    role_dir,
    role_task_files,
    role_vars,
    tasks_of_file,
)

try:  # the rule class is only needed when ansible-lint loads this file
    from ansiblelint.rules import AnsibleLintRule
except ImportError:  # pragma: no cover - plain import for the checker functions
    AnsibleLintRule = object  # type: ignore[assignment,misc]

MAX_DEPTH = 10
SYSTEM_DIRS = {"c:", "c:\\windows", "c:\\programdata", "c:\\program files", "c:\\program files (x86)",
               "c:\\users", "c:\\users\\public"}
_EXPR = re.compile(r"\{\{(.*?)\}\}", re.S)
_NAME = r"[A-Za-z_]\w*"
_ACCESS = re.compile(rf"\.({_NAME})|\[\s*(?:'([^']*)'|\"([^\"]*)\"|({_NAME})|(\d+))\s*\]")
_REF = re.compile(rf"^({_NAME})((?:\.{_NAME}|\[\s*(?:'[^']*'|\"[^\"]*\"|{_NAME}|\d+)\s*\])*)$")


@dataclass(frozen=True)
class Problem:
    kind: str  # get-url-force | unzip-creates | restart-when | dest-dir | dest-unresolved
    message: str


# --- simple per-task checks ----------------------------------------------------------------------------

def check_task(task: Task) -> list[Problem]:
    """The checks that need only the task itself."""
    short = task.short
    args = task.args
    if short == "win_get_url" and (args.get("checksum") or args.get("checksum_url")):
        force = args.get("force", True)
        if not is_false(force) and not has_jinja(force):
            return [Problem("get-url-force", "win_get_url has a checksum but not force: false: the default "
                            "force=true downloads the file again on every run")]
    if short == "win_unzip" and not args.get("creates"):
        return [Problem("unzip-creates", "win_unzip without creates: extracts the archive again on every run")]
    if short == "win_service" and args.get("state") == "restarted" and not task.handler and not task.when():
        return [Problem("restart-when", "win_service state: restarted without when: restarts the service on "
                        "every run (make it a handler, or condition it on what changed)")]
    return []


# --- dest directory resolution --------------------------------------------------------------------------

def _norm_expr(expr: str) -> str:
    return "{{ " + " ".join(expr.split()) + " }}"


def _eval(expr: str, scope: dict, depth: int) -> Any:
    """Value of a simple reference expression, or None when it is not one we can follow."""
    if depth > MAX_DEPTH:
        return None
    m = _REF.match(expr.strip())
    if not m or m.group(1) not in scope:
        return None
    value = scope[m.group(1)]
    for acc in _ACCESS.finditer(m.group(2)):
        value = _as_value(value, scope, depth + 1)
        attr, key1, key2, var, index = acc.groups()
        if isinstance(value, dict):
            key = attr or key1 or key2
            if key is None and var is not None:
                key = "windows" if "windows" in value else None  # a per-platform lookup map
            if key is None or key not in value:
                return None
            value = value[key]
        elif isinstance(value, list) and index is not None and int(index) < len(value):
            value = value[int(index)]
        else:
            return None
    return value


def _as_value(value: Any, scope: dict, depth: int) -> Any:
    """A string that is one reference expression (`{{ x['a'] }}`) stands for the referenced value."""
    if isinstance(value, str):
        m = re.fullmatch(r"\s*\{\{(.*?)\}\}\s*", value, re.S)
        if m:
            inner = _eval(m.group(1), scope, depth + 1)
            if inner is not None:
                return inner
    return value


def resolve(text: str, scope: dict, depth: int = 0) -> str:
    """Expand the references we can follow; keep the rest as normalised `{{ expr }}` text."""
    def repl(match: re.Match) -> str:
        value = _eval(match.group(1), scope, depth + 1)
        value = _as_value(value, scope, depth + 1)
        if isinstance(value, (str, int, float)) and not isinstance(value, bool) and depth < MAX_DEPTH:
            return resolve(str(value), scope, depth + 1)
        return _norm_expr(match.group(1))

    return _EXPR.sub(repl, text)


def normalise(path: str) -> str:
    out, last = [], 0
    for m in _EXPR.finditer(path):
        out.append(path[last:m.start()].replace("/", "\\"))
        out.append(_norm_expr(m.group(1)))
        last = m.end()
    out.append(path[last:].replace("/", "\\"))
    text = "".join(out).strip().lower()
    return re.sub(r"\\{2,}", r"\\", text)


def _separators(path: str) -> list[int]:
    """Positions of backslashes outside `{{ }}`."""
    spans = [m.span() for m in _EXPR.finditer(path)]
    return [i for i, ch in enumerate(path) if ch == "\\" and not any(a <= i < b for a, b in spans)]


def parent_dir(path: str) -> str | None:
    seps = _separators(path)
    if not seps:
        return None
    return path[:seps[-1]]


def ancestors(path: str) -> list[str]:
    """The path and every directory above it (C:\\a\\b -> C:\\a\\b, C:\\a, C:)."""
    return [path] + [path[:i] for i in reversed(_separators(path)) if path[:i]]


def _ends_with_sep(value: Any) -> bool:
    return isinstance(value, str) and value.rstrip().endswith(("\\", "/"))


def _loop_scopes(task: Task, scope: dict) -> list[dict]:
    """One scope per literal loop item (item or loop_control.loop_var bound); just `scope` otherwise."""
    loop = task.keywords.get("loop", task.keywords.get("with_items"))
    if not isinstance(loop, list):
        return [scope]
    control = task.keywords.get("loop_control")
    var = control.get("loop_var", "item") if isinstance(control, dict) else "item"
    return [{**scope, var: item} for item in loop] or [scope]


def task_scope(task: Task, base: dict) -> dict:
    scope = dict(base)
    if isinstance(task.keywords.get("vars"), dict):
        scope.update(task.keywords["vars"])
    return scope


@dataclass(frozen=True)
class Created:
    path: str  # normalised
    file: Path
    line: int


def _included_file(task: Task) -> Path | None:
    """The role tasks file an include_tasks/import_tasks names, when the rule can find it."""
    raw = task.args.get("file", task.args.get("_raw_params"))
    role = role_dir(task.file)
    if not isinstance(raw, str) or role is None:
        return None
    value = raw.strip()
    m = re.match(r"\{\{\s*role_path\s*\}\}/*", value)
    candidates = [role / value[m.end():]] if m else [task.file.parent / value, role / "tasks" / value]
    return next((c for c in candidates if not has_jinja(str(c)) and c.is_file()), None)


def created_dirs(tasks: list[Task], base: dict, depth: int = 0) -> list[Created]:
    """Directories the tasks create (and, implied, every directory above them).

    An include_tasks/import_tasks of a role file counts as creating what the included file creates, with
    the include's `vars:` in scope, at the include's own file and line.
    """
    found: list[Created] = []
    for task in tasks:
        short = task.short
        raw = None
        if short in ("include_tasks", "import_tasks") and depth < 3:
            included = _included_file(task)
            if included is not None:
                scope = task_scope(task, base)
                for inner in created_dirs(tasks_of_file(included), scope, depth + 1):
                    found.append(Created(inner.path, task.file, task.line))
            continue
        if short == "win_file" and task.args.get("state") == "directory":
            raw = task.args.get("path", task.args.get("dest", task.args.get("name")))
        elif short == "win_unzip":
            raw = task.args.get("dest")
        elif short == "win_copy" and _ends_with_sep(task.args.get("dest")):
            raw = task.args.get("dest")
        if not isinstance(raw, str):
            continue
        for scope in _loop_scopes(task, task_scope(task, base)):
            path = normalise(resolve(raw, scope)).rstrip("\\")
            found += [Created(p, task.file, task.line) for p in ancestors(path)]
    return found


def _system_dir(parent: str) -> bool:
    if has_jinja(parent) or not re.match(r"^[a-z]:", parent):
        return False
    return parent in SYSTEM_DIRS or re.fullmatch(r"[a-z]:", parent) is not None or parent.startswith("c:\\windows\\")


def check_dest(task: Task, created: list[Created], base: dict) -> list[Problem]:
    """dest-dir / dest-unresolved for a file-writing task, given what the role creates."""
    if task.short not in ("win_copy", "win_template", "win_get_url"):
        return []
    dest = task.args.get("dest")
    if not isinstance(dest, str):
        return []
    src = task.args.get("src")
    if _ends_with_sep(dest) or (task.short == "win_copy" and _ends_with_sep(src)):
        return []
    problems: list[Problem] = []
    reported: set[str] = set()
    for scope in _loop_scopes(task, task_scope(task, base)):
        resolved = normalise(resolve(dest, scope))
        parent = parent_dir(resolved)
        if parent is None or not parent.strip():
            msg = (f"cannot tell which directory dest '{dest}' is in (resolved: '{resolved}'): write it as "
                   "'<dir>\\<name>' with a directory the role creates")
            if msg not in reported:
                reported.add(msg)
                problems.append(Problem("dest-unresolved", msg))
            continue
        if _system_dir(parent):
            continue
        makers = [c for c in created if c.path == parent]
        if any(c.file != task.file or c.line < task.line for c in makers):
            continue
        if makers:
            msg = (f"dest directory '{parent}' is created only after this task "
                   f"({makers[0].file.name}:{makers[0].line})")
        else:
            msg = (f"dest directory '{parent}' (from dest '{dest}') is not created in this role: add an "
                   "ansible.windows.win_file state: directory task for it before this one")
        if msg not in reported:
            reported.add(msg)
            problems.append(Problem("dest-dir", msg))
    return problems


# --- role model ------------------------------------------------------------------------------------------

def role_model(tasks_file: Path) -> tuple[list[Created], dict]:
    """(directories created, variables) of the role holding `tasks_file`; the file alone outside a role."""
    role = role_dir(tasks_file)
    if role is None:
        return created_dirs(tasks_of_file(tasks_file), {}), {}
    base = role_vars(role)
    tasks: list[Task] = []
    for path in role_task_files(role):
        tasks += tasks_of_file(path)
    return created_dirs(tasks, base), base


def check_task_in_role(task: Task) -> list[Problem]:
    problems = check_task(task)
    if task.short in ("win_copy", "win_template", "win_get_url"):
        created, base = role_model(task.file)
        problems += check_dest(task, created, base)
    return problems


class WinTasksRule(AnsibleLintRule):  # type: ignore[misc,valid-type]
    """Windows tasks must not redo work on every run, nor write into directories nobody created."""

    id = "win-tasks"
    severity = "HIGH"
    description = ("win_get_url with a checksum needs force: false, win_unzip needs creates, a restarted "
                   "win_service needs when; win_copy/win_template/win_get_url must write into a directory "
                   "the role creates.")
    tags = ["idempotency", "windows"]
    version_changed = "1.0.0"
    _ids = {
        "win-tasks[get-url-force]": "win_get_url with checksum but without force: false",
        "win-tasks[unzip-creates]": "win_unzip without creates",
        "win-tasks[restart-when]": "win_service state: restarted without when",
        "win-tasks[dest-dir]": "dest directory not created by the role",
        "win-tasks[dest-unresolved]": "dest directory cannot be resolved",
    }

    def matchtask(self, task, file=None):  # noqa: ANN001, ANN201 - ansible-lint API
        if file is None:
            return []
        ours = find_task(Path(str(file.path)), task.line)
        if ours is None or ours.short not in ("win_get_url", "win_unzip", "win_service", "win_copy",
                                              "win_template"):
            return []
        if file.kind == "handlers":
            ours.handler = True
        name = task.get("name") or ours.module
        return [self.create_matcherror(message=f"task '{name}': {p.message}", lineno=task.line, filename=file,
                                       tag=f"{self.id}[{p.kind}]")
                for p in check_task_in_role(ours)]

