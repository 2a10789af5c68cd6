#!/usr/bin/env bash
# Continue a shipped device/cloud pair into a new one — how v3 to v8 were made (RESULTS.md has
# each shipped pair's exact command; docs/models.md the recipe). One run:
#
#   1. the corpus: seed 0's dev, test sets and calib (and its train split unless
#      --no-own-train), plus the train split of each --draw SEED[:VARIETY] (VARIETY:
#      `pasu data synth --text-variety`), pooled into DATA_vVERSION (a draw's ids get -sSEED);
#   2. the starting pair: the packages commit --from shipped, the cloud deepened with
#      --deepen AFTER (`python -m pasu.tools.train.grow`: a new identity layer after each);
#   3. `pasu train --init-from` it, with every argument after `--`;
#   4. the device's confidence estimator (--estimator FLAGS for `pasu device
#      train-confidence`, on calib and, with --novel-calib, a calib of novel templates;
#      --estimator none: skip), then each model card's evaluations and `pasu compare`.
#
# Each step skips what exists, so a rerun resumes.
#
# Usage: scripts/train_pair.sh --from COMMIT --version N [--draw SEED[:VARIETY]]... [--no-own-train]
#          [--deepen AFTER] [--novel-calib] [--estimator FLAGS|none] [--data DATA] [--exp EXP] -- PASU_TRAIN_ARGS...
set -euo pipefail
PASU=${PASU:-.venv/bin/pasu}
PY=${PY:-.venv/bin/python}
DATA=data/synth FROM= VERSION= DEEPEN= OWN_TRAIN=1 NOVEL= ESTIMATOR="--kind mlp --features scores" EXP=
SEEDS=() VARIETIES=()
while [[ $# -gt 0 ]]; do
  case $1 in
    --from) FROM=$2; shift 2 ;;
    --version) VERSION=$2; shift 2 ;;
    --draw) SEEDS+=("${2%%:*}"); v=; [[ $2 != *:* ]] || v=${2#*:}; VARIETIES+=("$v"); shift 2 ;;
    --no-own-train) OWN_TRAIN=0; shift ;;
    --deepen) DEEPEN=$2; shift 2 ;;
    --novel-calib) NOVEL=1; shift ;;
    --estimator) ESTIMATOR=$2; shift 2 ;;
    --data) DATA=$2; shift 2 ;;
    --exp) EXP=$2; shift 2 ;;
    --) shift; break ;;
    *) echo "train_pair.sh: unknown option $1 (see the usage at the top of the script)" >&2; exit 2 ;;
  esac
done
[[ -n "$FROM" && -n "$VERSION" ]] || { echo "train_pair.sh: --from COMMIT and --version N are required" >&2; exit 2; }
EXP=${EXP:-exp/v$VERSION}

synth_corpus() {
  local splits=()
  [[ $OWN_TRAIN = 1 ]] || splits=(--splits dev,test_voices,test_hard,calib)
  [[ -f "$DATA/manifest.json" ]] || "$PASU" -v data synth --out "$DATA" "${splits[@]}"
  local i variety
  for i in "${!SEEDS[@]}"; do
    variety=()
    [[ -z "${VARIETIES[$i]}" ]] || variety=(--text-variety "${VARIETIES[$i]}")
    [[ -f "${DATA}_s${SEEDS[$i]}/manifest.json" ]] || "$PASU" -v data synth --out "${DATA}_s${SEEDS[$i]}" \
      --seed "${SEEDS[$i]}" --splits train "${variety[@]}"
  done
  if [[ -n "$NOVEL" && ! -f "${DATA}_novel/manifest.json" ]]; then
    "$PASU" -v data synth --grammar shared/resources/slu/grammar_novel.yaml --splits calib --calib 1200 \
      --out "${DATA}_novel"
  fi
}

# DATA's dev, test sets and calib (linked); train = DATA's own (unless --no-own-train) and each
# draw's. The manifest adds the draws' counts to DATA's: the model cards' data line reads it.
merge_draws() {
  local out=$1 f split seed
  [[ -f "$out/train/text" ]] && return 0
  mkdir -p "$out/train"
  for split in dev test_voices test_hard calib; do ln -sfn "$(realpath "$DATA/$split")" "$out/$split"; done
  for f in wav.scp text utt2spk; do
    { [[ $OWN_TRAIN = 0 ]] || cat "$DATA/train/$f"
      for seed in "${SEEDS[@]}"; do awk -v s="-s$seed" '{ $1 = $1 s; print }' "${DATA}_s$seed/train/$f"; done
    } > "$out/train/$f"
  done
  "$PY" - "$out" "$DATA" "$OWN_TRAIN" "${SEEDS[@]}" <<'PY'
import json, sys
out, first, own, *seeds = sys.argv[1:]
own = own != "0"
a = json.load(open(f"{first}/manifest.json"))
draws = [f"{first}_s{s}" for s in seeds]
which = f"seed {seeds[0]}" if len(seeds) == 1 else "seeds " + ", ".join(seeds)
m = {"options": {"seed": f"0 (+ train from {which})" if own else f"0 (train from {which} only)",
                 "merged_from": [first, *(f"{d} (train)" for d in draws)]},
     "counts": {**a["counts"], "train": a["counts"].get("train", 0) if own else 0},
     "seconds": {**a["seconds"], "train": a["seconds"].get("train", 0.0) if own else 0.0}}
for d in draws:
    b = json.load(open(f"{d}/manifest.json"))
    m["counts"]["train"] += b["counts"]["train"]
    m["seconds"]["train"] = round(m["seconds"]["train"] + b["seconds"]["train"], 2)
json.dump(m, open(f"{out}/manifest.json", "w"), indent=2)
PY
}

# INIT/{cloud,device}: the packages as commit FROM shipped them (the tree's are overwritten
# at the end of a run); the cloud deepened on the way with --deepen.
init_pair() {
  local init=$1 cloud=$1/cloud f
  [[ -f "$init/cloud/model.pth" ]] && return 0
  [[ -z "$DEEPEN" ]] || cloud=$init/shallow_cloud
  mkdir -p "$init/device" "$cloud"
  for f in config.yaml model.pth feats_stats.npz tokens.txt bpe.model; do
    git show "$FROM:shared/resources/models/device/$f" > "$init/device/$f"
    git show "$FROM:shared/resources/models/cloud/$f" > "$cloud/$f"
  done
  [[ -z "$DEEPEN" ]] || "$PY" -m pasu.tools.train.grow --model "$cloud" --out "$init/cloud" --after "$DEEPEN"
}

# The device's confidence estimator, then every evaluation as a model-card row (hypotheses
# kept for `pasu compare`: who is right where, per voice, with a sign test).
finish_pair() {
  local role row est=()
  if [[ "$ESTIMATOR" != none ]]; then
    read -ra est <<< "$ESTIMATOR"
    [[ -z "$NOVEL" ]] || est=(--data "${DATA}_novel/calib" "${est[@]}")
    "$PASU" -v device train-confidence --model "$EXP/models/device" --data "$DATA/calib" "${est[@]}" \
      --test shared/resources/eval/test_hard --out "$EXP/models/device/confidence.pt"
  fi
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
}

synth_corpus
TRAIN_DATA=$DATA
if [[ ${#SEEDS[@]} -gt 0 ]]; then TRAIN_DATA=${DATA}_v$VERSION; merge_draws "$TRAIN_DATA"; fi
init_pair "$EXP/init"
"$PASU" -v train --data "$TRAIN_DATA" --exp "$EXP" --init-from "$EXP/init" --model-version "$VERSION" "$@"
finish_pair
