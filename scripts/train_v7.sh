#!/usr/bin/env bash
# How the v7 pair was trained (measured, not shipped: docs/models.md): v5's device
# as it is, v5's cloud continued alone on two fresh draws of training audio, the
# shared decoder frozen.
#
# Why the cloud alone: v6 (scripts/train_v6.sh) continued both models on a fourth
# draw and the device gained more on test_hard than the cloud, closing the gap
# offloading lives on (v5 2.8 points, v6 1.7). The cloud's lead is what the pair
# is for, so this run trains the cloud alone; the device keeps v5's
# weights (`--stages` without `device`: the package is carried over, proven to
# carry the same decoder as the new cloud).
#
# * data: the train splits of seeds 3 and 4 (24,000 utterances none of the v5
#   models heard; `pasu data synth --seed S --splits train`), dev and the test
#   sets seed 0's, unchanged (OWN_TRAIN=0: seed 0's train is left out).
# * cloud: v5's 11-layer Conformer, epochs of 500 updates at peak learning rate
#   0.0005 as v5 and v6, `--epochs cloud=6`; THREADS torch threads (default 2;
#   the run in docs/models.md used 1, with the estimator's decodes on the other core).
#
# Usage: [THREADS=2] scripts/train_v7.sh [DATA=data/synth] [EXP=exp/v7]   (run from the repo root)
set -euo pipefail
DATA=${1:-data/synth}
EXP=${2:-exp/v7}
PASU=${PASU:-.venv/bin/pasu}
PY=${PY:-.venv/bin/python}
V5=b4a3840  # the commit that shipped the v5 pair

# 1. the corpora: seed 0's dev, test sets and calib; the train splits of seeds 3 and 4
[[ -f "$DATA/manifest.json" ]] || "$PASU" -v data synth --out "$DATA" --splits dev,test_voices,test_hard,calib
for seed in 3 4; do
  [[ -f "${DATA}_s$seed/manifest.json" ]] || "$PASU" -v data synth --out "${DATA}_s$seed" --seed "$seed" --splits train
done
MERGED="${DATA}_v7"
OWN_TRAIN=0 PY="$PY" scripts/merge_train_draws.sh "$DATA" "$MERGED" 3 4

# 2. v5's pair; the cloud trains, the device is carried over
INIT="$EXP/init"
PY="$PY" scripts/pair_from_commit.sh "$V5" "$INIT"
"$PASU" -v train --data "$MERGED" --exp "$EXP" --init-from "$INIT" --threads "${THREADS:-2}" \
  --epochs cloud=6 --espnet-arg=--num_iters_per_epoch=500 \
  --espnet-arg=--optim_conf=lr=0.0005 \
  --model-version 7 --stages tokens,stats,cloud,package

# 3. the evaluations (docs/models.md has the figures); the device and its
#    confidence estimator are v5's
"$PASU" data subset --data "$DATA/dev" --out "$EXP/dev200" --size 200 --max-mb 100
for D in "$DATA/test_voices" "$DATA/test_hard" shared/resources/eval/test_hard "$EXP/dev200" "$DATA/calib"; do
  "$PASU" eval --model "$EXP/models/cloud" --data "$D" --threads 1
done
