"""The CUDA kernels' source, run on the CPU through an emulation of CUDA's execution model.

No GPU here or in CI: ``tests/cuda_emulation/emulate.py`` rewrites the kernel launches of
``csrc/cuda/kernels.cu`` so that g++ builds them against ``cuda_fake.h``
(threads as blocks, barriers, warp shuffles), and ``check_kernels.cpp`` compares every
launcher with a float64 reference: index arithmetic, reflection, split reductions, vector
alignment. Speed and the device itself are only tested on a GPU (``test_ext.py``).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).parent / "cuda_emulation"
CUDA_SOURCES = Path(__file__).parents[1] / "csrc" / "cuda"


@pytest.fixture(scope="module")
def check_kernels(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The emulated kernels and their checks, built once."""
    cxx = shutil.which("g++") or shutil.which("c++")
    if cxx is None:
        pytest.skip("no C++ compiler")
    out = tmp_path_factory.mktemp("cuda_emulation")
    for name in ("cuda_fake.h", "check_kernels.cpp"):
        shutil.copy(HERE / name, out / name)
    subprocess.run([sys.executable, str(HERE / "emulate.py"), str(CUDA_SOURCES / "kernels.cu"),
                    str(CUDA_SOURCES / "launchers.h"), str(out)], check=True)
    exe = out / "check_kernels"
    build = subprocess.run([cxx, "-std=c++20", "-O1", "-pthread", "-o", str(exe),
                            str(out / "check_kernels.cpp")], capture_output=True, text=True)
    if build.returncode != 0 and "barrier" in build.stderr:
        pytest.skip("the C++ compiler has no C++20 <barrier>")
    assert build.returncode == 0, build.stderr[-3000:]
    return exe


@pytest.mark.parametrize("which", [1, 4, 5], ids=["float32", "bfloat16", "constant-and-nan"])
def test_cuda_kernels_match_a_float64_reference(check_kernels: Path, which: int) -> None:
    run = subprocess.run([str(check_kernels), str(which)], capture_output=True, text=True,
                         timeout=600)
    failed = [line for line in run.stdout.splitlines() if line.startswith("FAIL")]
    assert run.returncode == 0 and not failed, "\n".join(failed[:20]) or run.stderr[-2000:]
    assert "failures: 0" in run.stdout
