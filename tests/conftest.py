import os
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
sys.path.insert(0, str(ROOT / "lint" / "rules"))


def venv_env() -> dict:
    """Environment for tools from the venv (molecule and ansible-lint call other venv binaries)."""
    env = dict(os.environ)
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env.setdefault("ANSIBLE_NOCOLOR", "1")
    env["NO_COLOR"] = "1"
    return env


def parse_wrk(text: str) -> dict:
    """wrk's summary: requests, and failed = socket errors + non-2xx responses (what a client saw)."""
    total = int(re.search(r"(\d+) requests in", text).group(1))
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    failed = (sum(map(int, sock.groups())) if sock else 0) + (int(non2xx.group(1)) if non2xx else 0)
    assert total > 0, text
    return {"requests": total, "failed": failed, "raw": text}
