"""The controller-side wheelhouse builder: right wheels for each target, markers for the target."""

import importlib.util
import json
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
