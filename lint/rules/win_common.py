"""Shared helpers of the project's Windows lint rules (win-ps, win-tasks): no rule lives here.

Task files are read with a YAML loader that keeps line numbers (of each task, and of the value of each
key), so a finding inside a block scalar (an inline PowerShell script) can name the line in the file.
Tasks are flattened out of block/rescue/always; a block's `when:` and `vars:` are inherited.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

# Keys of a task that are not its module (the module is the one key left).
TASK_KEYWORDS = {
    "action", "any_errors_fatal", "args", "async", "become", "become_exe", "become_flags",
    "become_method", "become_user", "changed_when", "check_mode", "collections", "connection",
    "debugger", "delay", "delegate_facts", "delegate_to", "diff", "environment", "failed_when",
    "ignore_errors", "ignore_unreachable", "listen", "local_action", "loop", "loop_control",
    "module_defaults", "name", "no_log", "notify", "poll", "register", "remote_user", "retries",
    "run_once", "tags", "throttle", "timeout", "until", "vars", "when",
}
# Collections whose short module names we accept as the same module.
_WIN_COLLECTIONS = ("ansible.windows.", "community.windows.", "ansible.builtin.", "ansible.legacy.")


def short_module(name: str | None) -> str | None:
    """`ansible.windows.win_copy` / `win_copy` -> `win_copy`; modules of other collections -> None."""
    if not isinstance(name, str):
        return None
    for prefix in _WIN_COLLECTIONS:
        if name.startswith(prefix):
            return name[len(prefix):]
    return None if "." in name else name


class LineDict(dict):
    """A YAML mapping that remembers where it starts and where each of its values starts."""

    line: int = 0  # 1-based line of the mapping's first key
    # key -> (1-based line of the value's first character, YAML scalar style: '|', '>', '"', "'", '' or None)
    key_lines: dict


class _LineLoader(yaml.SafeLoader):  # pylint: disable=too-many-ancestors
    pass


def _construct_mapping(loader: _LineLoader, node: yaml.MappingNode) -> LineDict:
    loader.flatten_mapping(node)
    mapping = LineDict()
    mapping.line = node.start_mark.line + 1
    mapping.key_lines = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        try:
            hash(key)
        except TypeError:
            key = str(key)
        mapping[key] = loader.construct_object(value_node, deep=True)
        style = getattr(value_node, "style", None)
        mapping.key_lines[key] = (value_node.start_mark.line + 1, style)
    return mapping


def _construct_tagged(loader: _LineLoader, _suffix: str, node: yaml.Node) -> Any:
    """Ansible's tags (!vault, !unsafe, ...): the plain value."""
    if isinstance(node, yaml.ScalarNode):
        return loader.construct_scalar(node)
    if isinstance(node, yaml.SequenceNode):
        return loader.construct_sequence(node, deep=True)
    return _construct_mapping(loader, node)


_LineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)
_LineLoader.add_multi_constructor("!", _construct_tagged)


def load_yaml(text: str) -> Any:
    """Load YAML keeping line numbers (mappings are LineDicts). Invalid YAML -> None."""
    try:
        return yaml.load(text, Loader=_LineLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError:
        return None


@functools.lru_cache(maxsize=256)
def _load_file_cached(path: str, _mtime: float) -> Any:
    try:
        return load_yaml(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError):
        return None


def load_yaml_file(path: Path) -> Any:
    try:
        mtime = path.stat().st_mtime
    except OSError:
        return None
    return _load_file_cached(str(path), mtime)


@dataclass
class Task:
    """One task as written: its module, arguments, keywords (inherited when/vars folded in), place."""

    module: str  # as written (FQCN or short)
    args: dict
    keywords: dict
    file: Path
    line: int
    # where each argument's value starts in the file: key -> (line, style); "" is the module's own value
    arg_lines: dict = field(default_factory=dict)
    handler: bool = False

    @property
    def short(self) -> str | None:
        return short_module(self.module)

    def when(self) -> list[str]:
        when = self.keywords.get("when")
        if when is None:
            return []
        return [str(w) for w in (when if isinstance(when, list) else [when])]


def _split_free_form(text: str) -> dict:
    """`k=v k2=v2` free-form arguments (the rest is the command text, _raw_params)."""
    try:
        from ansible.parsing.splitter import parse_kv  # pylint: disable=import-outside-toplevel
    except ImportError:  # pragma: no cover - ansible is always in the venv
        return {"_raw_params": text}
    try:
        return dict(parse_kv(text, check_raw=True))
    except Exception:  # pylint: disable=broad-except - invalid free form: keep the text
        return {"_raw_params": text}


def task_from_mapping(item: LineDict, file: Path, inherited: dict | None = None, handler: bool = False) -> Task | None:
    """Build a Task from one task mapping; None when it has no module (a block, an include by action)."""
    inherited = inherited or {}
    modules = [k for k in item if isinstance(k, str) and k not in TASK_KEYWORDS and not k.startswith("with_")]
    if len(modules) != 1:
        return None
    module = modules[0]
    value = item[module]
    key_lines = getattr(item, "key_lines", {})
    arg_lines: dict = {}
    if isinstance(value, dict):
        args = dict(value)
        arg_lines.update(getattr(value, "key_lines", {}))
    elif isinstance(value, str):
        args = _split_free_form(value)
        if "_raw_params" in args and module in key_lines:
            arg_lines["_raw_params"] = key_lines[module]
    else:
        args = {}
    if module in key_lines:
        arg_lines[""] = key_lines[module]
    extra = item.get("args")
    if isinstance(extra, dict):
        for k, v in extra.items():
            args.setdefault(k, v)
            if k in getattr(extra, "key_lines", {}):
                arg_lines.setdefault(k, extra.key_lines[k])
    keywords = {k: v for k, v in item.items() if k in TASK_KEYWORDS or (isinstance(k, str) and k.startswith("with_"))}
    when = list(inherited.get("when", []))
    if "when" in keywords:
        own = keywords["when"]
        when += own if isinstance(own, list) else [own]
    if when:
        keywords["when"] = when
    tvars = dict(inherited.get("vars", {}))
    if isinstance(keywords.get("vars"), dict):
        tvars.update(keywords["vars"])
    if tvars:
        keywords["vars"] = tvars
    return Task(module=module, args=args, keywords=keywords, file=file, line=getattr(item, "line", 0),
                arg_lines=arg_lines, handler=handler)


def iter_tasks(data: Any, file: Path, handler: bool | None = None, inherited: dict | None = None):
    """Yield every Task of a tasks/handlers list (into blocks; a playbook's plays too).

    `handler` defaults to whether the file is under a handlers/ directory.
    """
    if not isinstance(data, list):
        return
    if handler is None:
        handler = "handlers" in file.parts
    inherited = inherited or {}
    for item in data:
        if not isinstance(item, dict):
            continue
        if "hosts" in item or "import_playbook" in item or "ansible.builtin.import_playbook" in item:
            for section, is_handler in (("pre_tasks", False), ("tasks", False), ("post_tasks", False),
                                        ("handlers", True)):
                yield from iter_tasks(item.get(section), file, is_handler)
            continue
        if "block" in item:
            inner = {"when": list(inherited.get("when", [])), "vars": dict(inherited.get("vars", {}))}
            when = item.get("when")
            if when is not None:
                inner["when"] += when if isinstance(when, list) else [when]
            if isinstance(item.get("vars"), dict):
                inner["vars"].update(item["vars"])
            for section in ("block", "rescue", "always"):
                yield from iter_tasks(item.get(section), file, handler, inner)
            continue
        task = task_from_mapping(item, file, inherited, handler)
        if task is not None:
            yield task


def tasks_of_file(path: Path, handler: bool | None = None) -> list[Task]:
    return list(iter_tasks(load_yaml_file(path), path, handler))


def find_task(path: Path, line: int) -> Task | None:
    """The task of `path` that starts on `line` (ansible-lint's task line)."""
    for task in tasks_of_file(path):
        if task.line == line:
            return task
    return None


def role_dir(path: Path) -> Path | None:
    """The role a file belongs to: the directory above its tasks/, handlers/, files/, vars/... folder."""
    parts = path.parts
    for i in range(len(parts) - 1, 0, -1):
        if parts[i] in ("tasks", "handlers", "files", "vars", "defaults", "templates", "meta"):
            candidate = Path(*parts[:i])
            if (candidate / "tasks").is_dir() or (candidate / "meta").is_dir():
                return candidate
    return None


def role_task_files(role: Path) -> list[Path]:
    files: list[Path] = []
    for sub in ("tasks", "handlers"):
        base = role / sub
        if base.is_dir():
            files += sorted(p for p in base.rglob("*") if p.suffix in (".yml", ".yaml") and p.is_file())
    return files


def role_vars(role: Path) -> dict:
    """defaults/main.yml overlaid with vars/main.yml (role vars win, as in Ansible)."""
    merged: dict = {}
    for sub in ("defaults", "vars"):
        for name in ("main.yml", "main.yaml"):
            data = load_yaml_file(role / sub / name)
            if isinstance(data, dict):
                merged.update(data)
    return merged


_JINJA = re.compile(r"\{\{.*?\}\}|\{%.*?%\}|\{#.*?#\}", re.S)


def has_jinja(value: Any) -> bool:
    return isinstance(value, str) and bool(_JINJA.search(value))


def jinja_spans(text: str) -> list[tuple[int, int]]:
    return [m.span() for m in _JINJA.finditer(text)]


def is_false(value: Any) -> bool:
    """A literal false as Ansible reads it (bool False or the usual strings)."""
    if isinstance(value, bool):
        return not value
    return isinstance(value, str) and value.strip().lower() in ("false", "no", "off", "n", "0")


def is_true(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    return isinstance(value, str) and value.strip().lower() in ("true", "yes", "on", "y", "1")
