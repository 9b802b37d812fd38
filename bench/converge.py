#!/usr/bin/env python3
"""Deploy-time scaling: full and no-op converge wall time of deploy.yml for 1, 3 and 6 local test hosts,
with per host: tasks that ran, tasks skipped, work on the host itself (module runs there, loop items and
retries each counted: on Windows each is a round trip), and changed counts.

  bench/converge.py [--hosts 1,3,6] [--out bench/results]   -> converge.json, printed table
The wheelhouse is built once on the controller before the first measured run (cached afterwards), so every
row measures the hosts' work, not the one-time build.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
from fleetlib import deploy, hosts_tool, task_counts  # noqa: E402

FLEET, NET = "conv", "10.231.8"


def converge() -> dict:
    seconds, out = deploy(FLEET, json_output=True)
    doc = json.loads(out)
    counts = task_counts(doc)
    return {"seconds": round(seconds, 1), "changed_max": max(s["changed"] for s in doc["stats"].values()),
            "tasks_per_host": max(c["tasks"] for c in counts.values()),
            "skipped_per_host": max(c["skipped"] for c in counts.values()),
            "host_runs_per_host": max(c["host_runs"] for c in counts.values())}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hosts", default="1,3,6")
    ap.add_argument("--out", default=str(ROOT / "bench/results"))
    args = ap.parse_args(argv)
    rows = []
    try:
        for n in [int(x) for x in args.hosts.split(",")]:
            hosts_tool(FLEET, "down")
            up = hosts_tool(FLEET, "up", f"--count={n}", f"--net={NET}")
            if up.returncode:
                raise RuntimeError(up.stderr)
            if not rows:  # first time: build the wheelhouse outside the measurement
                converge()
                hosts_tool(FLEET, "down")
                hosts_tool(FLEET, "up", f"--count={n}", f"--net={NET}")
            full = converge()
            noop = converge()
            rows.append({"hosts": n, "full_s": full["seconds"], "full_changed": full["changed_max"],
                         "noop_s": noop["seconds"], "noop_changed": noop["changed_max"],
                         "tasks_per_host": full["tasks_per_host"], "skipped_per_host": full["skipped_per_host"],
                         "host_runs_per_host": full["host_runs_per_host"],
                         "noop_tasks_per_host": noop["tasks_per_host"],
                         "noop_host_runs_per_host": noop["host_runs_per_host"]})
            print(f"converge: {rows[-1]}", file=sys.stderr, flush=True)
    finally:
        hosts_tool(FLEET, "down")
    base = rows[0]
    for r in rows:
        r["full_vs_1"] = round(r["full_s"] / base["full_s"], 2)
        r["noop_vs_1"] = round(r["noop_s"] / base["noop_s"], 2)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "converge.json").write_text(json.dumps({"cpus": os.cpu_count(), "rows": rows}, indent=2) + "\n")
    print(f"{'hosts':>5} {'full s':>7} {'x1':>5} {'no-op s':>8} {'x1':>5} {'no-op changed':>14} {'tasks/host':>10} "
          f"{'on host':>8}")
    for r in rows:
        print(f"{r['hosts']:>5} {r['full_s']:>7} {r['full_vs_1']:>5} {r['noop_s']:>8} {r['noop_vs_1']:>5} "
              f"{r['noop_changed']:>14} {r['tasks_per_host']:>10} {r['host_runs_per_host']:>8}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
