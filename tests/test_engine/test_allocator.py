"""restorekit.engine.allocator: freed activations stay mapped instead of faulting back in."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

from restorekit import cli
from restorekit.engine import allocator

glibc = pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
    reason="the setting exists only for glibc",
)

# Forward+backward of a plain Pix2PixHD ResnetBlock (3.3 MB activations), as a training step
# runs it; prints whether the setting was applied and the minor page faults of five steps
# after ten warm-up steps.
_STEPS = """
import resource, torch
from restorekit.engine.allocator import keep_freed_memory
from restorekit_pix2pixhd.networks import ResnetBlock
applied = keep_freed_memory()
torch.set_num_threads(1)
torch.manual_seed(0)
block = ResnetBlock(32)
x = torch.randn(1, 32, 160, 160, requires_grad=True)
def step():
    block(x).sum().backward()
for _ in range(10):
    step()
f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    step()
print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
"""


def _faults(mode: str) -> tuple[str, int]:
    env = {**os.environ, "RESTOREKIT_MALLOC": mode}
    out = subprocess.run(
        [sys.executable, "-c", _STEPS], capture_output=True, text=True, check=True, env=env
    ).stdout.split()
    return out[0], int(out[1])


@glibc
def test_keep_stops_refaulting_freed_tensors() -> None:
    applied, kept = _faults("keep")
    default, system = _faults("system")
    assert (applied, default) == ("True", "False")
    # glibc's defaults fault the step's activations in again every step (15,000-28,000
    # faults measured); kept, they are reused (the heap may still grow a little now and then).
    assert system > 5_000
    assert kept * 5 < system, (kept, system)


def test_invalid_mode_is_one_clear_error(monkeypatch: pytest.MonkeyPatch,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("RESTOREKIT_MALLOC", "jemalloc")
    assert cli.main(["run", "classic", "--eval"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "RESTOREKIT_MALLOC='jemalloc' is not one of keep, system" in err


def test_run_command_applies_it(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    monkeypatch.setattr(allocator, "keep_freed_memory", lambda: calls.append("keep") or True)
    import restorekit.cli.run

    monkeypatch.setattr(restorekit.cli.run, "_eval", lambda model, args, registry:
                        calls.append(type(model).name) or 0)
    assert cli.main(["run", "classic", "--eval"]) == 0
    assert calls == ["keep", "classic"]


def test_system_mode_changes_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RESTOREKIT_MALLOC", "system")
    assert allocator.keep_freed_memory() is False
    assert allocator.malloc_mode() == "system"
