#!/usr/bin/env bash
# Pix2PixHD `quick` on the embedded set: 1 process vs 2 processes (gloo, CPU), issue 12.
#
#   bash benchmarks/ddp_quick.sh                 # the full preset (50 + 50 epochs), twice
#   NITER=5 NITER_DECAY=5 bash benchmarks/ddp_quick.sh   # a shorter check
#   EXTRA="--data ~/LOL" bash benchmarks/ddp_quick.sh     # more flags for both runs
#
# Run it on a quiet machine: both runs share its cores. Each run trains into
# $OUT/{p1,p2}; the script polls checkpoints/latest.json (written at every epoch end) to
# time each epoch, then prints the median and mean seconds per epoch (the mean includes the
# evaluation epochs), the optimiser steps, the final test PSNR and the total wall time.
# Per-rank batch stays the preset's 4, so 2 processes train with an effective batch of 8
# and take half as many optimiser steps per epoch at the same learning rate.
set -euo pipefail

PYTHON=${PYTHON:-python}
OUT=${OUT:-runs-ddp-bench}
NITER=${NITER:-50}
NITER_DECAY=${NITER_DECAY:-50}
CORES=$(nproc)
EXTRA=${EXTRA:-}

mkdir -p "$OUT"
"$PYTHON" - "$OUT" "$NITER" "$NITER_DECAY" "$CORES" "$EXTRA" <<'EOF'
import json, os, shlex, statistics, subprocess, sys, time
from pathlib import Path

out, niter, decay, cores = Path(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4])
rows = []
for nproc in (1, 2):
    name = f"p{nproc}"
    cmd = [sys.executable, "-m", "restorekit", "run", "pix2pixhd", "--train", "--preset",
           "quick", "--runs-dir", str(out), "--name", name, "--overwrite",
           "--niter", niter, "--niter-decay", decay, "--device", "cpu",
           *shlex.split(sys.argv[5])]
    env = dict(os.environ, TQDM_DISABLE="1")
    if nproc > 1:
        cmd += ["--nproc-per-node", str(nproc)]
        env["OMP_NUM_THREADS"] = str(max(1, cores // nproc))
    else:
        env["OMP_NUM_THREADS"] = str(cores)
    pointer = out / name / "checkpoints" / "latest.json"
    log = open(out / f"{name}.log", "w")
    start = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    seen: dict[int, float] = {}
    while proc.poll() is None:
        try:
            epoch = int(json.loads(pointer.read_text())["epoch"])
            seen.setdefault(epoch, time.monotonic())
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.05)
    total = time.monotonic() - start
    if proc.returncode != 0:
        sys.exit(f"{name}: exit status {proc.returncode}; see {out / (name + '.log')}")
    epochs = sorted(seen)
    spans = [seen[b] - seen[a] for a, b in zip(epochs, epochs[1:]) if b == a + 1]
    metrics = [json.loads(x) for x in (out / name / "metrics.jsonl").read_text().splitlines()]
    batch = json.loads((out / name / "config.json").read_text())["options"]["batch_size"]
    rows.append((nproc, batch * nproc, statistics.median(spans), statistics.mean(spans),
                 metrics[-1]["step"], metrics[-1]["psnr"], total))

print(f"\npix2pixhd quick, {niter} + {decay} epochs, {cores} CPU cores, gloo")
print("| processes | effective batch | s/epoch (median) | s/epoch (mean) | steps | "
      "final test PSNR | wall |")
print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
for n, batch, med, mean, steps, psnr, total in rows:
    print(f"| {n} | {batch} | {med:.2f} | {mean:.2f} | {steps} | {psnr:.2f} | "
          f"{total / 60:.1f} min |")
EOF
