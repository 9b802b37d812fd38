"""make bench's harness in quick mode (short runs, low concurrency): it produces a row per topology and
concurrency, counts errors (a deliberately broken topology must show them), and writes the JSON and chart.
Timings are never asserted here; they are make bench's business."""

import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT, venv_env

pytestmark = pytest.mark.hosts
TOPOLOGIES = ["flask-dev", "tornado", "waitress", "granian", "nginx+4flask", "nginx+4tornado", "nginx+gunicorn4",
              "ours-waitress", "ours-granian", "ours-direct-waitress", "ours-direct-granian"]


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    if os.geteuid() != 0:
        pytest.skip("needs root")
    out = tmp_path_factory.mktemp("bench")
    run = subprocess.run([sys.executable, str(ROOT / "bench/run.py"), "--quick", "--out", str(out)],
                         capture_output=True, text=True, env=venv_env(), timeout=900, check=False)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    return out, {"rows": json.loads((out / "latest.json").read_text())}, run.stdout


def test_every_topology_produced_a_row(quick):
    _, data, table = quick
    rows = [r for r in data["rows"] if r["scenario"] == "test"]
    assert {r["topology"] for r in rows} >= set(TOPOLOGIES)
    for r in rows:
        assert r["requests"] > 0 and r["rps"] > 0 and r["duration_s"] > 0, r
        assert 0 < r["p50_ms"] <= r["p99_ms"] <= r["max_ms"] and 0 < r["mean_ms"] <= r["max_ms"], r
        assert set(r) >= {"topology", "concurrency", "duration_s", "requests", "rps", "p50_ms", "p99_ms", "errors"}
        assert r["topology"] in table


def test_errors_are_counted(quick):
    _, data, _ = quick
    broken = next(r for r in data["rows"] if r["topology"] == "broken")
    # nginx in front of nothing: every answer is a 502, and the harness counts each one.
    assert broken["errors"] == broken["non_2xx"] == broken["requests"] > 0


def test_cpu_per_tier(quick):
    """Every row has the CPU each tier spent per 1,000 requests; nginx's share where the load went through it."""
    _, data, table = quick
    for r in data["rows"]:
        cpu, top = r["cpu_ms_per_1k"], r["topology"]
        assert cpu["wrk"] > 0, r
        if top == "broken":  # nginx answering 502 itself: all of the stack's CPU is nginx's
            assert cpu["nginx"] > 0 and r["nginx_share"] == 1.0, r
            continue
        assert cpu["backends"] > 0, r
        if top.startswith("ours-direct-"):  # nginx idle beside the direct load: no share
            assert r["nginx_share"] is None and cpu["nginx"] < cpu["backends"], r
        elif top.startswith(("nginx+", "ours-")):
            assert cpu["nginx"] > 0 and 0 < r["nginx_share"] < 1, r
        else:  # a server alone
            assert "nginx" not in cpu and r["nginx_share"] is None, r
    assert "CPU ms/1k req" in table


def test_sleep_isolation_rows_and_chart(quick):
    out, data, _ = quick
    iso = [r for r in data["rows"] if r["scenario"].startswith("test+")]
    # One per app server, each with the baseline it is compared with.
    assert sorted(r["topology"] for r in iso) == ["ours-granian", "ours-waitress"], iso
    for r in iso:
        assert "baseline_p99_ms" in r
        # The long requests really ran beside /test (completed, none failed).
        assert r["sleep_requests"] > 0 and r["sleep_errors"] == 0, r
    assert (out / "latest.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
