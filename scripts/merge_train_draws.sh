#!/usr/bin/env bash
# One data dir whose train split pools several draws of the corpus's training
# audio (train_v4.sh .. train_v7.sh): DATA's own train plus the train split of
# DATA_sS for each seed S (ids suffixed -sS); dev, the test sets and calib are
# DATA's, linked. The manifest keeps DATA's counts with the train draws added,
# which is what the model cards' data line reads. Skips when OUT exists.
# OWN_TRAIN=0 leaves DATA's train out (train_v7.sh: fresh draws only).
#
# Usage: [OWN_TRAIN=0] scripts/merge_train_draws.sh DATA OUT SEED [SEED...]
set -euo pipefail
DATA=$1
OUT=$2
shift 2
PY=${PY:-.venv/bin/python}
OWN_TRAIN=${OWN_TRAIN:-1}  # 0: the train split is the draws' alone (DATA may have none)
[[ -f "$OUT/train/text" ]] && exit 0
mkdir -p "$OUT/train"
for split in dev test_voices test_hard calib; do ln -sfn "$(realpath "$DATA/$split")" "$OUT/$split"; done
for f in wav.scp text utt2spk; do
  { [[ "$OWN_TRAIN" = 0 ]] || cat "$DATA/train/$f"
    for seed in "$@"; do awk -v s="-s$seed" '{ $1 = $1 s; print }' "${DATA}_s$seed/train/$f"; done
  } > "$OUT/train/$f"
done
"$PY" - "$OUT" "$DATA" "$OWN_TRAIN" "$@" <<'PY'
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
