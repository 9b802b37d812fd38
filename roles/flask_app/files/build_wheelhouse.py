#!/usr/bin/env python3
"""Build the app's wheelhouse on the controller, for the target's platform and Python, as one archive.

    build_wheelhouse.py [--from tree|index|wheelhouse] [--source DIR] [--archive FILE] [--package NAME]
                        --version V [--lock FILE] [--server REQ ...] --target linux|windows --python 3.11
                        --name APP --out DIR

Where the app comes from (--from):
  tree        the app's wheel is built from the source tree --source (pyproject.toml or setup.py);
  index       --package==--version is downloaded from the package index (wheels only);
  wheelhouse  the wheels of a prebuilt wheelhouse archive --archive (.tar.gz/.tgz/.zip; a CI artifact).
Then the app server's pinned requirements (--server, e.g. waitress==3.0.2: the role installs the server,
the app need not depend on it) and the dependency closure, all binary wheels for the *target* (manylinux
x86_64 or win_amd64, CPython X.Y). `pip download --platform` picks wheel tags for the target but evaluates
environment markers for the controller, so a Windows-only dependency (e.g. click's colorama) would be
missed: the closure is re-checked with the markers evaluated for the target, and what is missing is
downloaded too (for a prebuilt wheelhouse it is an error instead: the artifact is incomplete).

--lock: a requirements file with hashes (pip-compile/uv --generate-hashes). The dependencies (and the app,
for index) are downloaded exactly as locked, checked against the hashes (pip --require-hashes), entries
whose markers do not hold on the target left out; nothing else is resolved (the closure must be complete).
A prebuilt wheelhouse's wheels must match the lock's hashes.

Every archive holds requirements.lock: each wheel's name==version with its sha256, which the host installs
with --require-hashes; its digest (sha256 of that file, 16 hex digits) is the wheelhouse's identity, recorded
in the release marker. The archive's name carries the version and a key over the inputs (the source tree's
content, the index and distribution, or the archive's hash; the lock; the server; target and Python), so
changed input is never served from a stale archive and an existing archive is reused (changed=false).
The index and its credentials come from the environment (FLASKFLEET_INDEX_URL, FLASKFLEET_INDEX_USERNAME,
FLASKFLEET_INDEX_PASSWORD; '' = pip's own configuration), never from the command line.
Prints one JSON line: {"archive", "digest", "changed", "wheels"}. Safe to run concurrently (file lock).
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import os
import re
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from email.parser import Parser
from pathlib import Path
from urllib.parse import quote

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name, parse_wheel_filename

PLATFORMS = {
    "linux": ["manylinux_2_17_x86_64", "manylinux2014_x86_64", "manylinux_2_28_x86_64"],
    "windows": ["win_amd64"],
}
# Marker environment of the target (PEP 508), overriding the controller's.
MARKERS = {
    "linux": {"sys_platform": "linux", "platform_system": "Linux", "os_name": "posix",
              "platform_machine": "x86_64"},
    "windows": {"sys_platform": "win32", "platform_system": "Windows", "os_name": "nt",
                "platform_machine": "AMD64"},
}


def target_env(target: str, python: str) -> dict:
    env = default_environment()
    env.update(MARKERS[target])
    env.update({"python_version": python, "python_full_version": python + ".0",
                "implementation_name": "cpython", "platform_python_implementation": "CPython"})
    return env


def index_env() -> dict:
    """pip's environment: the index (with its credentials) from FLASKFLEET_INDEX_*; reproducible builds."""
    env = {**os.environ, "SOURCE_DATE_EPOCH": os.environ.get("SOURCE_DATE_EPOCH", "315532800")}
    url = os.environ.get("FLASKFLEET_INDEX_URL", "")
    if url:
        user = os.environ.get("FLASKFLEET_INDEX_USERNAME", "")
        password = os.environ.get("FLASKFLEET_INDEX_PASSWORD", "")
        if user or password:
            scheme, rest = url.split("://", 1)
            url = f"{scheme}://{quote(user, safe='')}:{quote(password, safe='')}@{rest}"
        env["PIP_INDEX_URL"] = url
    return env


def pip(*args: str) -> None:
    # pip masks a password in a URL it prints; stderr carries its error to the deploy's message.
    subprocess.run([sys.executable, "-m", "pip", "--disable-pip-version-check", "-q", *args], check=True,
                   stdout=sys.stderr, env=index_env())


def wheel_requires(path: Path) -> list[Requirement]:
    with zipfile.ZipFile(path) as zf:
        meta = next(n for n in zf.namelist() if re.match(r"[^/]+\.dist-info/METADATA$", n))
        msg = Parser().parsestr(zf.read(meta).decode())
    return [Requirement(r) for r in msg.get_all("Requires-Dist") or []]


def missing_requirements(wheels: Path, env: dict) -> list[Requirement]:
    have = {canonicalize_name(parse_wheel_filename(w.name)[0]): parse_wheel_filename(w.name)[1]
            for w in wheels.glob("*.whl")}
    missing = []
    for w in sorted(wheels.glob("*.whl")):
        for req in wheel_requires(w):
            if req.marker and not req.marker.evaluate({**env, "extra": ""}):
                continue
            version = have.get(canonicalize_name(req.name))
            if version is None or not req.specifier.contains(version, prereleases=True):
                missing.append(req)
    return missing


def download(reqs: list[str], dest: Path, target: str, python: str, find_links: Path, *extra: str) -> None:
    args = ["download", "--only-binary=:all:", "--implementation", "cp", "--python-version", python,
            "--dest", str(dest), "--find-links", str(find_links), *extra]
    for plat in PLATFORMS[target]:
        args += ["--platform", plat]
    pip(*args, *reqs)


def read_lock(lock: Path, env: dict) -> list[tuple[Requirement, list[str]]]:
    """The lock's entries that apply on the target: (requirement, its sha256 hashes). Options are ignored."""
    text = re.sub(r"\\\n", " ", lock.read_text())
    entries = []
    for line in text.splitlines():
        line = re.sub(r"(^|\s)#.*$", "", line).strip()
        if not line or line.startswith("-"):
            continue
        spec, *opts = re.split(r"\s+--hash[=\s]", line)
        req = Requirement(spec.strip())
        hashes = [o.strip().removeprefix("sha256:") for o in opts]
        if req.marker and not req.marker.evaluate({**env, "extra": ""}):
            continue
        pinned = [sp for sp in req.specifier if sp.operator in ("==", "===")]
        if not hashes or len(pinned) != 1:
            raise SystemExit(f"error: {lock}: '{spec.strip()}' must be pinned (==) with --hash=sha256:... "
                             "(a lock from pip-compile or uv pip compile --generate-hashes)")
        entries.append((req, hashes))
    return entries


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_lock(wheels: Path) -> str:
    """requirements.lock of the wheelhouse (what the host installs with --require-hashes); its digest."""
    lines, seen = [], {}
    for w in sorted(wheels.glob("*.whl")):
        name, version = parse_wheel_filename(w.name)[:2]
        if name in seen and seen[name] != version:
            raise SystemExit(f"error: the wheelhouse holds {name} {seen[name]} and {version}: one version each")
        seen[name] = version
        lines.append(f"{name}=={version} --hash=sha256:{sha256(w)}")
    text = "\n".join(lines) + "\n"
    (wheels / "requirements.lock").write_text(text)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


SKIP_DIRS = {"build", "dist", "__pycache__", ".pytest_cache", ".git", ".venv"}


def source_digest(source: Path) -> str:
    """sha256 over the source tree's file names and contents (build outputs excluded)."""
    h = hashlib.sha256()
    for path in sorted(source.rglob("*")):
        rel = path.relative_to(source)
        if any(part in SKIP_DIRS or part.endswith(".egg-info") for part in rel.parts) or not path.is_file():
            continue
        if path.suffix in {".pyc", ".pyo"}:
            continue
        h.update(str(rel).encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def input_key(a: argparse.Namespace) -> str:
    """What the wheelhouse is made of: changed input never reuses an archive."""
    parts = [a.source_kind, a.target, a.python, *a.server]
    if a.source_kind == "tree":
        parts.append(source_digest(a.source))
    elif a.source_kind == "index":
        index = re.sub(r"//[^/@]*@", "//", os.environ.get("FLASKFLEET_INDEX_URL", ""))
        parts += [index, f"{canonicalize_name(a.package)}=={a.version}"]
    else:
        parts.append(sha256(a.archive))
    parts.append(a.lock.read_text() if a.lock else "")
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16]


def unpack_wheels(archive: Path, dest: Path) -> None:
    """The wheels of a prebuilt wheelhouse archive (at any depth)."""
    if archive.name.endswith(".zip"):
        with zipfile.ZipFile(archive) as zf:
            members = [(n, zf.open) for n in zf.namelist() if n.endswith(".whl")]
            for name, _ in members:
                (dest / Path(name).name).write_bytes(zf.read(name))
    else:
        with tarfile.open(archive) as tf:
            for m in tf.getmembers():
                if m.isfile() and m.name.endswith(".whl"):
                    (dest / Path(m.name).name).write_bytes(tf.extractfile(m).read())


def app_wheel(wheels: Path, package: str, version: str, what: str) -> None:
    found = [parse_wheel_filename(w.name)[1] for w in wheels.glob("*.whl")
             if parse_wheel_filename(w.name)[0] == canonicalize_name(package)]
    if [str(v) for v in found] != [version]:
        raise SystemExit(f"error: {what} has {package} {', '.join(map(str, found)) or 'not at all'}, but the deploy "
                         f"asks for version {version} (flask_app_version)")


def fill(wheels: Path, a: argparse.Namespace, env: dict, locked: list) -> None:
    """The app's wheel and what it needs, in `wheels`."""
    find = (wheels,)
    if a.source_kind == "tree":
        pip("wheel", "--no-deps", "--wheel-dir", str(wheels), str(a.source))
        built = list(wheels.glob("*.whl"))
        dist, built_version = parse_wheel_filename(built[0].name)[:2]
        if str(built_version) != a.version:
            raise SystemExit(f"error: {a.source} builds {dist} {built_version}, but the deploy asks for "
                             f"version {a.version} (flask_app_version)")
        a.package = str(dist)
    elif a.source_kind == "wheelhouse":
        unpack_wheels(a.archive, wheels)
        app_wheel(wheels, a.package, a.version, f"the wheelhouse {a.archive}")
    if locked:
        lock = wheels.parent / "lock.txt"
        lock.write_text("".join(f"{r.name}{r.specifier} " + " ".join(f"--hash=sha256:{h}" for h in hs) + "\n"
                                for r, hs in locked))
        if a.source_kind == "wheelhouse":
            bad = mismatched(wheels, locked)
            if bad:
                raise SystemExit(f"error: the wheelhouse {a.archive} does not match the lock {a.lock}: {bad}")
        else:
            download(["-r", str(lock)], wheels, a.target, a.python, *find, "--no-deps", "--require-hashes")
        if a.source_kind == "index":
            app_wheel(wheels, a.package, a.version, f"the lock {a.lock}")
    elif a.source_kind != "wheelhouse":
        # Resolved together, so the app's own requirements on the server (if any) meet the role's pin.
        download([f"{a.package}=={a.version}", *a.server], wheels, a.target, a.python, *find)
    for req in map(Requirement, a.server):
        have = [w for w in wheels.glob("*.whl") if parse_wheel_filename(w.name)[0] == canonicalize_name(req.name)]
        if have and not req.specifier.contains(parse_wheel_filename(have[0].name)[1], prereleases=True):
            raise SystemExit(f"error: the app's wheels hold {have[0].name}, but the role installs {req} "
                             "(flask_app_server's pinned version)")
        if not have:
            download([str(req)], wheels, a.target, a.python, *find, "--no-deps")
    for _ in range(10):  # closure under the target's markers
        missing = missing_requirements(wheels, env)
        if not missing:
            return
        if locked or a.source_kind == "wheelhouse":
            raise SystemExit(f"error: {a.lock or a.archive} is incomplete for {a.target} py{a.python}: "
                             f"missing {sorted(set(map(str, missing)))}")
        # A version resolved under the controller's markers that the target's exclude goes (one version each).
        for r in missing:
            for w in wheels.glob("*.whl"):
                name, version = parse_wheel_filename(w.name)[:2]
                if name == canonicalize_name(r.name) and not r.specifier.contains(version, prereleases=True):
                    w.unlink()
        download(sorted({str(r.name) + str(r.specifier) for r in missing}), wheels, a.target, a.python, *find)
    raise SystemExit(f"error: could not resolve {missing} for {a.target} py{a.python}")


def mismatched(wheels: Path, locked: list) -> list[str]:
    """Wheels whose name==version is locked with other hashes, and locked entries without a wheel."""
    by_name = {canonicalize_name(r.name): (r, hs) for r, hs in locked}
    bad, seen = [], set()
    for w in sorted(wheels.glob("*.whl")):
        name, version = parse_wheel_filename(w.name)[:2]
        if name in by_name:
            seen.add(name)
            r, hs = by_name[name]
            if not r.specifier.contains(version, prereleases=True) or sha256(w) not in hs:
                bad.append(w.name)
    return bad + [f"{by_name[n][0]} (no wheel)" for n in sorted(set(by_name) - seen)]


def build(a: argparse.Namespace) -> dict:
    ext = "zip" if a.target == "windows" else "tar.gz"
    archive = a.out / f"{a.name}-{a.version}-{a.target}-py{a.python}-{input_key(a)}.{ext}"
    info = archive.with_name(archive.name + ".json")
    a.out.mkdir(parents=True, exist_ok=True)
    with open(a.out / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if archive.exists() and info.exists():
            return {"archive": str(archive), **json.loads(info.read_text()), "changed": False}
        env = target_env(a.target, a.python)
        locked = read_lock(a.lock, env) if a.lock else []
        with tempfile.TemporaryDirectory(dir=a.out) as tmp:
            wheels = Path(tmp) / "wheels"
            wheels.mkdir()
            fill(wheels, a, env, locked)
            digest = write_lock(wheels)
            tmp_archive = Path(tmp) / archive.name
            pack(wheels, tmp_archive)
            result = {"digest": digest, "wheels": list_archive(tmp_archive)}
            os.replace(tmp_archive, archive)
            info.write_text(json.dumps(result) + "\n")
    return {"archive": str(archive), **result, "changed": True}


def pack(wheels: Path, archive: Path) -> None:
    files = sorted(wheels.glob("*.whl")) + [wheels / "requirements.lock"]
    if archive.suffix == ".zip":
        with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED) as zf:  # wheels are already compressed
            for f in files:
                zf.write(f, f.name)
    else:
        with tarfile.open(archive, "w:gz") as tf:
            for f in files:
                tf.add(f, f.name)


def list_archive(archive: Path) -> list[str]:
    if archive.suffix == ".zip":
        with zipfile.ZipFile(archive) as zf:
            return sorted(zf.namelist())
    with tarfile.open(archive) as tf:
        return sorted(tf.getnames())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--from", dest="source_kind", choices=["tree", "index", "wheelhouse"], default="tree")
    p.add_argument("--source", type=Path, help="the source tree (--from tree)")
    p.add_argument("--archive", type=Path, help="the prebuilt wheelhouse (--from wheelhouse)")
    p.add_argument("--package", help="the app's distribution name (--from index / wheelhouse)")
    p.add_argument("--version", required=True)
    p.add_argument("--lock", type=Path, help="requirements file with hashes")
    p.add_argument("--server", action="append", default=[], help="the app server's pinned requirement")
    p.add_argument("--target", choices=sorted(PLATFORMS), required=True)
    p.add_argument("--python", required=True, help="target CPython X.Y")
    p.add_argument("--name", required=True, help="archive name prefix (the app name)")
    p.add_argument("--out", type=Path, required=True)
    a = p.parse_args(argv)
    if not re.fullmatch(r"3\.\d+", a.python):
        p.error("--python must be X.Y, e.g. 3.11")
    if a.source_kind == "tree":
        if a.source is None or not ((a.source / "pyproject.toml").exists() or (a.source / "setup.py").exists()):
            p.error(f"--source {a.source} has no pyproject.toml or setup.py")
        a.source = a.source.resolve()
    elif not a.package:
        p.error(f"--from {a.source_kind} needs --package")
    if a.source_kind == "wheelhouse" and (a.archive is None or not a.archive.is_file()):
        p.error(f"--archive {a.archive} is not a file")
    if a.lock is not None and not a.lock.is_file():
        p.error(f"--lock {a.lock} is not a file")
    a.out = a.out.resolve()
    print(json.dumps(build(a)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
