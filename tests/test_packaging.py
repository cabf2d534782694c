"""Packaging promises a new user relies on: the `test` extra brings the same build tools that the
isolated build uses (so the C++ tests and the README's standalone CMake build work in a fresh
virtualenv), CI runs the README's own test command, and a plain `cmake -S . -B ...` inside the
virtualenv finds Eigen and pybind11 through Python with no hints."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

def _pyproject():
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11; these checks read files, any Python will do
    with open(ROOT / "pyproject.toml", "rb") as f:
        return tomllib.load(f)


def _by_name(requirements):
    """{normalised distribution name: full requirement string}."""
    out = {}
    for req in requirements:
        name = re.match(r"\s*([A-Za-z0-9._-]+)", req).group(1)
        out[re.sub(r"[-_.]+", "-", name).lower()] = req.replace(" ", "")
    return out


def test_test_extra_pins_the_build_tools_like_build_system():
    data = _pyproject()
    build = _by_name(data["build-system"]["requires"])
    test = _by_name(data["project"]["optional-dependencies"]["test"])
    for tool in ("pybind11", "cmake", "ninja", "cmeel-eigen"):
        assert tool in build, f"{tool} missing from [build-system] requires"
        assert test.get(tool) == build[tool], f"test extra pins {test.get(tool)!r}, build-system {build[tool]!r}"


def test_test_extra_covers_dask_and_browser_tests():
    extras = _pyproject()["project"]["optional-dependencies"]
    test = set(_by_name(extras["test"]).values())
    assert set(_by_name(extras["dask"]).values()) <= test
    assert "selenium" in _by_name(extras["test"])


def test_ci_runs_the_readme_test_command():
    out = subprocess.run(["bash", str(ROOT / ".ci" / "run"), "--print-command"], capture_output=True, text=True,
                         timeout=30)
    assert out.returncode == 0, out.stderr
    cmd = out.stdout.strip()
    assert cmd in (ROOT / "README.md").read_text()
    assert re.search(r'pip install -e "\.\[[^\]]*\btest\b[^\]]*\]"', cmd) and "pytest" in cmd, cmd


@pytest.mark.skipif(sys.prefix == sys.base_prefix, reason="the README's standalone build runs inside a virtualenv")
def test_standalone_cmake_configure_finds_eigen_and_pybind11(tmp_path):
    """The README's `cmake -S . -B build/cmake -G Ninja`, with only the virtualenv activated (no -D hints)."""
    bindir = str(Path(sys.executable).parent)
    env = dict(os.environ, VIRTUAL_ENV=sys.prefix, PATH=os.pathsep.join([bindir, os.environ.get("PATH", "")]))
    env.pop("CMAKE_PREFIX_PATH", None)
    cmake = shutil.which("cmake", path=env["PATH"])
    assert cmake, 'cmake not found: the test extra (`pip install -e ".[cpu,test]"`) brings it'
    gen = ["-G", "Ninja"] if shutil.which("ninja", path=env["PATH"]) else []
    out = subprocess.run([cmake, "-S", str(ROOT), "-B", str(tmp_path), *gen], capture_output=True, text=True,
                         env=env, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    cache = (tmp_path / "CMakeCache.txt").read_text()
    found = dict(re.findall(r"^(Eigen3_DIR|pybind11_DIR):\w+=(.*)$", cache, re.M))
    assert Path(found["Eigen3_DIR"], "Eigen3Config.cmake").is_file(), found
    assert Path(found["pybind11_DIR"], "pybind11Config.cmake").is_file(), found
    # The virtualenv's own interpreter (bin/python3 links out of the venv: compare unresolved paths).
    python = re.search(r"Found Python: (\S+)", out.stdout)
    assert python and Path(python.group(1)).parent == Path(sys.executable).parent, out.stdout[-3000:]
