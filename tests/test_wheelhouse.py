"""The controller-side wheelhouse builder: right wheels for each target, markers for the target."""

import importlib.util
import json
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile

import pytest

from conftest import ROOT

SCRIPT = ROOT / "roles/flask_app/files/build_wheelhouse.py"
spec = importlib.util.spec_from_file_location("build_wheelhouse", SCRIPT)
bw = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bw)


def build(out, target, python, version="1.0.0", source=ROOT / "sample_app"):
    return subprocess.run(
        [sys.executable, str(SCRIPT), f"--source={source}", f"--version={version}", f"--target={target}",
         f"--python={python}", "--name=sampleapp", f"--out={out}"],
        capture_output=True, text=True, timeout=600, check=False,
    )


@pytest.mark.parametrize(("target", "python", "tag"), [("linux", "3.11", "cp311-manylinux"),
                                                        ("windows", "3.12", "cp312-win_amd64")])
def test_builds_the_closure_for_the_target(tmp_path, target, python, tag):
    res = build(tmp_path, target, python)
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["changed"] is True
    wheels = out["wheels"]
    assert "sampleapp-1.0.0-py3-none-any.whl" in wheels
    for dist in ("flask", "werkzeug", "waitress", "jinja2", "click", "itsdangerous", "blinker"):
        assert any(w.lower().startswith(dist + "-") for w in wheels), (dist, wheels)
    markupsafe = [w for w in wheels if w.lower().startswith("markupsafe-")]
    assert len(markupsafe) == 1 and tag.split("-")[0] in markupsafe[0] and tag.split("-")[1] in markupsafe[0]
    archive = out["archive"]
    assert archive.endswith(".zip" if target == "windows" else ".tar.gz")
    names = zipfile.ZipFile(archive).namelist() if target == "windows" else tarfile.open(archive).getnames()
    assert sorted(names) == wheels
    again = json.loads(build(tmp_path, target, python).stdout)
    assert again == {**out, "changed": False}


def test_refuses_a_version_the_source_does_not_build(tmp_path):
    res = build(tmp_path, "linux", "3.11", version="9.9.9")
    assert res.returncode != 0
    assert "builds sampleapp 1.0.0, but the deploy asks for version 9.9.9" in res.stderr


def test_changed_source_gets_a_new_archive(tmp_path):
    src = tmp_path / "src"
    shutil.copytree(ROOT / "sample_app", src, ignore=shutil.ignore_patterns("*.egg-info", "__pycache__", "build"))
    before = bw.source_digest(src)
    (src / "src/sampleapp/__init__.py").write_text((src / "src/sampleapp/__init__.py").read_text() + "\n# edit\n")
    assert bw.source_digest(src) != before


def _fake_wheel(directory, name, requires):
    path = directory / f"{name}-1.0-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as zf:
        meta = "Metadata-Version: 2.1\nName: %s\nVersion: 1.0\n" % name
        meta += "".join(f"Requires-Dist: {r}\n" for r in requires)
        zf.writestr(f"{name}-1.0.dist-info/METADATA", meta)
    return path


def test_markers_are_evaluated_for_the_target_not_the_controller(tmp_path):
    _fake_wheel(tmp_path, "tool", ['colorama; sys_platform == "win32"', 'uvloop; sys_platform != "win32"'])
    win = [r.name for r in bw.missing_requirements(tmp_path, bw.target_env("windows", "3.12"))]
    lin = [r.name for r in bw.missing_requirements(tmp_path, bw.target_env("linux", "3.11"))]
    assert win == ["colorama"]
    assert lin == ["uvloop"]


def test_a_prebuilt_wheelhouse_gets_the_server_and_the_same_digest_as_its_source(tmp_path):
    """Route wheelhouse: a CI artifact holding the app and its dependencies (no server, wheels in a
    subdirectory) becomes the same wheelhouse - same requirements.lock, same digest - as the tree it was
    built from; a lock whose hash does not match a wheel is refused, naming it."""
    tree = json.loads(build(tmp_path / "tree", "linux", "3.11").stdout)
    wheels = tmp_path / "wheels"
    with tarfile.open(tree["archive"]) as tf:
        tf.extractall(wheels, filter="data")
    artifact = tmp_path / "ci-artifact.tar.gz"
    with tarfile.open(artifact, "w:gz") as tf:
        for w in sorted(wheels.glob("*.whl")):
            if not w.name.startswith("waitress-"):
                tf.add(w, f"dist/{w.name}")
    server = [n for n in tree["wheels"] if n.startswith("waitress-")][0].split("-")[1]

    def from_artifact(out, *extra):
        return subprocess.run(
            [sys.executable, str(SCRIPT), "--from=wheelhouse", f"--archive={artifact}", "--package=sampleapp",
             "--version=1.0.0", f"--server=waitress=={server}", "--target=linux", "--python=3.11",
             "--name=sampleapp", f"--out={out}", *extra], capture_output=True, text=True, timeout=600, check=False)

    res = from_artifact(tmp_path / "ci")
    assert res.returncode == 0, res.stderr
    ci = json.loads(res.stdout)
    assert ci["digest"] == tree["digest"] and ci["wheels"] == tree["wheels"]
    assert "requirements.lock" in ci["wheels"]
    lock = (wheels / "requirements.lock").read_text()
    assert "--hash=sha256:" in lock and lock.count("\n") == len(tree["wheels"]) - 1
    # A lock with another hash for flask: refused before anything is packed.
    bad = tmp_path / "lock.txt"
    bad.write_text(re.sub(r"^(flask==\S+ --hash=sha256:)\w+", r"\g<1>" + "0" * 64, lock, flags=re.M))
    res = from_artifact(tmp_path / "ci-bad", f"--lock={bad}")
    assert res.returncode != 0 and "does not match the lock" in res.stderr and "flask-" in res.stderr
    # The wrong version in the artifact is named.
    res = subprocess.run([sys.executable, str(SCRIPT), "--from=wheelhouse", f"--archive={artifact}",
                          "--package=sampleapp", "--version=2.0.0", "--target=linux", "--python=3.11",
                          "--name=sampleapp", f"--out={tmp_path / 'ci-v'}"], capture_output=True, text=True,
                         timeout=600, check=False)
    assert "has sampleapp 1.0.0, but the deploy asks for version 2.0.0" in res.stderr


def test_a_lock_is_enforced_by_hash(tmp_path):
    """A lock file (the tree's dependencies, hashed) is downloaded exactly; a hash that does not match is refused
    by pip before anything is packed; a lock missing a dependency is refused naming it."""
    tree = json.loads(build(tmp_path / "tree", "linux", "3.11").stdout)
    with tarfile.open(tree["archive"]) as tf:
        lock = tf.extractfile("requirements.lock").read().decode()
    deps = "".join(line + "\n" for line in lock.splitlines() if not line.startswith("sampleapp=="))

    def with_lock(name, text):
        path = tmp_path / f"{name}.txt"
        path.write_text(text)
        return subprocess.run(
            [sys.executable, str(SCRIPT), f"--source={ROOT / 'sample_app'}", "--version=1.0.0", "--target=linux",
             "--python=3.11", "--name=sampleapp", f"--out={tmp_path / name}", f"--lock={path}"],
            capture_output=True, text=True, timeout=600, check=False)

    good = with_lock("good", deps)
    assert good.returncode == 0, good.stderr
    assert json.loads(good.stdout)["digest"] == tree["digest"]
    bad = with_lock("bad", re.sub(r"^(flask==\S+ --hash=sha256:)\w+", r"\g<1>" + "0" * 64, deps, flags=re.M))
    assert bad.returncode != 0 and "DO NOT MATCH THE HASHES" in bad.stderr
    short = with_lock("short", "".join(line + "\n" for line in deps.splitlines() if not line.startswith("click==")))
    assert short.returncode != 0 and "incomplete" in short.stderr and "click" in short.stderr
