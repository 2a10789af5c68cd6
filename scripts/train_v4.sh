#!/usr/bin/env bash
# How the v4 model pair was trained: the v3 pair (scripts/train_v3.sh) continued on
# twice the training audio, with a deeper cloud.
#
# * data: the seed-0 corpus's train split plus a second 12000 utterances drawn with
#   seed 1 (same training voices and templates, new sentences, voice shifts,
#   channels and noise; the held-out templates depend on the grammar only, so
#   seed 1 holds out the same ones). dev and the test sets are seed 0's, unchanged.
# * cloud: v3's 8-layer Conformer deepened to 11 layers (python -m pasu.tools.train.grow:
#   a new layer after layers 1, 4 and 7 that starts as the identity, so training
#   starts from v3's exact function); the device keeps its size. The test_hard gap
#   is what the cloud is for, and v3's cloud was only a wider device.
# * both with the shared decoder frozen, side by side (one torch thread each);
#   ESPnet epochs of 500 updates (--num_iters_per_epoch; ~10 min for the cloud,
#   ~6 for the device), so each side gets about the same wall time.
#
# Usage: scripts/train_v4.sh [DATA=data/synth] [EXP=exp/v4]   (run from the repo root)
set -euo pipefail
DATA=${1:-data/synth}
EXP=${2:-exp/v4}
PASU=${PASU:-.venv/bin/pasu}
PY=${PY:-.venv/bin/python}
V3=a50c6ea  # the commit that shipped the v3 pair

# 1. the corpora: seed 0 (all splits) and a second train split with seed 1
[[ -f "$DATA/manifest.json" ]] || "$PASU" -v data synth --out "$DATA"
[[ -f "${DATA}_s1/manifest.json" ]] || "$PASU" -v data synth --out "${DATA}_s1" --seed 1 --splits train

# 2. one data dir: train = all the draws (seed S's ids get a -sS suffix), the rest seed 0's
MERGED="${DATA}_v4"
PY="$PY" scripts/merge_train_draws.sh "$DATA" "$MERGED" 1

# 3. the starting pair: v3's device as it is, v3's cloud deepened
INIT="$EXP/init"
PY="$PY" scripts/pair_from_commit.sh "$V3" "$INIT" 1,4,7
"$PASU" -v train --data "$MERGED" --exp "$EXP" --init-from "$INIT" \
  --epochs cloud=9 --epochs device=15 --espnet-arg=--num_iters_per_epoch=500 \
  --model-version 4 --stages tokens,stats,cloud,device,package

# 4. the confidence estimator and the evaluations (docs/models.md has the figures)
scripts/finish_pair.sh "$DATA" "$EXP" --kind logistic --features scores
