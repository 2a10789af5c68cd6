#!/usr/bin/env bash
# The from-scratch recipe cut to fit issue 4's budget: corpus and both models in
# under two hours (1 h 55 min measured) of this project's 2-core CPU machine, to measure what that
# budget buys (RESULTS.md, "From scratch on the budget"; docs/models.md, "Budget").
#
# Same stages as `pasu train` (bootstrap -> device_ctc -> cloud -> device), each
# with ESPnet epochs of ITERS updates (default 400): bootstrap 1, device_ctc 4,
# cloud 6, device 3; then packages and the eval stage on test_voices and
# test_hard. The corpus is seed 0 with half the train sentences recombined, as
# v8's (`--text-variety 0.5`). Timings: the recipe's EXP/timings.json, and the
# wall clock of each step below in EXP/budget.log.
#
# Usage: [THREADS=2] [ITERS=400] scripts/train_scratch_budget.sh [DATA=data/scratch] [EXP=exp/scratch]
set -euo pipefail
DATA=${1:-data/scratch}
EXP=${2:-exp/scratch}
PASU=${PASU:-.venv/bin/pasu}
ITERS=${ITERS:-400}
mkdir -p "$EXP"
stamp() { echo "$(date -u +%FT%TZ) $*" | tee -a "$EXP/budget.log"; }

stamp "start"
[[ -f "$DATA/manifest.json" ]] || "$PASU" data synth --out "$DATA" --splits train,dev,test_voices,test_hard \
  --text-variety 0.5 --no-progress
stamp "corpus done"
"$PASU" -v train --data "$DATA" --exp "$EXP" --threads "${THREADS:-2}" \
  --epochs bootstrap=1 --epochs device_ctc=4 --epochs cloud=6 --epochs device=3 \
  --espnet-arg=--num_iters_per_epoch="$ITERS" --model-version scratch-budget
stamp "recipe done"
