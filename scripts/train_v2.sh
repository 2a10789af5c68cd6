#!/usr/bin/env bash
# How the shipped v2 model pair (shared/resources/models/{cloud,device}) was trained:
# the exact ESPnet calls, in order, on the `pasu data synth` corpus (seed 0), on a
# 2-core CPU with one torch thread per run, over two 3-hour sessions. `pasu train`
# runs the same idea end to end in its stage order (bootstrap -> device_ctc ->
# cloud grown from it -> device on the cloud's decoder); this schedule differs
# where the sessions' budget and what each one learned forced it (docs/models.md,
# "How the v2 pair was trained"). Two runs at a time, one core each.
#
# Usage: scripts/train_v2.sh [DATA=data/synth] [EXP=exp/v2]   (run from the repo root)
set -euo pipefail
DATA=${1:-data/synth}
EXP=${2:-exp/v2}
PY=${PYTHON:-.venv/bin/python}
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 OMP_WAIT_POLICY=PASSIVE
CFG=shared/resources/configs

# 1. tokens + stats (BPE 300 with the 54 intent labels as single tokens; global MVN)
.venv/bin/pasu -v train --data "$DATA" --exp "$EXP" --stages tokens,stats

common=(--use_preprocessor true --token_type bpe --bpemodel "$EXP/tokens/bpe.model"
        --token_list "$EXP/tokens/tokens.txt"
        --train_data_path_and_name_and_type "$DATA/train/wav.scp,speech,sound"
        --train_data_path_and_name_and_type "$DATA/train/text,text,text"
        --valid_data_path_and_name_and_type "$DATA/dev/wav.scp,speech,sound"
        --valid_data_path_and_name_and_type "$DATA/dev/text,text,text"
        --train_shape_file "$EXP/stats/train/speech_shape" --train_shape_file "$EXP/stats/train/text_shape.bpe"
        --valid_shape_file "$EXP/stats/valid/speech_shape" --valid_shape_file "$EXP/stats/valid/text_shape.bpe"
        --normalize global_mvn --normalize_conf "stats_file=$EXP/stats/train/feats_stats.npz"
        --ngpu 0 --num_workers 1 --seed 0 --resume true --use_tensorboard false --use_matplotlib false
        --batch_bins 500000)
train() { "$PY" -m pasu.tools.train.asr_train "$@"; }
warm=(--optim_conf lr=0.001 --scheduler_conf warmup_steps=500)  # every warm-started run

# 2. bootstrap Branchformer (session 1): epochs 1-4 with batch_bins 1M and ctc 0.3,
#    5-8 as configured. Its decoder learned the grammar, not the audio (dev CTC 62).
train --config $CFG/train_bootstrap.yaml "${common[@]}" --max_epoch 4 --output_dir "$EXP/bootstrap" \
      --batch_bins 1000000 --model_conf ctc_weight=0.3
train --config $CFG/train_bootstrap.yaml "${common[@]}" --max_epoch 8 --output_dir "$EXP/bootstrap"
.venv/bin/pasu -v train --data "$DATA" --exp "$EXP" --stages branches   # bootstrap/branch_weights.json

# 3. device encoder (late context 4 local + 4 attention), CTC only, from the bootstrap's
#    epoch-6 subsampling front end and CTC head (session 1)
"$PY" - "$EXP" <<'PYEOF'
import sys
from pathlib import Path
from pasu.tools.train.recipe import RecipeOptions, write_device_config
exp = Path(sys.argv[1])
write_device_config(RecipeOptions(exp_dir=exp, device_attention_blocks=4), exp / "device.yaml")
PYEOF
train --config "$EXP/device.yaml" "${common[@]}" --model_conf ctc_weight=1.0 --max_epoch 2 \
      --init_param "$EXP/bootstrap/6epoch.pth:encoder.embed:encoder.embed" "$EXP/bootstrap/6epoch.pth:ctc:ctc" \
      --output_dir "$EXP/device_ctc"

# 4. device, ctc 0.5, against the bootstrap's epoch-8 decoder, frozen: 9 epochs
#    (sessions 1-2; v1 shipped its epoch 3). Dev CTC 29 -> 12.6.
train --config "$EXP/device.yaml" "${common[@]}" --model_conf ctc_weight=0.5 --max_epoch 9 \
      --init_param "$EXP/device_ctc/2epoch.pth" "$EXP/bootstrap/8epoch.pth:decoder:decoder" \
      --freeze_param decoder --output_dir "$EXP/device_a"

# 5. session 2, beside step 4's epochs 5-9 — the cloud Conformer grown from device_a epoch 4
#    (pasu.tools.train.grow; FF 288): one epoch on the bootstrap decoder, frozen ...
"$PY" - "$EXP" <<'PYEOF'
import sys
from pathlib import Path
from pasu.tools.train.grow import write_conformer_init
exp = Path(sys.argv[1])
write_conformer_init(exp / "device_a/4epoch.pth", exp / "cloud_a_init.pth", kernel=25,
                     local_left_context=12, attention_heads=4, linear_units=288)
PYEOF
sed 's/^    linear_units: 576 .*/    linear_units: 288/' $CFG/train_cloud.yaml > "$EXP/cloud_ff288.yaml"
train --config "$EXP/cloud_ff288.yaml" "${common[@]}" "${warm[@]}" --max_epoch 1 \
      --init_param "$EXP/cloud_a_init.pth" "$EXP/bootstrap/8epoch.pth:decoder:decoder" \
      --freeze_param decoder --output_dir "$EXP/cloud_a"
#    ... then two with the decoder trained: it starts to listen (dev att. acc 0.73 -> 0.83)
train --config "$EXP/cloud_ff288.yaml" "${common[@]}" "${warm[@]}" --max_epoch 2 \
      --init_param "$EXP/cloud_a/1epoch.pth" --output_dir "$EXP/cloud_b"

# 6. the cloud again, grown from the better device_a epoch 9 with FF 576 (new units
#    silent at first), with cloud_b's decoder, decoder trained ...
"$PY" - "$EXP" <<'PYEOF'
import sys
from pathlib import Path
import torch
from pasu.tools.train.grow import write_conformer_init
exp = Path(sys.argv[1])
out = write_conformer_init(exp / "device_a/9epoch.pth", exp / "cloud_c_init.pth", kernel=25,
                           local_left_context=12, attention_heads=4, linear_units=576)
state = torch.load(out)
state.update({k: v for k, v in torch.load(exp / "cloud_b/2epoch.pth").items() if k.startswith("decoder.")})
torch.save(state, out)
PYEOF
train --config $CFG/train_cloud.yaml "${common[@]}" "${warm[@]}" --max_epoch "${CLOUD_C_EPOCHS:-3}" \
      --init_param "$EXP/cloud_c_init.pth" --output_dir "$EXP/cloud_c" &
#    ... while the device (device_a epoch 9) adapts to cloud_b's decoder, frozen
train --config "$EXP/device.yaml" "${common[@]}" "${warm[@]}" --model_conf ctc_weight=0.5 \
      --max_epoch "${DEVICE_B_EPOCHS:-4}" --init_param "$EXP/device_a/9epoch.pth" \
      "$EXP/cloud_b/2epoch.pth:decoder:decoder" --freeze_param decoder --output_dir "$EXP/device_b" &
wait

# 7. the shared decoder is fixed from here: cloud_c's last epoch. Both encoders train on
#    against it, frozen on both sides.
C=$EXP/cloud_c/${CLOUD_C_EPOCHS:-3}epoch.pth
train --config $CFG/train_cloud.yaml "${common[@]}" "${warm[@]}" --max_epoch "${CLOUD_D_EPOCHS:-3}" \
      --init_param "$C" --freeze_param decoder --output_dir "$EXP/cloud" &
train --config "$EXP/device.yaml" "${common[@]}" "${warm[@]}" --model_conf ctc_weight=0.5 \
      --max_epoch "${DEVICE_EPOCHS:-4}" --init_param "$EXP/device_b/${DEVICE_B_EPOCHS:-4}epoch.pth" \
      "$C:decoder:decoder" --freeze_param decoder --output_dir "$EXP/device" &
wait

# 8. package (pins and checks the shared decoder) and evaluate
.venv/bin/pasu -v train --data "$DATA" --exp "$EXP" --stages package,eval
