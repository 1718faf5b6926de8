"""Every install carries the extension: a wheel holds the C++/CUDA sources and builds them."""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# The sources live at the top level (csrc/) and install as restorekit/ext/csrc/.
SOURCES = sorted(p.relative_to(ROOT).as_posix()
                 for p in (ROOT / "csrc").rglob("*")
                 if p.is_file() and p.suffix in {".cpp", ".h", ".cu", ".md"})
INSTALLED = [f"restorekit/ext/{s}" for s in SOURCES]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # Built from a copy of the checkout: setuptools writes build/ next to the sources.
    out, src = tmp_path_factory.mktemp("wheel"), tmp_path_factory.mktemp("src") / "restorekit"
    skip = shutil.ignore_patterns(".git", "build", "dist", "runs", "studies*", "*.egg-info",
                                  "__pycache__", ".*cache", ".benchmarks", "*.so", "*.o")
    shutil.copytree(ROOT, src, ignore=skip)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
                    "--no-build-isolation", "-w", str(out), str(src)],
                   check=True, timeout=600, env={**os.environ, "PIP_NO_INDEX": "1"})
    (found,) = out.glob("restorekit-*.whl")
    return found


def test_sources_are_found_in_the_checkout():
    from restorekit.ext import source_dir

    assert "csrc/registration.cpp" in SOURCES
    assert any(s.endswith(".cu") for s in SOURCES)
    assert source_dir() == ROOT / "csrc"  # an editable install builds the checkout's sources


def test_pyproject_lists_every_package():
    # pyproject.toml lists its packages (to map csrc/ into restorekit.ext): none forgotten.
    listed = set(_pyproject()["tool"]["setuptools"]["packages"])
    found = set()
    for top, package in ((ROOT, "restorekit"), (ROOT / "plugins" / "pix2pixhd",
                                                "restorekit_pix2pixhd")):
        found |= {".".join(p.parent.relative_to(top).parts)
                  for p in (top / package).rglob("*.py")}
    assert found and not found - listed, f"pyproject.toml does not list {found - listed}"


def _pyproject() -> dict:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10: the [dev] extra brings tomli
        import tomli as tomllib

    with open(ROOT / "pyproject.toml", "rb") as fh:
        return tomllib.load(fh)


def _dist(requirement: str) -> str:
    """The distribution a requirement names ("torch>=2.4" -> "torch")."""
    return re.split(r"[<>=!~;\[ ]", requirement, maxsplit=1)[0].lower()


def test_dependencies_are_the_imports():
    # Every third-party module the packages import is declared, and every core dependency
    # is imported (ninja excepted: torch.utils.cpp_extension runs it as a program; and
    # PyWavelets: scikit-image's estimate_sigma imports it, an optional dependency of skimage).
    from importlib.metadata import packages_distributions

    project = _pyproject()["project"]
    core = {_dist(r) for r in project["dependencies"]}
    declared = core | {_dist(r) for reqs in project["optional-dependencies"].values()
                       for r in reqs}
    dists = packages_distributions()
    imported = set()
    for path in [*(ROOT / "restorekit").rglob("*.py"),
                 *(ROOT / "plugins" / "pix2pixhd" / "restorekit_pix2pixhd").rglob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                imported |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                imported.add(node.module.split(".")[0])
    imported -= {*sys.stdlib_module_names, "restorekit", "restorekit_pix2pixhd"}
    used = {d.lower() for m in imported for d in dists.get(m, [m])}
    assert not used - declared, f"imported but not declared: {sorted(used - declared)}"
    unimported = core - used - {"ninja", "pywavelets"}
    assert not unimported, f"declared but never imported: {unimported}"


@pytest.mark.slow
def test_wheel_ships_the_sources(offline_build: None, wheel: Path):
    names = set(zipfile.ZipFile(wheel).namelist())
    missing = [s for s in INSTALLED if s not in names]
    assert not missing, f"{wheel.name} lacks {missing}"


@pytest.mark.slow
def test_installed_wheel_builds_the_extension(offline_build: None, wheel: Path,
                                              tmp_path: Path):
    # A fresh environment (torch from this interpreter's site-packages), the wheel installed
    # into it, and an empty build cache: `restorekit ext` must compile the shipped sources.
    from restorekit.testing import make_venv

    venv = tmp_path / "venv"
    py = make_venv(venv, with_pip=False)
    # PYTHONPATH (a checkout on it) would shadow the installed wheel.
    env = {**{k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
           "PIP_NO_INDEX": "1", "RESTOREKIT_EXT": "on",
           "RESTOREKIT_CACHE": str(tmp_path / "cache"), "PYTHONDONTWRITEBYTECODE": "1"}
    subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-deps", str(wheel)],
                   check=True, timeout=300, env=env, cwd=tmp_path)
    proc = subprocess.run([str(py), "-m", "restorekit", "ext"], capture_output=True, text=True,
                          timeout=900, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "restorekit extension: built for cpu" in proc.stdout, proc.stdout
    site = subprocess.run([str(py), "-c", "import restorekit; print(restorekit.__file__)"],
                          capture_output=True, text=True, check=True, env=env, cwd=tmp_path)
    assert str(venv) in site.stdout  # the wheel's copy, not this checkout
    assert f"sources: {Path(site.stdout.strip()).parent / 'ext' / 'csrc'}" in proc.stdout
