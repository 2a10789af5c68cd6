#!/usr/bin/env bash
# The starting pair of a continued training run (train_v3.sh .. train_v6.sh): the
# cloud and device packages as a commit shipped them, copied to INIT/{cloud,device}
# (the packages in the tree are overwritten at the end of a run). With AFTER
# (e.g. 1,4,7) the cloud is deepened on the way (python -m pasu.tools.train.grow: a new
# layer after each, starting as the identity). Skips when INIT/cloud exists.
#
# Usage: scripts/pair_from_commit.sh COMMIT INIT [AFTER]
set -euo pipefail
COMMIT=$1
INIT=$2
AFTER=${3:-}
PY=${PY:-.venv/bin/python}
[[ -f "$INIT/cloud/model.pth" ]] && exit 0
CLOUD="$INIT/cloud"
[[ -n "$AFTER" ]] && CLOUD="$INIT/shallow_cloud"
mkdir -p "$INIT/device" "$CLOUD"
for f in config.yaml model.pth feats_stats.npz tokens.txt bpe.model; do
  git show "$COMMIT:shared/resources/models/device/$f" > "$INIT/device/$f"
  git show "$COMMIT:shared/resources/models/cloud/$f" > "$CLOUD/$f"
done
[[ -z "$AFTER" ]] || "$PY" -m pasu.tools.train.grow --model "$CLOUD" --out "$INIT/cloud" --after "$AFTER"
