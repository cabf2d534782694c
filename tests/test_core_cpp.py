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


def _cmeel_prefix():
    return next((str(Path(p) / "cmeel.prefix") for p in sys.path if (Path(p) / "cmeel.prefix").is_dir()), None)


@pytest.fixture(scope="module")
def built():
    cmake = shutil.which("cmake")
    if cmake is None or not (shutil.which("c++") or shutil.which("g++") or os.environ.get("CXX")):
        pytest.skip("cmake or a C++ compiler is missing: the C++ unit tests cannot be built")
    args = [cmake, "-S", str(ROOT), "-B", str(BUILD), "-DCOMPNN_PYTHON=OFF", "-DCMAKE_BUILD_TYPE=Release",
            f"-DPython_EXECUTABLE={sys.executable}"]
    if _cmeel_prefix():
        args.append(f"-DCMAKE_PREFIX_PATH={_cmeel_prefix()}")
    if shutil.which("ninja"):
        args += ["-G", "Ninja"]
    if not (BUILD / "CMakeCache.txt").exists():
        subprocess.run(args, check=True, capture_output=True, text=True)
    build = subprocess.run([cmake, "--build", str(BUILD), "--target", "cnn_core_tests", "compnn_bench", "-j",
                            str(os.cpu_count() or 1)], capture_output=True, text=True)
    assert build.returncode == 0, build.stdout[-4000:] + build.stderr[-4000:]
    return BUILD


def _ctest(build, env=None):
    out = subprocess.run(["ctest", "--test-dir", str(build), "--output-on-failure"], capture_output=True,
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
