"""Shared fixtures of the restorekit.ext benchmarks (run: pytest benchmarks --benchmark-only).

Shapes are the Pix2PixHD ResnetBlock sizes: the global generator's bottleneck on a 400x600
image down to the local enhancer, plus one batch-4 training crop. Each shape and dtype is its
own benchmark group; every record carries ``extra_info`` (case, mode, impl, shape, device,
dtype, and bytes or flops where they apply) that ``benchmarks/ratios.py`` reads. On CUDA the
machine info records ``gpu_peak_gbps``, the DRAM bandwidth the device properties imply.

The benchmarks run with the allocator setting that ``restorekit run`` uses
(:func:`restorekit.engine.keep_freed_memory`), so freed tensors are reused rather than page
faulted in again on every call; ``RESTOREKIT_MALLOC=system`` times glibc's defaults instead.
"""

from __future__ import annotations

import os
import platform

import pytest
import torch
from bench_common import DEVICES, DTYPES, SHAPES

from restorekit.engine import allocator
from restorekit.engine.config import native_bf16_cpu


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _gpu_peak_gbps() -> float | None:
    """Theoretical DRAM bandwidth of GPU 0 (double data rate x bus width), None if unknown."""
    props = torch.cuda.get_device_properties(0)
    clock_khz = getattr(props, "memory_clock_rate", 0)
    bus_bits = getattr(props, "memory_bus_width", 0)
    if not clock_khz or not bus_bits:
        return None
    return round(2 * clock_khz * 1e3 * bus_bits / 8 / 1e9, 1)


def pytest_configure(config):
    allocator.keep_freed_memory()


def pytest_report_header(config):
    return f"restorekit allocator: {allocator.describe()}"


def pytest_benchmark_update_machine_info(config, machine_info):
    """Record torch version, thread count and CPU/GPU in the benchmark JSON."""
    machine_info["torch"] = torch.__version__
    machine_info["torch_threads"] = torch.get_num_threads()
    machine_info["cpu_count"] = os.cpu_count()
    machine_info["cpu_model"] = _cpu_name()
    machine_info["mkldnn"] = torch.backends.mkldnn.is_available()
    machine_info["malloc"] = allocator.describe()
    if torch.cuda.is_available():
        machine_info["gpu"] = torch.cuda.get_device_name()
        machine_info["torch_cuda"] = torch.version.cuda
        machine_info["gpu_peak_gbps"] = _gpu_peak_gbps()


@pytest.fixture(scope="session")
def restorekit_ops():
    """The built extension (RESTOREKIT_EXT=on semantics: a failed build fails loudly)."""
    from restorekit.ext import _build

    st = _build.ensure()
    if not st.ok:
        pytest.fail(f"restorekit extension failed to build: {st.error}\n{st.log}")
    return torch.ops.restorekit


@pytest.fixture(params=list(SHAPES), scope="session")
def shape_id(request) -> str:
    return request.param


@pytest.fixture(params=DEVICES, scope="session")
def device(request) -> str:
    return request.param


@pytest.fixture(params=list(DTYPES))
def dtype_name(request, device) -> str:
    """float32, or bfloat16 where the device computes it natively."""
    if request.param == "bfloat16" and device == "cpu" and not native_bf16_cpu():
        pytest.skip("bfloat16 is emulated on this CPU")
    return request.param
