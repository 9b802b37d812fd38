"""Helpers shared by the tests and the benchmarks: the test-host tool, a deploy run, and wrk's summary.

One parser for wrk's output: requests, rate, latency percentiles (with --latency) and what a client saw
fail (socket errors + non-2xx responses).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}


def wrk_summary(text: str) -> dict:
    m = re.search(r"(\d+) requests in ([\d.]+)(\w+)", text)
    if not m:
        raise RuntimeError(f"wrk produced no result:\n{text}")
    requests = int(m.group(1))
    seconds = float(m.group(2)) * {"ms": 0.001, "s": 1, "m": 60}[m.group(3)]
    lat = {p: float(v) * _UNITS[u] for p, v, u in re.findall(r"^\s+(50|99)%\s+([\d.]+)(us|ms|s|m)\s*$", text, re.M)}
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    errors = (sum(map(int, sock.groups())) if sock else 0) + (int(non2xx.group(1)) if non2xx else 0)
    return {"duration_s": round(seconds, 2), "requests": requests, "rps": round(requests / seconds, 1) if seconds else 0,
            "p50_ms": round(lat.get("50", 0), 2), "p99_ms": round(lat.get("99", 0), 2),
            "errors": errors, "failed": errors,
            "socket_errors": dict(zip(("connect", "read", "write", "timeout"), map(int, sock.groups()))) if sock else {},
            "non_2xx": int(non2xx.group(1)) if non2xx else 0, "raw": text}


def hosts_tool(fleet: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "tools/testhosts.py"), *args, f"--fleet={fleet}"],
                          capture_output=True, text=True, check=False)


def ansible_env() -> dict:
    return {**os.environ, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}", "ANSIBLE_NOCOLOR": "1"}


def deploy(fleet: str, extra: list[str] | tuple = (), playbook: str = "deploy.yml",
           json_output: bool = False) -> tuple[float, str]:
    """Run a playbook against a fleet of local test hosts (no apt index refresh: the hosts are offline).
    Returns (seconds, output: the json callback's document with json_output); raises with the output's
    tail when it fails."""
    env = ansible_env()
    if json_output:
        env["ANSIBLE_STDOUT_CALLBACK"] = "ansible.posix.json"
    cmd = [str(VENV_BIN / "ansible-playbook"), playbook, "-i", str(ROOT / f"build/hosts/{fleet}/hosts.yml"),
           "-e", "nginx_linux_apt_update_cache=false", "-e", "flask_app_linux_apt_update_cache=false"]
    for e in extra:
        cmd += ["-e", e]
    t0 = time.monotonic()
    run = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env, check=False)
    if run.returncode:
        raise RuntimeError(run.stdout[-3000:] + run.stderr[-2000:])
    return time.monotonic() - t0, run.stdout


# Tasks that run on the controller only (no connection to the host).
CONTROLLER_ACTIONS = {"set_fact", "assert", "debug", "fail", "include_tasks", "include_role", "import_tasks",
                      "import_role", "meta", "validate_argument_spec", "add_host", "group_by", "pause"}


def task_counts(doc: dict) -> dict:
    """Per host, from the json callback's document: tasks that ran (ok or changed), tasks skipped, and the
    work done on the host itself - module runs there, every loop item and retry counted (on Windows each
    one is a WinRM/PSRP round trip)."""
    counts: dict = {}
    for play in doc["plays"]:
        for task in play["tasks"]:
            for host, res in task["hosts"].items():
                c = counts.setdefault(host, {"tasks": 0, "skipped": 0, "host_runs": 0})
                if res.get("skipped"):
                    c["skipped"] += 1
                    continue
                c["tasks"] += 1
                action = res.get("action", "").rsplit(".", 1)[-1]
                if action in CONTROLLER_ACTIONS or "_ansible_delegated_vars" in res:
                    continue
                items = res.get("results") if isinstance(res.get("results"), list) else [res]
                c["host_runs"] += sum(max(1, int(i.get("attempts", 1))) for i in items
                                      if isinstance(i, dict) and not i.get("skipped"))
    return counts
