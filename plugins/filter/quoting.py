"""Quote an argument list for a Windows command line (NSSM AppParameters) or a systemd ExecStart."""

from __future__ import annotations

import re

_SYSTEMD_SPECIAL = re.compile(r'[\s"\'\\;$%]')


def win_argv(args):
    """Join args so CommandLineToArgvW (what Python's own argv parser follows) splits them back."""
    out = []
    for arg in args:
        arg = str(arg)
        if arg and not re.search(r'[\s"]', arg):
            out.append(arg)
            continue
        # Backslashes are literal unless they precede a quote; double those, escape the quote.
        quoted = re.sub(r'(\\*)"', r'\1\1\\"', arg)
        quoted = re.sub(r'(\\+)$', r'\1\1', quoted)
        out.append(f'"{quoted}"')
    return " ".join(out)


def systemd_quote(value, exec_line=True):
    """Quote one word for a unit file: an ExecStart argument, or (exec_line=False) an Environment=
    assignment, where '$' is literal. '%' starts a specifier in both."""
    value = str(value)
    if value and not _SYSTEMD_SPECIAL.search(value):
        return value
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%")
    if exec_line:
        escaped = escaped.replace("$", "$$")
    return f'"{escaped}"'


def systemd_env_quote(value):
    """Quote a value for an EnvironmentFile= line: double quotes, where a backslash escapes
    \\ " $ and ` (nothing is expanded there)."""
    value = str(value)
    if "\n" in value or "\r" in value:
        raise ValueError("environment values cannot span lines")
    return '"' + re.sub(r'([\\"$`])', r"\\\1", value) + '"'


class FilterModule:
    def filters(self):
        return {"win_argv": win_argv, "systemd_quote": systemd_quote, "systemd_env_quote": systemd_env_quote}
