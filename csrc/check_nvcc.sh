#!/usr/bin/env bash
# Compile every CUDA source under csrc/ with plain `nvcc -c` (no torch needed), into a
# temporary directory. Exits non-zero when a file fails; exits 0 with one message when nvcc
# is absent. Extra nvcc flags may be passed through NVCC_FLAGS.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
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
exit "$status"
