"""nginx time and size values as numbers, so the role can check invariants between settings.

Invalid values give -1 (not an exception): the validate step's assert then names the variable and rule.
"""

from __future__ import annotations

import re

_TIME = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "M": 2592000, "y": 31536000}
_SIZE = {"": 1, "k": 1024, "K": 1024, "m": 1024**2, "M": 1024**2, "g": 1024**3, "G": 1024**3}


def nginx_seconds(value):
    """'60s', '1m30s', '500ms', '10' (seconds) -> seconds as float; -1 if nginx would reject it."""
    text = str(value).strip()
    if re.fullmatch(r"\d+", text):
        return float(text)
    parts = re.findall(r"(\d+)(ms|[smhdwMy])", text)
    if not parts or "".join(n + u for n, u in parts) != text:
        return -1
    return float(sum(int(n) * _TIME[u] for n, u in parts))


def nginx_bytes(value):
    """'10m', '512k', '1048576' -> bytes; -1 if nginx would reject it."""
    match = re.fullmatch(r"(\d+)([kKmMgG]?)", str(value).strip())
    return int(match.group(1)) * _SIZE[match.group(2)] if match else -1


class FilterModule:
    def filters(self):
        return {"nginx_seconds": nginx_seconds, "nginx_bytes": nginx_bytes}
