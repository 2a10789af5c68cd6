#!/usr/bin/env bash
# How the v6 model pair was trained: the v5 pair (scripts/train_v5.sh) continued on
# a fourth draw of training audio (48000 utterances in all), with a deeper cloud
# stored as float16.
#
# * data: seeds 0-3 of the train split (`pasu data synth --seed S --splits train`,
#   ~5 min each on 2 cores); dev and the test sets are seed 0's, unchanged. Each
#   draw so far lifted both models (device test_voices 86.2 -> 88.2 -> 89.5%).
# * cloud: v5's 11-layer Conformer deepened to 14 (python -m pasu.tools.train.grow: new
#   layers after 2, 5 and 8 start as the identity). v5's cloud was 28.7 MB of the
#   30 a package may take, so the packages store float16 weights
#   (--weights-dtype float16: half the bytes, loaded into float32 models).
#   The test_hard gap is what the cloud is for; v4's deepening is what opened it.
# * both roles warm-start from v5 with the shared decoder frozen, side by side (one
#   torch thread each), epochs of 500 updates, peak learning rate 0.0005.
# * the confidence estimator as v5's: an MLP on the per-token scores, on calib
#   pooled with the novel-template calib.
#
# Usage: scripts/train_v6.sh [DATA=data/synth] [EXP=exp/v6]   (run from the repo root)
set -euo pipefail
DATA=${1:-data/synth}
EXP=${2:-exp/v6}
PASU=${PASU:-.venv/bin/pasu}
PY=${PY:-.venv/bin/python}
V5=b4a3840  # the commit that shipped the v5 pair

# 1. the corpora: seed 0 (all splits) and train splits with seeds 1-3
[[ -f "$DATA/manifest.json" ]] || "$PASU" -v data synth --out "$DATA"
for seed in 1 2 3; do
  [[ -f "${DATA}_s$seed/manifest.json" ]] || "$PASU" -v data synth --out "${DATA}_s$seed" --seed "$seed" --splits train
done

# 2. one data dir: train = all the draws (seed S's ids get a -sS suffix), the rest seed 0's
MERGED="${DATA}_v6"
PY="$PY" scripts/merge_train_draws.sh "$DATA" "$MERGED" 1 2 3

# 3. the starting pair: v5's device as it is, v5's cloud deepened
INIT="$EXP/init"
PY="$PY" scripts/pair_from_commit.sh "$V5" "$INIT" 2,5,8
"$PASU" -v train --data "$MERGED" --exp "$EXP" --init-from "$INIT" \
  --epochs cloud=7 --epochs device=12 --espnet-arg=--num_iters_per_epoch=500 \
  --espnet-arg=--optim_conf=lr=0.0005 --weights-dtype float16 \
  --model-version 6 --stages tokens,stats,cloud,device,package

# 4. the confidence estimator and the evaluations (docs/models.md has the figures)
NOVEL="${DATA}_novel"
[[ -f "$NOVEL/manifest.json" ]] || "$PASU" -v data synth --grammar shared/resources/slu/grammar_novel.yaml \
  --splits calib --calib 1200 --out "$NOVEL"
scripts/finish_pair.sh "$DATA" "$EXP" --data "$NOVEL/calib" --kind mlp --features scores
