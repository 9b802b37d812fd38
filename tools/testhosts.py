#!/usr/bin/env python3
"""Local test hosts: systemd-nspawn machines booted from a cached debootstrap'ed Debian rootfs.

Each host runs systemd as PID 1 and sshd, in its own network namespace, wired by a veth pair to a
bridge in a per-fleet controller namespace (nothing is added to the root namespace). Ansible reaches
the hosts over ssh with `ip netns exec <ctl-ns> nc %h %p` as ProxyCommand.

    testhosts.py up   [--fleet local] [--count 2] [--net 10.231.1] [--image bare|deploy]
                                                                      boot hosts, write inventory
    testhosts.py down [--fleet local]                                 stop hosts, remove everything
    testhosts.py reboot --host NAME [--fleet local]                   reboot one host, wait for systemd
    testhosts.py status [--fleet local]                               JSON state
    testhosts.py instances [--fleet local]                            molecule instance config (JSON)
    testhosts.py urls [--fleet local]                                 how to reach each site
    testhosts.py rootfs                                               build (or reuse) the rootfs
    testhosts.py leftovers [--fleet local]                            what of a fleet still exists

The hosts have no internet. The rootfs carries, downloaded but not installed, every .deb the deploy
installs (apt's archive cache plus package lists), so `apt install nginx` on a host works offline.
`--image deploy` (the tests' choice, through TESTHOSTS_IMAGE) boots the same rootfs with one more read-only
layer in which those packages are already installed: the first deploy skips its package installs (~10 s a
host on a busy 2-core machine) but still runs and manages them; `bare` (the default, molecule's) is the
fresh Debian host on which the roles install them.
Python wheels are not in the image: the deploy builds a wheelhouse on the controller and copies it.
Needs root (namespaces, nspawn); stdlib only.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
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
BUILD = ROOT / "build"
CACHE = Path(os.environ.get("FLASKFLEET_CACHE", "/var/cache/flaskfleet"))
MIRROR = os.environ.get("DEBIAN_MIRROR", "http://deb.debian.org/debian")
SECURITY_MIRROR = os.environ.get("DEBIAN_SECURITY_MIRROR", "http://deb.debian.org/debian-security")
SUITE = "bookworm"

# The rootfs recipe. Any change here changes the cache key and rebuilds the image.
BASE_PACKAGES = [
    "systemd", "systemd-sysv", "dbus", "openssh-server", "python3", "python3-apt", "iproute2",
    "ca-certificates", "netbase", "procps", "acl", "curl", "less",
]
# Downloaded into apt's cache, not installed: what the deploy installs on a Linux host.
DEPLOY_DEBS = ["nginx", "python3-venv"]
# The deploy image's layer over the rootfs: those packages installed from that cache, nothing else changed.
# Installed outside a booted system, nginx is enabled but not started: it starts at the host's boot, as
# apt leaves it on a host it was installed on.
DEPLOY_LAYER = r"""
set -e
export DEBIAN_FRONTEND=noninteractive
apt-get install -y -qq --no-download DEBS >/dev/null
"""
CUSTOMIZE = r"""
set -e
export DEBIAN_FRONTEND=noninteractive
printf 'deb MIRROR SUITE main\ndeb MIRROR SUITE-updates main\ndeb SECURITY SUITE-security main\n' \
  > /etc/apt/sources.list
apt-get update -qq
apt-get upgrade -y -qq >/dev/null
apt-get clean
apt-get install -y -qq --download-only DEBS >/dev/null
# Keep downloaded .debs: the hosts have no network and install from this cache.
printf 'Binary::apt::APT::Keep-Downloaded-Packages "true";\nAPT::Keep-Downloaded-Packages "true";\n' \
  > /etc/apt/apt.conf.d/01keep-debs
printf 'Acquire::Retries "0";\n' > /etc/apt/apt.conf.d/02no-retries
: > /etc/machine-id
rm -f /var/lib/dbus/machine-id /etc/ssh/ssh_host_*
printf 'LANG=C.UTF-8\n' > /etc/default/locale
mkdir -p /root/.ssh && chmod 700 /root/.ssh
systemctl enable ssh.service >/dev/null 2>&1 || true
# No consoles to log in on; the unit only fails in a container without a tty.
systemctl mask console-getty.service getty@tty1.service >/dev/null 2>&1 || true
"""
RECIPE_VERSION = "3"


def log(msg: str) -> None:
    print(f"testhosts: {msg}", file=sys.stderr, flush=True)


def run(cmd: list[str], check: bool = True, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, check=check, text=True, **kw)


def out(cmd: list[str]) -> str:
    return subprocess.run(cmd, check=False, text=True, capture_output=True).stdout


# --------------------------------------------------------------------------- rootfs

def recipe_key() -> str:
    h = hashlib.sha256()
    for part in (RECIPE_VERSION, SUITE, MIRROR, SECURITY_MIRROR, " ".join(BASE_PACKAGES), " ".join(DEPLOY_DEBS), CUSTOMIZE):
        h.update(part.encode() + b"\0")
    return h.hexdigest()[:16]


def nspawn_run(directory: Path, script: str, network: bool = True) -> None:
    """Run a shell script inside the rootfs, with the host's network or none (build time only)."""
    net = ["--resolv-conf=copy-host"] if network else ["--resolv-conf=off", "--private-network"]
    run(["systemd-nspawn", "--quiet", "--register=no", "--keep-unit", *net,
         f"--directory={directory}", "--pipe", "/bin/sh", "-c", script], stdin=subprocess.DEVNULL)


def prune(kind: str, keep: Path) -> None:
    """Remove the cache's other builds of a kind, unless a running fleet still uses one (a checkout on
    another commit may boot hosts from it: its overlay names it among its lower layers)."""
    in_use = Path("/proc/self/mountinfo").read_text()
    for old in CACHE.glob(f"{kind}-*"):
        if old != keep and not any(f"{old}{end}" in in_use for end in (",", ":", " ")):
            shutil.rmtree(old, ignore_errors=True)


def ensure_rootfs() -> Path:
    key = recipe_key()
    target = CACHE / f"rootfs-{key}"
    if (target / ".complete").exists():
        return target
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (target / ".complete").exists():
            return target
        tmp = CACHE / f".rootfs-{key}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        t0 = time.monotonic()
        log(f"building rootfs {target.name} (debootstrap {SUITE}, once per recipe)")
        run(["debootstrap", "--variant=minbase", f"--include={','.join(BASE_PACKAGES)}", SUITE, str(tmp), MIRROR],
            stdout=subprocess.DEVNULL)
        script = CUSTOMIZE.replace("DEBS", " ".join(DEPLOY_DEBS)).replace("SECURITY", SECURITY_MIRROR)
        nspawn_run(tmp, script.replace("MIRROR", MIRROR).replace("SUITE", SUITE))
        (tmp / "etc/resolv.conf").unlink(missing_ok=True)
        (tmp / "etc/resolv.conf").write_text("nameserver 127.0.0.1\n")  # no stalls on reverse lookups
        (tmp / ".complete").write_text(f"{key}\n")
        tmp.rename(target)
        prune("rootfs", target)  # older recipes are dead weight once a new one is built
        log(f"rootfs built in {time.monotonic() - t0:.1f}s")
    return target


def ensure_deploy_layer(rootfs: Path) -> Path:
    """The deploy image's layer: the upper directory of an overlay on the rootfs in which DEPLOY_DEBS were
    installed from its apt cache, offline. Built once per rootfs and kept read-only like the rootfs."""
    key = hashlib.sha256(f"{rootfs.name}\0{DEPLOY_LAYER}".encode()).hexdigest()[:16]
    target = CACHE / f"layer-{key}"
    if (target / ".complete").exists():
        return target
    with open(CACHE / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (target / ".complete").exists():
            return target
        tmp = CACHE / f".layer-{key}.tmp"
        unmount_under(tmp)
        shutil.rmtree(tmp, ignore_errors=True)
        t0 = time.monotonic()
        for d in ("upper", "work", "merged"):
            (tmp / d).mkdir(parents=True)
        run(["mount", "-t", "overlay", "overlay", "-o",
             f"lowerdir={rootfs},upperdir={tmp / 'upper'},workdir={tmp / 'work'}", str(tmp / "merged")])
        try:
            nspawn_run(tmp / "merged", DEPLOY_LAYER.replace("DEBS", " ".join(DEPLOY_DEBS)), network=False)
        finally:
            unmount_under(tmp)
        layer = tmp / "upper"
        (layer / ".complete").write_text(f"{key}\n")
        layer.rename(target)
        shutil.rmtree(tmp, ignore_errors=True)
        prune("layer", target)
        log(f"deploy layer {target.name} built in {time.monotonic() - t0:.1f}s")
    return target


# --------------------------------------------------------------------------- fleet naming

class Fleet:
    def __init__(self, name: str, net: str | None = None):
        # Hosts are <fleet><n>: a fleet ending in a digit would share names with another's (tprof2's first
        # host and tprof's 21st are both tprof21), and down would take that one too.
        if not name.isalnum() or len(name) > 8 or name[-1].isdigit():
            raise SystemExit(f"error: --fleet must be 1-8 letters/digits ending in a letter, got {name!r}")
        self.name = name
        self.dir = BUILD / "hosts" / name
        self.state_file = self.dir / "state.json"
        self.ctl_ns = f"ffc-{name}"
        self._net = net

    def host_ns(self, host: str) -> str:
        return f"ffh-{host}"

    def host_name(self, i: int) -> str:
        return f"{self.name}{i}"

    @property
    def net(self) -> str:
        return self._net or self.state().get("net") or "10.231.1"

    def state(self) -> dict:
        try:
            return json.loads(self.state_file.read_text())
        except (OSError, ValueError):
            return {}

    def save(self, state: dict) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=2) + "\n")
        tmp.replace(self.state_file)


def netns_list() -> list[str]:
    try:
        return sorted(os.listdir("/run/netns"))
    except FileNotFoundError:
        return []


def ensure_netns(name: str) -> None:
    if name not in netns_list():
        run(["ip", "netns", "add", name])
    run(["ip", "-n", name, "link", "set", "lo", "up"])


def ssh_key() -> Path:
    key = BUILD / "ssh" / "id_ed25519"
    if not key.exists():
        key.parent.mkdir(parents=True, exist_ok=True)
        run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "flaskfleet-testhosts", "-f", str(key)])
    return key


# --------------------------------------------------------------------------- processes

def children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


def comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie has exited; nspawn is not our child after a restart of this tool.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def container_init(nspawn_pid: int) -> int | None:
    for child in children(nspawn_pid):
        if comm(child) == "systemd":
            return child
    return None


def wait_for(pred, timeout: float, what: str, interval: float = 0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(interval)
    raise RuntimeError(f"timed out after {timeout:.0f}s waiting for {what}")


# --------------------------------------------------------------------------- up

def prepare_copy(lower: str, hostdir: Path, hostname: str, pubkey: str) -> tuple[Path, str]:
    """Give one host its root: an overlay over the shared read-only layers (instant, no copy),
    with its own hostname, ssh host keys and root's authorized key in the upper layer."""
    unmount_under(hostdir)
    shutil.rmtree(hostdir, ignore_errors=True)
    merged = hostdir / "rootfs"
    for d in ("upper", "work", "rootfs"):
        (hostdir / d).mkdir(parents=True)
    run(["mount", "-t", "overlay", "overlay", "-o",
         f"lowerdir={lower},upperdir={hostdir / 'upper'},workdir={hostdir / 'work'}", str(merged)])
    (merged / "etc/hostname").write_text(hostname + "\n")
    (merged / "etc/hosts").write_text(f"127.0.0.1 localhost\n127.0.1.1 {hostname}\n::1 localhost\n")
    run(["ssh-keygen", "-q", "-A", "-f", str(merged)], stdout=subprocess.DEVNULL)
    auth = merged / "root/.ssh/authorized_keys"
    auth.write_text(pubkey)
    auth.chmod(0o600)
    return merged, (merged / "etc/ssh/ssh_host_ed25519_key.pub").read_text().split()[1]


def mounts_under(path: Path) -> list[str]:
    points = [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()]
    return [m for m in points if m == str(path) or m.startswith(str(path) + "/")]


def unmount_under(path: Path) -> None:
    for point in sorted(mounts_under(path), key=len, reverse=True):
        if run(["umount", point], check=False, stderr=subprocess.DEVNULL).returncode != 0:
            run(["umount", "--lazy", point], check=False)


def boot(fleet: Fleet, host: str, copy: Path) -> int:
    console = fleet.dir / f"{host}.console.log"
    with open(console, "a") as con:
        proc = subprocess.Popen(
            ["systemd-nspawn", "--boot", "--register=no", "--keep-unit", "--resolv-conf=off",
             "--console=passive", "--link-journal=no", f"--directory={copy}", f"--machine={host}",
             f"--network-namespace-path=/run/netns/{fleet.host_ns(host)}"],
            stdin=subprocess.DEVNULL, stdout=con, stderr=subprocess.STDOUT, start_new_session=True,
        )
    return proc.pid


def wait_running(nspawn_pid: int, timeout: float = 60) -> str:
    init = wait_for(lambda: container_init(nspawn_pid) if alive(nspawn_pid) else -1, 20, "container systemd")
    if init == -1:
        raise RuntimeError("systemd-nspawn exited during boot")
    deadline = time.monotonic() + timeout
    while True:
        res = subprocess.run(["nsenter", "-t", str(init), "-a", "systemctl", "is-system-running", "--wait"],
                             capture_output=True, text=True, timeout=timeout, check=False)
        status = res.stdout.strip()
        # Right after boot, systemd's private bus socket may not exist yet, or nspawn's child may not be
        # systemd yet ("offline"): retry until it answers for real.
        if (status and status != "offline") or time.monotonic() > deadline:
            return status or res.stderr.strip()
        time.sleep(0.1)


def wait_sshd(fleet: Fleet, host: str, address: str) -> None:
    wait_for(lambda: subprocess.run(["ip", "netns", "exec", fleet.ctl_ns, "nc", "-z", "-w1", address, "22"],
                                    check=False).returncode == 0, 20, f"sshd on {host}")


def up(fleet: Fleet, count: int, image: str = "bare") -> dict:
    if count < 1 or count > 50:
        raise SystemExit("error: --count must be 1..50")
    refuse_foreign(fleet)
    state = fleet.state()
    if state.get("hosts"):
        if (len(state["hosts"]) == count and state.get("image", "bare") == image
                and all(alive(h["nspawn_pid"]) for h in state["hosts"].values())):
            log(f"fleet {fleet.name}: {count} host(s) already up")
            write_inventory(fleet, state)
            return state
        log(f"fleet {fleet.name}: replacing the running hosts")
        down(fleet)
    t0 = time.monotonic()
    # A fact cache (tests/conftest.py) may hold facts of an earlier host of the same name: not this one.
    if os.environ.get("ANSIBLE_CACHE_PLUGIN_CONNECTION"):
        names = {fleet.host_name(i) for i in range(1, count + 1)}
        for cached in Path(os.environ["ANSIBLE_CACHE_PLUGIN_CONNECTION"]).glob("*"):
            if cached.name.rpartition("_")[2] in names:  # ansible names them <schema prefix>_<host>
                cached.unlink()
    rootfs = ensure_rootfs()
    lower = f"{ensure_deploy_layer(rootfs)}:{rootfs}" if image == "deploy" else str(rootfs)
    t_rootfs = time.monotonic() - t0
    key = ssh_key()
    pubkey = key.with_suffix(".pub").read_text()
    net = fleet.net
    state = {"fleet": fleet.name, "net": net, "ctl_ns": fleet.ctl_ns, "rootfs": str(rootfs), "image": image,
             "hosts": {}}
    fleet.save(state)  # saved early so a failed boot is still cleaned up by down

    ensure_netns(fleet.ctl_ns)
    ctl = ["ip", "-n", fleet.ctl_ns]
    if "br0" not in out(ctl + ["-o", "link", "show"]):
        run(ctl + ["link", "add", "br0", "type", "bridge"])
        run(ctl + ["addr", "add", f"{net}.1/24", "dev", "br0"])
        run(ctl + ["link", "set", "br0", "up"])

    known = []
    pids = {}
    for i in range(1, count + 1):
        host = fleet.host_name(i)
        ns = fleet.host_ns(host)
        addr = f"{net}.{10 + i}"
        ensure_netns(ns)
        run(ctl + ["link", "add", f"vh{i}", "type", "veth", "peer", "name", "eth0", "netns", ns])
        run(ctl + ["link", "set", f"vh{i}", "master", "br0", "up"])
        run(["ip", "-n", ns, "addr", "add", f"{addr}/24", "dev", "eth0"])
        run(["ip", "-n", ns, "link", "set", "eth0", "up"])
        copy, hostkey = prepare_copy(lower, fleet.dir / host, host, pubkey)
        known.append(f"{addr} ssh-ed25519 {hostkey}\n")
        pid = boot(fleet, host, copy)
        pids[host] = pid
        state["hosts"][host] = {"address": addr, "netns": ns, "nspawn_pid": pid, "dir": str(copy.parent)}
        fleet.save(state)

    (fleet.dir / "known_hosts").write_text("".join(known))
    for host, pid in pids.items():
        status = wait_running(pid)
        state["hosts"][host]["system_state"] = status
        if status != "running":
            raise RuntimeError(f"{host}: systemd reports {status!r}; see {fleet.dir}/{host}.console.log")
        wait_sshd(fleet, host, state["hosts"][host]["address"])
    state["boot_seconds"] = round(time.monotonic() - t0 - t_rootfs, 2)
    fleet.save(state)
    write_inventory(fleet, state)
    log(f"fleet {fleet.name}: {count} host(s) running in {state['boot_seconds']}s "
        f"(rootfs {t_rootfs:.1f}s): " + ", ".join(f"{h}={v['address']}" for h, v in state["hosts"].items()))
    return state


def inventory_path(fleet: Fleet) -> Path:
    # The local demo fleet is the project's inventory/local; others (molecule, tests) stay in build/.
    return ROOT / "inventory/local/hosts.yml" if fleet.name == "local" else fleet.dir / "hosts.yml"


def write_inventory(fleet: Fleet, state: dict) -> Path:
    key = ssh_key()
    proxy = f"ip netns exec {fleet.ctl_ns} nc %h %p"
    lines = [
        "---",
        f"# Generated by tools/testhosts.py for fleet '{fleet.name}'; removed by `make hosts-down`.",
        "all:",
        "  children:",
        "    app_servers:",
        "      hosts:",
    ]
    for host, h in state["hosts"].items():
        lines.append(f"        {host}:")
        lines.append(f"          ansible_host: {h['address']}")
    lines += [
        "      vars:",
        "        ansible_user: root",
        "        ansible_connection: ansible.builtin.ssh",
        f"        ansible_ssh_private_key_file: {key}",
        "        ansible_ssh_common_args: >-",
        f"          -o ProxyCommand='{proxy}'",
        f"          -o UserKnownHostsFile={fleet.dir / 'known_hosts'}",
        "          -o StrictHostKeyChecking=yes",
        f"        testhosts_fleet: {fleet.name}",
        f"        testhosts_ctl_netns: {fleet.ctl_ns}",
        f"        testhosts_ctl_address: {state['net']}.1",
        "",
    ]
    path = inventory_path(fleet)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text("\n".join(lines))
    tmp.replace(path)
    return path


# --------------------------------------------------------------------------- down

def ns_pids(ns: str) -> list[int]:
    return [int(p) for p in out(["ip", "netns", "pids", ns]).split()]


def command_lines():
    """(pid, command line) of every running process (one that exits meanwhile is left out)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            yield int(entry.name), (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue


def foreign_hosts(fleet: Fleet) -> list[str]:
    """Hosts of this fleet's name booted by another checkout (their root is under its build/): the network
    namespaces are machine-wide, so this checkout's up or down of the same name would tear them down."""
    nets = re.compile(rf"--network-namespace-path=/run/netns/ffh-{fleet.name}\d+(\s|$)")
    found = []
    for _, cmd in command_lines():
        where = re.search(r"--directory=(\S+)", cmd)
        if (cmd.startswith("systemd-nspawn ") and nets.search(cmd) and where
                and not where.group(1).startswith(f"{fleet.dir}/")):
            found.append(where.group(1))
    return found


def refuse_foreign(fleet: Fleet) -> None:
    foreign = foreign_hosts(fleet)
    if foreign:
        raise SystemExit(f"error: fleet {fleet.name} is running from another checkout ({', '.join(sorted(foreign))}); "
                         "not touching it: use another --fleet (and --net), or take it down from there")


def fleet_processes(fleet: Fleet) -> list[int]:
    """nspawn processes of this fleet and ssh clients (ControlPersist masters) aimed at it."""
    found = []
    # Exact names: fleet rel must not match fleet relx's hosts (/run/netns/ffh-relx1).
    marks = re.compile(rf"{re.escape(str(fleet.dir))}/|/run/netns/ffh-{fleet.name}\d+(\s|$)|exec {fleet.ctl_ns} ")
    for pid, cmd in command_lines():
        if marks.search(cmd) and pid != os.getpid():
            found.append(pid)
    return found


def kill_all(pids: list[int], timeout: float = 5) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        try:
            wait_for(lambda: not any(alive(p) for p in pids), timeout, "processes to exit")
            return
        except RuntimeError:
            continue


def fleet_namespaces(fleet: Fleet) -> list[str]:
    return [n for n in netns_list() if n == fleet.ctl_ns or n.startswith(f"ffh-{fleet.name}")
            and n[len(f"ffh-{fleet.name}"):].isdigit()]


def down(fleet: Fleet) -> None:
    refuse_foreign(fleet)
    t0 = time.monotonic()
    state = fleet.state()
    hosts = state.get("hosts", {})
    # Clean poweroff: SIGRTMIN+3 to each container's systemd, in parallel.
    waiting = []
    for h in hosts.values():
        pid = h.get("nspawn_pid")
        if pid and alive(pid):
            init = container_init(pid)
            if init:
                os.kill(init, signal.SIGRTMIN + 3)
            waiting.append(pid)
    try:
        wait_for(lambda: not any(alive(p) for p in waiting), 20, "hosts to power off")
    except RuntimeError:
        log("some hosts did not power off in 20s; killing them")
    kill_all([p for p in waiting if alive(p)])
    # Whatever is left: stray nspawn, processes inside the namespaces, ssh masters and proxies.
    for ns in fleet_namespaces(fleet):
        kill_all(ns_pids(ns))
    kill_all(fleet_processes(fleet))
    for ns in fleet_namespaces(fleet):
        run(["ip", "netns", "delete", ns], check=False)
    unmount_under(fleet.dir)
    if fleet.dir.exists():
        for sub in fleet.dir.iterdir():
            if sub.is_dir():
                shutil.rmtree(sub, ignore_errors=True)
    fleet.state_file.unlink(missing_ok=True)
    (fleet.dir / "known_hosts").unlink(missing_ok=True)
    inventory_path(fleet).unlink(missing_ok=True)
    for log_file in fleet.dir.glob("*.console.log") if fleet.dir.exists() else []:
        log_file.unlink()
    left = leftovers(fleet)
    if any(left.values()):
        raise SystemExit(f"error: fleet {fleet.name} left behind: {json.dumps(left)}")
    log(f"fleet {fleet.name}: down in {time.monotonic() - t0:.1f}s, nothing left behind")


def leftovers(fleet: Fleet) -> dict:
    """Everything of a fleet that could outlive it: processes, namespaces, mounts, veths, host dirs."""
    mounts = mounts_under(fleet.dir) + [m for ns in fleet_namespaces(fleet) for m in mounts_under(Path("/run/netns", ns))]
    # Veths are created inside the fleet's namespaces; one in the root namespace would be a leak.
    root_links = [name for name in (line.split(":")[1].strip().split("@")[0]
                                    for line in out(["ip", "-o", "link", "show"]).splitlines())
                  if name.startswith("vh") and name[2:].isdigit()]
    host_dirs = [str(p) for p in fleet.dir.iterdir() if p.is_dir()] if fleet.dir.exists() else []
    return {
        "processes": [f"{p}:{comm(p)}" for p in fleet_processes(fleet) if alive(p)],
        "namespaces": fleet_namespaces(fleet),
        "mounts": mounts,
        "root_ns_links": root_links,
        "host_dirs": host_dirs,
        "inventory": [str(inventory_path(fleet))] if inventory_path(fleet).exists() else [],
    }


def reboot(fleet: Fleet, host: str) -> float:
    """Power one host off cleanly and boot it again on the same disk (its overlay stays mounted).
    Returns the seconds from power-off until systemd reports running and sshd answers."""
    state = fleet.state()
    h = state.get("hosts", {}).get(host)
    if not h:
        raise SystemExit(f"error: no host {host!r} in fleet {fleet.name}")
    t0 = time.monotonic()
    pid = h["nspawn_pid"]
    if alive(pid):
        init = container_init(pid)
        if init:
            os.kill(init, signal.SIGRTMIN + 3)
        try:
            wait_for(lambda: not alive(pid), 30, f"{host} to power off")
        except RuntimeError:
            kill_all([pid])
    h["nspawn_pid"] = boot(fleet, host, Path(h["dir"]) / "rootfs")
    fleet.save(state)
    status = wait_running(h["nspawn_pid"])
    if status != "running":
        raise RuntimeError(f"{host}: systemd reports {status!r} after reboot")
    wait_sshd(fleet, host, h["address"])
    seconds = time.monotonic() - t0
    log(f"fleet {fleet.name}: {host} rebooted in {seconds:.1f}s")
    return seconds


# --------------------------------------------------------------------------- cli

def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("command", choices=["up", "down", "reboot", "status", "instances", "urls", "rootfs",
                                            "leftovers"])
    p.add_argument("--fleet", default=os.environ.get("FLEET", "local"))
    p.add_argument("--count", type=int, default=int(os.environ.get("HOSTS", "2")))
    p.add_argument("--host", help="the host to reboot")
    p.add_argument("--net", default=None, help="first three octets of the fleet's /24 (default 10.231.1)")
    p.add_argument("--image", choices=["bare", "deploy"], default=os.environ.get("TESTHOSTS_IMAGE", "bare"),
                   help="bare: fresh Debian; deploy: the deploy's packages preinstalled (default: $TESTHOSTS_IMAGE or bare)")
    args = p.parse_args(argv)
    if args.command == "reboot" and not args.host:
        p.error("reboot needs --host NAME")
    if os.geteuid() != 0:
        raise SystemExit("error: test hosts need root (network namespaces, systemd-nspawn)")
    fleet = Fleet(args.fleet, args.net)
    if args.command == "rootfs":
        print(ensure_rootfs())
    elif args.command == "up":
        try:
            up(fleet, args.count, args.image)
        except (RuntimeError, subprocess.CalledProcessError) as exc:
            log(f"error: {exc}; tearing the fleet down")
            down(fleet)
            return 1
    elif args.command == "down":
        down(fleet)
    elif args.command == "reboot":
        reboot(fleet, args.host)
    elif args.command == "status":
        print(json.dumps(fleet.state(), indent=2))
    elif args.command == "instances":  # molecule's instance config
        key = str(ssh_key())
        print(json.dumps([{"instance": h, "address": v["address"], "user": "root", "port": 22, "identity_file": key}
                          for h, v in fleet.state().get("hosts", {}).items()]))
    elif args.command == "urls":
        state = fleet.state()
        print("The hosts live in network namespaces; from the controller:")
        for h, v in state.get("hosts", {}).items():
            print(f"  ip netns exec {state['ctl_ns']} curl http://{v['address']}/test    # {h}")
    elif args.command == "leftovers":
        left = leftovers(fleet)
        print(json.dumps(left, indent=2))
        return 1 if any(left.values()) else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
