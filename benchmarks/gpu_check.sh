#!/usr/bin/env bash
# The GPU check: on a fresh GPU machine with its own PyTorch, in about 5 minutes,
#   1. install this checkout without touching torch, build the extension (CPU + CUDA), and
#      probe whether this torch build survives exceptions raised inside extension ops,
#   2. time a training step of the lol / paper / quick presets under each configuration:
#      plain fp32 (NVIDIA's network, eager), fused fp32/bf16, and both captured in a CUDA graph
#      (benchmarks/step_times.py, one process, with TFLOP/s),
#   3. run the whole test suite, and meanwhile train the `quick` preset on CUDA with the
#      defaults, in bf16, and with --cuda-graph (test PSNR of each),
#   4. run the CUDA benchmarks of the fused ops (GB/s, graph-replayed and queued), the block
#      (torch.compile of the plain and the fused block: float32 forward+backward only, to keep
#      the compile time down) and summarise them (benchmarks/ratios.py),
#   5. start a 1-GPU distributed run under torchrun (the NCCL path),
# then print one summary (also written to $OUT/summary.md; logs in $OUT/logs.tgz).
# Usage: bash benchmarks/gpu_check.sh   (OUT=DIR keeps the results there)
set -uo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
out="${OUT:-$(mktemp -d)}"
logs="$(mktemp -d)"
runs="$(mktemp -d)"
export PYTHONUNBUFFERED=1 RESTOREKIT_EXT=on
if [ -z "${TORCH_CUDA_ARCH_LIST:-}" ]; then
  TORCH_CUDA_ARCH_LIST="$("$PY" -c 'import torch; print("%d.%d" % torch.cuda.get_device_capability())')"
  export TORCH_CUDA_ARCH_LIST
fi
summary="$out/summary.md"
: >"$summary"
say() { echo "$*" | tee -a "$summary"; }
# step NAME CMD...: run CMD with its output in $logs/NAME.log, record ok/FAILED and seconds.
step() {
  local name="$1" start=$SECONDS rc
  shift
  "$@" >"$logs/$name.log" 2>&1
  rc=$?
  if [ "$rc" -eq 0 ]; then
    say "- $name: ok ($((SECONDS - start)) s)"
  else
    say "- $name: FAILED, exit $rc ($((SECONDS - start)) s); last lines:"
    tail -n 15 "$logs/$name.log" | sed 's/^/      /' | tee -a "$summary"
  fi
  return "$rc"
}

say "# restorekit GPU check"
say "$("$PY" -c 'import torch; print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, {torch.cuda.get_device_name(0)}")' 2>&1)"
say "commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown), arch list $TORCH_CUDA_ARCH_LIST"
say ""
step install "$PY" -m pip install -q --no-deps --no-build-isolation --no-index -e .
step extension "$PY" -m restorekit ext
grep -m1 "restorekit extension:" "$logs/extension.log" | tee -a "$summary"
step exception_probe "$PY" benchmarks/exception_probe.py
say ""
say "## Exceptions raised inside extension ops (benchmarks/exception_probe.py)"
grep -E "raises|CRASH|exit|torch|c\+\+" "$logs/exception_probe.log" | tee -a "$summary"

step step_times "$PY" benchmarks/step_times.py --json "$out/step_times.json"
say ""
say "## Training step, median ms (one process, interleaved)"
grep '^|' "$logs/step_times.log" | tee -a "$summary"

# The suite and three quick trainings side by side (the trainings report quality, not speed).
say ""
say "## Test suite and quick trainings on CUDA"
train() {
  local label="$1"
  shift
  "$PY" -m restorekit run pix2pixhd --train --device cuda --runs-dir "$runs" --name "quick-$label" "$@"
}
step tests "$PY" -m pytest -q -p no:cacheprovider -ra &
tests_pid=$!
step train_default train default &
p1=$!
step train_bf16 train bf16 --precision bf16 &
p2=$!
step train_graph train graph --cuda-graph &
p3=$!
wait "$p1" "$p2" "$p3" "$tests_pid"
grep -E "^(FAILED|ERROR)|[0-9]+ (passed|failed)" "$logs/tests.log" | tail -n 30 | tee -a "$summary"
say ""
say "| quick training on CUDA (wall time: the train_* lines above) | precision | CUDA graph | steps | test PSNR | SSIM | CIEDE2000 |"
say "| --- | --- | --- | ---: | ---: | ---: | ---: |"
for label in default bf16 graph; do
  "$PY" - "$runs/quick-$label" "$logs/train_$label.log" <<'EOF' | tee -a "$summary"
import json, sys
from pathlib import Path
run, log = Path(sys.argv[1]), Path(sys.argv[2])
try:
    cfg = json.loads((run / "config.json").read_text())
    m = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x.strip()][-1]
    opts = cfg.get("options", {})
    print(f"| {run.name} | {cfg.get('precision')} | {opts.get('cuda_graph')} | {m['step']} | "
          f"{m['psnr']:.2f} | {m.get('ssim', float('nan')):.3f} | "
          f"{m.get('ciede2000', float('nan')):.2f} |")
except Exception as exc:  # report, never stop the summary
    print(f"| {run.name} | - | - | - | - | - | no result ({exc}) |")
EOF
done
# The benchmarks last: what is left of the time goes to them (the summary grows as they end).
step cuda_benchmarks "$PY" -m pytest benchmarks --benchmark-only -q -p no:cacheprovider \
  -k "cuda and not train_step and not (compile and (bfloat16 or (fwd and not fwdbwd)))" \
  --benchmark-json="$out/cuda_bench.json"
say ""
say "## Fused ops and block (benchmarks/ratios.py, min over rounds)"
"$PY" benchmarks/ratios.py "$out/cuda_bench.json" 2>&1 | tee -a "$summary"

# The NCCL path of distributed training: torchrun with one GPU (world size 1), a few steps.
say ""
step nccl_torchrun "$PY" -m torch.distributed.run --standalone --nproc-per-node 1 \
  -m restorekit run pix2pixhd --train --runs-dir "$runs" --name nccl --max-steps 20
grep -m1 -E "distributed over" "$logs/nccl_torchrun.log" | tee -a "$summary"
tar czf "$out/logs.tgz" -C "$logs" . 2>/dev/null
say ""
say "logs: $out/logs.tgz"
