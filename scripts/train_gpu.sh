#!/usr/bin/env bash
# The GPU path (issue 25; docs/models.md, "The GPU path"): on one lent GPU machine, in one run,
# the corpus, the full model (a Branchformer, from scratch, ESPnet on the GPU), its converted
# device, and both packages split into parts of at most 16 MiB with checksums under OUT_DIR.
#
#   1. Python: the machine's own (torch 2.11) with the kit's wheels and pasu (from this tree)
#      installed offline (pip --no-index --target) into WORK/site, on PYTHONPATH;
#   2. espeak-ng from the kit (PATH; its wrapper sets its libraries and data);
#   3. python -m pasu.tools.train.gpu run: corpus on every core, tokens, stats, training
#      until the deadline (a checkpoint each epoch), packaging, conversion, the parts.
#
# Every step skips what is done, so a rerun with the same --work resumes (ESPnet --resume).
# The weights come back as OUT_DIR/pasu_pair.tar.partNN + SHA256SUMS + manifest.json; put
# them together with
#   cat pasu_pair.tar.part* > pasu_pair.tar && sha256sum -c SHA256SUMS && tar xf pasu_pair.tar
# or: python -m pasu.tools.train.gpu reassemble --parts OUT_DIR --out DIR
#
# Usage: scripts/train_gpu.sh KIT_DIR OUT_DIR [--work DIR] [--minutes M] [--train N] [--dev N]
#          [--size full|tiny] [--ngpu N] [--jobs N] [--num-workers N] [--python PY]
#   --minutes: the whole run's wall-clock budget, setup included (default 9)
#   --python:  use this interpreter as it is (it has ESPnet and pasu): no kit wheels
set -euo pipefail
START=$(date +%s)
[[ $# -ge 2 ]] || { echo "usage: scripts/train_gpu.sh KIT_DIR OUT_DIR [options] (see the top of the script)" >&2; exit 2; }
KIT=$(realpath "$1") OUT=$(realpath -m "$2"); shift 2
WORK=exp/gpu MINUTES=9 SIZE=full NGPU=1 TRAIN=30000 DEV=300 JOBS=0 WORKERS=8 PY=
while [[ $# -gt 0 ]]; do
  case $1 in
    --work) WORK=$2; shift 2 ;;
    --minutes) MINUTES=$2; shift 2 ;;
    --train) TRAIN=$2; shift 2 ;;
    --dev) DEV=$2; shift 2 ;;
    --size) SIZE=$2; shift 2 ;;
    --ngpu) NGPU=$2; shift 2 ;;
    --jobs) JOBS=$2; shift 2 ;;
    --num-workers) WORKERS=$2; shift 2 ;;
    --python) PY=$2; shift 2 ;;
    *) echo "train_gpu.sh: unknown option $1 (see the usage at the top of the script)" >&2; exit 2 ;;
  esac
done
cd "$(dirname "$0")/.."
DEADLINE=$(awk -v s="$START" -v m="$MINUTES" 'BEGIN { printf "%d", s + m * 60 }')
mkdir -p "$WORK" "$OUT"
WORK=$(realpath "$WORK")
say() { echo "[train_gpu $(( $(date +%s) - START ))s] $*"; }

if [[ -z "$PY" ]]; then
  # The machine's python3 is itself a venv (torch's): a venv made from it would not see torch, so the
  # kit's wheels and pasu go into one folder on PYTHONPATH instead, offline.
  PY=$(command -v python3)
  if [[ ! -f "$WORK/site/.done" ]]; then
    say "python: the kit's wheels and pasu into $WORK/site (for $PY)"
    rm -rf "$WORK/kit/wheels" "$WORK/site"
    mkdir -p "$WORK/kit"
    tar -C "$WORK/kit" -xJf "$KIT/python.tar.xz"
    "$PY" -m pip install -q --no-index --no-deps --no-compile --disable-pip-version-check --target "$WORK/site" \
      "$WORK"/kit/wheels/*.whl
    "$PY" -m pip install -q --no-index --no-deps --no-build-isolation --disable-pip-version-check \
      --target "$WORK/site" .
    touch "$WORK/site/.done"
  fi
  export PYTHONPATH="$WORK/site${PYTHONPATH:+:$PYTHONPATH}"
fi
if [[ -f "$KIT/engines.tar.xz" ]]; then
  [[ -x "$WORK/kit/engines/bin/espeak-ng" ]] || { mkdir -p "$WORK/kit"; tar -C "$WORK/kit" -xJf "$KIT/engines.tar.xz"; }
  export PATH="$WORK/kit/engines/bin:$PATH"
fi
command -v espeak-ng >/dev/null || { echo "train_gpu.sh: no espeak-ng (KIT_DIR/engines.tar.xz)" >&2; exit 1; }
say "python $("$PY" -c 'import sys, torch, espnet2, pasu.tools.train.gpu; print(sys.version.split()[0], "torch", torch.__version__, "espnet", espnet2.__version__, "cuda", torch.cuda.is_available())')"
say "engines: $(command -v espeak-ng)"

set -o pipefail
"$PY" -m pasu.tools.train.gpu run --data "$WORK/data" --exp "$WORK/exp" --out "$OUT" --deadline "$DEADLINE" \
  --size "$SIZE" --ngpu "$NGPU" --train "$TRAIN" --dev "$DEV" --jobs "$JOBS" --num-workers "$WORKERS" \
  2>&1 | tee "$OUT/train_gpu.log"
say "done: $(ls "$OUT" | tr '\n' ' ')"
