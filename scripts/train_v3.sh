#!/usr/bin/env bash
# How the shipped v3 model pair (shared/resources/models/{cloud,device}) was trained:
# the v2 pair (scripts/train_v2.sh), continued on the v3 corpus — many more training
# voices, voice shifts and random channels (docs/data.md) — by `pasu train --init-from`:
# the pair's own tokens and MVN statistics, cloud and device side by side (one torch
# thread each), both with the shared decoder frozen, so the packages still carry one
# decoder, bit-identical. On the 2-core CPU machine: corpus 6 min (calib 1.5 more),
# training ~15 min per cloud epoch and ~11 per device epoch, side by side (the
# shipped pair ran 5 epochs, then was resumed to 8: same as one run of 8).
#
# Usage: scripts/train_v3.sh [DATA=data/synth] [EXP=exp/v3]   (run from the repo root)
set -euo pipefail
DATA=${1:-data/synth}
EXP=${2:-exp/v3}
PASU=${PASU:-.venv/bin/pasu}

# 1. the corpus (seed 0, default sizes: 12000 train, 600 dev/test_voices/test_hard)
[[ -f "$DATA/manifest.json" ]] || "$PASU" -v data synth --out "$DATA"   # incl. calib

# 2. continue the v2 pair. Copy it out first: the packages are overwritten at the end.
INIT="$EXP/init_v2"
scripts/pair_from_commit.sh e463cc7 "$INIT"  # the v2 commit
"$PASU" -v train --data "$DATA" --exp "$EXP" --init-from "$INIT" --finetune-epochs 8 \
  --model-version 3 --stages tokens,stats,cloud,device,package

# 3. the confidence estimator and the evaluations (docs/models.md has the figures)
scripts/finish_pair.sh "$DATA" "$EXP" --kind mlp
