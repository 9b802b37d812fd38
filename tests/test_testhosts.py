"""Host lifecycle smoke test: up -> ansible ping -> systemd running -> down -> nothing left, for each image."""

import json
import os
import subprocess
import sys
import time

import pytest

from conftest import ROOT, VENV_BIN, venv_env

pytestmark = pytest.mark.hosts
TOOL = [sys.executable, str(ROOT / "tools" / "testhosts.py")]
# Overridable (SMOKE_FLEET, SMOKE_NET) to profile beside a running CI that uses these.
NAME = os.environ.get("SMOKE_FLEET", "smoke")
FLEET = ["--fleet", NAME, "--net", os.environ.get("SMOKE_NET", "10.231.9")]


def tool(*args, check=True):
    return subprocess.run([*TOOL, *args], capture_output=True, text=True, check=check, timeout=600)


@pytest.fixture(scope="module", autouse=True)
def _root_and_clean():
    if os.geteuid() != 0:
        pytest.skip("test hosts need root")
    tool("down", "--fleet", NAME)
    yield
    tool("down", "--fleet", NAME, check=False)


@pytest.mark.parametrize("image", ["bare", "deploy"])
def test_up_ping_running_down_leaves_nothing(image):
    t0 = time.monotonic()
    up = tool("up", "--count", "2", f"--image={image}", *FLEET)
    boot_s = time.monotonic() - t0
    state = json.loads(tool("status", "--fleet", NAME).stdout)
    assert sorted(state["hosts"]) == [f"{NAME}1", f"{NAME}2"], up.stderr
    inventory = ROOT / "build" / "hosts" / NAME / "hosts.yml"

    ping = subprocess.run(
        [str(VENV_BIN / "ansible"), "all", "-i", str(inventory), "-m", "ansible.builtin.ping", "-o"],
        capture_output=True, text=True, env=venv_env(), cwd=ROOT, timeout=120, check=False,
    )
    assert ping.returncode == 0, ping.stdout + ping.stderr
    assert ping.stdout.count('"ping": "pong"') == 2, ping.stdout

    running = subprocess.run(
        [str(VENV_BIN / "ansible"), "all", "-i", str(inventory), "-m", "ansible.builtin.command",
         "-a", "systemctl is-system-running", "-o"],
        capture_output=True, text=True, env=venv_env(), cwd=ROOT, timeout=120, check=False,
    )
    assert running.stdout.count("(stdout) running") == 2, running.stdout + running.stderr

    # Each host is a separate machine: its own hostname, PID 1 is systemd, own network namespace.
    facts = subprocess.run(
        [str(VENV_BIN / "ansible"), "all", "-i", str(inventory), "-m", "ansible.builtin.setup",
         "-a", "gather_subset=min,!all filter=ansible_service_mgr,ansible_hostname", "-o"],
        capture_output=True, text=True, env=venv_env(), cwd=ROOT, timeout=120, check=False,
    )
    assert facts.stdout.count('"ansible_service_mgr": "systemd"') == 2, facts.stdout
    assert f'"ansible_hostname": "{NAME}1"' in facts.stdout and f'"ansible_hostname": "{NAME}2"' in facts.stdout

    # The deploy's packages: left to the roles on a bare host, installed (by the same apt) in the deploy image.
    packages = subprocess.run(
        [str(VENV_BIN / "ansible"), "all", "-i", str(inventory), "-m", "ansible.builtin.command",
         "-a", "dpkg-query -W -f=${Status}, nginx python3-venv", "-o"],
        capture_output=True, text=True, env=venv_env(), cwd=ROOT, timeout=120, check=False,
    )
    assert packages.stdout.count("install ok installed") == (4 if image == "deploy" else 0), packages.stdout

    tool("down", "--fleet", NAME)
    left = tool("leftovers", "--fleet", NAME, check=False)
    assert left.returncode == 0, left.stdout
    assert all(v == [] for v in json.loads(left.stdout).values())
    print(f"{image}: up {boot_s:.1f}s (boot {state['boot_seconds']}s)")


def test_usage_lists_reboot_and_it_needs_a_host():
    usage = subprocess.run([*TOOL, "--help"], capture_output=True, text=True, check=False).stdout
    assert "reboot --host NAME" in usage
    res = subprocess.run([*TOOL, "reboot", "--fleet", NAME], capture_output=True, text=True, check=False)
    assert res.returncode == 2 and "reboot needs --host" in res.stderr
