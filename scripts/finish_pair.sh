#!/usr/bin/env bash
# After a pair is trained: the device's confidence estimator, then the model
# card's evaluations — the same steps for every version (train_v3.sh, train_v4.sh).
#
# Usage: scripts/finish_pair.sh DATA EXP [ESTIMATOR FLAGS...]
#   DATA: the seed-0 corpus; EXP/models/{cloud,device}; the flags go to train-confidence
set -euo pipefail
DATA=$1
EXP=$2
shift 2
PASU=${PASU:-.venv/bin/pasu}

# the device's confidence estimator, on calib (training voices in test_hard's noise)
"$PASU" -v device train-confidence --model "$EXP/models/device" --data "$DATA/calib" "$@" \
  --test shared/resources/eval/test_hard --out "$EXP/models/device/confidence.pt"

# evaluate (docs/models.md has the sets and the figures)
"$PASU" data subset --data "$DATA/dev" --out "$EXP/dev200" --size 200 --max-mb 100
for role in cloud device; do
  for D in "$DATA/test_voices" "$DATA/test_hard" shared/resources/eval/test_hard "$EXP/dev200" "$DATA/calib"; do
    "$PASU" eval --model "$EXP/models/$role" --data "$D" --threads 1
  done
done
