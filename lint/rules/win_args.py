"""win-args: validate Windows (PowerShell) module tasks against the modules' own documentation.

ansible-lint's `args` rule skips every module implemented in PowerShell (it cannot execute them on a
POSIX controller, ansible-lint issue #3200), and `--syntax-check` never looks at options. This rule
reads the DOCUMENTATION of the module as installed (doc fragments merged) and reports:

- win-args[unknown]:  an option the module does not document (aliases are accepted);
- win-args[required]: a documented required option that is missing;
- win-args[choices]:  a literal value outside the documented `choices`.

Values containing Jinja are skipped: they are only known at run time. Sub-options of dict options
(and lists of dicts) are checked the same way.
"""

from __future__ import annotations

import functools
import os
import warnings
from dataclasses import dataclass
from typing import Any

from ansible.plugins.loader import fragment_loader, init_plugin_loader, module_loader
from ansible.utils.plugin_docs import get_docstring

try:  # the rule class is only needed when ansible-lint loads this file
    from ansiblelint.rules import AnsibleLintRule
except ImportError:  # pragma: no cover - plain import for the checker functions
    AnsibleLintRule = object  # type: ignore[assignment,misc]

# Task keys that are not module options (free-form command text and internal markers).
_NOT_OPTIONS = {"_raw_params", "_uses_shell", "_variables"}


@dataclass(frozen=True)
class Problem:
    kind: str  # unknown | required | choices
    option: str
    message: str


def _has_jinja(value: Any) -> bool:
    return isinstance(value, str) and ("{{" in value or "{%" in value)


@functools.lru_cache(maxsize=None)
def module_doc(name: str) -> tuple[str, dict] | None:
    """Return (fqcn, options) for a Windows module, or None when `name` is not one.

    A Windows module is one implemented in PowerShell (.ps1 beside its .py doc file) or, for
    action-plugin modules such as win_template, any `win_*` module of a collection.
    """
    with warnings.catch_warnings():  # ansible-lint may have configured the loader already
        warnings.simplefilter("ignore")
        init_plugin_loader()
    ctx = module_loader.find_plugin_with_context(name)
    if not ctx.resolved or not ctx.plugin_resolved_path:
        return None
    path = ctx.plugin_resolved_path
    short = ctx.resolved_fqcn.rsplit(".", 1)[-1]
    if not (path.endswith(".ps1") or short.startswith("win_")):
        return None
    doc_path = path
    if path.endswith(".ps1"):  # the documentation sits beside it: a .py stub, or a YAML sidecar (slurp)
        base = path[: -len(".ps1")]
        doc_path = next((base + ext for ext in (".py", ".yml", ".yaml") if os.path.exists(base + ext)), base + ".py")
    collection = ".".join(ctx.resolved_fqcn.split(".")[:2])
    doc = get_docstring(doc_path, fragment_loader, collection_name=collection)[0] or {}
    return ctx.resolved_fqcn, doc.get("options") or {}


def _doc_text(description: Any) -> list[str]:
    if isinstance(description, str):
        return [description]
    return [str(d) for d in description or []]


def _check_value(option: str, spec: dict, value: Any, where: str) -> list[Problem]:
    if _has_jinja(value):
        return []
    problems: list[Problem] = []
    choices = spec.get("choices")
    if choices and not isinstance(value, (dict, bool)) and value is not None:
        allowed = {str(c) for c in choices}
        values = value if isinstance(value, list) else [value]
        # Options documented as comma-separated (list type, or a str whose doc says so) take "a, b".
        comma_ok = spec.get("type") == "list" or "comma" in " ".join(_doc_text(spec.get("description"))).lower()
        if comma_ok and isinstance(value, str) and "," in value:
            values = [v.strip() for v in value.split(",")]
        for v in values:
            if not _has_jinja(v) and str(v) not in allowed:
                problems.append(Problem("choices", option,
                                        f"{where}: option '{option}' has value {v!r}, "
                                        f"not one of {sorted(allowed)}"))
    sub = spec.get("suboptions")
    if sub:
        items = value if isinstance(value, list) else [value]
        for item in items:
            if isinstance(item, dict):
                problems += check_options(sub, item, f"{where} > {option}")
    return problems


def check_options(options: dict, args: dict, where: str) -> list[Problem]:
    """Check `args` against the documented `options` mapping."""
    names: dict[str, str] = {}
    for opt, spec in options.items():
        names[opt] = opt
        for alias in spec.get("aliases") or []:
            names[alias] = opt
    problems: list[Problem] = []
    given: set[str] = set()
    for key, value in args.items():
        if not isinstance(key, str) or key.startswith("__") or key in _NOT_OPTIONS:
            continue
        if key not in names:
            problems.append(Problem("unknown", key,
                                    f"{where}: unknown option '{key}' (documented: {', '.join(sorted(options))})"))
            continue
        canonical = names[key]
        given.add(canonical)
        problems += _check_value(key, options[canonical], value, where)
    for opt, spec in options.items():
        if spec.get("required") and opt not in given:
            problems.append(Problem("required", opt, f"{where}: missing required option '{opt}'"))
    return problems


def check_task(module: str, args: dict | str | None) -> list[Problem]:
    """Check one task's module arguments. Returns [] for non-Windows modules."""
    found = module_doc(module)
    if found is None:
        return []
    fqcn, options = found
    if not isinstance(args, dict):  # a whole-args Jinja expression: unknown until run time
        return []
    return check_options(options, args, fqcn)


class WinArgsRule(AnsibleLintRule):  # type: ignore[misc,valid-type]
    """Windows module options must match the module's documentation."""

    id = "win-args"
    severity = "HIGH"
    description = ("Options, required options and choices of PowerShell (win_*) modules are checked against "
                   "their DOCUMENTATION, which ansible-lint's args rule skips.")
    tags = ["syntax", "windows"]
    version_changed = "1.0.0"
    _ids = {
        "win-args[unknown]": "unknown option",
        "win-args[required]": "missing required option",
        "win-args[choices]": "value not in choices",
    }

    def matchtask(self, task, file=None):  # noqa: ANN001, ANN201 - ansible-lint API
        action = task["action"]
        module = action.get("__ansible_module_original__") or action.get("__ansible_module__")
        if not module:
            return []
        args = {k: v for k, v in action.items() if not (isinstance(k, str) and k.startswith("__"))}
        name = task.get("name") or module
        return [
            self.create_matcherror(
                message=f"task '{name}': {p.message}",
                lineno=task.get("__line__", 1),
                filename=file,
                tag=f"{self.id}[{p.kind}]",
            )
            for p in check_task(module, args)
        ]
