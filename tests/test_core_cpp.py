"""Builds the C++ unit tests of cnn_core with CMake (into build/cpp-tests, reused between runs) and
runs them through ctest, with Eigen GEMMs and, when scipy-openblas32 is installed, with OpenBLAS."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BUILD = ROOT / "build" / "cpp-tests"


def _tool(name):
    """A build tool from this interpreter's environment first (the `test` extra installs cmake and ninja
    there, and its bin/ need not be on PATH when the venv is not activated), then from PATH."""
    return shutil.which(name, path=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]))


def _cache_is_stale(build, generator):
    """True when build/cpp-tests was configured for another interpreter or generator, or its Eigen/pybind11
    are gone (a CI run in a fresh virtualenv reuses the checkout's build directory)."""
    cache = build / "CMakeCache.txt"
    if not cache.exists():
        return False
    values = {}
    for line in cache.read_text().splitlines():
        if "=" in line and not line.startswith(("#", "//")):
            key, value = line.split("=", 1)
            values[key.split(":", 1)[0]] = value
    if values.get("Python_EXECUTABLE") != sys.executable or values.get("CMAKE_GENERATOR") != generator:
        return True
    return any(not Path(values[key]).is_dir() for key in ("Eigen3_DIR", "pybind11_DIR") if key in values)


@pytest.fixture(scope="module")
def built():
    cmake = _tool("cmake")
    if cmake is None:
        pytest.fail('cmake not found: install the test extra (`pip install -e ".[cpu,test]"`), which brings it')
    if not (os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++") or shutil.which("clang++")):
        pytest.fail("no C++17 compiler found (c++, g++, clang++ or $CXX): the C++ unit tests cannot be built")
    # COMPNN_PYTHON stays ON so this configure also checks that CMake finds pybind11 through Python the
    # way the README's standalone build does; only the C++ targets are compiled.
    args = [cmake, "-S", str(ROOT), "-B", str(BUILD), "-DCMAKE_BUILD_TYPE=Release", "-DCOMPNN_PYTHON=ON",
            f"-DPython_EXECUTABLE={sys.executable}"]
    ninja = _tool("ninja")
    generator = "Ninja" if ninja else "Unix Makefiles"
    args += ["-G", generator] + ([f"-DCMAKE_MAKE_PROGRAM={ninja}"] if ninja else [])
    if _cache_is_stale(BUILD, generator):
        (BUILD / "CMakeCache.txt").unlink()
    # Configure every time (about a second with a valid cache) so a changed CMakeLists.txt or option is seen.
    configure = subprocess.run(args, capture_output=True, text=True)
    assert configure.returncode == 0, configure.stdout[-4000:] + configure.stderr[-4000:]
    build = subprocess.run([cmake, "--build", str(BUILD), "--target", "cnn_core_tests", "compnn_bench", "-j",
                            str(os.cpu_count() or 1)], capture_output=True, text=True)
    assert build.returncode == 0, build.stdout[-4000:] + build.stderr[-4000:]
    return BUILD


def _ctest(build, env=None):
    out = subprocess.run([_tool("ctest"), "--test-dir", str(build), "--output-on-failure"], capture_output=True,
                         text=True, env=env)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]
    assert "100% tests passed" in out.stdout


def test_cpp_unit_tests_eigen(built):
    env = {k: v for k, v in os.environ.items() if k != "COMPNN_BLAS"}
    _ctest(built, env)


def test_cpp_unit_tests_openblas(built):
    blas = pytest.importorskip("scipy_openblas32")
    env = dict(os.environ, COMPNN_BLAS=os.path.join(blas.get_lib_dir(), blas.get_library(True)))
    _ctest(built, env)


def test_bench_binary_runs_and_agrees(built):
    """A tiny compnn_bench run: shift-sum must agree with flat exact on every position."""
    out = subprocess.run([str(built / "compnn_bench"), "--h=12", "--w=12", "--c=8", "--n=2", "--flat_rows=12",
                          "--flat_db=2", "--shortlist=2", "--coarse_factor=4", "--threads=2"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    line = next(l for l in out.stdout.splitlines() if l.startswith("shift-sum exact") and "same match" in l)
    assert "similarity within 1e-5 1.0000" in line
    bad = subprocess.run([str(built / "compnn_bench"), "--query=/nonexistent.npy", "--database=/x.npy"],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 1 and "/nonexistent.npy" in bad.stderr


def test_bench_help_and_bad_flags(built):
    """--help lists every flag with a description (exit 0); a malformed or unknown flag is named (exit 2)."""
    bench = str(built / "compnn_bench")
    out = subprocess.run([bench, "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    for flag in ("h", "w", "c", "n", "kernel", "threads", "flat_rows", "flat_db", "shortlist", "coarse_factor",
                 "coarse_kernel", "coarse_k", "margin", "seed", "blas", "query", "database", "labels",
                 "query_coarse", "db_coarse", "query_global", "db_global"):
        line = next((l for l in out.stdout.splitlines() if l.strip().startswith(f"--{flag}=")), None)
        assert line is not None and len(line.split(None, 1)) == 2, f"--{flag} missing or undescribed"
    for args, word in ((["--n=abc"], "--n=abc"), (["--threads=1x"], "--threads=1x"), (["--bogus=1"], "--bogus"),
                       (["--coarse_factor=0"], "--coarse_factor")):
        bad = subprocess.run([bench, *args], capture_output=True, text=True, timeout=60)
        assert bad.returncode == 2 and word in bad.stderr, (args, bad.returncode, bad.stderr)
