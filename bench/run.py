#!/usr/bin/env python3
"""make bench: the seed's load comparison, with the converged stack in it, on this machine, in one run.

Topologies (same app, same routes):
  flask-dev             Flask's threaded dev server alone
  tornado               Tornado's WSGIContainer alone
  waitress              one waitress alone
  granian               one granian process alone (WSGI, 1 worker, 48 blocking threads)
  nginx+4flask          nginx in front of 4 Flask dev servers
  nginx+4tornado        nginx in front of 4 Tornado servers
  nginx+gunicorn4       nginx in front of gunicorn with 4 sync workers (what a Linux user would pick)
  ours-SERVER           the stack exactly as deploy.yml converged it on a local test host, with
                        flask_app_server SERVER (waitress, then granian: a rolling change of the same host)
  ours-direct-SERVER    the same backends hit directly, no nginx (the proxy-overhead limit)
(Results before 2026-11-26 name ours-waitress "ours" and ours-direct-waitress "ours-direct".)
Peers run in their own network namespace on loopback; ours is measured inside the test host's namespace.
The load generator is wrk (bounded in time). errors = socket errors + non-2xx responses.
Then /sleep isolation on ours-SERVER: /test at c=500, alone and with 64 long /sleep requests in flight.

CPU per tier: each row has the CPU time nginx, the backends and wrk spent per 1,000 requests
(cpu_ms_per_1k) and nginx_share = nginx / (nginx + backends) where the load went through nginx. The
servers' figures are the utime + stime of their processes (/proc/PID/stat) before and after the run: a
peer's processes by session, ours' by their systemd unit (from /proc/PID/cgroup) among the processes of the
test host's PID namespace. (Not the units' cgroup cpu.stat: every nspawn host on this machine places its
units in the same cgroup paths, so a unit's cpu.stat sums the same-named units of all running test hosts.)
wrk's is its rusage from wait4 (exact).

Writes bench/results/latest.json (a list of rows), latest.meta.json (how it ran, and issue 15's targets
met or not) and latest.png (or --out DIR), and prints a table and the targets.
  bench/run.py [--quick] [--duration S] [--concurrency 500,1000,5000] [--only a,b] [-e [SERVER:]var=value ...]
--quick: short runs at low concurrency plus a deliberately failing topology, to check the harness itself.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
from fleetlib import deploy, hosts_tool, wrk_summary  # noqa: E402

BUILD = ROOT / "build" / "bench"
VENV_BIN = Path(sys.executable).parent
PEERS_NS = "ffb-peers"
# The test-host fleet and its /24 (overridable so a run never meets another one's fleet).
FLEET, NET = os.environ.get("BENCH_FLEET", "bench"), os.environ.get("BENCH_NET", "10.231.7")
HOST, PEERS_NS = f"{FLEET}1", f"ffb-{FLEET}"
NOFILE = 20000
SERVERS = ["waitress", "granian"]
PEER_TOPOLOGIES = ["flask-dev", "tornado", "waitress", "granian", "nginx+4flask", "nginx+4tornado",
                   "nginx+gunicorn4"]
TOPOLOGIES = PEER_TOPOLOGIES + [f"ours-{s}" for s in SERVERS] + [f"ours-direct-{s}" for s in SERVERS]
APP = "sampleapp:create_app()"
CLK_TCK = os.sysconf("SC_CLK_TCK")


def log(msg: str) -> None:
    print(f"bench: {msg}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------ wrk

def wrk(ns: str, url: str, conns: int, seconds: float, threads: int = 2, script: str | None = None,
        env: dict | None = None) -> subprocess.Popen:
    """wrk started in ns; `ip netns exec` and sh exec into it, so the process is wrk itself."""
    threads = max(1, min(threads, conns))
    cmd = f"ulimit -n {NOFILE}; exec wrk -t{threads} -c{conns} -d{int(seconds)}s --timeout 10s --latency"
    if script:
        cmd += f" -s {script}"
    return subprocess.Popen(["ip", "netns", "exec", ns, "sh", "-c", f"{cmd} {url}"], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env={**os.environ, **(env or {})})


def settle(ns: str, url: str, timeout: float = 60) -> None:
    """After a run, wait until the server has worked off what the departed clients left queued (at c=5000
    thousands of requests can still sit in accept queues): three quick answers in a row, so the next run
    does not start behind them."""
    deadline, quick = time.monotonic() + timeout, 0
    while quick < 3 and time.monotonic() < deadline:
        out = subprocess.run(["ip", "netns", "exec", ns, "curl", "-s", "-o", "/dev/null", "-w", "%{http_code} %{time_total}",
                              "--max-time", "5", url], capture_output=True, text=True, check=False).stdout.split()
        quick = quick + 1 if len(out) == 2 and out[0] == "200" and float(out[1]) < 0.05 else 0
        time.sleep(0.3)


def finish(proc: subprocess.Popen, timeout: float) -> tuple[str, float]:
    """wrk's output and its CPU seconds: the rusage wait4 returns (its threads, exact)."""
    watchdog = threading.Timer(timeout, proc.kill)
    watchdog.start()
    try:
        out = proc.stdout.read()
        _, status, usage = os.wait4(proc.pid, 0)
    finally:
        watchdog.cancel()
    proc.returncode = os.waitstatus_to_exitcode(status)
    return out, usage.ru_utime + usage.ru_stime


def proc_stats() -> dict[int, list[str]]:
    """Every process's /proc/PID/stat fields after the command name (index 0 = state)."""
    stats = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            with contextlib.suppress(OSError):
                stats[int(d)] = Path(f"/proc/{d}/stat").read_text().rsplit(")", 1)[1].split()
    return stats


def cpu_seconds(fields: list[str]) -> float:
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime, all threads of the process


def measure(ns: str, url: str, conns: int, seconds: float, tiers=None, direct: bool = False, **kw) -> dict:
    """One wrk run. tiers: a function returning {tier: CPU seconds so far} of the servers (None: no CPU
    figures); direct: the load bypassed nginx (no nginx share)."""
    before = tiers() if tiers else {}
    out, wrk_cpu = finish(wrk(ns, url, conns, seconds, **kw), seconds + 120)
    after = tiers() if tiers else {}
    result = wrk_summary(out)
    # Mean and longest latency beside the percentiles: connections a server leaves waiting for seconds make few
    # requests, so p99 (per request) can look short while they starve; mean x req/s = connections shows it.
    lat = re.search(r"^\s+Latency\s+([\d.]+)(us|ms|s|m)\s+\S+\s+([\d.]+)(us|ms|s|m)", out, re.M)
    if lat:
        unit = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}
        result["mean_ms"] = round(float(lat.group(1)) * unit[lat.group(2)], 1)
        result["max_ms"] = round(float(lat.group(3)) * unit[lat.group(4)], 1)
    if tiers and result["requests"]:
        cpu = {t: after[t] - before.get(t, 0.0) for t in after} | {"wrk": wrk_cpu}
        # CPU ms per 1,000 requests = CPU s per request x 1e6.
        result["cpu_ms_per_1k"] = {t: round(v * 1e6 / result["requests"], 1) for t, v in cpu.items()}
        stack = cpu.get("nginx", 0.0) + cpu.get("backends", 0.0)
        result["nginx_share"] = round(cpu["nginx"] / stack, 3) if "nginx" in cpu and not direct and stack else None
    if "/test" in url and result["non_2xx"] < result["requests"]:  # (not for the always-failing check)
        settle(ns, url)
    return result


# ------------------------------------------------------------------------------------------ peers

class Peers:
    """Servers for one topology inside the peers' namespace; stopped on exit."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen] = []
        self.tier: dict[int, str] = {}  # session (= the spawned process's pid) -> nginx | backends
        self.nginx_conf: Path | None = None

    def spawn(self, *cmd: str, tier: str = "backends") -> None:
        logf = open(BUILD / "peers.log", "a")  # noqa: SIM115 - closed with the process
        self.procs.append(subprocess.Popen(
            ["ip", "netns", "exec", PEERS_NS, "sh", "-c", f"ulimit -n {NOFILE}; exec \"$@\"", "sh", *cmd],
            stdout=logf, stderr=subprocess.STDOUT, cwd=BUILD, start_new_session=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"}))
        self.tier[self.procs[-1].pid] = tier

    def cpu(self) -> dict[str, float]:
        """CPU seconds of each tier's processes (each spawn is a session: its workers are in it)."""
        totals = dict.fromkeys(self.tier.values(), 0.0)
        for fields in proc_stats().values():
            if int(fields[3]) in self.tier:  # the session id
                totals[self.tier[int(fields[3])]] += cpu_seconds(fields)
        return totals

    def flask(self, port: int) -> None:
        self.spawn(str(VENV_BIN / "python"), "-c",
                   f"from sampleapp import create_app; create_app().run(host='127.0.0.1', port={port}, threaded=True)")

    def tornado(self, port: int) -> None:
        self.spawn(str(VENV_BIN / "python"), str(ROOT / "bench/tornado_wsgi.py"), str(port))

    def waitress(self, port: int) -> None:
        self.spawn(str(VENV_BIN / "python"), "-m", "sampleapp", f"--port={port}")

    def granian(self, port: int) -> None:
        """granian as the role runs it: WSGI, one worker, 48 blocking threads (= flask_app_threads)."""
        self.spawn(str(VENV_BIN / "granian"), "--interface", "wsgi", "--factory", "--workers", "1",
                   "--blocking-threads", "48", "--backlog", "4096", "--host", "127.0.0.1", "--port", str(port),
                   "--log-level", "warning", APP.removesuffix("()"))

    def gunicorn(self, port: int, workers: int) -> None:
        self.spawn(str(VENV_BIN / "gunicorn"), "-w", str(workers), "-k", "sync", "-b", f"127.0.0.1:{port}",
                   "--backlog", "2048", "--log-level", "warning", APP)

    def nginx(self, port: int, backends: list[int]) -> None:
        """nginx with the same proxy settings the role renders (keepalive upstream, HTTP/1.1)."""
        prefix = BUILD / f"nginx-{port}"
        prefix.mkdir(parents=True, exist_ok=True)
        (prefix / "logs").mkdir(exist_ok=True)
        conf = (ROOT / "bench/peer-nginx.conf").read_text()
        conf = conf.replace("@PORT@", str(port)).replace("@PREFIX@", str(prefix)).replace(
            "@SERVERS@", "\n".join(f"        server 127.0.0.1:{p} max_fails=1 fail_timeout=5s;" for p in backends))
        self.nginx_conf = prefix / "nginx.conf"
        self.nginx_conf.write_text(conf)
        self.spawn("nginx", "-p", str(prefix), "-c", str(self.nginx_conf), "-g", "daemon off;", tier="nginx")

    def wait(self, ports: list[int], timeout: float = 30, ok_status: bool = True) -> None:
        """Until each port answers /test (with a 2xx, or any HTTP answer when ok_status is off)."""
        deadline = time.monotonic() + timeout
        for port in ports:
            while subprocess.run(["ip", "netns", "exec", PEERS_NS, "curl", "-s", "-o", "/dev/null", "--max-time", "2",
                                  *(["-f"] if ok_status else []), f"http://127.0.0.1:{port}/test"],
                                 check=False).returncode != 0:
                if time.monotonic() > deadline or any(p.poll() is not None for p in self.procs):
                    raise RuntimeError(f"peer on port {port} did not come up; see {BUILD / 'peers.log'}")
                time.sleep(0.2)

    def stop(self) -> None:
        for p in self.procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
        self.procs.clear()


def start_peer(name: str, peers: Peers) -> int:
    """Start one peer topology; returns the port the load goes to."""
    if name == "flask-dev":
        peers.flask(9001)
        port, backends = 9001, [9001]
    elif name == "tornado":
        peers.tornado(9002)
        port, backends = 9002, [9002]
    elif name == "waitress":
        peers.waitress(9003)
        port, backends = 9003, [9003]
    elif name == "granian":
        peers.granian(9004)
        port, backends = 9004, [9004]
    elif name == "nginx+4flask":
        for p in range(9101, 9105):
            peers.flask(p)
        peers.nginx(9100, list(range(9101, 9105)))
        port, backends = 9100, list(range(9101, 9105))
    elif name == "nginx+4tornado":
        for p in range(9201, 9205):
            peers.tornado(p)
        peers.nginx(9200, list(range(9201, 9205)))
        port, backends = 9200, list(range(9201, 9205))
    elif name == "nginx+gunicorn4":
        peers.gunicorn(9301, 4)
        peers.nginx(9300, [9301])
        port, backends = 9300, [9301]
    elif name == "broken":  # --quick only: nginx in front of nothing, every request a 502
        peers.nginx(9400, [9401])
        peers.wait([9400], ok_status=False)
        return 9400
    else:
        raise ValueError(name)
    peers.wait(backends + [port])
    return port


def ensure_peers_ns() -> None:
    if PEERS_NS not in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split():
        subprocess.run(["ip", "netns", "add", PEERS_NS], check=True)
    subprocess.run(["ip", "-n", PEERS_NS, "link", "set", "lo", "up"], check=True)
    # Many short-lived connections at c=5000: reuse TIME_WAIT ports, a deep accept queue.
    for key, value in (("net.ipv4.tcp_tw_reuse", "1"), ("net.core.somaxconn", "65535"),
                       ("net.ipv4.ip_local_port_range", "10000 65000")):
        subprocess.run(["ip", "netns", "exec", PEERS_NS, "sysctl", "-qw", f"{key}={value}"], check=False)


# ------------------------------------------------------------------------------------------ ours

def app_release(version: str) -> list[str]:
    """Deploy vars for a copy of the sample app that builds to `version`."""
    src = BUILD / f"app-{version}"
    shutil.copytree(ROOT / "sample_app", src, ignore=shutil.ignore_patterns("*.egg-info", "__pycache__", "build"))
    py = src / "pyproject.toml"
    py.write_text(py.read_text().replace('version = "1.0.0"', f'version = "{version}"'))
    return [f"flask_app_source_dir={src}", f"flask_app_version={version}"]


class Ours:
    """The stack on one local test host, converged by deploy.yml: the first deploy boots a fresh host, the
    next ones are rolling changes of it (another app server)."""

    def __init__(self) -> None:
        self.ns, self.backends, self.pidns = f"ffh-{HOST}", [], ""

    def deploy(self, extra: list[str], fresh: bool) -> None:
        if fresh:
            hosts_tool(FLEET, "down")
            up = hosts_tool(FLEET, "up", "--count=1", f"--net={NET}")
            if up.returncode:
                raise RuntimeError(up.stderr)
            for key, value in (("net.ipv4.tcp_tw_reuse", "1"), ("net.ipv4.ip_local_port_range", "10000 65000")):
                subprocess.run(["ip", "netns", "exec", self.ns, "sysctl", "-qw", f"{key}={value}"], check=False)
        seconds, _ = deploy(FLEET, extra)
        log(f"ours: converged in {seconds:.0f}s ({' '.join(extra)})")
        nspawn = json.loads(hosts_tool(FLEET, "status").stdout)["hosts"][HOST]["nspawn_pid"]
        init = Path(f"/proc/{nspawn}/task/{nspawn}/children").read_text().split()[0]  # the host's systemd
        self.pidns = os.readlink(f"/proc/{init}/ns/pid")
        listening = subprocess.run(["ip", "netns", "exec", self.ns, "ss", "-Hltn"], capture_output=True,
                                   text=True).stdout
        self.backends = sorted({int(p) for p in re.findall(r"127\.0\.0\.1:(80\d\d)\s", listening)} - {8079})

    def cpu(self) -> dict[str, float]:
        """CPU seconds of nginx.service's and the backend units' processes on this host."""
        tier = {"nginx.service": "nginx"} | {f"{p}.service": "backends" for p in self.backends}
        totals = {"nginx": 0.0, "backends": 0.0}
        for pid, fields in proc_stats().items():
            with contextlib.suppress(OSError):
                if os.readlink(f"/proc/{pid}/ns/pid") != self.pidns:
                    continue
                unit = Path(f"/proc/{pid}/cgroup").read_text().splitlines()[-1].rsplit("/", 1)[-1]
                # Backend units are named <app>-<port>.service.
                name = "nginx.service" if unit == "nginx.service" else unit.rsplit("-", 1)[-1]
                if name in tier:
                    totals[tier[name]] += cpu_seconds(fields)
        return totals


# ------------------------------------------------------------------------------------------ report

def table(rows: list[dict]) -> str:
    head = (f"{'topology':<20} {'scenario':<14} {'conc':>5} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>9} {'requests':>9} "
            f"{'errors':>7}  CPU ms/1k req: {'nginx':>6} {'backends':>8} {'wrk':>6} {'nginx %':>7}")
    lines = [head, "-" * len(head)]
    for r in rows:
        cpu = r.get("cpu_ms_per_1k", {})
        share = f"{100 * r['nginx_share']:.0f}" if r.get("nginx_share") is not None else "-"
        lines.append(f"{r['topology']:<20} {r['scenario']:<14} {r['concurrency']:>5} {r['rps']:>9.0f} "
                     f"{r['p50_ms']:>8.1f} {r['p99_ms']:>9.1f} {r['requests']:>9} {r['errors']:>7}  {'':14} "
                     f"{cpu.get('nginx', '-'):>6} {cpu.get('backends', '-'):>8} {cpu.get('wrk', '-'):>6} {share:>7}")
    return "\n".join(lines)


def targets(rows: list[dict]) -> list[dict]:
    """Issue 15's targets for each app server, from this run's rows (c=1000 unless stated)."""
    def row(top: str, c: int = 1000, scenario: str = "test") -> dict | None:
        return next((r for r in rows if (r["topology"], r["concurrency"], r["scenario"]) == (top, c, scenario)), None)

    out = []
    gun = row("nginx+gunicorn4")
    for server in SERVERS:
        ours, direct = row(f"ours-{server}"), row(f"ours-direct-{server}")
        if not ours:
            continue
        iso = next((r for r in rows if r["topology"] == f"ours-{server}" and r["scenario"].startswith("test+")), None)
        checks = []
        if gun:
            checks += [(f"req/s >= 1.5 x nginx+gunicorn4's", ours["rps"] / gun["rps"] >= 1.5,
                        f"{ours['rps']:.0f} vs {gun['rps']:.0f} ({ours['rps'] / gun['rps']:.2f}x)"),
                       ("p99 <= nginx+gunicorn4's", ours["p99_ms"] <= gun["p99_ms"],
                        f"{ours['p99_ms']:.0f} ms vs {gun['p99_ms']:.0f} ms")]
        errs = {c: r["errors"] for c in (500, 1000, 5000) if (r := row(f"ours-{server}", c))}
        checks.append(("0 errors at " + "/".join(map(str, errs)), not any(errs.values()),
                       " / ".join(map(str, errs.values()))))
        if direct:
            checks.append(("req/s >= 0.75 x ours-direct", ours["rps"] / direct["rps"] >= 0.75,
                           f"{ours['rps']:.0f} vs {direct['rps']:.0f} ({ours['rps'] / direct['rps']:.2f}x)"))
        if ours.get("nginx_share") is not None:
            checks.append(("nginx's share of the stack's CPU <= 25 %", ours["nginx_share"] <= 0.25,
                           f"{100 * ours['nginx_share']:.0f} %"))
        if iso:
            checks.append((f"{iso['scenario']}: 0 failed /test, p99 <= 2 x without",
                           iso["errors"] == 0 and iso["p99_ms"] <= 2 * iso["baseline_p99_ms"],
                           f"{iso['errors']} failed, p99 {iso['p99_ms']:.0f} vs {iso['baseline_p99_ms']:.0f} ms"))
        out += [{"topology": f"ours-{server}", "target": t, "met": bool(met), "measured": m} for t, met, m in checks]
    return out


def chart(rows: list[dict], path: Path) -> None:
    """Three panels per topology: req/s and error rate per concurrency, p50/p99 at c=1000 (or the
    highest concurrency run)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in rows if r["scenario"] == "test"]
    tops = list(dict.fromkeys(r["topology"] for r in rows))
    concs = sorted({r["concurrency"] for r in rows})
    fig, (ax1, ax2, ax3) = plt.subplots(3, 1, figsize=(13, 11), sharex=True)
    width = 0.8 / len(concs)
    for i, c in enumerate(concs):
        xs = [t + (i - (len(concs) - 1) / 2) * width for t in range(len(tops))]
        by = {r["topology"]: r for r in rows if r["concurrency"] == c}
        rps = [by[t]["rps"] if t in by else 0 for t in tops]
        # Non-2xx answers are among wrk's requests; socket errors come on top of them.
        err = [100.0 * by[t]["errors"] / max(1, by[t]["requests"] + by[t]["errors"] - by[t]["non_2xx"])
               if t in by else 0 for t in tops]
        ax1.bar(xs, rps, width, label=f"c={c}")
        ax3.bar(xs, err, width, label=f"c={c}")
    lat_c = 1000 if 1000 in concs else concs[-1]
    by = {r["topology"]: r for r in rows if r["concurrency"] == lat_c}
    for i, pct in enumerate(("p50_ms", "p99_ms")):
        ax2.bar([t + (i - 0.5) * 0.4 for t in range(len(tops))], [by[t][pct] if t in by else 0 for t in tops], 0.4,
                label=pct.split("_")[0])
    ax1.set_ylabel("requests/s")
    ax1.set_title("GET /test: throughput (higher is better)")
    ax2.set_ylabel("latency, ms (log)")
    ax2.set_yscale("log")
    ax2.set_title(f"latency at c={lat_c} (lower is better)")
    ax3.set_ylabel("errors, % of requests")
    ax3.set_title("errors = socket errors + non-2xx (lower is better)")
    ax3.set_xticks(range(len(tops)), tops, rotation=25, ha="right")
    for ax in (ax1, ax2):
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=90)


# ------------------------------------------------------------------------------------------ main

def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--duration", type=float, default=None)
    ap.add_argument("--concurrency", default=None)
    ap.add_argument("--only", default=",".join(TOPOLOGIES))
    ap.add_argument("--out", default=str(ROOT / "bench/results"))
    ap.add_argument("-e", dest="extra", action="append", default=[],
                    help="extra var for the deploys of ours: var=value, or SERVER:var=value for one app server's")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        raise SystemExit("error: make bench needs root (network namespaces, test hosts)")
    # 15 s > wrk's 10 s timeout: a connection a server never gets to within 10 s counts as an error
    # (wrk only times out requests older than --timeout; in a shorter run they would go unseen).
    duration = args.duration or (2 if args.quick else 15)
    concs = [int(c) for c in (args.concurrency or ("50" if args.quick else "500,1000,5000")).split(",")]
    only = args.only.split(",")
    if unknown := set(only) - set(TOPOLOGIES):
        ap.error(f"--only: unknown topologies {sorted(unknown)}; known: {', '.join(TOPOLOGIES)}")
    shutil.rmtree(BUILD, ignore_errors=True)
    BUILD.mkdir(parents=True)
    ensure_peers_ns()
    rows: list[dict] = []
    started = time.monotonic()

    def add(topology: str, scenario: str, conc: int, result: dict) -> None:
        kept = {k: v for k, v in result.items() if k not in ("raw", "failed")}
        rows.append({"topology": topology, "scenario": scenario, "concurrency": conc, **kept})
        log(f"{topology:<20} {scenario:<14} c={conc:<5} {result['rps']:>8.0f} req/s  p99 {result['p99_ms']:.1f} ms  "
            f"errors {result['errors']}  CPU ms/1k {result.get('cpu_ms_per_1k')} nginx share {result.get('nginx_share')}")

    servers = [s for s in SERVERS if f"ours-{s}" in only or f"ours-direct-{s}" in only]
    try:
        for name in [t for t in PEER_TOPOLOGIES if t in only] + (["broken"] if args.quick else []):
            peers = Peers()
            try:
                port = start_peer(name, peers)
                url = f"http://127.0.0.1:{port}/test"
                measure(PEERS_NS, url, min(50, concs[0]), 1)  # warm up
                for c in concs:
                    add(name, "test", c, measure(PEERS_NS, url, c, duration, tiers=peers.cpu))
            finally:
                peers.stop()
        ours, url = Ours(), "http://127.0.0.1/test"
        for i, server in enumerate(servers):
            # The app server is part of a release: each server after the first comes as a new version.
            extra = [e.split(":", 1)[1] if ":" in e.split("=", 1)[0] else e for e in args.extra
                     if ":" not in e.split("=", 1)[0] or e.startswith(f"{server}:")]
            ours.deploy([*extra, f"flask_app_server={server}", *(app_release(f"1.0.{i}") if i else [])], fresh=i == 0)
            top, direct_top = f"ours-{server}", f"ours-direct-{server}"
            measure(ours.ns, url, min(50, concs[0]), 1)
            for c in concs:
                if top in only:
                    add(top, "test", c, measure(ours.ns, url, c, duration, tiers=ours.cpu))
                if direct_top in only:
                    # One wrk thread per backend, each aimed at its own backend port.
                    add(direct_top, "test", c, measure(
                        ours.ns, url, c, duration, tiers=ours.cpu, direct=True, threads=len(ours.backends),
                        script=str(ROOT / "bench/direct.lua"), env={"BACKEND_PORTS": ",".join(map(str, ours.backends))}))
            if top in only:
                # Slow-request isolation: /test at c=500 (c of --quick), without and with 64 long /sleeps.
                c = 500 if not args.quick else concs[0]
                sleeps = 64 if not args.quick else 8
                # The baseline right before the run with sleeps (not an earlier row: conditions drift).
                base = measure(ours.ns, url, c, duration, tiers=ours.cpu)
                add(top, "test", c, base) if c not in concs else None
                slow = wrk(ours.ns, "http://127.0.0.1/sleep?seconds=5", sleeps, duration + 10, threads=2)
                time.sleep(3)  # the sleeps are in flight
                res = measure(ours.ns, url, c, duration, tiers=ours.cpu)
                slow.send_signal(signal.SIGINT)
                slow_res = wrk_summary(finish(slow, 60)[0])
                add(top, f"test+{sleeps}sleep", c, {**res, "sleep_requests": slow_res["requests"],
                                                     "sleep_errors": slow_res["errors"],
                                                     "baseline_p99_ms": base["p99_ms"]})
    finally:
        if servers and not os.environ.get("BENCH_KEEP_HOSTS"):
            hosts_tool(FLEET, "down")
        subprocess.run(["ip", "netns", "delete", PEERS_NS], check=False)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = {"quick": args.quick, "duration_s": duration, "concurrency": concs, "cpus": os.cpu_count(),
            "wall_s": round(time.monotonic() - started, 1), "generator": "wrk -t2 --timeout 10s (ours-direct-*: "
            "one thread per backend)", "fleet": FLEET, "extra_vars": args.extra, "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    # latest.json is the list of rows (the documented interface); how they were produced goes beside it.
    (out / "latest.json").write_text(json.dumps(rows, indent=2) + "\n")
    meta["targets"] = targets(rows)
    (out / "latest.meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    chart(rows, out / "latest.png")
    print(table(rows))
    for t in targets(rows):
        print(f"{t['topology']:<14} {t['target']:<48} {'met' if t['met'] else 'NOT met':<8} {t['measured']}")
    print(f"\nwrote {out / 'latest.json'} and {out / 'latest.png'} ({meta['wall_s']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
