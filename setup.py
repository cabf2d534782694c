"""Builds the C++ extension compnn_py._core through CMakeLists.txt (metadata lives in pyproject.toml).

Set COMPNN_NATIVE=0 to build without -march=native (for wheels meant for other CPUs).
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent


class CMakeBuild(build_ext):
    def build_extension(self, ext):
        compiler = os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++") or shutil.which("clang++")
        if not compiler or not shutil.which(compiler.split()[0]):
            raise RuntimeError(
                "compnn needs a C++17 compiler to build its matcher (compnn_py._core) and none was found: "
                "install one (Debian/Ubuntu: `apt-get install g++`; macOS: `xcode-select --install`) "
                "or set CXX, then run pip again."
            )
        cmake = shutil.which("cmake")
        if cmake is None:
            raise RuntimeError("cmake not found: `pip install cmake` (pyproject.toml lists it for isolated builds)")

        extdir = Path(self.get_ext_fullpath(ext.name)).resolve().parent
        build_dir = Path(self.build_temp).resolve() / "cmake"
        build_dir.mkdir(parents=True, exist_ok=True)
        # Isolated builds put pybind11 and Eigen in a new temporary prefix each time: configure afresh.
        (build_dir / "CMakeCache.txt").unlink(missing_ok=True)
        args = [
            f"-DCMAKE_LIBRARY_OUTPUT_DIRECTORY={extdir}",
            # CMakeLists.txt asks this interpreter where pybind11 and cmeel-eigen keep their CMake files;
            # pip's isolated build environment reaches it through PYTHONPATH.
            f"-DPython_EXECUTABLE={sys.executable}",
            "-DCMAKE_BUILD_TYPE=Release",
            "-DCOMPNN_TOOLS=OFF",
            f"-DCOMPNN_NATIVE={'OFF' if os.environ.get('COMPNN_NATIVE') == '0' else 'ON'}",
            f"-DCMAKE_CXX_COMPILER={compiler}",
        ]
        if shutil.which("ninja"):
            args += ["-G", "Ninja"]
        subprocess.run([cmake, "-S", str(ROOT), "-B", str(build_dir), *args], check=True)
        subprocess.run([cmake, "--build", str(build_dir), "--target", "_core", "-j", str(os.cpu_count() or 1)],
                       check=True)


setup(ext_modules=[Extension("compnn_py._core", sources=[])], cmdclass={"build_ext": CMakeBuild})
