"""Packaging promises a new user relies on: the `test` extra brings the same build tools that the
isolated build uses (so the C++ tests and the README's standalone CMake build work in a fresh
virtualenv), CI runs the README's own test command, and a plain `cmake -S . -B ...` inside the
virtualenv finds Eigen and pybind11 through Python with no hints. The README's run command installs
only the `cpu` extra, which holds no test tools; licence and citation files agree with pyproject."""

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


TEST_TOOLS = ("pytest", "hypothesis", "selenium", "dask", "cmake", "ninja", "pybind11", "cmeel-eigen")


def _readme_commands():
    """The fenced bash blocks of the README's "Two commands" section."""
    text = (ROOT / "README.md").read_text()
    section = text.split("## Two commands", 1)[1].split("\n## ", 1)[0]
    return [block.strip() for block in re.findall(r"```bash\n(.*?)```", section, re.S)]


def test_readme_has_exactly_two_commands_and_the_run_command_needs_only_cpu():
    run_cmd, test_cmd = _readme_commands()  # exactly two
    assert run_cmd == 'python3 -m pip install -e ".[cpu]" && python3 -m experiments.run --task=cityscapes'
    assert test_cmd.startswith('python3 -m pip install -e ".[cpu,test]" && ')


def test_the_run_install_holds_no_test_tools_and_no_cityscapesscripts():
    project = _pyproject()["project"]
    extras = project["optional-dependencies"]
    plain = set(_by_name(project["dependencies"])) | set(_by_name(extras["cpu"]))
    assert not plain & {*TEST_TOOLS, "cityscapesscripts", "tensorboard"}, plain
    assert set(_by_name(extras["cpu"])) == {"tensorflow-cpu"}
    assert all("cityscapesscripts" not in set(_by_name(reqs)) for reqs in extras.values())
    assert set(_by_name(extras["view"])) == {"tensorboard"}
    assert set(TEST_TOOLS) <= set(_by_name(extras["test"]))


def test_console_command_is_declared():
    assert _pyproject()["project"]["scripts"] == {"compnn": "experiments.cli:main"}


def test_licence_and_citation_agree():
    project = _pyproject()["project"]
    assert (ROOT / "LICENSE").read_text().startswith("MIT License\n")
    yaml = pytest.importorskip("yaml")
    cff = yaml.safe_load((ROOT / "CITATION.cff").read_text())
    assert cff["cff-version"] == "1.2.0" and cff["license"] == "MIT" and cff["version"] == project["version"]
    paper = cff["preferred-citation"]
    assert paper["title"] == "Do Convolutional Neural Networks Act as Compositional Nearest Neighbors?"
    assert [a["family-names"] for a in paper["authors"]] == ["Liu", "Bansal", "Fragoso", "Ramanan"]
    assert {"type": "other", "value": "arXiv:1711.07011"}.items() <= paper["identifiers"][0].items()
