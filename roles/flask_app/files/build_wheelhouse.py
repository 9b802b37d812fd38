#!/usr/bin/env python3
"""Build the app's wheelhouse on the controller, for the target's platform and Python, as one archive.

    build_wheelhouse.py --source DIR --version V --target linux|windows --python 3.11 --out DIR

Builds the app's wheel, downloads binary wheels of its dependency closure for the *target*
(manylinux x86_64 or win_amd64, CPython X.Y) and packs them (tar.gz for Linux, zip for Windows).
`pip download --platform` picks wheel tags for the target but evaluates environment markers for the
controller, so a Windows-only dependency (e.g. click's colorama) would be missed: the closure is
re-checked with the markers evaluated for the target, and what is missing is downloaded too.

The archive name carries the version and a digest of the source tree, so changed source is never
served from a stale archive. Prints one JSON line: {"archive", "digest", "changed", "wheels"}. An
existing archive is reused (changed=false). Safe to run concurrently (file lock).
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


def pip(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "pip", "--disable-pip-version-check", "-q", *args], check=True,
                   stdout=sys.stderr)


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


def download(reqs: list[str], dest: Path, target: str, python: str, find_links: Path) -> None:
    args = ["download", "--only-binary=:all:", "--implementation", "cp", "--python-version", python,
            "--dest", str(dest), "--find-links", str(find_links)]
    for plat in PLATFORMS[target]:
        args += ["--platform", plat]
    pip(*args, *reqs)


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


def build(source: Path, version: str, target: str, python: str, out: Path, name: str) -> dict:
    ext = "zip" if target == "windows" else "tar.gz"
    digest = source_digest(source)
    archive = out / f"{name}-{version}-{target}-py{python}-{digest}.{ext}"
    out.mkdir(parents=True, exist_ok=True)
    with open(out / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if archive.exists():
            return {"archive": str(archive), "digest": digest, "changed": False, "wheels": list_archive(archive)}
        with tempfile.TemporaryDirectory(dir=out) as tmp:
            wheels = Path(tmp) / "wheels"
            wheels.mkdir()
            pip("wheel", "--no-deps", "--wheel-dir", str(wheels), str(source))
            built = list(wheels.glob("*.whl"))
            dist, built_version = parse_wheel_filename(built[0].name)[:2]
            if str(built_version) != version:
                raise SystemExit(f"error: {source} builds {dist} {built_version}, but the deploy asks for "
                                 f"version {version} (flask_app_version)")
            download([f"{dist}=={version}"], wheels, target, python, wheels)
            env = target_env(target, python)
            for _ in range(10):  # closure under the target's markers
                missing = missing_requirements(wheels, env)
                if not missing:
                    break
                download(sorted({str(r.name) + str(r.specifier) for r in missing}), wheels, target, python, wheels)
            else:
                raise SystemExit(f"error: could not resolve {missing} for {target} py{python}")
            tmp_archive = Path(tmp) / archive.name
            pack(wheels, tmp_archive)
            os.replace(tmp_archive, archive)
    return {"archive": str(archive), "digest": digest, "changed": True, "wheels": list_archive(archive)}


def pack(wheels: Path, archive: Path) -> None:
    files = sorted(wheels.glob("*.whl"))
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
    p.add_argument("--source", type=Path, required=True)
    p.add_argument("--version", required=True)
    p.add_argument("--target", choices=sorted(PLATFORMS), required=True)
    p.add_argument("--python", required=True, help="target CPython X.Y")
    p.add_argument("--name", required=True, help="archive name prefix (the app name)")
    p.add_argument("--out", type=Path, required=True)
    a = p.parse_args(argv)
    if not re.fullmatch(r"3\.\d+", a.python):
        p.error("--python must be X.Y, e.g. 3.11")
    if not (a.source / "pyproject.toml").exists() and not (a.source / "setup.py").exists():
        p.error(f"--source {a.source} has no pyproject.toml")
    print(json.dumps(build(a.source.resolve(), a.version, a.target, a.python, a.out.resolve(), a.name)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
