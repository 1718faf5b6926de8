#!/usr/bin/env bash
# 1. Compile every CUDA source under csrc/ with plain `nvcc -c` (no torch needed), into a
#    temporary directory. Extra nvcc flags may be passed through NVCC_FLAGS.
# 2. Syntax-check the torch glue of the CUDA ops (csrc/cuda/*.cpp), which only a CUDA build
#    of torch compiles, against the installed torch's headers: CPU wheels ship the c10/cuda
#    and ATen/cuda headers, all but one generated file, which is stubbed here. Skipped when
#    python with torch or a C++ compiler is missing.
# CSRC overrides the sources folder; PYTHON the interpreter whose torch headers are used.
# Exits non-zero when a file fails; exits 0 with one message when nvcc is absent.
set -euo pipefail
here="${CSRC:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../csrc" && pwd)}"
NVCC="${NVCC:-nvcc}"
if ! command -v "$NVCC" >/dev/null 2>&1; then
  if [ -x "${CUDA_HOME:-/usr/local/cuda}/bin/nvcc" ]; then
    NVCC="${CUDA_HOME:-/usr/local/cuda}/bin/nvcc"
  else
    echo "check_nvcc: nvcc not found, skipping the CUDA compile check"
    exit 0
  fi
fi
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
status=0
count=0
while IFS= read -r -d '' src; do
  count=$((count + 1))
  obj="$tmp/$(basename "$src").o"
  # shellcheck disable=SC2086
  if "$NVCC" -c -std=c++17 ${NVCC_FLAGS:-} -I"$here" -o "$obj" "$src"; then
    echo "check_nvcc: ok     ${src#"$here"/}"
  else
    echo "check_nvcc: FAILED ${src#"$here"/}" >&2
    status=1
  fi
done < <(find "$here" -name '*.cu' -print0 | sort -z)
if [ "$count" -eq 0 ]; then
  echo "check_nvcc: no .cu files found under $here" >&2
  exit 1
fi

CXX="${CXX:-c++}"
PYTHON="${PYTHON:-python3}"  # tests pass sys.executable
if ! command -v "$CXX" >/dev/null 2>&1 || ! includes="$("$PYTHON" -c '
import sysconfig
from torch.utils.cpp_extension import include_paths
print("\n".join([*include_paths(), sysconfig.get_paths()["include"]]))' 2>/dev/null)"; then
  echo "check_nvcc: no C++ compiler or no torch, skipping the CUDA glue check"
  exit "$status"
fi
mkdir -p "$tmp/stub/c10/cuda/impl"
printf '#pragma once\n#define C10_CUDA_BUILD_SHARED_LIBS\n' \
  >"$tmp/stub/c10/cuda/impl/cuda_cmake_macros.h"
# nvcc names its own include directory (it may be a wrapper script elsewhere on PATH).
: >"$tmp/empty.cu"
cuda_include="$("$NVCC" --dryrun -c "$tmp/empty.cu" 2>&1 | sed -n 's/^#\$ TOP=//p' | head -n 1)/include"
flags=(-std=c++20 -fsyntax-only -I"$tmp/stub" -I"$cuda_include")
while IFS= read -r inc; do flags+=(-I"$inc"); done <<<"$includes"
while IFS= read -r -d '' src; do
  if "$CXX" "${flags[@]}" -I"$here" "$src"; then
    echo "check_nvcc: ok     ${src#"$here"/} (syntax, against torch's headers)"
  else
    echo "check_nvcc: FAILED ${src#"$here"/}" >&2
    status=1
  fi
done < <(find "$here/cuda" -name '*.cpp' -print0 | sort -z)
exit "$status"
