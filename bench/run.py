#!/usr/bin/env python3
"""make bench: the seed's load comparison, with the converged stack in it, on this machine, in one run.

Topologies (same app, same routes):
  flask-dev        Flask's threaded dev server alone
  tornado          Tornado's WSGIContainer alone
  waitress         one waitress alone
  nginx+4flask     nginx in front of 4 Flask dev servers
  nginx+4tornado   nginx in front of 4 Tornado servers
  nginx+gunicorn4  nginx in front of gunicorn with 4 sync workers (what a Linux user would pick)
  ours             the stack exactly as deploy.yml converged it on a local test host
  ours-direct      the same backends hit directly, no nginx (the proxy-overhead limit)
Peers run in their own network namespace on loopback; ours is measured inside the test host's namespace.
The load generator is wrk (bounded in time). errors = socket errors + non-2xx responses.
Then /sleep isolation on ours: /test at c=500, alone and with 64 long /sleep requests in flight.

Writes bench/results/latest.json (a list of rows), latest.meta.json and latest.png (or --out DIR),
and prints a table.
  bench/run.py [--quick] [--duration S] [--concurrency 500,1000,5000] [--only a,b] [-e var=value ...]
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
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
from fleetlib import deploy, hosts_tool, wrk_summary  # noqa: E402

BUILD = ROOT / "build" / "bench"
VENV_BIN = Path(sys.executable).parent
PEERS_NS = "ffb-peers"
FLEET, NET, HOST = "bench", "10.231.7", "bench1"
NOFILE = 20000
TOPOLOGIES = ["flask-dev", "tornado", "waitress", "nginx+4flask", "nginx+4tornado", "nginx+gunicorn4", "ours",
              "ours-direct"]
APP = "sampleapp:create_app()"


def log(msg: str) -> None:
    print(f"bench: {msg}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------ wrk

def wrk(ns: str, url: str, conns: int, seconds: float, threads: int = 2, script: str | None = None,
        env: dict | None = None) -> subprocess.Popen:
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


def measure(ns: str, url: str, conns: int, seconds: float, **kw) -> dict:
    result = wrk_summary(wrk(ns, url, conns, seconds, **kw).communicate(timeout=seconds + 120)[0])
    if "/test" in url and result["non_2xx"] < result["requests"]:  # (not for the always-failing check)
        settle(ns, url)
    return result


# ------------------------------------------------------------------------------------------ peers

class Peers:
    """Servers for one topology inside the peers' namespace; stopped on exit."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen] = []
        self.nginx_conf: Path | None = None

    def spawn(self, *cmd: str) -> None:
        logf = open(BUILD / "peers.log", "a")  # noqa: SIM115 - closed with the process
        self.procs.append(subprocess.Popen(
            ["ip", "netns", "exec", PEERS_NS, "sh", "-c", f"ulimit -n {NOFILE}; exec \"$@\"", "sh", *cmd],
            stdout=logf, stderr=subprocess.STDOUT, cwd=BUILD, start_new_session=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"}))

    def flask(self, port: int) -> None:
        self.spawn(str(VENV_BIN / "python"), "-c",
                   f"from sampleapp import create_app; create_app().run(host='127.0.0.1', port={port}, threaded=True)")

    def tornado(self, port: int) -> None:
        self.spawn(str(VENV_BIN / "python"), str(ROOT / "bench/tornado_wsgi.py"), str(port))

    def waitress(self, port: int) -> None:
        self.spawn(str(VENV_BIN / "python"), "-m", "sampleapp", f"--port={port}")

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
        self.spawn("nginx", "-p", str(prefix), "-c", str(self.nginx_conf), "-g", "daemon off;")

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

def deploy_ours(extra: list[str]) -> dict:
    """A fresh local test host with the stack converged by deploy.yml; returns its backend ports."""
    hosts_tool(FLEET, "down")
    up = hosts_tool(FLEET, "up", "--count=1", f"--net={NET}")
    if up.returncode:
        raise RuntimeError(up.stderr)
    seconds, _ = deploy(FLEET, extra)
    log(f"ours: converged in {seconds:.0f}s")
    ns = f"ffh-{HOST}"
    for key, value in (("net.ipv4.tcp_tw_reuse", "1"), ("net.ipv4.ip_local_port_range", "10000 65000")):
        subprocess.run(["ip", "netns", "exec", ns, "sysctl", "-qw", f"{key}={value}"], check=False)
    listening = subprocess.run(["ip", "netns", "exec", ns, "ss", "-Hltn"], capture_output=True, text=True).stdout
    ports = sorted({int(p) for p in re.findall(r"127\.0\.0\.1:(80\d\d)\s", listening)} - {8079})
    return {"ns": ns, "backends": ports}


# ------------------------------------------------------------------------------------------ report

def table(rows: list[dict]) -> str:
    head = f"{'topology':<16} {'scenario':<14} {'conc':>5} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>9} {'requests':>9} {'errors':>7}"
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['topology']:<16} {r['scenario']:<14} {r['concurrency']:>5} {r['rps']:>9.0f} "
                     f"{r['p50_ms']:>8.1f} {r['p99_ms']:>9.1f} {r['requests']:>9} {r['errors']:>7}")
    return "\n".join(lines)


def chart(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in rows if r["scenario"] == "test"]
    tops = list(dict.fromkeys(r["topology"] for r in rows))
    concs = sorted({r["concurrency"] for r in rows})
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(12, 8), sharex=True)
    width = 0.8 / len(concs)
    for i, c in enumerate(concs):
        xs = [t + (i - (len(concs) - 1) / 2) * width for t in range(len(tops))]
        by = {r["topology"]: r for r in rows if r["concurrency"] == c}
        rps = [by[t]["rps"] if t in by else 0 for t in tops]
        # Non-2xx answers are among wrk's requests; socket errors come on top of them.
        err = [100.0 * by[t]["errors"] / max(1, by[t]["requests"] + by[t]["errors"] - by[t]["non_2xx"])
               if t in by else 0 for t in tops]
        ax1.bar(xs, rps, width, label=f"c={c}")
        ax2.bar(xs, err, width, label=f"c={c}")
    ax1.set_ylabel("requests/s")
    ax1.set_title("GET /test: throughput (higher is better)")
    ax2.set_ylabel("errors, % of requests")
    ax2.set_title("errors = socket errors + non-2xx (lower is better)")
    ax2.set_xticks(range(len(tops)), tops, rotation=20)
    ax1.legend()
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
    ap.add_argument("-e", dest="extra", action="append", default=[], help="extra var for the deploy of ours")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        raise SystemExit("error: make bench needs root (network namespaces, test hosts)")
    # 15 s > wrk's 10 s timeout: a connection a server never gets to within 10 s counts as an error
    # (wrk only times out requests older than --timeout; in a shorter run they would go unseen).
    duration = args.duration or (2 if args.quick else 15)
    concs = [int(c) for c in (args.concurrency or ("50" if args.quick else "500,1000,5000")).split(",")]
    only = args.only.split(",")
    shutil.rmtree(BUILD, ignore_errors=True)
    BUILD.mkdir(parents=True)
    ensure_peers_ns()
    rows: list[dict] = []
    started = time.monotonic()

    def add(topology: str, scenario: str, conc: int, result: dict) -> None:
        kept = {k: v for k, v in result.items() if k not in ("raw", "failed")}
        rows.append({"topology": topology, "scenario": scenario, "concurrency": conc, **kept})
        log(f"{topology:<16} {scenario:<14} c={conc:<5} {result['rps']:>8.0f} req/s  p99 {result['p99_ms']:.1f} ms  "
            f"errors {result['errors']}")

    try:
        for name in [t for t in TOPOLOGIES if t in only and not t.startswith("ours")] + (
                ["broken"] if args.quick else []):
            peers = Peers()
            try:
                port = start_peer(name, peers)
                measure(PEERS_NS, f"http://127.0.0.1:{port}/test", min(50, concs[0]), 1)  # warm up
                for c in concs:
                    add(name, "test", c, measure(PEERS_NS, f"http://127.0.0.1:{port}/test", c, duration))
            finally:
                peers.stop()
        if any(t.startswith("ours") for t in only):
            ours = deploy_ours(args.extra)
            ns, backends = ours["ns"], ours["backends"]
            direct = str(ROOT / "bench/direct.lua")
            measure(ns, "http://127.0.0.1/test", min(50, concs[0]), 1)
            for c in concs:
                if "ours" in only:
                    add("ours", "test", c, measure(ns, "http://127.0.0.1/test", c, duration))
                if "ours-direct" in only:
                    # One wrk thread per backend, each aimed at its own backend port.
                    add("ours-direct", "test", c, measure(ns, "http://127.0.0.1/test", c, duration,
                                                          threads=len(backends), script=direct,
                                                          env={"BACKEND_PORTS": ",".join(map(str, backends))}))
            if "ours" in only:
                # Slow-request isolation: /test at c=500 (c of --quick), without and with 64 long /sleeps.
                c = 500 if not args.quick else concs[0]
                sleeps = 64 if not args.quick else 8
                # The baseline right before the run with sleeps (not an earlier row: conditions drift).
                base = measure(ns, "http://127.0.0.1/test", c, duration)
                add("ours", "test", c, base) if c not in concs else None
                slow = wrk(ns, "http://127.0.0.1/sleep?seconds=5", sleeps, duration + 10, threads=2)
                time.sleep(3)  # the sleeps are in flight
                res = measure(ns, "http://127.0.0.1/test", c, duration)
                slow.send_signal(signal.SIGINT)
                slow_res = wrk_summary(slow.communicate(timeout=60)[0])
                add("ours", f"test+{sleeps}sleep", c, {**res, "sleep_requests": slow_res["requests"],
                                                          "sleep_errors": slow_res["errors"],
                                                          "baseline_p99_ms": base["p99_ms"]})
    finally:
        if any(t.startswith("ours") for t in only) and not os.environ.get("BENCH_KEEP_HOSTS"):
            hosts_tool(FLEET, "down")
        subprocess.run(["ip", "netns", "delete", PEERS_NS], check=False)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = {"quick": args.quick, "duration_s": duration, "concurrency": concs, "cpus": os.cpu_count(),
            "wall_s": round(time.monotonic() - started, 1), "generator": "wrk -t2 --timeout 10s (ours-direct: "
            "one thread per backend)", "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    # latest.json is the list of rows (the documented interface); how they were produced goes beside it.
    (out / "latest.json").write_text(json.dumps(rows, indent=2) + "\n")
    (out / "latest.meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    chart(rows, out / "latest.png")
    print(table(rows))
    print(f"\nwrote {out / 'latest.json'} and {out / 'latest.png'} ({meta['wall_s']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
