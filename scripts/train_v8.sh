#!/usr/bin/env bash
# How the v8 pair was trained (docs/models.md): v5's pair continued on a draw of
# training audio whose sentences are half recombined (`pasu data synth
# --text-variety 0.5`), and for the first time since v2 the shared decoder trains.
#
# Why: test_hard's failures are the held-out templates, not its voices or noise.
# v5's cloud scores 81% on test_voices' sentences in test_hard's noise but 42% on
# held-out templates (test_hard, and novel templates read by training voices),
# and its wrong answers are training sentences the decoder completed the audio
# into. Both models share that decoder, frozen since v2, so neither side could
# learn its way out; new audio for the same templates (v6, v7) did not move
# test_hard. Recombined sentences (a sentence's head, another's tail, same intent;
# never a held-out template's sentence) teach the decoder that word order is the
# audio's to decide.
#
# * data: seed 5's train split with --text-variety 0.5 (12,000 utterances, about
#   half recombined) and seed 4's (12,000, plain: the templates as they are), dev
#   and the test sets seed 0's, unchanged.
# * training: `pasu train --init-from` v5 `--retrain-decoder`: the cloud trains
#   encoder and decoder, then the device adapts to the new decoder, frozen (one
#   after the other); epochs of 500 updates at peak learning rate 0.0005 as
#   v5-v7, `--epochs cloud=4 --epochs device=3`; THREADS torch threads (default 2;
#   the run in docs/models.md: 2 for the cloud, 1 for the device).
#
# Usage: [THREADS=2] scripts/train_v8.sh [DATA=data/synth] [EXP=exp/v8]   (run from the repo root)
set -euo pipefail
DATA=${1:-data/synth}
EXP=${2:-exp/v8}
PASU=${PASU:-.venv/bin/pasu}
PY=${PY:-.venv/bin/python}
V5=b4a3840  # the commit that shipped the v5 pair

# 1. the corpora: seed 0's dev, test sets and calib; seed 5's recombined train, seed 4's plain
[[ -f "$DATA/manifest.json" ]] || "$PASU" -v data synth --out "$DATA" --splits dev,test_voices,test_hard,calib
[[ -f "${DATA}_s5/manifest.json" ]] || "$PASU" -v data synth --out "${DATA}_s5" --seed 5 --splits train --text-variety 0.5
[[ -f "${DATA}_s4/manifest.json" ]] || "$PASU" -v data synth --out "${DATA}_s4" --seed 4 --splits train
MERGED="${DATA}_v8"
OWN_TRAIN=0 PY="$PY" scripts/merge_train_draws.sh "$DATA" "$MERGED" 5 4

# 2. v5's pair; the cloud retrains the shared decoder, then the device adapts to it
INIT="$EXP/init"
PY="$PY" scripts/pair_from_commit.sh "$V5" "$INIT"
"$PASU" -v train --data "$MERGED" --exp "$EXP" --init-from "$INIT" --retrain-decoder \
  --threads "${THREADS:-2}" --epochs cloud=4 --epochs device=3 \
  --espnet-arg=--num_iters_per_epoch=500 --espnet-arg=--optim_conf=lr=0.0005 \
  --model-version 8 --stages tokens,stats,cloud,device,package

# 3. the device's confidence estimator (as v5's: seed 0's calib pooled with a calib
#    of novel sentences) and the evaluations (docs/models.md has the figures)
NOVEL="${DATA}_novel"
[[ -f "$NOVEL/manifest.json" ]] || "$PASU" -v data synth --grammar shared/resources/slu/grammar_novel.yaml \
  --splits calib --calib 1200 --out "$NOVEL"
scripts/finish_pair.sh "$DATA" "$EXP" --data "$NOVEL/calib" --kind mlp --features scores
