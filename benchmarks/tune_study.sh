#!/usr/bin/env bash
# The study of issue 13 on the embedded default, sized for 2 CPU cores (~15-20 minutes):
#   1. a hyperparameter + preprocessing search (TPE, median pruning), the `quick` preset as
#      trial 0, 8 epochs of 16 steps per trial (the preset's 50+50 epochs take 7-9 minutes);
#   2. the preprocessing ablation: the same configuration once per pipeline (grid).
# Both select on the validation split (astronaut) and score on the test split (coffee,
# chelsea) once, at the end. Prints the tables; the reports are in $OUT/*/report.html.
#
#   bash benchmarks/tune_study.sh [OUT]        (default OUT: studies-bench; started afresh)
#
# HALF_EPOCHS (default 4: 4 constant + 4 decaying epochs per trial), TRIALS (14), TIMEOUT
# (minutes for the search, 11) and TRIAL_MINUTES (1.5) size it for another machine.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-studies-bench}
# Started afresh, but only ever over a folder this script made (its marker file).
if [ -e "$OUT" ] && [ ! -f "$OUT/.tune-study-bench" ]; then
  echo "tune_study: $OUT exists and was not made by this script; choose another folder" >&2
  exit 2
fi
rm -rf "$OUT"
mkdir -p "$OUT"
touch "$OUT/.tune-study-bench"
HALF=${HALF_EPOCHS:-4}
TRIALS=${TRIALS:-14}
TIMEOUT=${TIMEOUT:-11}
TRIAL_MINUTES=${TRIAL_MINUTES:-1.5}
SPACE="$OUT/space.toml"
cat > "$SPACE" <<TOML
# The quick preset's networks and crops, $((2 * HALF)) epochs ($HALF constant + $HALF decaying
# by default), evaluated every 2 epochs for pruning; capacities and crops searched around
# the preset.
[model]
niter = $HALF
niter_decay = $HALF
eval_every = 2
num_samples = 1
ngf = [16, 24, 32]
n_blocks_global = {low = 2, high = 5}
crop_size = [64, 96]

[preprocess]
max_steps = 2
candidates = ["autogamma", "clahe", "denoise", "gamma", "whitebalance"]
denoise = {method = ["tv"], strength = {low = 0.25, high = 2.0}}
TOML
START=$SECONDS
echo "== 1. search: $TRIALS trials at most, $TIMEOUT minutes at most," \
     "$TRIAL_MINUTES minutes per trial at most"
restorekit tune pix2pixhd --studies-dir "$OUT" --study search --space "$SPACE" \
    --trials "$TRIALS" --timeout "$TIMEOUT" --max-minutes "$TRIAL_MINUTES" --device cpu --seed 0
SEARCH=$((SECONDS - START))
restorekit tune --export-best search --studies-dir "$OUT" -o "$OUT/best.json"

echo "== 2. preprocessing ablation: the quick preset for $((2 * HALF)) epochs, once per pipeline"
ABLATION=$OUT/ablation.toml
printf '[model]\nniter = %d\nniter_decay = %d\neval_every = 2\nnum_samples = 1\n' \
    "$HALF" "$HALF" > "$ABLATION"
START2=$SECONDS
restorekit tune pix2pixhd --studies-dir "$OUT" --study ablation --space "$ABLATION" \
    --grid-preprocess "none;autogamma;clahe;autogamma,denoise" --device cpu
echo "== wall time: search $((SEARCH / 60)) min $((SEARCH % 60)) s, ablation" \
     "$(((SECONDS - START2) / 60)) min $(((SECONDS - START2) % 60)) s"
"${PYTHON:-python3}" - "$OUT" <<'PY'
import sys

import optuna

out = sys.argv[1]
for name in ("search", "ablation"):
    study = optuna.load_study(study_name=name, storage=f"sqlite:///{out}/{name}/study.db")
    states = {}
    for t in study.trials:
        states[t.state.name] = states.get(t.state.name, 0) + 1
    print(f"{name}: {len(study.trials)} trials {states}; best trial {study.best_trial.number}"
          f" {study.best_value:.4f}; {study.best_trial.params}")
    print(f"  report: {out}/{name}/report.html")
PY
