"""playbooks/status.yml on 2 local hosts: rc 0 and a healthy summary (and JSON file) when everything is up;
rc != 0 with the summary still printed, naming the host and what is down, when a backend or a site is down
or a host cannot be reached. Status changes nothing (changed=0). Figures: build/status-results.json.
"""

import json
import os
import re
import subprocess
import sys
import time

import pytest

from conftest import ROOT, VENV_BIN, venv_env

sys.path.insert(0, str(ROOT / "tools"))
import testhosts  # noqa: E402

pytestmark = [pytest.mark.hosts, pytest.mark.extended]
FLEET, NET = "stat", "10.231.10"
HOSTS = ["stat1", "stat2"]
INVENTORY = ROOT / f"build/hosts/{FLEET}/hosts.yml"
BUILD = ROOT / "build" / "status"
BASE = {"nginx_linux_apt_update_cache": False, "flask_app_linux_apt_update_cache": False}
RESULTS = {}


def hosts_tool(*args):
    return subprocess.run([sys.executable, str(ROOT / "tools/testhosts.py"), *args, f"--fleet={FLEET}"],
                          capture_output=True, text=True, timeout=600, check=False)


def playbook(name, *args, inventory=INVENTORY, **extra):
    extra_file = BUILD / "extra.json"
    extra_file.write_text(json.dumps({**BASE, **extra}))
    t0 = time.monotonic()
    run = subprocess.run([str(VENV_BIN / "ansible-playbook"), name, "-i", str(inventory), "-e", f"@{extra_file}",
                          *args], capture_output=True, text=True, env=venv_env(), cwd=ROOT, timeout=900,
                         check=False)
    return run.returncode, run.stdout + run.stderr, round(time.monotonic() - t0, 1)


def status(case, inventory=INVENTORY):
    """Run the status playbook with a JSON report; (rc, summary lines, JSON, output)."""
    report = BUILD / f"{case}.json"
    report.unlink(missing_ok=True)
    rc, out, seconds = playbook("playbooks/status.yml", inventory=inventory, status_json=str(report))
    # The summary's lines: a header, one line per host, the count.
    m = re.search(r'TASK \[Fleet summary\].*?"msg": \[\n(.*?)\n\s*\]', out, re.S)
    assert m, out[-3000:]
    lines = [json.loads(line.strip().rstrip(",")) for line in m.group(1).split("\n")]
    summary = json.loads(report.read_text())
    changed = [int(n) for n in re.findall(r"^\S+\s+: ok=\d+\s+changed=(\d+)", out, re.M)]
    RESULTS[case] = {"rc": rc, "seconds": seconds, "changed": sum(changed), "problems": summary["problems"]}
    (ROOT / "build/status-results.json").write_text(json.dumps(RESULTS, indent=2) + "\n")
    assert sum(changed) == 0, out[-3000:]
    return rc, lines, summary, out


def row(lines, host):
    found = [line for line in lines if line.split()[0] == host]
    assert len(found) == 1, lines
    return found[0]


def on(host, *cmd):
    """Run a command inside the host (all its namespaces)."""
    init = testhosts.container_init(testhosts.Fleet(FLEET).state()["hosts"][host]["nspawn_pid"])
    return subprocess.run(["nsenter", "-t", str(init), "-a", *cmd], capture_output=True, text=True, timeout=60,
                          check=True)


def wait_answer(host, port, timeout=30):
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if subprocess.run(["ip", "netns", "exec", f"ffh-{host}", "curl", "-sf", "--max-time", "2",
                           f"http://127.0.0.1:{port}/healthz"], capture_output=True, check=False).returncode == 0:
            return True
        time.sleep(0.2)
    return False


@pytest.fixture(scope="module", autouse=True)
def fleet(request):
    if os.geteuid() != 0:
        pytest.skip("test hosts need root")
    hosts_tool("down")
    request.addfinalizer(lambda: hosts_tool("down"))
    BUILD.mkdir(parents=True, exist_ok=True)
    up = hosts_tool("up", "--count=2", f"--net={NET}")
    assert up.returncode == 0, up.stderr
    rc, out, seconds = playbook("deploy.yml")
    assert rc == 0, out[-3000:]
    RESULTS["deploy"] = {"rc": rc, "seconds": seconds}


def test_healthy_fleet_exits_0_with_one_line_per_host():
    rc, lines, summary, out = status("healthy")
    assert rc == 0, out[-3000:]
    assert lines[0].split() == ["host", "version", "backends", "site", "digest", "down"]
    assert lines[-1] == "2 of 2 host(s) healthy"
    assert summary["healthy"] is True and summary["problems"] == []
    assert (summary["hosts_total"], summary["hosts_healthy"]) == (2, 2)
    assert [h["host"] for h in summary["hosts"]] == HOSTS
    for h in summary["hosts"]:
        marker = on(h["host"], "cat", "/opt/sampleapp/current/.installed").stdout.split()
        assert h["reached"] and h["healthy"] and h["problems"] == []
        assert [h["version"], h["digest"]] == marker and re.fullmatch(r"[0-9a-f]{16}", h["digest"])
        assert h["backends_total"] >= 1 and h["backends_up"] == h["backends_total"] == len(h["backends"])
        assert all(b["up"] and b["http_status"] == 200 and b["version"] == h["version"] for b in h["backends"])
        assert h["site"]["up"] and h["site"]["http_status"] == 200
        assert row(lines, h["host"]).split() == [h["host"], h["version"], f"{h['backends_total']}/{h['backends_total']}",
                                                 "up", h["digest"]]


def test_backend_down_site_down_and_unreachable_host_exit_non_zero_naming_each():
    # One run for the three (hosts are slow to ask): a backend stopped on stat1, nginx stopped on stat2, and
    # stat9 in the inventory at an address nothing answers on.
    inventory = BUILD / "hosts-unreachable.yml"
    inventory.write_text(INVENTORY.read_text().replace(
        "        stat2:\n", f"        stat9:\n          ansible_host: {NET}.99\n        stat2:\n"))
    on("stat1", "systemctl", "stop", "sampleapp-8001")
    on("stat2", "systemctl", "stop", "nginx")
    try:
        rc, lines, summary, out = status("down", inventory=inventory)
    finally:
        on("stat1", "systemctl", "start", "sampleapp-8001")
        on("stat2", "systemctl", "start", "nginx")
    assert rc != 0
    problems = ["stat1: backend 8001 down (no answer)", "stat9: unreachable", "stat2: site down (no answer)"]
    assert summary["healthy"] is False and summary["problems"] == problems
    assert (summary["hosts_total"], summary["hosts_healthy"]) == (3, 0)
    assert "Unhealthy: " + "; ".join(problems) in out
    one, nine, two = summary["hosts"]
    assert [b["port"] for b in one["backends"] if not b["up"]] == [8001]
    assert one["backends_up"] == one["backends_total"] - 1 and one["site"]["up"]
    assert two["backends_up"] == two["backends_total"] and not two["site"]["up"]
    assert (nine["host"], nine["reached"], nine["healthy"]) == ("stat9", False, False)
    assert row(lines, "stat1").split()[2:4] == [f"{one['backends_up']}/{one['backends_total']}", "up"]
    assert row(lines, "stat1").endswith("backend 8001 down (no answer)")
    assert row(lines, "stat2").split()[3] == "DOWN" and row(lines, "stat2").endswith("site down (no answer)")
    assert row(lines, "stat9").split() == ["stat9", "-", "0/0", "-", "-", "unreachable"]
    assert lines[-1] == "0 of 3 host(s) healthy"
    # And back: healthy again once both answer.
    for host, port in (("stat1", 8001), ("stat2", 80)):
        assert wait_answer(host, port), f"{host}:{port} did not come back"
    rc, lines, summary, out = status("recovered")
    assert rc == 0 and summary["healthy"], out[-3000:]
