"""Turn ``csrc/cuda/kernels.cu`` into C++ that runs on the CPU.

``cuda_fake.h`` emulates the part of CUDA the kernels use (every thread of a block is a
``std::thread``; ``__syncthreads`` and warp shuffles are barriers). This script rewrites each
``kernel<<<grid, threads, 0, stream>>>(args)`` launch into ``launch_emu(grid, threads,
&kernel, args)`` and makes every 16-byte vector load and store check its alignment, so the
real kernel source can be run against a float64 reference (``check_kernels.cpp``) where no
GPU is (``tests/test_cuda_emulation.py``).

Usage: python emulate.py KERNELS_CU LAUNCHERS_H OUT_DIR
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

_LAUNCH = re.compile(
    r"(\w+<[^;<>]*(?:<[^;<>]*>[^;<>]*)*>)\s*<<<(.*?),\s*([^,]+?),\s*0,\s*stream>>>\(", re.S)
_VECTOR_LOAD = "  return *reinterpret_cast<const Pack<T, V>*>(src);"
_VECTOR_STORE = "  *reinterpret_cast<Pack<T, V>*>(dst) = pk;"


def _checked(line: str, pointer: str, what: str) -> str:
    return (f"  if (reinterpret_cast<uintptr_t>({pointer}) % sizeof(Pack<T, V>)) "
            f'{{ fprintf(stderr, "misaligned {what}\\n"); abort(); }}\n{line}')


def emulate(kernels_cu: Path, launchers_h: Path, out_dir: Path) -> Path:
    """Write ``kernels_emu.cpp`` and ``launchers_emu.h`` into ``out_dir``; returns the first."""
    s = kernels_cu.read_text()
    s = s.replace("#include <cuda_bf16.h>\n#include <cuda_fp16.h>\n#include <cuda_runtime.h>\n",
                  '#include "cuda_fake.h"\n#include <cstdio>\n#include <cstdlib>\n')
    s = s.replace('#include "launchers.h"', '#include "launchers_emu.h"')
    launches = s.count("<<<")
    s, rewritten = _LAUNCH.subn(r"launch_emu(\2, \3, &\1, ", s)
    if rewritten != launches or not launches:
        raise SystemExit(f"emulate: rewrote {rewritten} of {launches} kernel launches in "
                         f"{kernels_cu}; the launch syntax changed")
    for line, pointer, what in ((_VECTOR_LOAD, "src", "load"), (_VECTOR_STORE, "dst", "store")):
        if line not in s:
            raise SystemExit(f"emulate: {line.strip()!r} not found in {kernels_cu}")
        s = s.replace(line, _checked(line, pointer, what))
    out = out_dir / "kernels_emu.cpp"
    out.write_text(s)
    header = launchers_h.read_text().replace("#include <cuda_runtime_api.h>",
                                             '#include "cuda_fake.h"')
    (out_dir / "launchers_emu.h").write_text(header)
    return out


if __name__ == "__main__":
    if len(sys.argv) != 4:
        raise SystemExit(__doc__.strip().splitlines()[-1])
    emulate(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]))
