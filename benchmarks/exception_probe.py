"""Which C++ exceptions thrown by an extension op survive on this torch build?

Usage: python benchmarks/exception_probe.py

On the GPU machine (torch 2.11.0+cu130, g++ 13.3, Python 3.12) any TORCH_CHECK failing
inside an extension op crashed the process (SIGSEGV), restorekit's ops and a three-line
op alike, while the same ops raise a RuntimeError under torch 2.11/2.13 with g++ 12 here.
This script builds a tiny extension twice (compiler defaults, and restorekit's flags),
calls each of its ops with a bad input in a fresh subprocess, and prints one line per
(variant, flags): ``raises`` or ``CRASH (signal N)`` with the last line of stderr. A
SIGSEGV handler inside the extension prints the native backtrace of a crash.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

SOURCE = textwrap.dedent(r"""
    #include <ATen/ATen.h>
    #include <execinfo.h>
    #include <signal.h>
    #include <torch/library.h>
    #include <unistd.h>
    #include <stdexcept>

    namespace {
    void on_segv(int sig) {
      void* frames[64];
      const int n = backtrace(frames, 64);
      backtrace_symbols_fd(frames, n, 2);
      signal(sig, SIG_DFL);
      raise(sig);
    }
    const bool installed = [] { signal(SIGSEGV, on_segv); return true; }();

    at::Tensor torch_check(const at::Tensor& x) {
      TORCH_CHECK(x.dim() == 4, "expected 4 dimensions, got ", x.dim());
      return x.clone();
    }
    at::Tensor runtime_error_literal(const at::Tensor& x) {
      if (x.dim() != 4) throw std::runtime_error("expected 4 dimensions");
      return x.clone();
    }
    at::Tensor runtime_error_str(const at::Tensor& x) {
      if (x.dim() != 4) throw std::runtime_error(c10::str("expected 4 dimensions, got ", x.dim()));
      return x.clone();
    }
    }  // namespace

    TORCH_LIBRARY(NAMESPACE, m) {
      m.def("torch_check(Tensor x) -> Tensor");
      m.def("torch_check_ag(Tensor x) -> Tensor");
      m.def("runtime_error_literal(Tensor x) -> Tensor");
      m.def("runtime_error_literal_ag(Tensor x) -> Tensor");
      m.def("runtime_error_str(Tensor x) -> Tensor");
      m.def("runtime_error_str_ag(Tensor x) -> Tensor");
    }
    TORCH_LIBRARY_IMPL(NAMESPACE, CPU, m) {
      m.impl("torch_check", &torch_check);
      m.impl("torch_check_ag", &torch_check);
      m.impl("runtime_error_literal", &runtime_error_literal);
      m.impl("runtime_error_literal_ag", &runtime_error_literal);
      m.impl("runtime_error_str", &runtime_error_str);
      m.impl("runtime_error_str_ag", &runtime_error_str);
    }
""")

CALL = textwrap.dedent("""
    import sys, torch
    torch.ops.load_library(sys.argv[1])
    ns, name = sys.argv[2], sys.argv[3]
    if name.endswith("_ag"):  # a Python autograd formula, as restorekit registers most ops
        torch.library.register_autograd(f"{ns}::{name}", lambda ctx, g: g)
    getattr(getattr(torch.ops, ns), name)(torch.randn(3, 4, 5))
""")

RESTOREKIT = textwrap.dedent("""
    import torch, restorekit.ext as e
    assert e.load()
    torch.ops.restorekit.reflection_pad(torch.randn(3, 4, 5))
""")

NAMES = ["torch_check", "runtime_error_literal", "runtime_error_str"]


def _outcome(cmd: list[str]) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    last = (proc.stderr.strip().splitlines() or [""])[-1][:100]
    if proc.returncode < 0:
        trace = [ln for ln in proc.stderr.splitlines() if "(+0x" in ln or ".so(" in ln][:12]
        return f"CRASH (signal {-proc.returncode})" + "".join(f"\n      {t}" for t in trace)
    if "RuntimeError" in proc.stderr:
        return "raises: " + last
    return f"exit {proc.returncode}: {last}"


def main() -> int:
    import torch
    from torch.utils.cpp_extension import load_inline

    print(f"torch {torch.__version__}, python {sys.version.split()[0]}")
    print(subprocess.run(["c++", "--version"], capture_output=True, text=True)
          .stdout.splitlines()[0])
    root = Path(tempfile.mkdtemp(prefix="exception_probe_"))
    for tag, flags in (("defaults", []), ("restorekit-flags", ["-O3", "-fopenmp",
                                                                "-march=native"])):
        ns = f"probe_{tag.replace('-', '_')}"
        build = root / tag
        build.mkdir()
        load_inline(ns, cpp_sources=[SOURCE.replace("NAMESPACE", ns)], extra_cflags=flags,
                    is_python_module=False, build_directory=str(build))
        (lib,) = build.glob("*.so")
        for name in NAMES:
            for suffix in ("", "_ag"):
                result = _outcome([sys.executable, "-c", CALL, str(lib), ns, name + suffix])
                print(f"{tag:17s} {name + suffix:25s} {result}", flush=True)
    print(f"{'restorekit':17s} {'reflection_pad':25s} "
          f"{_outcome([sys.executable, '-c', RESTOREKIT])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
