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

# evaluate: each set becomes a row of the model card (docs/models.md has the figures),
# and the hypotheses stay for `pasu compare` (who is right where, per voice)
"$PASU" data subset --data "$DATA/dev" --out "$EXP/dev200" --size 200 --max-mb 100
mkdir -p "$EXP/hyps"
for role in cloud device; do
  for row in "test_voices:$DATA/test_voices" "test_hard:$DATA/test_hard" \
      test_hard_subset200:shared/resources/eval/test_hard "dev_sample200:$EXP/dev200" "calib:$DATA/calib"; do
    "$PASU" eval --model "$EXP/models/$role" --data "${row#*:}" --card-row "${row%%:*}" \
      --hyps "$EXP/hyps/${role}_${row%%:*}.txt" --threads 1 --no-progress
  done
done
for row in "test_voices:$DATA/test_voices" "test_hard:$DATA/test_hard"; do
  "$PASU" compare --data "${row#*:}" --hyps "cloud=$EXP/hyps/cloud_${row%%:*}.txt" \
    --hyps "device=$EXP/hyps/device_${row%%:*}.txt"
done
