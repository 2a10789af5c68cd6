#!/usr/bin/env bash
# How the v5 model pair was trained: the v4 pair (scripts/train_v4.sh) continued on
# a third draw of training audio, 36000 utterances in all, same architecture.
#
# * data: seeds 0, 1 and 2 of the train split (same voices and templates; new
#   sentences, voice shifts, channels and noise each draw: `pasu data synth
#   --seed S --splits train`, ~5 min each on 2 cores). dev and the test sets are
#   seed 0's, unchanged. v3 -> v4 (12000 -> 24000 utterances) lifted both models;
#   this is the next step of the same lever.
# * both roles warm-start from v4 with the shared decoder frozen, side by side (one
#   torch thread each), epochs of 500 updates; half the warm-start peak learning
#   rate (0.0005), since v4 had already decayed to ~2.6e-4.
# * the confidence estimator: an MLP on the per-token scores, trained on calib
#   pooled with a calib of novel templates (docs/experiments/README.md).
#
# Usage: scripts/train_v5.sh [DATA=data/synth] [EXP=exp/v5]   (run from the repo root)
set -euo pipefail
DATA=${1:-data/synth}
EXP=${2:-exp/v5}
PASU=${PASU:-.venv/bin/pasu}
PY=${PY:-.venv/bin/python}
V4=ee09c83  # a commit that ships the v4 pair

# 1. the corpora: seed 0 (all splits) and train splits with seeds 1 and 2
[[ -f "$DATA/manifest.json" ]] || "$PASU" -v data synth --out "$DATA"
for seed in 1 2; do
  [[ -f "${DATA}_s$seed/manifest.json" ]] || "$PASU" -v data synth --out "${DATA}_s$seed" --seed "$seed" --splits train
done

# 2. one data dir: train = all the draws (seed S's ids get a -sS suffix), the rest seed 0's
MERGED="${DATA}_v5"
PY="$PY" scripts/merge_train_draws.sh "$DATA" "$MERGED" 1 2

# 3. the starting pair: v4 as shipped
INIT="$EXP/init"
scripts/pair_from_commit.sh "$V4" "$INIT"
"$PASU" -v train --data "$MERGED" --exp "$EXP" --init-from "$INIT" \
  --epochs cloud=8 --epochs device=14 --espnet-arg=--num_iters_per_epoch=500 \
  --espnet-arg=--optim_conf=lr=0.0005 \
  --model-version 5 --stages tokens,stats,cloud,device,package

# 4. the confidence estimator and the evaluations (docs/models.md has the figures).
# The estimator pools seed 0's calib (training templates) with a calib of
# sentences no model has heard (grammar_novel.yaml: what test_hard asks it about)
NOVEL="${DATA}_novel"
[[ -f "$NOVEL/manifest.json" ]] || "$PASU" -v data synth --grammar shared/resources/slu/grammar_novel.yaml \
  --splits calib --calib 1200 --out "$NOVEL"
scripts/finish_pair.sh "$DATA" "$EXP" --data "$NOVEL/calib" --kind mlp --features scores
